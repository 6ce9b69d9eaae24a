"""The training loop: SDFT, and the SFT / DFT baselines in the same loop.

One SDFT optimizer step (`optimizer_step`):
  1.   `steps.sample_rollouts`: the student samples from the prompt alone, all of the process's prompts of the
       step at once (rollout.batch_size caps one engine call; rollout.steps_per_generation > 1 samples the next
       steps' prompts in the same round, trained on later with importance weights)
  2-4. `steps.sdft_micro_step` over the micro-batches: the teacher (EMA weights, demonstration in context) and
       the student score those tokens, per-token forward KL(teacher || student) over the full vocabulary by
       default (steps.py has the step written out)
  5.   update: AdamW, clip 1.0, cosine schedule; then teacher <- (1 - a) teacher + a student (teacher.py), and the
       rollout engine gets the new weights
SFT/DFT use the same data order, schedule, logging and checkpoints; only their micro step differs (steps.py).

The pieces: `setup.setup` (model, float32 master weights, teacher, optimizer, wrapping, engine, resume) -> `Run`;
`optimizer_step` here (the same for 1 process, DDP and FSDP2); `runtime` (stop flag, progress, metrics log,
saving); `train`, the loop that ties them together.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import Config
from ..data import Example
from ..engines import GenerationAborted, derive_seed, prompt_seeds
from . import distributed
from .checkpoint import latest_checkpoint, rng_state, set_rng_state
from .errors import TrainingError
from .runtime import MetricsLog, Progress, StepAborted, StopFlag, save, save_final, save_on_stop
from .setup import Run, setup
from .steps import sample_rollouts, sdft_micro_step, sft_micro_step


@dataclass
class TrainResult:
    output_dir: Path
    metrics: list[dict] = field(default_factory=list)
    model: object = None
    tokenizer: object = None
    skipped_records: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False


def _stop_agreed(run: Run, stop: StopFlag) -> bool:
    """Whether to abandon the step; all ranks agree (one would otherwise wait in a collective forever)."""
    flag = stop.is_set()
    if run.world > 1:
        flag = bool(run.acc.reduce(torch.tensor([float(flag)], device=run.acc.device), "max").item())
    return flag


def _rank_items(run: Run, step: int) -> list:
    """This process's prompts of optimizer step `step`."""
    P, rank = run.cfg.train.prompts_per_step, run.acc.process_index
    step_idx = run.order[step * P + rank * run.per_rank: step * P + (rank + 1) * run.per_rank]
    return [run.encoded[j] for j in step_idx]


def _rollouts(run: Run, stop: StopFlag, timings: dict, progress) -> list:
    """1. This process's rollouts for the step: sampled ahead when the step has them (run.pending); otherwise sampled
    now, in one round (steps.sample_rollouts), for this step and the next rollout.steps_per_generation - 1 (up to
    train.max_steps). Sequence k of step s's global batch (prompt-major, R per prompt) draws from seed
    derive_seed(derive_seed(train.seed, s), k), so the samples do not depend on micro-batch size,
    rollout.batch_size, the number of processes or the steps sampled with it (only on the weights, which are the
    first step's for all of them)."""
    if run.step not in run.pending:
        cfg, R = run.cfg, run.cfg.rollout.num_rollouts
        steps = range(run.step, min(run.step + cfg.rollout.steps_per_generation, cfg.train.max_steps))
        items, seeds = [], []
        for s in steps:
            items += _rank_items(run, s)
            seeds += prompt_seeds(derive_seed(cfg.train.seed, s), run.per_rank * R,
                                  start=run.acc.process_index * run.per_rank * R)
        # a stop signal aborts generation at once with one process; with several, ranks agree between phases
        should_stop = stop.is_set if run.world == 1 else None
        progress.sampling(len(seeds))
        t0 = time.perf_counter()
        rollouts = sample_rollouts(run.wrapped, run.engine, run.spec, items, cfg, seeds, run.amp,
                                   should_stop=should_stop, on_tokens=progress.tokens)
        timings["generate"] += time.perf_counter() - t0
        n = run.per_rank * R
        run.pending.update({s: rollouts[i * n:(i + 1) * n] for i, s in enumerate(steps)})
    return run.pending[run.step]


def _micro_batch(run: Run, items: list, rollouts: list | None, i: int, timings: dict) -> tuple[torch.Tensor, dict, list]:
    cfg, mb = run.cfg, run.cfg.train.micro_batch_size
    R = cfg.rollout.num_rollouts if cfg.train.method == "sdft" else 1
    total = run.per_rank * R
    mine = items[i * mb:(i + 1) * mb]
    if rollouts is None:
        return (*sft_micro_step(run.wrapped, run.tokenizer, mine, cfg, total, run.amp, cfg.train.method), [])
    return sdft_micro_step(run.wrapped, run.teacher, run.tokenizer, mine, rollouts[i * mb * R:(i + 1) * mb * R],
                           cfg, total, run.amp, timings, teacher_amp=run.teacher_amp)


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
    else:
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        if run.teacher is not None:
            run.teacher.update()  # 5. teacher <- (1 - a) teacher + a student, after the update
    nxt = run.step + 1
    if run.engine is not None and nxt < cfg.train.max_steps and nxt not in run.pending:  # it samples the next step
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
    items = _rank_items(run, run.step)
    try:
        rollouts = None
        if cfg.train.method == "sdft":
            if _stop_agreed(run, stop):
                raise StepAborted()
            rollouts = _rollouts(run, stop, timings, progress)
        for i in range(run.n_micro):
            if _stop_agreed(run, stop):
                raise StepAborted()
            progress.micro(i, run.n_micro)
            last = i == run.n_micro - 1
            # DDP all-reduces at the last micro-batch only; FSDP2 reduce-scatters every micro-batch (gradients
            # stay sharded: no full-size gradient buffer), the sum is the same up to float rounding
            sync = run.acc.no_sync(run.wrapped) if (run.strategy == "ddp" and not last) else contextlib.nullcontext()
            with sync:
                loss, m, comps = _micro_batch(run, items, rollouts, i, timings)
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
    run.pending.pop(run.step, None)  # kept until the update: a step abandoned before it keeps its rollouts
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
    try:
        return _train_steps(run, on_step, eval_every, stop_after)
    finally:
        run.close()  # the rollout engine it started: on success, stop and error alike


def _train_steps(run: Run, on_step, eval_every: int, stop_after: int | None) -> TrainResult:
    """The steps of `train` on a set-up run, then the final save."""
    cfg, tokenizer = run.cfg, run.tokenizer
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
            save_on_stop(run)
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
