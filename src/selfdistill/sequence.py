"""Continual learning: train on tasks one after another, evaluate every task and the retention suite after each.

For every method (sdft, sft, dft, or a variant such as `sft@lr=2e-5`) and seed:
    stage 0 = the base model; stage i = after training on tasks[i-1], starting from stage i-1's weights.
    After each stage: accuracy on every task's test split (the matrix R[stage][task]), the retention suite, and
    drift = KL(base || tuned) on held-out general prompts. The SDFT teacher restarts from the current student at
    each stage (a new EMA copy is made when a stage starts).
Optionally (`eval_every`), checkpoints along training are evaluated on the new task and retention, so the report
can compare retention at equal new-task accuracy, not only at equal steps.

On disk:  OUTPUT/<method>/seed<k>/stage<i>/   (the trained model of stage i, metrics.jsonl, checkpoints)
          OUTPUT/<method>/seed<k>/progress.json  (evaluations of finished stages)
          OUTPUT/base_eval.json, OUTPUT/results.json (+ CSVs), OUTPUT/report.md, OUTPUT/report.html
A stopped run resumes at the next unfinished stage (a stage stopped half-way resumes from its checkpoint).
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import train as train_mod
from .config import Config, _flatten, load_config, parse_dotted_overrides, to_dict


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """'sft' -> ('sft', {}); 'sft@lr=2e-5' -> ('sft', {'optim.lr': '2e-5'}); 'sdft@teacher.kind=frozen' ..."""
    base, _, rest = spec.partition("@")
    if base not in ("sdft", "sft", "dft"):
        raise ValueError(f"unknown method {base!r} in {spec!r} (sdft, sft, dft)")
    ov: dict[str, Any] = {"train.method": base}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        ov[{"lr": "optim.lr", "template": "context.teacher_template"}.get(k, k)] = v
    return base, ov


def _machine() -> str:
    import os
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{platform.machine()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def evaluate_stage(model, tok, base_model, tasks, retention, limit: int, batch_size: int, drift: bool,
                   drift_prompts: int = 0, also_eval: dict | None = None) -> dict:
    """Accuracy on every task's test split, the retention suite, drift, and `also_eval` ({label: task}, tasks
    evaluated but never trained on, e.g. the training phrasing of the knowledge questions)."""
    from .evaluate import DRIFT_PROMPTS, drift_kl, evaluate_task
    accs = {t.name: evaluate_task(model, tok, t, "test", limit, batch_size) for t in tasks}
    ret = evaluate_task(model, tok, retention, "test", 0, batch_size)
    also = {k: evaluate_task(model, tok, t, "test", limit, batch_size) for k, t in (also_eval or {}).items()}
    return {"tasks": {k: {"accuracy": v["accuracy"], "n": v["n"], "ci95": v["ci95"]} for k, v in accs.items()},
            "also": {k: {"accuracy": v["accuracy"], "n": v["n"], "ci95": v["ci95"]} for k, v in also.items()},
            "retention": {"accuracy": ret["accuracy"], "n": ret["n"], "ci95": ret["ci95"]},
            "drift": drift_kl(base_model, model, tok, DRIFT_PROMPTS[:drift_prompts or None]) if (drift and base_model is not model) else 0.0,
            "items": {k: v.get("items", [])[:50] for k, v in accs.items()}}


def run_sequence(task_names: list[str], methods: list[str], seeds: int | list[int], output: str | Path, *,
                 model_name: str = "smollm2-135m", cfg: Config | None = None, eval_every: int = 0,
                 eval_limit: int = 0, batch_size: int = 16, task_kwargs: dict | None = None,
                 retention_kwargs: dict | None = None, probe: dict | None = None, title: str | None = None,
                 notes: list[str] | None = None, model=None, tokenizer=None, write_report: bool = True,
                 drift: bool = True, drift_prompts: int = 0, retention_items: str = "base_correct",
                 also_eval: dict | None = None) -> dict:
    """Run (or resume) the sequence and write results.json (+ CSVs and the report). Returns the results dict.

    `also_eval` ({label: Task}): tasks evaluated at the base and after every stage but never trained on; they
    appear in results as `also` and in the report's "Also evaluated" table."""
    from .models import load_model
    from .tasks import get_task

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or load_config(preset="cpu")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    task_kwargs = task_kwargs or {}
    tasks = [get_task(n, **task_kwargs.get(n, {})) for n in task_names]
    retention = get_task("retention", **(retention_kwargs or {}))
    if model is None:
        model, tokenizer, _ = load_model(model_name, dtype=cfg.model.dtype)
    base_model = copy.deepcopy(model).eval()
    notes = list(notes or [])
    if retention_items == "base_correct":  # forgetting is measured on what the base model knows
        retention, note = _base_correct_retention(out, base_model, tokenizer, retention, retention_kwargs or {},
                                                  batch_size)
        notes.append(note)

    base_path = out / "base_eval.json"
    if base_path.exists():
        base_eval = json.loads(base_path.read_text())
    else:
        base_eval = evaluate_stage(base_model, tokenizer, base_model, tasks, retention, eval_limit, batch_size, False,
                                   also_eval=also_eval)
        base_path.write_text(json.dumps(base_eval, indent=1))
    runs = []
    for spec in methods:
        _, ov = parse_method(spec)
        for seed in seed_list:
            run_dir = out / spec.replace("@", "_at_").replace("=", "-").replace(",", "_") / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            prog_path = run_dir / "progress.json"
            prog = json.loads(prog_path.read_text()) if prog_path.exists() else {"stages": [], "checkpoints": []}
            current = None
            if prog["stages"]:  # resume: continue from the last finished stage's weights
                current, _, _ = load_model(str(run_dir / f"stage{len(prog['stages'])}"), dtype=cfg.model.dtype)
            for i, task in enumerate(tasks, start=1):
                if i <= len(prog["stages"]):
                    continue
                model_i = current if current is not None else copy.deepcopy(base_model).train()
                stage_cfg = load_config(overrides={**_flatten(_run_settings(cfg)), **ov, "train.seed": seed,
                                                   "data.path": f"task:{task.name}"}, preset=cfg.preset)
                stage_cfg.deviations = list(cfg.deviations)
                stage_dir = run_dir / f"stage{i}"
                resume = (stage_dir / "checkpoints").exists()
                ckpts: list[dict] = []

                last_step = stage_cfg.train.max_steps

                def on_step(step, m, _task=task, _i=i):
                    if step == last_step:  # the end-of-stage evaluation below is this checkpoint's: not twice
                        return None
                    r = evaluate_stage(m, tokenizer, base_model, [_task], retention, eval_limit, batch_size, False)
                    rec = {"stage": _i, "step": step, "new_task_acc": r["tasks"][_task.name]["accuracy"],
                           "retention": r["retention"]["accuracy"]}
                    ckpts.append(rec)
                    return {"eval_new_task_acc": rec["new_task_acc"], "eval_retention": rec["retention"]}
                print(f"[selfdistill] {spec} seed {seed}: stage {i}/{len(tasks)} — training on {task.name}",
                      file=sys.stderr)
                t0 = time.perf_counter()
                res = train_mod.train(
                    stage_cfg, task.train, model_i, tokenizer, stage_dir, resume=resume, overwrite=not resume,
                    on_step=on_step if eval_every else None, eval_every=eval_every)
                train_s = time.perf_counter() - t0
                if res.stopped_early:  # Ctrl-C / SIGTERM: the stage's checkpoint is saved; rerun to resume
                    raise SystemExit(f"[selfdistill] stopped during {spec} seed {seed} stage {i}; rerun the same "
                                     f"command to resume from its checkpoint")
                current = res.model
                ev = evaluate_stage(current, tokenizer, base_model, tasks, retention, eval_limit, batch_size, drift,
                                    drift_prompts, also_eval)
                if eval_every:  # the last checkpoint is the trained model: its numbers are the stage's evaluation
                    ckpts.append({"stage": i, "step": last_step, "new_task_acc": ev["tasks"][task.name]["accuracy"],
                                  "retention": ev["retention"]["accuracy"]})
                curves = [{"stage": i, "step": m["step"], "loss": m.get("loss"),
                           **{k: m[k] for k in ("forward_kl", "reverse_kl", "jsd", "sft_nll", "completion_len")
                              if k in m}} for m in res.metrics]
                prog["stages"].append({"task": task.name, "eval": ev, "train_seconds": train_s, "curves": curves,
                                       "config": to_dict(stage_cfg)})
                prog["checkpoints"] += ckpts
                prog_path.write_text(json.dumps(prog, indent=1))
            runs.append(_run_record(spec, seed, task_names, base_eval, prog))
    results = {"title": title or f"selfdistill sequence: {' -> '.join(task_names)}", "model": model_name,
               "machine": _machine(), "date": time.strftime("%Y-%m-%d"), "config": to_dict(cfg),
               "tasks": task_names, "retention_name": "retention", "runs": runs, "notes": notes}
    if probe is not None:
        results["probe"] = probe
    from .metrics import write_results
    write_results(out, results)
    if write_report:
        from .report import write_report as _wr
        md, html = _wr(out)
        print(f"[selfdistill] report: {html}", file=sys.stderr)
    return results


def _base_correct_retention(out: Path, base_model, tok, retention, retention_kwargs: dict, batch_size: int):
    """The retention suite restricted to the items the base model gets right (saved, so resume uses the same)."""
    from .evaluate import evaluate_task
    from .tasks import get_task
    path = out / "retention_items.json"
    if path.exists():
        info = json.loads(path.read_text())
    else:
        r = evaluate_task(base_model, tok, retention, "test", 0, batch_size)
        info = {"ids": [it["id"] for it in r["items"] if it["correct"]], "base_accuracy_all": r["accuracy"],
                "n_all": r["n"]}
        path.write_text(json.dumps(info, indent=1))
    if not info["ids"]:
        return retention, "Retention suite: the base model got no item right; all items are used."
    kept = get_task("retention", **{**retention_kwargs, "filter_ids": info["ids"]})
    return kept, (f"Retention suite: the {len(info['ids'])} of {info['n_all']} items that the base model answers "
                  f"correctly (base accuracy on all items {info['base_accuracy_all']:.1%}); so the base row is "
                  f"100% and any drop is forgetting.")


def _run_settings(cfg: Config) -> dict:
    """The config as nested sections, without the preset name and the deviation notes (not config keys)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("preset", "deviations")}


def _run_record(spec: str, seed: int, task_names: list[str], base_eval: dict, prog: dict) -> dict:
    evals = [base_eval] + [s["eval"] for s in prog["stages"]]
    return {
        "method": spec, "seed": seed,
        "matrix": [[e["tasks"][t]["accuracy"] for t in task_names] for e in evals],
        "matrix_n": [[e["tasks"][t]["n"] for t in task_names] for e in evals],
        "retention": [e["retention"]["accuracy"] for e in evals],
        "retention_n": base_eval["retention"]["n"],
        "drift": [e.get("drift", 0.0) for e in evals],
        "curves": [c for s in prog["stages"] for c in s["curves"]],
        "checkpoints": prog["checkpoints"],
        "train_seconds": [s["train_seconds"] for s in prog["stages"]],
        "also": {k: {"accuracy": [e.get("also", {}).get(k, {}).get("accuracy") for e in evals], "n": v["n"]}
                 for k, v in base_eval.get("also", {}).items()},
    }


def run_sequence_cli(args, extra: list[str]) -> int:
    overrides = parse_dotted_overrides(extra)
    overrides["train.max_steps"] = args.max_steps
    cfg = load_config(args.config, overrides, preset=args.preset)
    run_sequence([t.strip() for t in args.tasks.split(",") if t.strip()],
                 [m.strip() for m in args.methods.split(",") if m.strip()], args.seeds, args.output,
                 model_name=args.model, cfg=cfg, eval_every=args.eval_every, eval_limit=args.eval_limit)
    return 0
