"""The training loop: SDFT, and the SFT / DFT baselines in the same loop.

One SDFT optimizer step (`optimizer_step`: `sdft_micro_step` over micro-batches, then the update):
  1. rollout   y ~ p_theta(. | Ctx_S(x))         student samples from the prompt only (no grad; temperature 1;
                                                     generation.py: hf or vllm engine, stop at every end of turn)
  2. teacher   q_t = pi_phi(. | Ctx_T(x, c), y_<t)  the teacher (EMA weights) scores the same completion ids
                                                     with the demonstration in its context (inference_mode)
  3. student   p_t = p_theta(. | Ctx_S(x), y_<t)    the student scores them with gradient
  4. loss      per-token forward KL(q_t || p_t) over the full vocabulary (default), first 3 completion tokens
               masked, token mean per sequence, mean over sequences (losses.py)
  5. update    AdamW, clip 1.0, cosine schedule; then teacher <- (1 - a) teacher + a student (teacher.py)
SFT/DFT use the same data order, schedule, logging and checkpoints; their micro step is cross-entropy on the
demonstration after the student prompt (DFT: weighted by the token's own detached probability).
With rollout.temperature T != 1, student and teacher logits are divided by T before every softmax of the loss and
the importance weights (as the official trainer and TRL's SDFTTrainer do): the loss compares the distributions
actually sampled from.

The file reads top to bottom: batches; the micro steps; `setup` (model, float32 master weights, teacher,
optimizer, wrapping, engine, resume) -> `Run`; `optimizer_step` (the same for 1 process, DDP and FSDP2); progress,
logging and saving; `train`, the loop that ties them together. Wrapping (dist.strategy): one process as is; DDP
replicas; or FSDP2 (distributed.py), where the student and its EMA teacher are sharded alike over all processes.

Layout of a packed batch (rollouts and scoring share it, so positions line up exactly):
    [left padding | prompt ids | completion ids | right padding]
All prompts end at the same column P, so completion token t sits at column P + t for every row and is predicted
by the logits at column P + t - 1. Position ids come from the attention mask.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed, losses
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, to_dict, to_yaml
from .contexts import Encoded, encode_examples, prompt_opens_reasoning, reasoning_token_ids
from .data import Example
from .generation import GenerationAborted, derive_seed
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


# ----------------------------------------------------------------------------------------------------------
# One micro-step of each method. Each returns (loss to backpropagate, metrics).


def tempered(logits_BTV: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the rollout temperature, as the official trainer does before every softmax in the
    loss and the importance weights: the distributions compared are the ones the rollouts were sampled from."""
    return logits_BTV if temperature == 1.0 else logits_BTV / temperature


def importance_weights(student_logits_BTV, sb: Packed, sampler_lps: list[list[float]], cfg: Config):
    """Truncated IS weight per sequence (trainer log-probs vs the sampler's), and the fraction of loss tokens
    whose ratio hit the cap."""
    train_lp_BT = student_logits_BTV.detach().float().log_softmax(-1).gather(
        -1, sb.completion_ids_BT.unsqueeze(-1)).squeeze(-1)
    sampler_BT = torch.zeros_like(train_lp_BT)
    for b, lp in enumerate(sampler_lps):
        sampler_BT[b, :len(lp)] = torch.tensor(lp)
    mask_BT = losses.build_loss_mask(sb.completion_mask_BT, cfg.loss.skip_first_tokens).bool()
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


def sdft_micro_step(model, teacher: Teacher, engine, spec, tokenizer, items: list[Encoded], cfg: Config,
                    seed: int, num_sequences_total: int, amp, timings: dict,
                    should_stop=None, on_tokens=None) -> tuple[torch.Tensor, dict, list]:
    device = distributed.compute_device(model)
    R = cfg.rollout.num_rollouts
    student_prompts = [e.student_prompt_ids for e in items for _ in range(R)]
    teacher_prompts = [e.teacher_prompt_ids for e in items for _ in range(R)]
    T = 1.0 if cfg.rollout.greedy else cfg.rollout.temperature

    t0 = time.perf_counter()
    # 1. rollout: the student samples from the prompt alone (FSDP2: every layer gathered once, then decoding
    # runs without collectives, so ranks may finish at different lengths)
    with amp(), distributed.unsharded(model):
        rollouts = engine.generate(student_prompts, spec, seed=seed, want_logprobs=cfg.loss.importance_weights,
                                   should_stop=should_stop, on_tokens=on_tokens)
    completions = [r.ids for r in rollouts]
    t1 = time.perf_counter()
    with distributed.no_grad_for(model), amp(), teacher.scoring() as teacher_model:  # 2. teacher scores them
        teacher_logits_BTV = completion_logits(teacher_model, pack(teacher_prompts, completions,
                                                                   tokenizer.pad_token_id, device)).float()
    teacher_logits_BTV = tempered(teacher_logits_BTV.clone(), T)  # clone: leave inference mode for autograd
    t2 = time.perf_counter()
    timings["student"] -= t2  # forward + loss here, backward in the loop: both count as "student"
    sb = pack(student_prompts, completions, tokenizer.pad_token_id, device)
    with amp():  # 3. the student scores them with gradient
        student_logits_BTV = tempered(completion_logits(model, sb), T)
    weights_B, capped_frac = importance_weights(student_logits_BTV, sb, [r.logprobs for r in rollouts], cfg) \
        if cfg.loss.importance_weights else (None, None)
    keep_BT = reasoning_keep_mask(tokenizer, student_prompts, sb) if cfg.loss.mask_reasoning else None
    loss, metrics = losses.distillation_loss(  # 4. per-token divergence, masked and averaged
        student_logits_BTV, teacher_logits_BTV, sb.completion_mask_BT,
        divergence=cfg.loss.divergence, support=cfg.loss.support, top_k=cfg.loss.top_k,
        topk_from=cfg.loss.topk_from, jsd_beta=cfg.loss.jsd_beta, skip_first_tokens=cfg.loss.skip_first_tokens,
        num_sequences_total=num_sequences_total, importance_weights_B=weights_B,
        chunk_size=(cfg.loss.chunk_size or None) if cfg.loss.support == "full" else None,  # top-k: not chunked
        keep_mask_BT=keep_BT)
    timings["generate"] += t1 - t0
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


# ----------------------------------------------------------------------------------------------------------
# Setup: model, teacher, optimizer, schedule, wrapping, resume


@dataclass
class TrainResult:
    output_dir: Path
    metrics: list[dict] = field(default_factory=list)
    model: object = None
    tokenizer: object = None
    skipped_records: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False


def data_order(n: int, seed: int, shuffle: bool, upto: int) -> list[int]:
    """Indices of the first `upto` prompts in training order: epochs of seeded permutations."""
    order: list[int] = []
    epoch = 0
    while len(order) < upto:
        perm = np.random.default_rng(derive_seed(seed, epoch)).permutation(n) if shuffle else np.arange(n)
        order += perm.tolist()
        epoch += 1
    return order[:upto]


class StepAborted(Exception):
    """A stop signal arrived during a step's rollouts or teacher pass: the step is abandoned, no update."""


class StopFlag:
    """SIGINT/SIGTERM handler: the first signal asks for a stop (the unfinished step is abandoned and the last
    finished step is checkpointed, within seconds); a second one at least `REPEAT_S` later stops at once. Signals
    within `REPEAT_S` of the first are one stop delivered twice: a cluster scheduler signals every process of a
    job and torchrun forwards its own signal to its workers too, so each worker gets two SIGTERMs milliseconds
    apart, and treating the second as "stop at once" would lose the checkpoint."""

    REPEAT_S = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.signal = None
        self._clock = clock
        self._first_at = 0.0

    def __call__(self, signum, frame):
        now = self._clock()
        if self.signal is None:
            self.signal, self._first_at = signal.Signals(signum).name, now
            print(f"\n[selfdistill] {self.signal}: abandoning the current step, saving the last finished one ...",
                  file=sys.stderr)
        elif now - self._first_at >= self.REPEAT_S:
            raise KeyboardInterrupt

    def is_set(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self):
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self)
            except ValueError:  # not the main thread
                pass
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


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
        diff, added = _config_diff(yaml.safe_load(saved.read_text()), to_dict(cfg))
        if diff:
            raise TrainingError(f"{out}: --resume with a different config ({', '.join(diff[:5])}); "
                                f"use the same settings or a new --output")
        if added:
            print(f"[selfdistill] {saved} predates the settings {', '.join(added)}; resuming with their defaults",
                  file=sys.stderr)


def _config_diff(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(settings that differ, settings the saved config lacks). A setting added to selfdistill after the run was
    started is absent from its saved config; it counts as its default value, so a run started by an older
    version resumes when the new setting is left at its default (the default keeps the old behaviour)."""
    defaults = to_dict(Config())
    diff, added = [], []
    for s, section in new.items():
        if not isinstance(section, dict) or s == "log":
            continue
        for k, v in section.items():
            if (s, k) == ("train", "max_steps"):
                continue
            if k not in old.get(s, {}):
                (added if v == defaults[s][k] else diff).append(f"{s}.{k}")
            elif old[s][k] != v:
                diff.append(f"{s}.{k}")
    return diff, added


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


def float32_master_weights(model, cfg: Config) -> tuple[object, bool]:
    """bf16 weights train as float32 master weights with bf16 compute (autocast): AdamW on bf16 weights loses
    every update below bf16's resolution (2**-8 relative). Returns (model, autocast on?). The final model is
    saved in bf16 again. Memory: 4 bytes per weight instead of 2 while training; see README."""
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if not any(p.dtype == torch.bfloat16 for p in floating):
        return model, cfg.train.bf16
    return model.float(), True


def make_optimizer(params, cfg: Config, device):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))  # one kernel, not a per-tensor loop
    if cfg.optim.schedule == "cosine":
        return optimizer, get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    return optimizer, get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)


@dataclass
class Run:
    """Everything one training run holds between steps."""
    cfg: Config
    acc: object  # accelerate.Accelerator
    out: Path
    model: torch.nn.Module  # the student (saved, evaluated); under FSDP2 sharded in place (DTensor parameters)
    wrapped: torch.nn.Module  # what forward/backward run on (DDP-wrapped under DDP; the model otherwise)
    tokenizer: object
    teacher: Teacher | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    encoded: list[Encoded]
    skipped_records: int
    order: list[int]
    engine: object
    spec: object  # generation.SamplingSpec of the rollouts
    autocast: bool
    step: int = 0
    skipped_steps: int = 0
    save_dtype: torch.dtype | None = None
    strategy: str = "single"  # single | ddp | fsdp (distributed.resolve_strategy)

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def per_rank(self) -> int:
        return self.cfg.train.prompts_per_step // self.world

    @property
    def n_micro(self) -> int:
        return self.per_rank // self.cfg.train.micro_batch_size

    def amp(self):
        return torch.autocast(device_type=self.acc.device.type, dtype=torch.bfloat16, enabled=self.autocast)


def setup(cfg: Config, examples: list[Example], model, tokenizer, out: Path, *, resume: bool, overwrite: bool,
          accelerator=None) -> Run:
    from accelerate import Accelerator

    from .generation import make_engine, rollout_spec, stop_ids_for

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    strategy = _strategy(cfg, acc)
    if acc.is_main_process:
        _check_output_dir(out, cfg, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.train.seed)
    encoded, skipped = encode_examples(tokenizer, examples, cfg.data, cfg.context)
    if cfg.train.method == "sdft" and cfg.loss.mask_reasoning:
        think_ids(tokenizer)  # fail before any work
    save_dtype = next(model.parameters()).dtype
    model, autocast = float32_master_weights(build_model_for_training(model, cfg), cfg)
    model.to(acc.device)
    teacher = Teacher(model, cfg.teacher.kind, cfg.teacher.ema_rate) if cfg.train.method == "sdft" else None
    if teacher is not None and teacher.copy is not None:
        teacher.copy.to(acc.device)
    if strategy == "fsdp":  # shard student and teacher copy alike, before the optimizer sees the parameters
        distributed.wrap_for_training(model, teacher.copy if teacher is not None else None, acc.device,
                                      bf16=autocast, reduce_dtype=cfg.dist.reduce_dtype,
                                      cpu_offload=cfg.dist.cpu_offload or distributed.plugin_cpu_offload(acc))
        if acc.is_main_process:
            print(f"[selfdistill] FSDP2: student{', EMA teacher' if teacher and teacher.copy else ''} and AdamW "
                  f"states sharded over {acc.num_processes} process(es), compute {'bf16' if autocast else 'fp32'}",
                  file=sys.stderr)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, acc.device)
    wrapped = acc.prepare_model(model) if strategy == "ddp" else model
    if strategy == "ddp" and not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        raise TrainingError(f"distributed type {acc.distributed_type.name}: only DDP data parallel is supported; "
                            f"FSDP/DeepSpeed would need sharding-aware backward, clipping and EMA teacher "
                            f"(docs/multi_gpu.md)")
    P, mb = cfg.train.prompts_per_step, cfg.train.micro_batch_size
    if P % (acc.num_processes * mb):
        raise TrainingError(f"train.prompts_per_step={P} must be a multiple of processes x micro_batch_size "
                            f"= {acc.num_processes} x {mb}")
    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg) if cfg.train.method == "sdft" else None
    spec = rollout_spec(cfg.rollout, stop_ids_for(tokenizer, model))
    run = Run(cfg, acc, out, model, wrapped, tokenizer, teacher, optimizer, scheduler, params, encoded, skipped,
              data_order(len(encoded), cfg.train.seed, cfg.data.shuffle, cfg.train.max_steps * P), engine, spec,
              autocast, save_dtype=save_dtype if save_dtype != torch.float32 else None, strategy=strategy)
    if resume:
        _resume(run)
    return run


def _strategy(cfg: Config, acc) -> str:
    """single | ddp | fsdp for this launch; unsupported combinations stop here with a one-line reason."""
    try:
        strategy = distributed.resolve_strategy(cfg.dist.strategy, acc, lora=cfg.model.lora)
    except distributed.DistributedConfigError as e:
        raise TrainingError(str(e)) from None
    if strategy == "fsdp" and cfg.rollout.engine != "hf":
        raise TrainingError(f"rollout.engine={cfg.rollout.engine} with dist.strategy=fsdp is not supported: the "
                            f"engine would need the gathered weights after every step; use rollout.engine=hf")
    if strategy == "fsdp" and cfg.train.method == "sdft" and cfg.teacher.kind == "live":
        raise TrainingError("teacher.kind=live with dist.strategy=fsdp is not supported: the teacher pass would "
                            "gather the student's weights as inference tensors; use teacher.kind=ema or frozen")
    return strategy


def _resume(run: Run) -> None:
    ck = latest_checkpoint(run.out / "checkpoints")
    if ck is None:
        return
    sharded = (ck / ".metadata").exists()
    if sharded != (run.strategy == "fsdp"):
        raise TrainingError(f"{ck}: written with dist.strategy={'fsdp' if sharded else 'ddp or one process'}; "
                            f"resume it with the same strategy")
    if sharded:
        state = distributed.load_sharded_checkpoint(ck, model=run.model, optimizer=run.optimizer,
                                                    teacher=run.teacher.copy if run.teacher else None,
                                                    scheduler=run.scheduler)
    else:
        teacher_sd, state = load_checkpoint(ck, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler)
        if run.teacher is not None:
            run.teacher.load_state_dict(teacher_sd)
    run.step, run.skipped_steps = state["step"], state.get("skipped_steps", 0)
    if run.engine is not None:
        run.engine.sync_weights(run.model)
    if run.acc.is_main_process:
        print(f"[selfdistill] resumed from {ck} at step {run.step}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# One optimizer step: micro-batches (gradient accumulation), clip, update, EMA teacher, engine weights


def _stop_agreed(run: Run, stop: StopFlag) -> bool:
    """Whether to abandon the step; all ranks agree (one would otherwise wait in a collective forever)."""
    flag = stop.is_set()
    if run.world > 1:
        flag = bool(run.acc.reduce(torch.tensor([float(flag)], device=run.acc.device), "max").item())
    return flag


def _micro_batch(run: Run, i: int, stop: StopFlag, timings: dict, progress) -> tuple[torch.Tensor, dict, list]:
    cfg, mb = run.cfg, run.cfg.train.micro_batch_size
    P, rank = cfg.train.prompts_per_step, run.acc.process_index
    step_idx = run.order[run.step * P + rank * run.per_rank: run.step * P + (rank + 1) * run.per_rank]
    items = [run.encoded[j] for j in step_idx[i * mb:(i + 1) * mb]]
    total = run.per_rank * (cfg.rollout.num_rollouts if cfg.train.method == "sdft" else 1)
    if cfg.train.method != "sdft":
        return (*sft_micro_step(run.wrapped, run.tokenizer, items, cfg, total, run.amp, cfg.train.method), [])
    # a stop signal aborts generation at once with one process; with several, ranks agree between micro-batches
    should_stop = stop.is_set if run.world == 1 else None
    return sdft_micro_step(run.wrapped, run.teacher, run.engine, run.spec, run.tokenizer, items, cfg,
                           derive_seed(cfg.train.seed, run.step, rank * run.n_micro + i), total, run.amp, timings,
                           should_stop=should_stop, on_tokens=progress.tokens)


def _apply_update(run: Run, nonfinite: bool, agg: dict) -> float:
    """Clip, then update (or skip/stop on a non-finite loss or gradient). Returns the gradient norm."""
    cfg = run.cfg
    grad_norm = distributed.clip_grad_norm(run.params, cfg.optim.max_grad_norm)  # FSDP2: the global norm
    nonfinite = nonfinite or not bool(torch.isfinite(grad_norm))
    if run.world > 1:
        flag = torch.tensor([float(nonfinite)], device=run.acc.device)
        nonfinite = bool(run.acc.reduce(flag, "max").item())
    if nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        if cfg.train.on_nonfinite == "stop":
            raise TrainingError(f"non-finite loss or gradient at step {run.step + 1} (loss={agg.get('loss')}, "
                                f"grad_norm={float(grad_norm)}); stopped without updating. Last good "
                                f"checkpoint: {latest_checkpoint(run.out / 'checkpoints') or 'none'}. Lower "
                                f"optim.lr, or set train.on_nonfinite=skip to skip such steps")
        run.skipped_steps += 1
        return float(grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.teacher is not None:
        run.teacher.update()  # 5. teacher <- (1 - a) teacher + a student, after the update
    if run.engine is not None:
        run.engine.sync_weights(run.model)
    return float(grad_norm)


def optimizer_step(run: Run, stop: StopFlag, progress) -> dict:
    """One optimizer step, the same code for 1 process, DDP and FSDP2. Returns the step's metrics record.
    Raises StepAborted (gradients cleared, nothing updated) when a stop arrives before the update."""
    cfg = run.cfg
    timings = {"generate": 0.0, "teacher": 0.0, "student": 0.0, "optimizer": 0.0}
    t_step = time.perf_counter()
    agg: dict[str, float] = {}
    previews: list[str] = []
    nonfinite = False
    run.model.train()
    try:
        for i in range(run.n_micro):
            if _stop_agreed(run, stop):
                raise StepAborted()
            progress.micro(i, run.n_micro)
            last = i == run.n_micro - 1
            # DDP all-reduces at the last micro-batch only; FSDP2 reduce-scatters every micro-batch (gradients
            # stay sharded: no full-size gradient buffer), the sum is the same up to float rounding
            sync = run.acc.no_sync(run.wrapped) if (run.strategy == "ddp" and not last) else contextlib.nullcontext()
            with sync:
                loss, m, comps = _micro_batch(run, i, stop, timings, progress)
                ts = time.perf_counter()
                nonfinite |= not bool(torch.isfinite(loss))
                loss.backward()
                timings["student"] += time.perf_counter() - ts
            if len(previews) < cfg.log.rollout_examples:
                previews += [run.tokenizer.decode(c[:16])[:cfg.log.rollout_preview_chars] for c in comps]
            for k, v in m.items():
                if k != "loss":  # m["loss"] is this micro-batch's share of the step loss: summed below
                    agg[k] = agg.get(k, 0.0) + v / run.n_micro
            agg["loss"] = agg.get("loss", 0.0) + float(loss.detach())
    except (StepAborted, GenerationAborted):
        run.optimizer.zero_grad(set_to_none=True)
        raise StepAborted() from None
    to = time.perf_counter()
    grad_norm = _apply_update(run, nonfinite, agg)
    timings["optimizer"] += time.perf_counter() - to
    run.step += 1
    return _record(run, agg, grad_norm, timings, time.perf_counter() - t_step, previews)


def _record(run: Run, agg: dict, grad_norm: float, timings: dict, dt: float, previews: list[str]) -> dict:
    if run.world > 1:
        keys = sorted(agg)
        vec = run.acc.reduce(torch.tensor([agg[k] for k in keys], device=run.acc.device), "mean")
        agg = dict(zip(keys, vec.tolist()))
    rec = {"step": run.step, "method": run.cfg.train.method, **{k: round(v, 6) for k, v in agg.items()},
           "grad_norm": grad_norm, "lr": run.scheduler.get_last_lr()[0],
           "tokens_per_s": agg.get("completion_tokens", 0.0) * run.n_micro * run.world / max(dt, 1e-9),
           "step_time_s": dt, **{f"time_{k}_s": v for k, v in timings.items()},
           "skipped_steps": run.skipped_steps}
    if previews and (run.step % run.cfg.log.every == 0 or run.step == 1):
        rec["rollout_preview"] = previews[:run.cfg.log.rollout_examples]
    return rec


# ----------------------------------------------------------------------------------------------------------
# Progress, logging, saving


class Progress:
    """The step bar (with tqdm's remaining-time estimate) and, inside a step, micro-batches done and rollout
    tokens generated, refreshed at most twice a second."""

    def __init__(self, run: Run, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.cfg.train.max_steps, initial=run.step, disable=not enabled,
                        desc=run.cfg.train.method, dynamic_ncols=True, file=sys.stderr)
        self.enabled, self.n_tokens, self.i, self.n, self.last = enabled, 0, 0, 1, 0.0
        self.metrics, self.sdft = "", run.cfg.train.method == "sdft"

    def micro(self, i: int, n: int) -> None:
        self.i, self.n = i, n
        self._show(force=True)

    def tokens(self, n: int) -> None:
        self.n_tokens += n
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        inside = f"micro-batch {self.i + 1}/{self.n}" + (f", {self.n_tokens} rollout tokens" if self.sdft else "")
        self.bar.set_postfix_str(f"{self.metrics}{' | ' if self.metrics else ''}{inside}", refresh=True)

    def step_done(self, rec: dict) -> None:
        named = next((k for k in ("forward_kl", "reverse_kl", "jsd", "sft_nll") if k in rec), None)
        self.metrics = f"loss={rec.get('loss', 0):.4f} " + (f"{named}={rec[named]:.4f} " if named else "") + \
            f"tok/s={rec['tokens_per_s']:.0f}"
        self.n_tokens = 0
        self.bar.set_postfix_str(self.metrics, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """metrics.jsonl (and tensorboard/trackio) on the main process."""

    def __init__(self, run: Run):
        self.main = run.acc.is_main_process
        self.f = open(run.out / "metrics.jsonl", "a", encoding="utf-8") if self.main else None
        if self.main:
            (run.out / "selfdistill.yaml").write_text(to_yaml(run.cfg))
        self.writer = _tracker(run.cfg, run.out) if self.main else None

    def write(self, rec: dict) -> None:
        if not self.main:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.writer is not None:
            self.writer(rec, rec["step"])

    def close(self) -> None:
        if self.f:
            self.f.close()


def _save_on_stop(run: Run) -> None:
    """After a stop: checkpoint the last finished step unless that checkpoint exists already (or no step has
    finished: a resume then simply starts over). Writing it is most of the time a stop takes."""
    latest = latest_checkpoint(run.out / "checkpoints")
    t0 = time.perf_counter()
    if run.step > 0 and (latest is None or latest.name != f"step-{run.step:06d}"):
        save(run)
        what = f"checkpoint written in {time.perf_counter() - t0:.1f}s"
    else:
        what = "already checkpointed" if run.step > 0 else "no step had finished, nothing to save"
    if run.acc.is_main_process:
        print(f"[selfdistill] stopped at step {run.step} ({what}). Resume with the same command plus --resume",
              file=sys.stderr)


def save(run: Run) -> None:
    """A checkpoint of the last finished step (rank 0 writes, every rank waits; FSDP2: every rank writes its
    shards, rank 0 publishes the folder)."""
    if run.strategy == "fsdp":
        distributed.save_sharded_checkpoint(
            run.out / "checkpoints", run.step, model=run.model, optimizer=run.optimizer,
            teacher=run.teacher.copy if run.teacher else None, scheduler=run.scheduler,
            trainer_state={"step": run.step, "data_position": run.step * run.cfg.train.prompts_per_step,
                           "skipped_steps": run.skipped_steps}, keep_last=run.cfg.log.keep_last)
        return
    _save(run.acc, run.out / "checkpoints", run.step, run.model, run.teacher, run.optimizer, run.scheduler,
          run.skipped_steps, run.cfg)


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config, examples: list[Example], model, tokenizer, output_dir: str | Path, *,
          resume: bool = False, overwrite: bool = False, on_step: Callable[[int, object], dict | None] | None = None,
          eval_every: int = 0, accelerator=None, stop_after: int | None = None) -> TrainResult:
    """Train `model` on `examples` with cfg.train.method; write checkpoints and the final model to output_dir.

    `on_step(step, model)` is called every `eval_every` steps (and at the end) on the main process; what it
    returns is logged. `stop_after` stops (with a checkpoint) after that many steps of this call — for tests.
    A stop signal (SIGINT/SIGTERM) abandons the unfinished step and checkpoints the last finished one.
    """
    run = setup(cfg, examples, model, tokenizer, Path(output_dir), resume=resume, overwrite=overwrite,
                accelerator=accelerator)
    main, history, steps_this_call, t_start = run.acc.is_main_process, [], 0, time.perf_counter()
    log, progress, stop = MetricsLog(run), Progress(run, main and cfg.log.progress), StopFlag()
    stopped_early = False
    try:
        with stop.installed():
            while run.step < cfg.train.max_steps:
                rng = rng_state()  # restored if the step is abandoned: a resume then replays it exactly
                try:
                    rec = optimizer_step(run, stop, progress)
                except StepAborted:
                    set_rng_state(rng)
                    stopped_early = True
                    break
                steps_this_call += 1
                if on_step is not None and eval_every and (run.step % eval_every == 0
                                                           or run.step == cfg.train.max_steps):
                    with distributed.unsharded(run.model):  # FSDP2: every rank gathers, the main one evaluates
                        if main:
                            rec.update(on_step(run.step, run.model) or {})
                if main:
                    history.append(rec)
                    progress.step_done(rec)
                log.write(rec)
                stop_now = _stop_agreed(run, stop) or (stop_after is not None and steps_this_call >= stop_after)
                if stop_now and run.step < cfg.train.max_steps:
                    stopped_early = True
                    break
                if cfg.log.save_every and run.step % cfg.log.save_every == 0 and run.step < cfg.train.max_steps:
                    save(run)
    finally:
        progress.close()
        log.close()
    if stopped_early:
        with stop.installed():  # a copy of the same stop arriving during the write must not kill it (StopFlag)
            _save_on_stop(run)
    else:
        save(run)
        if run.strategy == "fsdp":  # a collective: the full weights gathered to rank 0, which writes them
            distributed.save_consolidated(run.model, tokenizer, run.out, run.save_dtype)
        elif main:
            save_final(run.model, tokenizer, run.out, cfg, run.save_dtype)
        if main:
            if cfg.log.progress:
                print(f"[selfdistill] {cfg.train.method}: {steps_this_call} steps in "
                      f"{time.perf_counter() - t_start:.1f}s; model saved to {run.out}", file=sys.stderr)
    run.acc.wait_for_everyone()
    return TrainResult(run.out, history, run.model, tokenizer, run.skipped_records, run.skipped_steps,
                       stopped_early)


def _save(acc, root, step, model, teacher, optimizer, scheduler, skipped_steps, cfg):
    if acc.is_main_process:
        save_checkpoint(root, step, model=model, teacher_state=teacher.state_dict() if teacher else {},
                        optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"step": step, "data_position": step * cfg.train.prompts_per_step,
                                       "skipped_steps": skipped_steps}, keep_last=cfg.log.keep_last)
    acc.wait_for_everyone()


def save_final(model, tokenizer, out: Path, cfg: Config, dtype: torch.dtype | None = None) -> None:
    """A folder AutoModelForCausalLM.from_pretrained loads: safetensors, tokenizer (chat template), config YAML.
    `dtype`: the weights' dtype as loaded (bf16 models trained on float32 master weights are saved in bf16)."""
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
    elif dtype is not None:
        import copy
        copy.deepcopy(model).to(dtype).save_pretrained(out, safe_serialization=True)
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
