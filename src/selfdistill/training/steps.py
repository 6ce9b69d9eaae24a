"""The steps of each method: SDFT's rollouts and micro-step, and the SFT / DFT baselines' micro-step.

One SDFT optimizer step (`loop.optimizer_step`):
  1. rollout   y ~ p_theta(. | Ctx_S(x))         `sample_rollouts`: the student samples from the prompt only, for
                                                     all of the step's prompts at once (no grad; temperature 1;
                                                     selfdistill.engines: hf or vllm, stop at every end of turn;
                                                     one engine call, or calls of rollout.batch_size sequences)
then per micro-batch (`sdft_micro_step`):
  2. teacher   q_t = pi_phi(. | Ctx_T(x, c), y_<t)  the teacher (EMA weights) scores the same completion ids
                                                     with the demonstration in its context (inference_mode;
                                                     teacher.bf16: under bf16 autocast, its weights float32)
  3. student   p_t = p_theta(. | Ctx_S(x), y_<t)    the student scores them with gradient
  4. loss      per-token forward KL(q_t || p_t) over the full vocabulary (default), first 3 completion tokens
               masked, token mean per sequence, mean over sequences (selfdistill.losses)
The update and the EMA teacher follow in `loop.optimizer_step`.
SFT/DFT's micro step is cross-entropy on the demonstration after the student prompt (DFT: weighted by the token's
own detached probability).
With rollout.temperature T != 1, student and teacher logits are divided by T before every softmax of the loss and
the importance weights (as the official trainer and TRL's SDFTTrainer do): the loss compares the distributions
actually sampled from.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from .. import losses
from ..config import Config
from ..contexts import Encoded, prompt_opens_reasoning, reasoning_token_ids
from ..engines import Completion
from . import distributed
from .batches import Packed, completion_logits, pack
from .errors import TrainingError
from .host_memory import heap_rows
from .teacher import Teacher


def tempered(logits_BTV: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the rollout temperature, as the official trainer does before every softmax in the
    loss and the importance weights: the distributions compared are the ones the rollouts were sampled from."""
    return logits_BTV if temperature == 1.0 else logits_BTV / temperature


def loss_chunk_rows(cfg: Config, logits_BTV: torch.Tensor, rows: int) -> int:
    """Completion positions per chunk of the loss's [n, V] float32 work: `rows` (loss.chunk_size), on CPU with
    train.malloc_keep_freed at most what keeps a chunk in the heap (`host_memory.heap_rows`: 21 rows for a
    49,152-token vocabulary). Rows are computed independently, so the loss and its gradient do not depend on it."""
    if cfg.train.malloc_keep_freed and logits_BTV.device.type == "cpu":
        return heap_rows(rows, logits_BTV.shape[-1] * 4)
    return rows


def importance_weights(student_logits_BTV, sb: Packed, sampler_lps: list[list[float]], cfg: Config,
                       keep_BT: torch.Tensor | None = None):
    """Truncated IS weight per sequence (trainer log-probs vs the sampler's) over exactly the loss's tokens (the
    first skip_first_tokens and, with loss.mask_reasoning, the reasoning blocks left out), and the fraction of
    those tokens whose ratio hit the cap. The trainer's log-probs are computed chunk by chunk
    (losses.token_logprobs_BT): no [B, T, V] float32 tensor besides the logits."""
    train_lp_BT = losses.token_logprobs_BT(student_logits_BTV, sb.completion_ids_BT,
                                           loss_chunk_rows(cfg, student_logits_BTV, cfg.loss.chunk_size or 256))
    sampler_BT = torch.zeros_like(train_lp_BT)
    for b, lp in enumerate(sampler_lps):
        sampler_BT[b, :len(lp)] = torch.tensor(lp)
    mask_BT = losses.build_loss_mask(sb.completion_mask_BT, cfg.loss.skip_first_tokens).bool()
    if keep_BT is not None:
        mask_BT = mask_BT & keep_BT.bool()
    capped = ((train_lp_BT - sampler_BT) >= math.log(cfg.loss.importance_cap)) & mask_BT
    capped_frac = float(capped.sum()) / max(float(mask_BT.sum()), 1.0)
    return losses.sequence_importance_weights(train_lp_BT, sampler_BT, mask_BT,
                                              cap=cfg.loss.importance_cap), capped_frac


def think_ids(tokenizer) -> tuple[int, int]:
    """The <think> / </think> ids loss.mask_reasoning needs; a one-line error when the model has none."""
    ids = reasoning_token_ids(tokenizer)
    if ids is None:
        raise TrainingError("loss.mask_reasoning=true, but the tokenizer has no <think> and </think> tokens (not a "
                            "thinking model); set loss.mask_reasoning=false")
    return ids


def reasoning_keep_mask(tokenizer, student_prompts: list[list[int]], sb: Packed) -> torch.Tensor:
    """loss.mask_reasoning: False on the rollouts' reasoning-block tokens (losses.reasoning_mask_BT)."""
    o, c = think_ids(tokenizer)
    inside_B = torch.tensor([prompt_opens_reasoning(p, o, c) for p in student_prompts])
    return ~losses.reasoning_mask_BT(sb.completion_ids_BT, o, c, inside_B)


def sample_rollouts(model, engine, spec, items: list[Encoded], cfg: Config, seeds: list[int], amp,
                    should_stop=None, on_tokens=None) -> list[Completion]:
    """1. rollout: rollout.num_rollouts completions per item, item by item (item j's at j*R .. j*R+R-1), in one
    engine call (rollout.batch_size=0) or calls of rollout.batch_size sequences; `seeds`: one per sequence.
    FSDP2 with an engine on the live module: every layer gathered once, then decoding runs without collectives
    (ranks may finish at different lengths). bf16 autocast only where the engine runs the trainer's module (hf)
    on a GPU; vLLM computes in its own, explicit dtype, and on CPU decoding under autocast was no faster unloaded
    and 3x slower under load than in float32 (docs/performance.md)."""
    prompts = [e.student_prompt_ids for e in items for _ in range(cfg.rollout.num_rollouts)]
    live = engine.uses_live_model
    rollout_amp = amp if live and distributed.compute_device(model).type != "cpu" else contextlib.nullcontext
    gathered = distributed.unsharded(model) if live else contextlib.nullcontext()
    n, out = cfg.rollout.batch_size or len(prompts), []
    with rollout_amp(), gathered:  # vLLM samples from its own copy: the shards stay sharded
        for s in range(0, len(prompts), n):
            out += engine.generate(prompts[s:s + n], spec, seeds=seeds[s:s + n],
                                   want_logprobs=cfg.loss.importance_weights, should_stop=should_stop,
                                   on_tokens=on_tokens)
    return out


def sdft_micro_step(model, teacher: Teacher, tokenizer, items: list[Encoded], rollouts: list[Completion],
                    cfg: Config, num_sequences_total: int, amp, timings: dict,
                    teacher_amp=None) -> tuple[torch.Tensor, dict, list]:
    """2-4 on a micro-batch's items and their rollouts (from `sample_rollouts`). `teacher_amp`: the teacher pass's
    autocast (teacher.bf16: bf16 for the teacher alone); `amp` when not given."""
    device = distributed.compute_device(model)
    R = cfg.rollout.num_rollouts
    student_prompts = [e.student_prompt_ids for e in items for _ in range(R)]
    teacher_prompts = [e.teacher_prompt_ids for e in items for _ in range(R)]
    completions = [r.ids for r in rollouts]
    T = 1.0 if cfg.rollout.greedy else cfg.rollout.temperature
    t1 = time.perf_counter()
    with distributed.no_grad_for(model), (teacher_amp or amp)(), teacher.scoring() as teacher_model:  # 2. teacher
        teacher_logits_BTV = completion_logits(teacher_model, pack(teacher_prompts, completions,
                                                                   tokenizer.pad_token_id, device)).float()
    teacher_logits_BTV = tempered(teacher_logits_BTV, T)  # an inference tensor: the loss reads it, never saves it
    t2 = time.perf_counter()
    timings["student"] -= t2  # forward + loss here, backward in the loop: both count as "student"
    sb = pack(student_prompts, completions, tokenizer.pad_token_id, device)
    with amp():  # 3. the student scores them with gradient
        student_logits_BTV = tempered(completion_logits(model, sb), T)
    keep_BT = reasoning_keep_mask(tokenizer, student_prompts, sb) if cfg.loss.mask_reasoning else None
    chunk_rows = loss_chunk_rows(cfg, student_logits_BTV, cfg.loss.chunk_size) \
        if cfg.loss.chunk_size and cfg.loss.support == "full" else None  # 0: unchunked; top-k: not chunked
    weights_B, capped_frac = importance_weights(student_logits_BTV, sb, [r.logprobs for r in rollouts], cfg,
                                                keep_BT) if cfg.loss.importance_weights else (None, None)
    loss, metrics = losses.distillation_loss(  # 4. per-token divergence, masked and averaged
        student_logits_BTV, teacher_logits_BTV, sb.completion_mask_BT, losses.DivergenceSpec.from_config(cfg.loss),
        skip_first_tokens=cfg.loss.skip_first_tokens,
        num_sequences_total=num_sequences_total, importance_weights_B=weights_B,
        chunk_size=chunk_rows,
        keep_mask_BT=keep_BT)
    timings["teacher"] += t2 - t1
    timings["student"] += time.perf_counter()
    if capped_frac is not None:
        metrics["importance_capped_frac"] = capped_frac
    metrics["completion_tokens"] = float(sb.completion_mask_BT.sum())
    metrics["completion_len"] = metrics["completion_tokens"] / len(completions)
    return loss, metrics, completions


def sft_micro_step(model, tokenizer, items: list[Encoded], cfg: Config, num_sequences_total: int,
                   amp, method: str = "sft") -> tuple[torch.Tensor, dict]:
    device = distributed.compute_device(model)
    sb = pack([e.student_prompt_ids for e in items], [e.demonstration_ids for e in items],
              tokenizer.pad_token_id, device)
    with amp():
        logits_BTV = completion_logits(model, sb)
    fn = losses.sft_loss if method == "sft" else losses.dft_loss
    loss, metrics = fn(logits_BTV, sb.completion_ids_BT, sb.completion_mask_BT, num_sequences_total=num_sequences_total)
    metrics["completion_tokens"] = float(sb.completion_mask_BT.sum())
    metrics["completion_len"] = metrics["completion_tokens"] / len(items)
    return loss, metrics
