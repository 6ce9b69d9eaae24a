"""Continual learning: train on tasks one after another, evaluate every task and the retention suite after each.

For every method spec (sdft, sft, dft, or a variant such as `sft@lr=2e-5`; selfdistill.methods) and seed, the
stages run as described in :mod:`.stages`. Tasks are Task objects or specs (:func:`selfdistill.tasks.task_from_spec`):
built-in names (``knowledge@n_train=32``) or the user's files (``a.jsonl@scorer=contains_word,test=a_test.jsonl``).
Retention is measured on ALL items of the retention suite, item by item, so the report can give the paired change
with an exact McNemar test and a bootstrap interval, the margin change, and the conditional figure on the items the
base model got right.

A stopped run resumes at the next unfinished stage (a stage stopped half-way resumes from its checkpoint); the same
command started in several processes shares the runs out (each (method, seed) is claimed, :mod:`.store`);
`selfdistill report OUTPUT` on a stopped run reports the finished stages, marked partial. What the folder holds:
:mod:`.store`.
"""

from __future__ import annotations

import sys
import time

import torch

from .. import metrics as M
from ..config import to_dict
from ..data import DataError
from ..evaluation import DRIFT_PROMPTS, drift_reference
from ..methods import MethodSpec
from ..models import load_model
from ..tasks import Task, get_task, task_from_spec
from .options import SequenceOptions
from .stages import StageContext, evaluate_stage, companion_tasks, run_stages
from .store import (RUN_LOCK, RunProgress, claim_run, load_base_eval, machine, release_run, report_folder, run_dir,
                    run_record, save_base_eval, write_plan, write_results_extra)


def resolve_tasks(task_specs: list) -> list[Task]:
    """Task objects from specs (duplicates by name are an error: results are keyed by task name)."""
    tasks = [spec if isinstance(spec, Task) else task_from_spec(spec) for spec in task_specs]
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"two tasks named {dupes[0]!r}; give one a different name with @name=...")
    return tasks


def run_sequence(task_specs: list, methods: list[MethodSpec], opts: SequenceOptions, *, model=None,
                 tokenizer=None) -> dict:
    """Run (or resume) the sequence and write results.json (+ CSVs and the report). Returns the results dict.
    `model`/`tokenizer`: an already loaded base model (default: load `opts.model_name`); it is never trained (each
    run starts from a copy) and ends up on CPU in eval mode."""
    out, cfg = opts.output, opts.cfg
    out.mkdir(parents=True, exist_ok=True)
    tasks = resolve_tasks(task_specs)
    task_names = [t.name for t in tasks]
    title = opts.title or f"selfdistill sequence: {' -> '.join(task_names)}"
    write_plan(out, title, opts.model_name, tasks, task_specs, methods, opts.seeds)
    if model is None:
        model, tokenizer, _ = load_model(opts.model_name, dtype=cfg.model.dtype)
    ctx = StageContext(opts, tasks, task_specs, tokenizer, model.eval(), opts.retention or get_task("retention"),
                       {**{k: v for t in tasks for k, v in companion_tasks(t).items()}, **opts.also_eval})
    notes = list(opts.notes) + [t.description for t in tasks if t.info.get("whole_file")]
    _say_whole_file(tasks)
    write_results_extra(out, {"config": to_dict(cfg), "notes": notes, "machine": machine(),
                              **({"probe": opts.probe} if opts.probe else {}), **opts.extra_results})
    saved = load_base_eval(out)
    base_eval = _measure_base(ctx, saved)
    if saved is None:
        save_base_eval(out, base_eval)
    runs = _run_all(ctx, methods, base_eval)
    _say_time_split(runs)
    results = {"title": title, "model": opts.model_name, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "config": to_dict(cfg), "tasks": task_names, "retention_name": "retention (all items)",
               "runs": runs, "notes": notes, **opts.extra_results}
    if opts.probe is not None:
        results["probe"] = opts.probe
    M.write_results(out, results)
    if opts.write_report:
        md, html = report_folder(out)
        print(f"[selfdistill] report: {html}", file=sys.stderr)
    return results


def _measure_base(ctx: StageContext, base_eval: dict | None) -> dict:
    """The base model's evaluation (unless a previous start saved it) and its side of drift (its time counted in
    the base evaluation's), on the accelerator when there is one; then the base goes back to CPU, where it stays:
    it is only copied from (each run's first stage), so the accelerator holds no base model while the stages train
    and evaluate."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = ctx.base_model.to(device)
    try:
        fresh = base_eval is None
        if fresh:
            base_eval = evaluate_stage(ctx, base, ctx.tasks, drift=False, also_eval=ctx.also_eval)
        if ctx.opts.drift:
            t0 = time.perf_counter()
            ctx.drift_ref = drift_reference(base, ctx.tokenizer, DRIFT_PROMPTS[:ctx.opts.drift_prompts or None])
            if fresh:
                base_eval["seconds"] += time.perf_counter() - t0
    finally:
        ctx.base_model = base.to("cpu")
    return base_eval


def _run_all(ctx: StageContext, methods: list[MethodSpec], base_eval: dict) -> list[dict]:
    """Every (method, seed) run this process can take, in order; the records of those with finished stages. A run
    another process holds is skipped."""
    runs = []
    pairs = ctx.opts.order or [(m, k) for m in methods for k in ctx.opts.seeds]
    task_names = [t.name for t in ctx.tasks]
    for n_run, (spec, seed) in enumerate(pairs, start=1):
        folder = run_dir(ctx.opts.output, spec, seed)
        folder.mkdir(parents=True, exist_ok=True)
        prog = RunProgress.load(folder)
        label = f"run {n_run}/{len(pairs)}: {spec} seed {seed}"
        if len(prog.stages) < len(ctx.tasks):
            holder = claim_run(folder)
            if holder:  # another process (the same command started twice, another machine) is running it
                print(f"[selfdistill] {label}: skipped, {holder} is running it ({folder / RUN_LOCK}; delete that "
                      f"file if that process is gone)", file=sys.stderr)
                continue
            try:
                run_stages(ctx, spec, seed, folder, prog, label)
            finally:
                release_run(folder)
        runs.append(run_record(str(spec), seed, task_names, base_eval, prog))
    return runs


def time_split(runs: list[dict]) -> tuple[float, float]:
    """(training seconds, evaluation seconds) of `runs` as recorded (the base evaluation counted once)."""
    train_s = sum(sum(r.get("train_seconds", [])) for r in runs)
    eval_s = sum(sum(r.get("eval_seconds", [0.0])[1:]) for r in runs) + (runs[0].get("eval_seconds", [0.0])[0]
                                                                         if runs else 0.0)
    return train_s, eval_s


def _say_time_split(runs: list[dict]) -> None:
    train_s, eval_s = time_split(runs)
    if train_s + eval_s > 0:
        print(f"[selfdistill] time: training {train_s:.0f} s, evaluation {eval_s:.0f} s "
              f"({100 * eval_s / (train_s + eval_s):.0f}% of the two; base evaluation included once)", file=sys.stderr)


def _say_whole_file(tasks: list[Task]) -> None:
    for t in tasks:
        if t.info.get("whole_file"):
            print(f"[selfdistill] {t.name}: no test= or split= given, so it is evaluated on its {len(t.test)} training "
                  f"records (recall of what was trained, not generalisation); FILE@split=0.2 or FILE@test=TEST "
                  f"holds records out", file=sys.stderr)
