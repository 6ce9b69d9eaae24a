"""What a run needs besides the step: the stop flag, the progress bar, the metrics log, and saving."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import Config, to_dict, to_yaml
from . import distributed
from .checkpoint import latest_checkpoint, save_checkpoint
from .errors import TrainingError
from .setup import Run


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


class Progress:
    """The step bar (with tqdm's remaining-time estimate) and, inside a step, the phase (sampling, micro-batch i/n)
    and rollout tokens generated, refreshed at most twice a second."""

    def __init__(self, run: Run, enabled: bool):
        self.bar = tqdm(total=run.cfg.train.max_steps, initial=run.step, disable=not enabled,
                        desc=run.cfg.train.method, dynamic_ncols=True, file=sys.stderr)
        self.enabled, self.n_tokens, self.last = enabled, 0, 0.0
        self.metrics, self.sdft, self.phase = "", run.cfg.train.method == "sdft", ""

    def sampling(self, n: int) -> None:
        self.phase = f"sampling {n} rollouts"
        self._show(force=True)

    def micro(self, i: int, n: int) -> None:
        self.phase = f"micro-batch {i + 1}/{n}"
        self._show(force=True)

    def tokens(self, n: int) -> None:
        self.n_tokens += n
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        inside = self.phase + (f", {self.n_tokens} rollout tokens" if self.sdft else "")
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


def save_on_stop(run: Run) -> None:
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
    shards, rank 0 publishes the folder). Rollouts sampled ahead for later steps (rollout.steps_per_generation)
    go into trainer_state.json, every rank's, so a resume trains on the same ones."""
    state = {"step": run.step, "data_position": run.step * run.cfg.train.prompts_per_step,
             "skipped_steps": run.skipped_steps, **run.pending_state()}
    if run.strategy == "fsdp":
        distributed.save_sharded_checkpoint(
            run.out / "checkpoints", run.step, model=run.model, optimizer=run.optimizer,
            teacher=run.teacher.copy if run.teacher else None, scheduler=run.scheduler,
            trainer_state=state, keep_last=run.cfg.log.keep_last)
        return
    if run.acc.is_main_process:
        save_checkpoint(run.out / "checkpoints", run.step, model=run.model,
                        teacher_state=run.teacher.state_dict() if run.teacher else {}, optimizer=run.optimizer,
                        scheduler=run.scheduler, trainer_state=state, keep_last=run.cfg.log.keep_last)
    run.acc.wait_for_everyone()


def save_final(model, tokenizer, out: Path, cfg: Config, dtype: torch.dtype | None = None) -> None:
    """A folder AutoModelForCausalLM.from_pretrained loads: safetensors, tokenizer (chat template), config YAML.
    `dtype`: the weights' dtype as loaded (bf16 models trained on float32 master weights are saved in bf16)."""
    if hasattr(model, "peft_config"):
        if "teacher" in model.peft_config:
            model.save_pretrained(out / "adapter", selected_adapters=["default"])
        else:
            model.save_pretrained(out / "adapter")
        merged = copy.deepcopy(model)
        if "teacher" in merged.peft_config:
            merged.delete_adapter("teacher")
        merged = merged.merge_and_unload()
        (merged.to(dtype) if dtype is not None else merged).save_pretrained(out, safe_serialization=True)
    elif dtype is not None:
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
