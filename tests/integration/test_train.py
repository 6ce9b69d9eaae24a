"""The trainer on tiny random models: learning, accumulation invariance, teachers, outputs, resume, faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import torch

from helpers import WORKER_OV, build_tiny_model, examples, final_weights, fixed_batch_kl, train_worker, wait_for
from selfdistill import losses
from selfdistill.training.checkpoint import CheckpointError, latest_checkpoint
from selfdistill.config import load_config
from selfdistill.training import TrainingError, train


def cfg(**kw):
    base = {"train.max_steps": 3, "train.prompts_per_step": 4, "train.micro_batch_size": 2,
            "rollout.max_new_tokens": 8, "optim.warmup_steps": 0, "optim.lr": 1e-3, "log.progress": False}
    base.update(kw)
    return load_config(overrides=base)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sdft_lowers_its_loss_on_a_fixed_batch(tiny_tok, tmp_path):
    """Train with a frozen teacher; the SDFT loss on the initial rollouts (a fixed batch) goes down."""
    import copy
    from selfdistill.config import ContextConfig, DataConfig
    from selfdistill.contexts import encode_examples
    from selfdistill.engines import HFEngine, rollout_spec
    m = build_tiny_model(tiny_tok)
    base = copy.deepcopy(m)
    items, _ = encode_examples(tiny_tok, examples(4), DataConfig(), ContextConfig())
    c = cfg(**{"train.max_steps": 10, "optim.lr": 3e-4, "teacher.kind": "frozen", "train.micro_batch_size": 4,
               "loss.skip_first_tokens": 0, "rollout.greedy": True, "data.shuffle": False})
    spec = rollout_spec(c.rollout, [tiny_tok.eos_token_id])
    comps = [r.ids for r in HFEngine(m, tiny_tok.pad_token_id).generate([e.student_prompt_ids for e in items],
                                                                       spec)]
    before = fixed_batch_kl(m, base, tiny_tok, items, comps)
    res = train(c, examples(4), m, tiny_tok, tmp_path / "o")
    after = fixed_batch_kl(m, base, tiny_tok, items, comps)
    assert before > 0 and after < 0.3 * before, (before, after, [x["forward_kl"] for x in res.metrics])


def test_sft_and_dft_lower_their_loss(tiny_tok, tmp_path):
    for method in ("sft", "dft"):
        c = cfg(**{"train.method": method, "train.max_steps": 10, "optim.lr": 3e-3, "data.shuffle": False,
                   "train.micro_batch_size": 4})
        res = train(c, examples(4), build_tiny_model(tiny_tok), tiny_tok, tmp_path / method)
        key = "sft_nll"  # DFT: its own loss rises as p(token) grows; the NLL must fall
        assert res.metrics[-1][key] < 0.8 * res.metrics[0][key], (method, [m[key] for m in res.metrics])


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_gradient_accumulation_invariance(tiny_tok, tmp_path, method, monkeypatch):
    """1 micro-batch of 8 and 4 micro-batches of 2 accumulate the same gradient (and so the same update)."""
    grads, out = [], []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        params = list(params)
        grads.append([p.grad.detach().clone() for p in params])
        return orig(params, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    for mb in (8, 2):
        c = cfg(**{"train.method": method, "train.max_steps": 1, "train.prompts_per_step": 8,
                   "train.micro_batch_size": mb, "rollout.greedy": True})
        m = build_tiny_model(tiny_tok)
        train(c, examples(8), m, tiny_tok, tmp_path / f"{method}{mb}")
        out.append(weights(m))
    a, b = grads
    assert max(float(x.abs().max()) for x in a) > 0
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-7, rtol=1e-4)
    init = weights(build_tiny_model(tiny_tok))
    assert any(not torch.equal(out[0][k], init[k]) for k in init)  # it did update
    frac_equal = sum(torch.isclose(out[0][k], out[1][k], atol=1e-6).float().mean() for k in init) / len(init)
    assert frac_equal > 0.99  # Adam's first step ~ lr*sign(g): only near-zero gradient entries may differ


@pytest.fixture
def seen_teacher(monkeypatch):
    """Records the Teacher that train() builds."""
    import selfdistill.training.setup as tr
    seen = {}

    class Spy(tr.Teacher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["t"] = self
    monkeypatch.setattr(tr, "Teacher", Spy)
    return seen


def test_frozen_teacher_unchanged_and_ema_moves(tiny_tok, tmp_path, seen_teacher):
    for kind in ("frozen", "ema"):
        m = build_tiny_model(tiny_tok)
        init = weights(m)
        train(cfg(**{"teacher.kind": kind}), examples(), m, tiny_tok, tmp_path / kind)
        tw = seen_teacher["t"].copy.state_dict()
        same = all(torch.equal(tw[k], init[k]) for k in init)
        assert same == (kind == "frozen")


def _teacher_pairs(t):
    """(teacher tensor, student tensor) pairs the EMA acts on: the copy's weights, or the LoRA adapters."""
    return list(zip(t.copy.parameters(), t.student.parameters())) if t.copy is not None else t._lora_pairs


@pytest.fixture
def ema_events(monkeypatch):
    """Records, in order, every optimizer step (student weights right after it) and every teacher update
    (teacher before, the student weights it read, teacher after)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    import selfdistill.training.setup as tr
    events, seen = [], {}

    class Spy(tr.Teacher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["t"] = self

        def update(self):
            pairs = _teacher_pairs(self)
            before = [t.detach().clone() for t, _ in pairs]
            student = [s.detach().clone() for _, s in pairs]
            super().update()
            events.append(("update", before, student, [t.detach().clone() for t, _ in pairs]))
    monkeypatch.setattr(tr, "Teacher", Spy)

    def after_step(opt, args, kwargs):
        if "t" in seen:
            events.append(("step", [s.detach().clone() for _, s in _teacher_pairs(seen["t"])]))
    handle = register_optimizer_step_post_hook(after_step)
    yield events, seen
    handle.remove()


@pytest.mark.parametrize("lora", [False, True])
def test_ema_teacher_moves_by_exactly_the_ema_rule_after_each_optimizer_step(tiny_tok, tmp_path, ema_events, lora):
    events, seen = ema_events
    c = cfg(**{"model.lora": lora, "model.lora_r": 4, "optim.lr": 1e-2, "teacher.ema_rate": 0.1})
    train(c, examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    assert [e[0] for e in events] == ["step", "update"] * 3  # every update right after its optimizer step
    for (_, after_step), (_, before, student, after) in zip(events[::2], events[1::2]):
        assert all(torch.equal(s, a) for s, a in zip(student, after_step))  # it read the post-step student
        assert any(not torch.equal(b, s) for b, s in zip(before, student))  # so the rule below is not vacuous
        for b, s, a in zip(before, student, after):
            want = 0.9 * b.double() + 0.1 * s.double()  # float32 rounding only: moves are ~1e-3
            assert torch.allclose(a.double(), want, atol=1e-6, rtol=0)
    assert seen["t"].lora == lora


def test_lora_ema_teacher_is_a_second_adapter_and_scores_with_it(tiny_tok, tmp_path, seen_teacher):
    import copy
    m = build_tiny_model(tiny_tok)
    n_base = sum(p.numel() for p in m.parameters())
    c = cfg(**{"model.lora": True, "model.lora_r": 4, "optim.lr": 1e-2})
    res = train(c, examples(), m, tiny_tok, tmp_path / "lora")
    t = seen_teacher["t"]
    assert t.copy is None  # no second copy of the base model
    model = res.model
    n_all = sum(p.numel() for p in model.parameters())
    n_adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_all == n_base + n_adapters
    assert all(not tp.requires_grad for tp, _ in t._lora_pairs)  # the teacher adapter is not trained
    assert all(sp.requires_grad for _, sp in t._lora_pairs)
    # scoring uses the teacher adapter: same logits as a copy whose student adapter holds the teacher's weights
    ids = torch.tensor([[1, 5, 9]])
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for tp, sp in adapter_pairs_of(ref):
            sp.copy_(tp)
        want = ref(ids).logits
        student = model(ids).logits
        with t.scoring() as tm:
            got = tm(ids).logits
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, student, atol=1e-4)
    assert torch.equal(model(ids).logits, student)  # the student adapter is active again after scoring
    # outputs: the adapter and a merged model that plain transformers loads
    from transformers import AutoModelForCausalLM
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)


def adapter_pairs_of(peft_model):
    """(teacher adapter tensor, student adapter tensor) pairs of a peft model holding both adapters."""
    params = dict(peft_model.named_parameters())
    return [(p, params[n.replace(".teacher.", ".default.")]) for n, p in params.items() if ".teacher." in n]


def test_rollouts_are_sampled_in_eval_mode_and_scored_in_train_mode(tiny_tok, tmp_path):
    m = build_tiny_model(tiny_tok)
    calls = []
    m.register_forward_pre_hook(lambda mod, args: calls.append((mod is m, mod.training, torch.is_grad_enabled())))
    train(cfg(**{"train.max_steps": 1}), examples(), m, tiny_tok, tmp_path / "o")
    generation = [training for own, training, grad in calls if own and not grad]  # the student's no-grad calls
    scoring = [training for own, training, grad in calls if own and grad]
    assert generation and not any(generation)  # every decode step in eval mode (no dropout while sampling)
    assert scoring and all(scoring)  # the student's forward with gradient in train mode


def test_output_folder_loads_and_records_config(tiny_tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    res = train(cfg(), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    out = tmp_path / "o"
    m = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and (out / "model.safetensors").exists()
    assert "divergence: forward_kl" in (out / "selfdistill.yaml").read_text()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for k in ("forward_kl", "grad_norm", "lr", "tokens_per_s", "completion_len", "time_generate_s",
              "time_teacher_s", "time_student_s", "time_optimizer_s"):
        assert k in lines[0], k
    assert "rollout_preview" in lines[0]
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        assert torch.equal(m(ids).logits, res.model(ids).logits)


def test_refuses_existing_run_without_flag(tiny_tok, tmp_path):
    train(cfg(), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    with pytest.raises(TrainingError, match="--overwrite"):
        train(cfg(), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    with pytest.raises(TrainingError, match="different config"):
        train(cfg(**{"optim.lr": 1e-2}), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o", resume=True)
    train(cfg(), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o", overwrite=True)


def test_resume_of_a_run_saved_before_a_setting_existed(tiny_tok, tmp_path, capsys):
    """A run started by an older selfdistill has no entry for a setting added since: left at its default it
    resumes (with a notice naming it) and equals an uninterrupted run; set to anything else it is refused."""
    import yaml
    c = cfg(**{"train.max_steps": 4})
    full = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), full, tiny_tok, tmp_path / "full")
    r = train(c, examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, tmp_path / "old", stop_after=2)
    assert r.stopped_early
    saved = tmp_path / "old" / "selfdistill.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["rollout"]["top_k"], old["loss"]["mask_reasoning"]  # as written before these settings existed
    saved.write_text(yaml.safe_dump(old))
    with pytest.raises(TrainingError, match=r"different config \(rollout.top_k\)"):
        train(cfg(**{"train.max_steps": 4, "rollout.top_k": 5}), examples(), build_tiny_model(tiny_tok, seed=0),
              tiny_tok, tmp_path / "old", resume=True)
    resumed = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), resumed, tiny_tok, tmp_path / "old", resume=True)
    assert "predates the settings rollout.top_k, loss.mask_reasoning; resuming with their defaults" in \
        capsys.readouterr().err
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_in_process_is_bitwise_identical(tiny_tok, tmp_path):
    c = cfg(**{"train.max_steps": 4})
    full = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), full, tiny_tok, tmp_path / "full")
    part = build_tiny_model(tiny_tok, seed=0)
    r = train(c, examples(), part, tiny_tok, tmp_path / "part", stop_after=2)
    assert r.stopped_early and latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step-000002"
    resumed = build_tiny_model(tiny_tok, seed=0)  # a fresh process would start from the initial weights
    train(c, examples(), resumed, tiny_tok, tmp_path / "part", resume=True)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    p = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "full")})
    assert p.wait(120) == 0, p.communicate()
    p = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "killed")})
    wait_for(tmp_path / "killed" / "checkpoints" / "step-000003" / "COMPLETE", p)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert len(list((tmp_path / "killed" / "checkpoints").glob("step-*"))) <= 3  # rotation keeps few
    p = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "killed"), "resume": True})
    assert p.wait(120) == 0, p.communicate()
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_save_leaves_previous_checkpoint(tmp_path):
    p = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "o"), "die_in_save_after": 3})
    p.wait(120)
    assert p.returncode == -9
    ck = tmp_path / "o" / "checkpoints"
    assert latest_checkpoint(ck).name == "step-000002"  # the half-written step-3 folder is never picked
    assert list(ck.glob("step-000003*")) and not (ck / "step-000003").exists()
    p = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "o"), "resume": True})
    assert p.wait(120) == 0, p.communicate()
    p2 = train_worker({"overrides": WORKER_OV, "output": str(tmp_path / "full")})
    assert p2.wait(120) == 0
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "o")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_the_last_finished_step_and_says_how_to_resume(tmp_path):
    ov = {**WORKER_OV, "log.save_every": 0, "train.max_steps": 200}
    p = train_worker({"overrides": ov, "output": str(tmp_path / "o")})
    wait_for(tmp_path / "o" / "metrics.jsonl", p)
    while not (tmp_path / "o" / "metrics.jsonl").read_text().strip():
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    p.send_signal(signal.SIGTERM)  # the same stop twice, as a scheduler and torchrun both deliver it
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "--resume" in err and json.loads(out.strip().splitlines()[-1])["stopped_early"]
    ck = latest_checkpoint(tmp_path / "o" / "checkpoints")
    steps = len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines())
    assert ck is not None and ck.name == f"step-{steps:06d}"


def test_nonfinite_loss_stops_with_step_or_is_skipped(tiny_tok, tmp_path, monkeypatch):
    orig = losses.distillation_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        loss, m = orig(*a, **k)
        calls["n"] += 1
        if calls["n"] in (3, 4):  # step 2 (two micro-batches per step)
            loss = loss * float("nan")
        return loss, m
    monkeypatch.setattr(losses, "distillation_loss", flaky)
    with pytest.raises(TrainingError, match="at step 2"):
        train(cfg(), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "a")
    calls["n"] = 0
    res = train(cfg(**{"train.on_nonfinite": "skip"}), examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "b")
    assert res.skipped_steps == 1 and len(res.metrics) == 3


def test_disk_full_while_saving_keeps_previous(tiny_tok, tmp_path, monkeypatch):
    import errno
    import selfdistill.training.checkpoint as ck
    train(cfg(**{"log.save_every": 1, "train.max_steps": 2}), examples(), build_tiny_model(tiny_tok), tiny_tok,
          tmp_path / "o", stop_after=1)
    assert latest_checkpoint(tmp_path / "o" / "checkpoints").name == "step-000001"

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ck, "_write_bytes", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(cfg(**{"log.save_every": 1, "train.max_steps": 2}), examples(), build_tiny_model(tiny_tok), tiny_tok,
              tmp_path / "o", resume=True)
    assert latest_checkpoint(tmp_path / "o" / "checkpoints").name == "step-000001"
    assert not list((tmp_path / "o" / "checkpoints").glob("*.tmp*"))


@pytest.mark.slow
def test_two_sdft_steps_on_the_real_default_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from selfdistill.models import load_model
    model, tok, _ = load_model("smollm2-135m")
    c = load_config(overrides={"train.max_steps": 2, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
                               "rollout.max_new_tokens": 16, "log.progress": False})
    t0 = time.perf_counter()
    res = train(c, examples(4), model, tok, tmp_path / "o")
    assert len(res.metrics) == 2 and all(0 < m["forward_kl"] < float("inf") for m in res.metrics)
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "o")
    text = tok2.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                    add_generation_prompt=True)
    ids = tok2(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = m2.generate(ids, max_new_tokens=20, do_sample=False)
    assert len(tok2.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()) > 0
    print(f"2 SDFT steps on the default model: {time.perf_counter() - t0:.1f}s")


def test_stop_signal_during_rollout_abandons_the_step_and_resume_is_exact(tiny_tok, tmp_path, monkeypatch):
    """SIGTERM in the middle of step 2's rollout: no update, checkpoint of step 1, resume equals uninterrupted."""
    from selfdistill.engines import HFEngine
    c = cfg(**{"train.max_steps": 3, "rollout.max_new_tokens": 12})
    full = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), full, tiny_tok, tmp_path / "full")
    after_one = build_tiny_model(tiny_tok, seed=0)
    train(cfg(**{"train.max_steps": 3, "rollout.max_new_tokens": 12}), examples(), after_one, tiny_tok,
          tmp_path / "one", stop_after=1)
    orig, calls = HFEngine.generate, {"n": 0}

    def generate(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # step 2's rollouts (one call per step): signal after 4 tokens
            seen, inner = [], kw["on_tokens"]

            def on_tokens(n):
                inner(n)
                seen.append(n)
                if len(seen) == 4:
                    os.kill(os.getpid(), signal.SIGTERM)
            kw["on_tokens"] = on_tokens
        return orig(self, *a, **kw)
    monkeypatch.setattr(HFEngine, "generate", generate)
    part = build_tiny_model(tiny_tok, seed=0)
    r = train(c, examples(), part, tiny_tok, tmp_path / "part")
    assert r.stopped_early and calls["n"] == 2 and len(r.metrics) == 1
    assert latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step-000001"
    a, b = weights(after_one), weights(part)  # the abandoned step changed nothing
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(HFEngine, "generate", orig)
    resumed = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), resumed, tiny_tok, tmp_path / "part", resume=True)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_in_a_2048_token_rollout_exits_within_seconds(tmp_path):
    ov = {**WORKER_OV, "rollout.max_new_tokens": 2048, "train.prompts_per_step": 4, "train.micro_batch_size": 4,
          "train.max_steps": 4, "log.save_every": 0}
    p = train_worker({"overrides": ov, "output": str(tmp_path / "o"), "long_rollouts": True})
    wait_for(tmp_path / "o" / "metrics.jsonl", p, timeout=120)
    while not (tmp_path / "o" / "metrics.jsonl").read_text().strip():  # step 1 done: step 2's rollout runs
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    first = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["completion_len"] > 2000  # the rollouts really are 2048 tokens long
    time.sleep(0.3 * first["time_generate_s"])  # well inside step 2's rollout
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    elapsed = time.time() - t0
    assert p.returncode == 0, err
    assert elapsed < 10, elapsed
    assert latest_checkpoint(tmp_path / "o" / "checkpoints").name == "step-000001"
    assert json.loads(out.strip().splitlines()[-1]) == {"steps": 1, "stopped_early": True}


def test_rollout_temperature_is_used_in_the_loss_and_importance_weights(tiny_tok, tmp_path):
    """hf rollouts at T=0.5 with importance weights: the trainer's tempered log-probs equal the sampler's, so every
    weight is 1 and none is capped (untempered trainer log-probs would give weights far from 1)."""
    c = cfg(**{"rollout.temperature": 0.5, "loss.importance_weights": True, "train.max_steps": 2})
    res = train(c, examples(), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    for rec in res.metrics:
        assert abs(rec["importance_weight_mean"] - 1.0) < 1e-3 and rec["importance_capped_frac"] == 0.0, rec


def test_rollouts_from_a_bf16_copy_are_corrected_by_importance_weights(tiny_tok, tmp_path):
    """rollout.dtype=bfloat16: rollouts come from a bf16 copy (the live weights stay float32), the importance
    weights are on by default and measure the copy's numerics (not 1 to the last bit, near 1). That the copy
    follows every step: test_generation.py."""
    c = cfg(**{"rollout.dtype": "bfloat16", "train.max_steps": 2})
    assert c.loss.importance_weights
    model = build_tiny_model(tiny_tok)
    res = train(c, examples(), model, tiny_tok, tmp_path / "o")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for rec in res.metrics:
        assert 0.9 < rec["importance_weight_mean"] < 1.1 and rec["importance_weight_mean"] != 1.0, rec


def test_bf16_weights_train_on_float32_master_weights(tiny_tok, tmp_path):
    """An update of ~1e-6 survives (it would vanish on bf16 weights), and the saved model is bf16 again."""
    m = build_tiny_model(tiny_tok).to(torch.bfloat16)
    w0 = {k: v.float() for k, v in weights(m).items()}
    c = cfg(**{"train.method": "sft", "train.max_steps": 1, "optim.lr": 1e-6, "optim.schedule": "constant",
               "model.dtype": "bfloat16"})
    res = train(c, examples(), m, tiny_tok, tmp_path / "o")
    w1 = weights(res.model)
    k = "model.layers.0.mlp.down_proj.weight"
    delta = (w1[k] - w0[k]).abs()
    assert w1[k].dtype == torch.float32 and 5e-7 < float(delta.max()) < 2e-6
    assert float((delta > 0).float().mean()) > 0.9  # nearly every weight moved by ~lr
    same_in_bf16 = (w1[k].to(torch.bfloat16) == w0[k].to(torch.bfloat16)).float().mean()
    assert float(same_in_bf16) > 0.98  # on bf16 weights almost every one of those updates would be lost
    assert final_weights(tmp_path / "o")[k].dtype == torch.bfloat16


def _rollouts_of(c, tiny_tok, tmp_path, monkeypatch, name):
    """Train c on a fresh tiny model; returns (engine calls per step, every rollout's ids in sampling order)."""
    from selfdistill.engines import HFEngine
    orig, calls, ids = HFEngine.generate, [], []

    def generate(self, prompt_ids, spec, **kw):
        out = orig(self, prompt_ids, spec, **kw)
        calls.append(len(prompt_ids))
        ids.extend(o.ids for o in out)
        return out
    monkeypatch.setattr(HFEngine, "generate", generate)
    train(c, examples(8), build_tiny_model(tiny_tok, seed=0), tiny_tok, tmp_path / name)
    monkeypatch.setattr(HFEngine, "generate", orig)
    return calls, ids


def test_one_rollout_call_per_step_and_samples_independent_of_batching(tiny_tok, tmp_path, monkeypatch):
    """All of a step's prompts are sampled in one engine call (rollout.batch_size caps it), then trained micro-batch
    by micro-batch; each sequence's seed comes from its place in the step, so the first step's rollouts are the
    same whatever the micro-batch size or rollout.batch_size (later steps follow weights that differ in float
    rounding only)."""
    base = {"train.max_steps": 1, "train.prompts_per_step": 8, "rollout.num_rollouts": 2, "rollout.max_new_tokens": 6}
    one_call, a = _rollouts_of(cfg(**base, **{"train.micro_batch_size": 2}), tiny_tok, tmp_path, monkeypatch, "a")
    assert one_call == [16]
    calls, b = _rollouts_of(cfg(**base, **{"train.micro_batch_size": 8, "rollout.batch_size": 6}), tiny_tok,
                            tmp_path, monkeypatch, "b")
    assert calls == [6, 6, 4] and a == b


def test_steps_per_generation_samples_later_steps_in_the_same_call_with_their_own_seeds(tiny_tok, tmp_path,
                                                                                       monkeypatch):
    """rollout.steps_per_generation=2: one engine call per two optimizer steps (the last round cut at
    train.max_steps); each step's sequences keep their seeds, so the first step's rollouts are a K=1 run's; the
    engine gets new weights only before a sampling round; every step is importance-weighted."""
    from selfdistill.engines import HFEngine
    syncs, sync = [], HFEngine.sync_weights
    monkeypatch.setattr(HFEngine, "sync_weights", lambda self, model: syncs.append(1) or sync(self, model))
    base = {"train.max_steps": 3, "train.prompts_per_step": 4, "train.micro_batch_size": 2}
    calls, ids = _rollouts_of(cfg(**base, **{"rollout.steps_per_generation": 2}), tiny_tok, tmp_path, monkeypatch,
                              "k2")
    assert calls == [8, 4] and len(syncs) == 2  # at its start, before step 3's round (none after the last step)
    syncs.clear()
    calls1, ids1 = _rollouts_of(cfg(**base), tiny_tok, tmp_path, monkeypatch, "k1")
    assert calls1 == [4, 4, 4] and len(syncs) == 3 and ids[:4] == ids1[:4]
    rec = [json.loads(x) for x in (tmp_path / "k2" / "metrics.jsonl").read_text().splitlines()]
    assert all("importance_capped_frac" in r for r in rec)


def test_resume_inside_a_sampling_round_trains_on_the_saved_rollouts(tiny_tok, tmp_path, monkeypatch):
    """Stopped after step 2 of a 3-step sampling round: the checkpoint holds step 3's rollouts (sampled with step 1's
    weights), the resumed run samples only step 4's and ends bitwise equal to the uninterrupted run, also when the
    rollouts were saved by two processes (cut again for one); a checkpoint that holds too few is refused."""
    c = cfg(**{"train.max_steps": 4, "rollout.steps_per_generation": 3})
    full = build_tiny_model(tiny_tok, seed=0)
    train(c, examples(), full, tiny_tok, tmp_path / "full")
    r = train(c, examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, tmp_path / "part", stop_after=2)
    ck = latest_checkpoint(tmp_path / "part" / "checkpoints")
    assert r.stopped_early and ck.name == "step-000002"
    saved = json.loads((ck / "trainer_state.json").read_text())["pending_rollouts"]
    assert len(saved) == 1 and list(saved[0]) == ["2"] and len(saved[0]["2"]) == 4
    from selfdistill.engines import HFEngine
    orig, calls = HFEngine.generate, []

    def counted(self, prompt_ids, spec, **kw):
        calls.append(len(prompt_ids))
        return orig(self, prompt_ids, spec, **kw)
    monkeypatch.setattr(HFEngine, "generate", counted)
    shutil.copytree(tmp_path / "part", tmp_path / "two")  # as if written by 2 processes: 2 + 2 rollouts
    shutil.copytree(tmp_path / "part", tmp_path / "bad")

    def state_file(run):
        return tmp_path / run / "checkpoints" / ck.name / "trainer_state.json"
    state = json.loads(state_file("two").read_text())
    rows = state["pending_rollouts"][0]["2"]
    state_file("two").write_text(json.dumps({**state, "pending_rollouts": [{"2": rows[:2]}, {"2": rows[2:]}]}))
    state_file("bad").write_text(json.dumps({**state, "pending_rollouts": [{"2": rows[:3]}]}))
    for run in ("part", "two"):
        resumed = build_tiny_model(tiny_tok, seed=0)
        calls.clear()
        train(c, examples(), resumed, tiny_tok, tmp_path / run, resume=True)
        assert calls == [4]  # step 4 only: step 3's came from the checkpoint
        a, b = weights(full), weights(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a), run
    with pytest.raises(TrainingError, match=r"bad/checkpoints/step-000002: holds 3 rollouts sampled ahead for step "
                                            r"3, where this run's step takes 4"):
        train(c, examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, tmp_path / "bad", resume=True)


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tiny_tok, tmp_path, monkeypatch, keep):
    import selfdistill.training.setup as training_setup
    calls = []
    monkeypatch.setattr(training_setup, "keep_freed_memory", lambda: calls.append(1) or True)
    c = cfg(**{"train.method": "sft", "train.max_steps": 1, "train.malloc_keep_freed": keep})
    train(c, examples(4), build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o")
    assert calls == ([1] if keep else [])
