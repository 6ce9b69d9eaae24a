"""One SDFT micro-step against its definition computed another way: the loss is the divergence of the tempered
teacher and student logits on the rollouts; the importance weights cover exactly the loss's tokens and never
build a [B, T, V] float32 tensor; an engine with its own weights samples outside the trainer's autocast; LoRA
keeps its frozen base in the loaded dtype."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from helpers import build_tiny_model, examples, final_weights
from selfdistill.config import load_config
from selfdistill.contexts import encode_examples
from selfdistill.engines import Completion, rollout_spec
from selfdistill.losses import DivergenceSpec, distillation_loss, sequence_importance_weights, token_logprobs_BT
from selfdistill.training import train
from selfdistill.training.batches import completion_logits, pack
from selfdistill.training.steps import importance_weights, loss_chunk_rows, sample_rollouts, sdft_micro_step
from selfdistill.training.teacher import Teacher

COMPLETIONS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]


class FixedEngine:
    """Returns fixed completions; records whether bf16 autocast was on while it generated."""
    name, uses_live_model = "fixed", False

    def __init__(self, completions, logprobs=None):
        self.completions, self.logprobs, self.autocast_seen = completions, logprobs, None

    def generate(self, prompt_ids, spec, *, seeds=None, want_logprobs=False, should_stop=None, on_tokens=None):
        self.autocast_seen = torch.is_autocast_enabled("cpu")
        lps = self.logprobs or [[0.0] * len(c) for c in self.completions]
        return [Completion(list(c), lp if want_logprobs else None) for c, lp in zip(self.completions, lps)]

    def sync_weights(self, model):
        pass

    def close(self):
        pass


def _step(tok, cfg, engine, amp=contextlib.nullcontext):
    model = build_tiny_model(tok, seed=0)
    teacher = Teacher(model, "ema", 0.01)
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.copy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    items, _ = encode_examples(tok, examples(2), cfg.data, cfg.context)
    timings = {"generate": 0.0, "teacher": 0.0, "student": 0.0}
    rollouts = sample_rollouts(model, engine, rollout_spec(cfg.rollout, [tok.eos_token_id]), items, cfg, [0, 1], amp)
    loss, metrics, _ = sdft_micro_step(model, teacher, tok, items, rollouts, cfg, 2, amp, timings)
    return model, teacher, items, loss, metrics


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sdft_loss_is_the_divergence_of_the_tempered_teacher_and_student(tiny_tok, temperature):
    cfg = load_config(overrides={"rollout.temperature": temperature, "loss.skip_first_tokens": 1,
                                 "train.bf16": False})
    model, teacher, items, loss, _ = _step(tiny_tok, cfg, FixedEngine(COMPLETIONS))
    pad = tiny_tok.pad_token_id
    with torch.no_grad():
        s = completion_logits(model, pack([e.student_prompt_ids for e in items], COMPLETIONS, pad, "cpu")).float()
        t = completion_logits(teacher.copy, pack([e.teacher_prompt_ids for e in items], COMPLETIONS, pad,
                                                 "cpu")).float()
        mask = pack([e.student_prompt_ids for e in items], COMPLETIONS, pad, "cpu").completion_mask_BT
        want, _ = distillation_loss(s / temperature, t / temperature, mask, DivergenceSpec.from_config(cfg.loss),
                                    skip_first_tokens=1, num_sequences_total=2)
        untempered_teacher, _ = distillation_loss(s / temperature, t, mask, DivergenceSpec.from_config(cfg.loss),
                                                  skip_first_tokens=1, num_sequences_total=2)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    if temperature != 1.0:  # the check can tell a teacher left untempered apart
        assert abs(float(untempered_teacher) - float(want)) > 1e-3 * abs(float(want))


@pytest.mark.parametrize("live", [False, True])
def test_rollouts_run_outside_the_trainers_autocast_on_cpu(tiny_tok, live):
    """An engine with its own weights (vLLM) never samples under autocast; the hf engine not on CPU either,
    where decoding under bf16 autocast was 3x slower than in float32."""
    cfg = load_config(overrides={"train.bf16": True})
    engine = FixedEngine(COMPLETIONS)
    engine.uses_live_model = live
    _step(tiny_tok, cfg, engine, amp=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert engine.autocast_seen is False


def test_token_logprobs_equal_log_softmax_for_any_chunk():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 50, generator=g)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    want = x.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    for chunk in (1, 4, 21, 1000):
        assert torch.allclose(token_logprobs_BT(x, ids, chunk), want, atol=1e-6)
    assert torch.allclose(token_logprobs_BT(x.bfloat16(), ids, 5),
                          x.bfloat16().float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1), atol=1e-6)


def _packed(B, T, V):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=g)
    sb = pack([[1, 2]] * B, ids.tolist(), 0, "cpu")
    return torch.randn(B, T, V, generator=g), sb


def test_importance_weights_peak_memory_is_a_chunk_not_the_whole_logits():
    B, T, V = 4, 128, 16_000
    logits, sb = _packed(B, T, V)
    cfg = load_config(overrides={"loss.importance_weights": True, "loss.chunk_size": 32})
    lps = [[0.0] * T for _ in range(B)]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        importance_weights(logits, sb, lps, cfg)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest <= 32 * V * 4 * 1.1 < B * T * V * 4 / 10, largest


def test_cpu_loss_chunks_fit_the_kept_heap_and_leave_the_loss_and_gradient_bit_for_bit():
    """On CPU with train.malloc_keep_freed, loss.chunk_size 256 becomes 21 rows for a 49,152-token vocabulary (a
    4 MiB float32 chunk, `host_memory.heap_rows`); elsewhere or with the setting off it stays. Rows are
    independent: the chunked loss, its gradient and the trainer's log-probs are the same bits at 21 and 256."""
    B, T, V = 2, 150, 49_152
    logits, sb = _packed(B, T, V)
    cfg = load_config(overrides={"loss.chunk_size": 256})
    off = load_config(overrides={"loss.chunk_size": 256, "train.malloc_keep_freed": False})
    assert loss_chunk_rows(cfg, logits, 256) == 21 and loss_chunk_rows(cfg, logits, 16) == 16
    assert loss_chunk_rows(off, logits, 256) == 256 and loss_chunk_rows(cfg, logits.to("meta"), 256) == 256
    teacher = torch.randn(B, T, V, generator=torch.Generator().manual_seed(2))
    out = {}
    for rows in (21, 256):
        s = logits.clone().requires_grad_()
        loss, _ = distillation_loss(s, teacher, sb.completion_mask_BT, DivergenceSpec(), num_sequences_total=B,
                                    chunk_size=rows)
        loss.backward()
        out[rows] = (loss.detach(), s.grad, token_logprobs_BT(logits, sb.completion_ids_BT, rows))
    assert all(torch.equal(a, b) for a, b in zip(out[21], out[256]))


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("support,chunk", [("full", None), ("full", 3), ("top_k", None)])
def test_the_loss_takes_teacher_logits_made_under_inference_mode(divergence, support, chunk):
    """The teacher scores under inference_mode and its logits go to the loss as they are (no copy): every
    divergence, support and chunking gives the value and student gradient it gives on an ordinary tensor."""
    g = torch.Generator().manual_seed(3)
    s0, t = torch.randn(2, 5, 40, generator=g), torch.randn(2, 5, 40, generator=g)
    with torch.inference_mode():
        t_inference = t.clone()
    spec = DivergenceSpec(divergence=divergence, support=support, top_k=5)
    out = []
    for teacher in (t, t_inference):
        s = s0.clone().requires_grad_()
        loss, _ = distillation_loss(s, teacher, torch.ones(2, 5), spec, num_sequences_total=2, chunk_size=chunk)
        loss.backward()
        out.append((loss.detach(), s.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_importance_weights_cover_exactly_the_loss_tokens(tiny_tok):
    B, T, V = 2, 10, 30
    logits, sb = _packed(B, T, V)
    cfg = load_config(overrides={"loss.importance_weights": True, "loss.skip_first_tokens": 2,
                                 "loss.importance_cap": 100.0})
    train_lp = logits.log_softmax(-1).gather(-1, sb.completion_ids_BT[..., None]).squeeze(-1)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[:, 4:7] = False  # a reasoning block the loss drops
    sampler = train_lp.clone()
    sampler[:, 4:7] -= 3.0  # the sampler disagrees there only: outside the loss, so no weight moves
    w, capped = importance_weights(logits, sb, sampler.tolist(), cfg, keep)
    assert torch.allclose(w, torch.ones(B), atol=1e-5) and capped == 0.0
    w_all, _ = importance_weights(logits, sb, sampler.tolist(), cfg)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :2] = False
    assert torch.allclose(w_all, sequence_importance_weights(train_lp, sampler, mask, cap=100.0), atol=1e-5)
    assert float(w_all.min()) > 2.0  # without the keep mask the dropped tokens would count


def test_lora_on_bf16_keeps_the_frozen_base_in_bf16_and_saves_bf16(tiny_tok, tmp_path):
    m = build_tiny_model(tiny_tok).to(torch.bfloat16)
    cfg = load_config(overrides={"train.method": "sft", "train.max_steps": 1, "train.prompts_per_step": 2,
                                 "train.micro_batch_size": 2, "model.lora": True, "model.dtype": "bfloat16",
                                 "optim.warmup_steps": 0, "log.progress": False})
    res = train(cfg, examples(2), m, tiny_tok, tmp_path / "o")
    dtypes = {n: p.dtype for n, p in res.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert {v.dtype for v in final_weights(tmp_path / "o").values()} == {torch.bfloat16}


def test_teacher_bf16_scores_under_bf16_autocast_and_trains_the_student_in_float32(tiny_tok):
    """teacher.bf16: the loss is the divergence of the teacher's logits computed under bf16 autocast and the
    student's float32 logits (gradient in float32), and differs from the float32 teacher's loss."""
    cfg = load_config(overrides={"train.bf16": False, "teacher.bf16": True, "loss.skip_first_tokens": 1})
    model = build_tiny_model(tiny_tok, seed=0)
    teacher = Teacher(model, "ema", 0.01)
    with torch.no_grad():
        for p in teacher.copy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    items, _ = encode_examples(tiny_tok, examples(2), cfg.data, cfg.context)
    rollouts = [Completion(list(c), None) for c in COMPLETIONS]
    loss, _, _ = sdft_micro_step(model, teacher, tiny_tok, items, rollouts, cfg, 2, contextlib.nullcontext,
                                 {"teacher": 0.0, "student": 0.0},
                                 teacher_amp=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    loss.backward()
    pad, spec = tiny_tok.pad_token_id, DivergenceSpec.from_config(cfg.loss)
    sb = pack([e.student_prompt_ids for e in items], COMPLETIONS, pad, "cpu")
    tb = pack([e.teacher_prompt_ids for e in items], COMPLETIONS, pad, "cpu")
    with torch.no_grad():
        s = completion_logits(model, sb).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t_bf16 = completion_logits(teacher.copy, tb).float()
        t_fp32 = completion_logits(teacher.copy, tb).float()
        want, _ = distillation_loss(s, t_bf16, sb.completion_mask_BT, spec, skip_first_tokens=1,
                                    num_sequences_total=2)
        fp32_teacher, _ = distillation_loss(s, t_fp32, sb.completion_mask_BT, spec, skip_first_tokens=1,
                                            num_sequences_total=2)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(fp32_teacher) - float(want)) > 1e-6 * abs(float(want))  # the check tells the two apart
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    assert {p.dtype for p in teacher.copy.parameters()} == {torch.float32}


@pytest.mark.parametrize("lora", [False, True])
def test_teacher_bf16_in_train_changes_the_teacher_pass_only(tiny_tok, tmp_path, lora):
    """Through train(): teacher.bf16 samples the same rollouts as float32 and gives a loss within bf16's rounding
    of it, but not the same one; the student and the EMA teacher stay float32. With LoRA the teacher is the
    student's module with the EMA adapter swapped in: the same autocast reaches it."""
    out = {}
    for bf16 in (False, True):
        cfg = load_config(overrides={"train.max_steps": 1, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
                                     "train.bf16": False, "teacher.bf16": bf16, "optim.warmup_steps": 0,
                                     "rollout.max_new_tokens": 8, "log.progress": False, "model.lora": lora})
        res = train(cfg, examples(2), build_tiny_model(tiny_tok, seed=0), tiny_tok, tmp_path / str(bf16))
        out[bf16] = res.metrics[0]
        assert {p.dtype for p in res.model.parameters()} == {torch.float32}
    assert out[True]["rollout_preview"] == out[False]["rollout_preview"]
    assert out[True]["loss"] != out[False]["loss"]
    assert out[True]["loss"] == pytest.approx(out[False]["loss"], rel=0.05)
