"""One (method, seed) run of a continual sequence, stage by stage: train on the stage's task, then evaluate.

Stage 0 is the base model; stage i is after training on tasks[i-1], starting from stage i-1's weights. After each
stage: accuracy on every task's test split (the matrix R[stage][task]), the retention suite (all items, item by
item: correctness and the correct choice's log-likelihood margin), drift = KL(base || tuned) on held-out general
prompts, and the `also_eval` tasks. The SDFT teacher restarts from the current student at each stage (a new EMA
copy is made when a stage starts). With `eval_every`, checkpoints along training are evaluated on the new task and
retention, so the report can compare retention at equal new-task accuracy, not only at equal steps.
"""

from __future__ import annotations

import copy
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, flatten, importance_weights_default, load_config, to_dict
from ..engines import inference_model
from ..evaluation import DriftReference, drift_from_reference, evaluate_tasks, item_table
from ..methods import MethodSpec
from ..models import load_model
from ..tasks import Task, get_task
from ..tasks.knowledge import TEST_PHRASINGS
from ..training import train
from .options import SequenceOptions
from .store import RunProgress


@dataclass
class StageContext:
    """What every stage of every run of a sequence shares: the tasks, the base model, what to evaluate and how."""
    opts: SequenceOptions
    tasks: list[Task]
    task_specs: list
    tokenizer: Any
    base_model: Any  # on CPU: each run's first stage starts from a copy of it
    retention: Task
    also_eval: dict
    drift_ref: DriftReference | None = None  # the base's side of drift, computed once (evaluation.drift)

    @property
    def cfg(self) -> Config:
        return self.opts.cfg


def evaluate_stage(ctx: StageContext, model, tasks: list[Task], *, drift: bool, also_eval: dict) -> dict:
    """Accuracy on every task's test split, the retention suite (all items, with per-item correctness and
    log-likelihood margins), drift (when asked), and `also_eval` ({label: task}, tasks evaluated but never trained
    on, e.g. the other phrasings of the knowledge questions)."""
    t0 = time.perf_counter()
    tok, limit, bs = ctx.tokenizer, ctx.opts.eval_limit, ctx.opts.batch_size
    with inference_model(model) as packed:  # one packed copy for both (engines.packed_copy)
        res = evaluate_tasks(packed, tok, {**{("task", t.name): (t, limit) for t in tasks},
                                          ("retention", ""): (ctx.retention, 0),
                                          **{("also", k): (t, limit) for k, t in also_eval.items()}}, "test", bs)
        kl = drift_from_reference(ctx.drift_ref, packed) if drift and ctx.drift_ref is not None else 0.0
    accs = {t.name: res["task", t.name] for t in tasks}
    ret = res["retention", ""]
    also = {k: res["also", k] for k in also_eval}
    by_label = {**{t.name: (t, accs[t.name]) for t in tasks}, **{k: (t, also[k]) for k, t in also_eval.items()}}
    tables = {k: tab for k, (t, r) in by_label.items() if (tab := item_table(t, r)) is not None}
    return {"tasks": {k: _acc(v) for k, v in accs.items()},
            "also": {k: _acc(v) for k, v in also.items()},
            "retention": {**_acc(ret), **retention_items(ctx.retention, ret)},
            "drift": kl,
            "items": {k: v.get("items", [])[:50] for k, v in accs.items()},
            **({"item_tables": tables} if tables else {}),
            "seconds": time.perf_counter() - t0}


def _acc(r: dict) -> dict:
    out = {"accuracy": r["accuracy"], "n": r["n"], "ci95": r["ci95"]}
    if r.get("groups"):
        out["groups"] = r["groups"]
    return out


def retention_items(task, result: dict) -> dict:
    """Per-item ``ids``, ``correct`` (0/1) and, for multiple-choice items, ``margin``: log-likelihood of the
    correct choice minus the best other choice's (> 0 iff correct)."""
    recs = result["items"]
    out = {"ids": [r["id"] for r in recs], "correct": [int(r["correct"]) for r in recs]}
    if task.kind == "multiple_choice":
        margins = []
        for ex, r in zip(task.test, recs):
            ll, k = r["choice_logliks"], ex.extra["answer_index"]
            margins.append(round(ll[k] - max(v for i, v in enumerate(ll) if i != k), 4))
        out["margin"] = margins
    return out


def companion_tasks(task) -> dict:
    """{label: task} evaluated beside `task` but never trained on: the knowledge questions in the phrasings `task`
    is not tested on; the battery's never-trained control facts."""
    if task.name == "battery":
        return {"battery, control (never trained)": get_task("battery_control", **{
            k: task.info[k] for k in ("n_per_set", "n_control", "seed")}, sets="+".join(task.info["sets"]))}
    if task.name != "knowledge" or task.info.get("test_phrasing") == "all":
        return {}
    labels = {"train": "knowledge, training phrasing", "reworded": "knowledge, reworded",
              "other_name": "knowledge, other name", "reverse": "knowledge, reverse"}
    kw = {"n_train": task.info["n_train"], "seed": task.info["seed"]}
    return {labels[p]: get_task("knowledge", test_phrasing=p, **kw) for p in TEST_PHRASINGS
            if p != task.info.get("test_phrasing")}


def drop_resume_checkpoints(stage_dir: Path) -> None:
    """Delete a finished stage's resume checkpoints. They hold the AdamW state, float32 master weights and, for
    SDFT, the EMA teacher (12-16 bytes per weight: 2.2 GB for a 135M SDFT run, about 110 GB at 7B) and only serve
    to resume the stage; the trained model is saved in `stage_dir` itself and the stage is recorded in
    progress.json first."""
    ckpt_dir = stage_dir / "checkpoints"
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)


def run_stages(ctx: StageContext, spec: MethodSpec, seed: int, run_dir: Path, prog: RunProgress, label: str) -> None:
    """The unfinished stages of one (method, seed) run, from the last finished stage's weights (or the base
    model); each is recorded in progress.json as soon as it is evaluated."""
    current = None
    if prog.stages:
        current, _, _ = load_model(str(run_dir / f"stage{len(prog.stages)}"), dtype=ctx.cfg.model.dtype)
    for i in range(len(prog.stages) + 1, len(ctx.tasks) + 1):
        model_i = current if current is not None else copy.deepcopy(ctx.base_model).train()
        current, record, ckpts = train_stage(ctx, spec, seed, i, model_i, run_dir / f"stage{i}", label)
        prog.add_stage(record, ckpts)
        if not ctx.opts.keep_checkpoints:
            drop_resume_checkpoints(run_dir / f"stage{i}")


def stage_config(ctx: StageContext, spec: MethodSpec, seed: int, i: int) -> Config:
    """The config stage i trains with: the run's settings, the method spec's overrides, the seed, the task's data.
    A run-level loss.importance_weights at its default is not carried over: the stage's own engine and rollout
    dtype decide it again (a spec `sdft@rollout.dtype=bfloat16` gets its correction), unless the spec sets it."""
    task = ctx.tasks[i - 1]
    settings = flatten({k: v for k, v in to_dict(ctx.cfg).items() if k not in ("preset", "deviations")})
    if ctx.cfg.loss.importance_weights == importance_weights_default(ctx.cfg):
        settings.pop("loss.importance_weights")
    cfg = load_config(overrides={**settings, **spec.overrides, "train.seed": seed,
                                 "data.path": _data_path(ctx.task_specs[i - 1], task)}, preset=ctx.cfg.preset)
    cfg.deviations = list(ctx.cfg.deviations)
    return cfg


def train_stage(ctx: StageContext, spec: MethodSpec, seed: int, i: int, model, stage_dir: Path,
                label: str) -> tuple[Any, dict, list[dict]]:
    """Train stage i (on tasks[i-1]) from `model`, resuming the stage's checkpoint if there is one, then evaluate
    every task. Returns (trained model, the stage's progress record, its checkpoints' evaluations)."""
    task, stage_cfg = ctx.tasks[i - 1], stage_config(ctx, spec, seed, i)
    resume = (stage_dir / "checkpoints").exists()
    last_step, eval_every = stage_cfg.train.max_steps, ctx.opts.eval_every
    ckpts: list[dict] = []
    ckpt_eval_s = [0.0]

    def on_step(step, m):
        if step == last_step:  # the end-of-stage evaluation below is this checkpoint's: not twice
            return None
        r = evaluate_stage(ctx, m, [task], drift=False, also_eval={})
        ckpt_eval_s[0] += r["seconds"]
        rec = {"stage": i, "step": step, "new_task_acc": r["tasks"][task.name]["accuracy"],
               "retention": r["retention"]["accuracy"]}
        ckpts.append(rec)
        return {"eval_new_task_acc": rec["new_task_acc"], "eval_retention": rec["retention"]}
    print(f"[selfdistill] {label}: stage {i}/{len(ctx.tasks)} — training on {task.name} ({len(task.train)} "
          f"demonstrations, {last_step} steps)", file=sys.stderr)
    t0 = time.perf_counter()
    res = train(stage_cfg, task.train, model, ctx.tokenizer, stage_dir, resume=resume, overwrite=not resume,
                on_step=on_step if eval_every else None, eval_every=eval_every)
    train_s = time.perf_counter() - t0
    if res.stopped_early:  # Ctrl-C / SIGTERM: the stage's checkpoint is saved; rerun to resume
        raise SystemExit(f"[selfdistill] stopped during {spec} seed {seed} stage {i}; rerun the same command to "
                         f"resume from its checkpoint")
    ev = evaluate_stage(ctx, res.model, ctx.tasks, drift=ctx.opts.drift, also_eval=ctx.also_eval)
    if eval_every:  # the last checkpoint is the trained model: its numbers are the stage's evaluation
        ckpts.append({"stage": i, "step": last_step, "new_task_acc": ev["tasks"][task.name]["accuracy"],
                      "retention": ev["retention"]["accuracy"]})
    curves = [{"stage": i, "step": m["step"], "loss": m.get("loss"),
               **{k: m[k] for k in ("forward_kl", "reverse_kl", "jsd", "sft_nll", "completion_len") if k in m}}
              for m in res.metrics]
    record = {"task": task.name, "eval": ev, "train_seconds": train_s - ckpt_eval_s[0],
              "checkpoint_eval_seconds": ckpt_eval_s[0], "curves": curves, "config": to_dict(stage_cfg)}
    return res.model, record, ckpts


def _data_path(spec, task) -> str:
    """The stage's data.path as recorded in its config: task:<spec> (loadable by `selfdistill train --data`)."""
    return f"task:{spec}" if isinstance(spec, str) and not spec.startswith("task:") else \
        (spec if isinstance(spec, str) else f"task:{task.name}")
