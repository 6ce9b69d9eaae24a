"""The training loop: SDFT, and the SFT / DFT baselines in the same loop.

One SDFT optimizer step (`sdft_micro_step`, repeated over micro-batches, then `optimizer_step`):
  1. rollout   y ~ p_theta(. | Ctx_S(x))         student samples from the prompt only (no grad; temperature 1)
  2. teacher   q_t = pi_phi(. | Ctx_T(x, c), y_<t)  the teacher (EMA weights) scores the same completion ids
                                                     with the demonstration in its context (inference_mode)
  3. student   p_t = p_theta(. | Ctx_S(x), y_<t)    the student scores them with gradient
  4. loss      per-token forward KL(q_t || p_t) over the full vocabulary (default), first 3 completion tokens
               masked, token mean per sequence, mean over sequences (losses.py)
  5. update    AdamW, clip 1.0, cosine schedule; then teacher <- (1 - a) teacher + a student (teacher.py)
SFT/DFT use the same data order, schedule, logging and checkpoints; their micro step is cross-entropy on the
demonstration after the student prompt (DFT: weighted by the token's own detached probability).

Layout of a packed batch (rollouts and scoring share it, so positions line up exactly):
    [left padding | prompt ids | completion ids | right padding]
All prompts end at the same column P, so completion token t sits at column P + t for every row and is predicted
by the logits at column P + t - 1. Position ids come from the attention mask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import losses
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, to_dict, to_yaml
from .contexts import Encoded, encode_examples
from .data import Example
from .models import end_of_turn_ids
from .teacher import Teacher


class TrainingError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Packed:
    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    position_ids_BL: torch.Tensor
    completion_ids_BT: torch.Tensor
    completion_mask_BT: torch.Tensor  # 1 on real completion tokens (up to and including EOS)


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device) -> Packed:
    P = max(len(p) for p in prompts)
    T = max(1, max(len(c) for c in completions))
    B = len(prompts)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + T), dtype=torch.long)
    cmask = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        ids[b, P - len(p):P] = torch.tensor(p)
        att[b, P - len(p):P] = 1
        if c:
            ids[b, P:P + len(c)] = torch.tensor(c)
            att[b, P:P + len(c)] = 1
            cmask[b, :len(c)] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    return Packed(ids.to(device), att.to(device), pos.to(device), ids[:, P:].to(device), cmask.to(device))


def completion_logits(model, batch: Packed) -> torch.Tensor:
    """Logits predicting each completion token: [B, T, V] (only completion positions go through lm_head)."""
    T = batch.completion_ids_BT.shape[1]
    out = model(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL,
                position_ids=batch.position_ids_BL, use_cache=False, logits_to_keep=T + 1)
    return out.logits[:, :-1, :]


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i + 1]
    return ids


@torch.no_grad()
def sample_rollouts(model, tokenizer, prompts: list[list[int]], cfg, seed: int,
                    keep_logprobs: bool = True) -> tuple[list[list[int]], list[list[float]]]:
    """On-policy completions from the student (batched, KV cache, left padding); and their sampling log-probs
    (only when `keep_logprobs`: they cost a [B, T, V] tensor and are needed only for importance weights)."""
    device = next(model.parameters()).device
    batch = pack(prompts, [[]] * len(prompts), tokenizer.pad_token_id, device)
    L = batch.input_ids_BL.shape[1] - 1  # pack adds one empty completion column
    torch.manual_seed(seed)
    eos = set(end_of_turn_ids(tokenizer, model))
    gen = dict(do_sample=not cfg.greedy, max_new_tokens=cfg.max_new_tokens, return_dict_in_generate=True,
               output_scores=keep_logprobs, pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos))
    if not cfg.greedy:
        gen.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=batch.input_ids_BL[:, :L], attention_mask=batch.attention_mask_BL[:, :L], **gen)
    model.train(was_training)
    new = out.sequences[:, L:]
    if keep_logprobs:  # processed scores = the sampler's distribution
        chosen = torch.stack([s.float().log_softmax(-1).gather(-1, new[:, i:i + 1]).squeeze(-1)
                              for i, s in enumerate(out.scores)], 1)
    else:
        chosen = torch.zeros(new.shape)
    comps, lps = [], []
    for b in range(new.shape[0]):
        c = cut_at_eos(new[b].tolist(), eos)
        comps.append(c)
        lps.append(chosen[b, :len(c)].tolist())
    return comps, lps


# ----------------------------------------------------------------------------------------------------------
# One micro-step of each method. Each returns (loss to backpropagate, metrics).


def sdft_micro_step(model, teacher: Teacher, tokenizer, items: list[Encoded], cfg: Config, seed: int,
                    num_sequences_total: int, amp, timings: dict) -> tuple[torch.Tensor, dict, list]:
    device = next(model.parameters()).device
    R = cfg.rollout.num_rollouts
    student_prompts = [e.student_prompt_ids for e in items for _ in range(R)]
    teacher_prompts = [e.teacher_prompt_ids for e in items for _ in range(R)]
    gen_model = getattr(model, "module", model)  # generate on the unwrapped model (DDP)

    t0 = time.perf_counter()
    with amp():
        completions, sampler_lps = sample_rollouts(gen_model, tokenizer, student_prompts, cfg.rollout, seed,
                                                   keep_logprobs=cfg.loss.importance_weights)
    t1 = time.perf_counter()
    with torch.inference_mode(), amp(), teacher.scoring() as teacher_model:
        teacher_logits_BTV = completion_logits(teacher_model, pack(teacher_prompts, completions,
                                                                   tokenizer.pad_token_id, device)).float()
    teacher_logits_BTV = teacher_logits_BTV.clone()  # leave inference mode: a normal tensor for autograd
    t2 = time.perf_counter()
    timings["student"] -= t2  # forward + loss here, backward in the loop: both count as "student"
    sb = pack(student_prompts, completions, tokenizer.pad_token_id, device)
    with amp():
        student_logits_BTV = completion_logits(model, sb)
    weights_B = None
    if cfg.loss.importance_weights:
        train_lp_BT = student_logits_BTV.detach().float().log_softmax(-1).gather(
            -1, sb.completion_ids_BT.unsqueeze(-1)).squeeze(-1)
        sampler_BT = torch.zeros_like(train_lp_BT)
        for b, lp in enumerate(sampler_lps):
            sampler_BT[b, :len(lp)] = torch.tensor(lp)
        mask_BT = losses.build_loss_mask(sb.completion_mask_BT, cfg.loss.skip_first_tokens)
        weights_B = losses.sequence_importance_weights(train_lp_BT, sampler_BT, mask_BT, cap=cfg.loss.importance_cap)
    loss, metrics = losses.distillation_loss(
        student_logits_BTV, teacher_logits_BTV, sb.completion_mask_BT,
        divergence=cfg.loss.divergence, support=cfg.loss.support, top_k=cfg.loss.top_k,
        topk_from=cfg.loss.topk_from, jsd_beta=cfg.loss.jsd_beta, skip_first_tokens=cfg.loss.skip_first_tokens,
        num_sequences_total=num_sequences_total, importance_weights_B=weights_B,
        chunk_size=(cfg.loss.chunk_size or None) if cfg.loss.support == "full" else None)  # top-k: not chunked
    timings["generate"] += t1 - t0
    timings["teacher"] += t2 - t1
    timings["student"] += time.perf_counter()
    metrics["completion_tokens"] = float(sb.completion_mask_BT.sum())
    metrics["completion_len"] = metrics["completion_tokens"] / len(completions)
    return loss, metrics, completions


def sft_micro_step(model, tokenizer, items: list[Encoded], cfg: Config, num_sequences_total: int,
                   amp, method: str = "sft") -> tuple[torch.Tensor, dict]:
    device = next(model.parameters()).device
    sb = pack([e.student_prompt_ids for e in items], [e.demonstration_ids for e in items],
              tokenizer.pad_token_id, device)
    with amp():
        logits_BTV = completion_logits(model, sb)
    fn = losses.sft_loss if method == "sft" else losses.dft_loss
    loss, metrics = fn(logits_BTV, sb.completion_ids_BT, sb.completion_mask_BT, num_sequences_total=num_sequences_total)
    metrics["completion_tokens"] = float(sb.completion_mask_BT.sum())
    metrics["completion_len"] = metrics["completion_tokens"] / len(items)
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    output_dir: Path
    metrics: list[dict] = field(default_factory=list)
    model: object = None
    tokenizer: object = None
    skipped_records: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False


def derive_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def data_order(n: int, seed: int, shuffle: bool, upto: int) -> list[int]:
    """Indices of the first `upto` prompts in training order: epochs of seeded permutations."""
    order: list[int] = []
    epoch = 0
    while len(order) < upto:
        perm = np.random.default_rng(derive_seed(seed, epoch)).permutation(n) if shuffle else np.arange(n)
        order += perm.tolist()
        epoch += 1
    return order[:upto]


class _StopFlag:
    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n[selfdistill] {self.signal}: finishing the current step, then saving a checkpoint ...",
              file=sys.stderr)


def _check_output_dir(out: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    saved = out / "selfdistill.yaml"
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite:
        import shutil
        shutil.rmtree(out)
        return
    if not resume:
        raise TrainingError(f"{out}: output folder already holds files (a different run?); pass --overwrite to "
                            f"replace it or --resume to continue it")
    if saved.exists():
        import yaml
        old = yaml.safe_load(saved.read_text())
        new = to_dict(cfg)
        diff = [f"{s}.{k}" for s in new if isinstance(new[s], dict) for k in new[s]
                if s not in ("log",) and (s, k) != ("train", "max_steps") and old.get(s, {}).get(k) != new[s][k]]
        if diff:
            raise TrainingError(f"{out}: --resume with a different config ({', '.join(diff[:5])}); "
                                f"use the same settings or a new --output")


def build_model_for_training(model, cfg: Config):
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if cfg.model.lora and not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                                                 lora_dropout=cfg.model.lora_dropout, task_type="CAUSAL_LM",
                                                 target_modules=cfg.model.lora_target_modules))
    return model


def train(cfg: Config, examples: list[Example], model, tokenizer, output_dir: str | Path, *,
          resume: bool = False, overwrite: bool = False, on_step: Callable[[int, object], dict | None] | None = None,
          eval_every: int = 0, accelerator=None, stop_after: int | None = None) -> TrainResult:
    """Train `model` on `examples` with cfg.train.method; write checkpoints and the final model to output_dir.

    `on_step(step, model)` is called every `eval_every` steps (and at the end) on the main process; what it
    returns is logged. `stop_after` stops (with a checkpoint) after that many steps of this call — for tests.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    out = Path(output_dir)
    if acc.is_main_process:
        _check_output_dir(out, cfg, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    method = cfg.train.method
    torch.manual_seed(cfg.train.seed)
    encoded, skipped = encode_examples(tokenizer, examples, cfg.data, cfg.context)
    model = build_model_for_training(model, cfg)
    model.to(acc.device)
    teacher = Teacher(model, cfg.teacher.kind, cfg.teacher.ema_rate) if method == "sdft" else None
    if teacher is not None and teacher.copy is not None:
        teacher.copy.to(acc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                                  fused=acc.device.type in ("cpu", "cuda"))  # one kernel, not a per-tensor loop
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
    if cfg.optim.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)

    start_step, skipped_steps = 0, 0
    ckpt_root = out / "checkpoints"
    if resume and (ck := latest_checkpoint(ckpt_root)) is not None:
        teacher_sd, state = load_checkpoint(ck, model=model, optimizer=optimizer, scheduler=scheduler)
        if teacher is not None:
            teacher.load_state_dict(teacher_sd)
        start_step, skipped_steps = state["step"], state.get("skipped_steps", 0)
        if acc.is_main_process:
            print(f"[selfdistill] resumed from {ck} at step {start_step}", file=sys.stderr)

    ddp_model = acc.prepare_model(model) if acc.num_processes > 1 else model
    if acc.num_processes > 1 and not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise TrainingError(f"distributed type {acc.distributed_type.name}: only DDP data parallel is supported; "
                            f"FSDP/DeepSpeed would need sharding-aware backward, clipping and EMA teacher "
                            f"(docs/multi_gpu.md)")
    world, rank = acc.num_processes, acc.process_index
    P, mb = cfg.train.prompts_per_step, cfg.train.micro_batch_size
    if P % (world * mb):
        raise TrainingError(f"train.prompts_per_step={P} must be a multiple of processes x micro_batch_size "
                            f"= {world} x {mb}")
    per_rank = P // world
    n_micro = per_rank // mb
    seqs_total_per_rank = per_rank * (cfg.rollout.num_rollouts if method == "sdft" else 1)
    order = data_order(len(encoded), cfg.train.seed, cfg.data.shuffle, cfg.train.max_steps * P)
    use_bf16 = cfg.train.bf16

    def amp():
        return torch.autocast(device_type=acc.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    main = acc.is_main_process
    metrics_f = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None
    if main:
        (out / "selfdistill.yaml").write_text(to_yaml(cfg))
    writer = _tracker(cfg, out) if main else None
    stop = _StopFlag()
    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # every rank: each finishes its step before stopping
        try:
            old_handlers[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread
            pass
    bar = tqdm(total=cfg.train.max_steps, initial=start_step, disable=not (main and cfg.log.progress),
               desc=method, dynamic_ncols=True, file=sys.stderr)
    history: list[dict] = []
    step = start_step
    steps_this_call = 0
    t_start = time.perf_counter()
    stopped_early = False
    try:
        while step < cfg.train.max_steps:
            timings = {"generate": 0.0, "teacher": 0.0, "student": 0.0, "optimizer": 0.0}
            t_step = time.perf_counter()
            step_idx = order[step * P + rank * per_rank: step * P + (rank + 1) * per_rank]
            agg: dict[str, float] = {}
            previews: list[str] = []
            nonfinite = False
            model.train()
            for i in range(n_micro):
                items = [encoded[j] for j in step_idx[i * mb:(i + 1) * mb]]
                global_micro = rank * n_micro + i
                last = i == n_micro - 1
                sync = acc.no_sync(ddp_model) if (world > 1 and not last) else contextlib.nullcontext()
                with sync:
                    if method == "sdft":
                        loss, m, comps = sdft_micro_step(ddp_model, teacher, tokenizer, items, cfg,
                                                         derive_seed(cfg.train.seed, step, global_micro),
                                                         seqs_total_per_rank, amp, timings)
                        if len(previews) < cfg.log.rollout_examples:
                            previews += [tokenizer.decode(c[:16])[:cfg.log.rollout_preview_chars] for c in comps]
                    else:
                        loss, m = sft_micro_step(ddp_model, tokenizer, items, cfg, seqs_total_per_rank, amp, method)
                    ts = time.perf_counter()
                    if not torch.isfinite(loss):
                        nonfinite = True
                    loss.backward()
                    timings["student"] += time.perf_counter() - ts
                for k, v in m.items():
                    if k != "loss":  # m["loss"] is this micro-batch's share of the step loss: summed below
                        agg[k] = agg.get(k, 0.0) + v / n_micro
                agg["loss"] = agg.get("loss", 0.0) + float(loss.detach())
            to = time.perf_counter()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            if world > 1:
                flag = torch.tensor([float(nonfinite or not torch.isfinite(grad_norm))], device=acc.device)
                nonfinite = bool(acc.reduce(flag, "max").item())
            else:
                nonfinite = nonfinite or not bool(torch.isfinite(grad_norm))
            if nonfinite:
                optimizer.zero_grad(set_to_none=True)
                if cfg.train.on_nonfinite == "stop":
                    last_ck = latest_checkpoint(ckpt_root)
                    raise TrainingError(f"non-finite loss or gradient at step {step + 1} (loss={agg.get('loss')}, "
                                        f"grad_norm={float(grad_norm)}); stopped without updating. Last good "
                                        f"checkpoint: {last_ck or 'none'}. Lower optim.lr, or set "
                                        f"train.on_nonfinite=skip to skip such steps")
                skipped_steps += 1
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if teacher is not None:
                    teacher.update()
            timings["optimizer"] += time.perf_counter() - to
            step += 1
            steps_this_call += 1
            dt = time.perf_counter() - t_step
            if world > 1:
                keys = sorted(agg)
                vec = acc.reduce(torch.tensor([agg[k] for k in keys], device=acc.device), "mean")
                agg = dict(zip(keys, vec.tolist()))
            rec = {"step": step, "method": method, **{k: round(v, 6) for k, v in agg.items()},
                   "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": agg.get("completion_tokens", 0.0) * n_micro * world / max(dt, 1e-9),
                   "step_time_s": dt, **{f"time_{k}_s": v for k, v in timings.items()},
                   "skipped_steps": skipped_steps}
            if previews and (step % cfg.log.every == 0 or step == 1):
                rec["rollout_preview"] = previews[:cfg.log.rollout_examples]
            stop_now = stop.signal is not None
            if world > 1:  # all ranks agree on a graceful stop, or one would wait at a barrier forever
                stop_now = bool(acc.reduce(torch.tensor([float(stop_now)], device=acc.device), "max").item())
            save_now = (cfg.log.save_every and step % cfg.log.save_every == 0) or stop_now or \
                (stop_after is not None and steps_this_call >= stop_after)
            if on_step is not None and main and eval_every and (step % eval_every == 0 or step == cfg.train.max_steps):
                extra = on_step(step, model) or {}
                rec.update(extra)
            if main:
                history.append(rec)
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
                if writer is not None:
                    writer(rec, step)
                kl_key = next((k for k in ("forward_kl", "reverse_kl", "jsd", "ce") if k in rec), "loss")
                bar.set_postfix({"loss": f"{rec.get('loss', 0):.4f}", kl_key: f"{rec.get(kl_key, 0):.4f}",
                                 "tok/s": f"{rec['tokens_per_s']:.0f}"}, refresh=False)
                bar.update(1)
            if save_now and step < cfg.train.max_steps:
                _save(acc, ckpt_root, step, model, teacher, optimizer, scheduler, skipped_steps, cfg)
            if stop_now or (stop_after is not None and steps_this_call >= stop_after and step < cfg.train.max_steps):
                stopped_early = True
                if main:
                    print(f"[selfdistill] stopped at step {step}; checkpoint saved. Resume with the same command "
                          f"plus --resume", file=sys.stderr)
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if metrics_f:
            metrics_f.close()
    result = TrainResult(out, history, model, tokenizer, skipped, skipped_steps, stopped_early)
    if not stopped_early:
        _save(acc, ckpt_root, step, model, teacher, optimizer, scheduler, skipped_steps, cfg)
        if main:
            save_final(model, tokenizer, out, cfg)
            if main and cfg.log.progress:
                el = time.perf_counter() - t_start
                print(f"[selfdistill] {method}: {steps_this_call} steps in {el:.1f}s; model saved to {out}",
                      file=sys.stderr)
    acc.wait_for_everyone()
    return result


def _save(acc, root, step, model, teacher, optimizer, scheduler, skipped_steps, cfg):
    if acc.is_main_process:
        save_checkpoint(root, step, model=model, teacher_state=teacher.state_dict() if teacher else {},
                        optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"step": step, "data_position": step * cfg.train.prompts_per_step,
                                       "skipped_steps": skipped_steps}, keep_last=cfg.log.keep_last)
    acc.wait_for_everyone()


def save_final(model, tokenizer, out: Path, cfg: Config) -> None:
    """A folder AutoModelForCausalLM.from_pretrained loads: safetensors, tokenizer (chat template), config YAML."""
    if hasattr(model, "peft_config"):
        if "teacher" in model.peft_config:
            model.save_pretrained(out / "adapter", selected_adapters=["default"])
        else:
            model.save_pretrained(out / "adapter")
        import copy
        merged = copy.deepcopy(model)
        if "teacher" in merged.peft_config:
            merged.delete_adapter("teacher")
        merged = merged.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)  # selfdistill.yaml was written when the run started


def _tracker(cfg: Config, out: Path):
    if cfg.log.report_to == "none":
        return None
    if cfg.log.report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrainingError("log.report_to=tensorboard needs `pip install tensorboard`") from e
        w = SummaryWriter(str(out / "tensorboard"))

        def write(rec, step):
            for k, v in rec.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    w.add_scalar(k, v, step)
            w.flush()
        return write
    try:
        import trackio
    except ImportError as e:
        raise TrainingError("log.report_to=trackio needs `pip install trackio`") from e
    trackio.init(project="selfdistill", name=out.name, config=to_dict(cfg))

    def write_t(rec, step):
        trackio.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)
    return write_t
