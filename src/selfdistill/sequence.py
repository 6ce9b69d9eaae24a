"""Continual learning: train on tasks one after another, evaluate every task and the retention suite after each.

For every method (sdft, sft, dft, or a variant such as `sft@lr=2e-5`) and seed:
    stage 0 = the base model; stage i = after training on tasks[i-1], starting from stage i-1's weights.
    After each stage: accuracy on every task's test split (the matrix R[stage][task]), the retention suite, and
    drift = KL(base || tuned) on held-out general prompts. The SDFT teacher restarts from the current student at
    each stage (a new EMA copy is made when a stage starts).
Optionally (`eval_every`), checkpoints along training are evaluated on the new task and retention, so the report
can compare retention at equal new-task accuracy, not only at equal steps.

Tasks are specs (:func:`selfdistill.tasks.task_from_spec`): built-in names (``knowledge@n_train=32``) or the
user's files (``a.jsonl@scorer=contains_word,test=a_test.jsonl``). Retention is measured on ALL items of the
retention suite, item by item (correctness and the correct choice's log-likelihood margin), so the report can
give the paired change with an exact McNemar test and a bootstrap interval, the margin change, and the
conditional figure on the items the base model got right.

On disk:  OUTPUT/plan.json  (tasks, methods, seeds: what the run will produce; `report` names what is missing)
          OUTPUT/<method>/seed<k>/stage<i>/   (the trained model of stage i, metrics.jsonl, checkpoints)
          OUTPUT/<method>/seed<k>/progress.json  (evaluations of finished stages)
          OUTPUT/base_eval.json, OUTPUT/results.json (+ CSVs), OUTPUT/report.md, OUTPUT/report.html
A stopped run resumes at the next unfinished stage (a stage stopped half-way resumes from its checkpoint);
`selfdistill report OUTPUT` on a stopped run reports the finished stages, marked partial.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import train as train_mod
from .config import Config, ConfigError, _flatten, load_config, parse_dotted_overrides, to_dict


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
    """Accuracy on every task's test split, the retention suite (all items, with per-item correctness and
    log-likelihood margins), drift, and `also_eval` ({label: task}, tasks evaluated but never trained on, e.g. the
    other phrasings of the knowledge questions)."""
    from .evaluate import DRIFT_PROMPTS, drift_kl, evaluate_task
    accs = {t.name: evaluate_task(model, tok, t, "test", limit, batch_size) for t in tasks}
    ret = evaluate_task(model, tok, retention, "test", 0, batch_size)
    also = {k: evaluate_task(model, tok, t, "test", limit, batch_size) for k, t in (also_eval or {}).items()}
    kl = drift_kl(base_model, model, tok, DRIFT_PROMPTS[:drift_prompts or None]) if (
        drift and base_model is not model) else 0.0
    return {"tasks": {k: _acc(v) for k, v in accs.items()},
            "also": {k: _acc(v) for k, v in also.items()},
            "retention": {**_acc(ret), **retention_items(retention, ret)},
            "drift": kl,
            "items": {k: v.get("items", [])[:50] for k, v in accs.items()}}


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


def knowledge_variants(task) -> dict:
    """{label: task} of the knowledge questions in the phrasings `task` is not tested on (never trained on)."""
    from .tasks import get_task
    from .tasks.knowledge import TEST_PHRASINGS
    if task.name != "knowledge" or task.info.get("test_phrasing") == "all":
        return {}
    labels = {"train": "knowledge, training phrasing", "reworded": "knowledge, reworded",
              "other_name": "knowledge, other name", "reverse": "knowledge, reverse"}
    kw = {"n_train": task.info["n_train"], "seed": task.info["seed"]}
    return {labels[p]: get_task("knowledge", test_phrasing=p, **kw) for p in TEST_PHRASINGS
            if p != task.info.get("test_phrasing")}


def parse_seeds(text: str | int | None, flag: str = "--seeds") -> list[int]:
    """The one ``--seeds`` syntax: a count (``3`` -> 0, 1, 2) or a comma-separated list (``0,1,2``; one given
    seed k: ``k,``). A clear one-line error names the flag for anything else."""
    if isinstance(text, int):
        text = str(text)
    text = "1" if text is None else str(text).strip()
    parts = [x.strip() for x in text.split(",")]
    try:
        seeds = [int(x) for x in parts if x]
    except ValueError:
        raise ConfigError(f"{flag} must be a count (3 -> seeds 0,1,2) or a comma-separated list of "
                          f"integers (0,1,2), got {text!r}") from None
    if len(parts) == 1 and seeds:  # a single number is a count
        if seeds[0] < 1:
            raise ConfigError(f"{flag} {text}: a single number is a count of seeds and must be >= 1; for one "
                              f"given seed k write 'k,' (e.g. '{seeds[0]},')")
        return list(range(seeds[0]))
    if not seeds or len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
        raise ConfigError(f"{flag} must list distinct non-negative integers, got {text!r}")
    return seeds


def drop_resume_checkpoints(stage_dir: Path) -> None:
    """Delete a finished stage's resume checkpoints. They hold the AdamW state, float32 master weights and, for
    SDFT, the EMA teacher (12-16 bytes per weight: 2.2 GB for a 135M SDFT run, about 110 GB at 7B) and only serve
    to resume the stage; the trained model is saved in `stage_dir` itself and the stage is recorded in
    progress.json first."""
    ckpt_dir = stage_dir / "checkpoints"
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)


@dataclass
class _Stages:
    """What every stage of every run of a sequence shares: the tasks, the base model, what to evaluate and how."""
    cfg: Config
    tasks: list
    task_specs: list
    tokenizer: Any
    base_model: Any
    retention: Any
    also_eval: dict
    eval_every: int
    eval_limit: int
    batch_size: int
    drift: bool
    drift_prompts: int
    keep_checkpoints: bool


def _run_stages(st: _Stages, spec: str, seed: int, run_dir: Path, prog: dict, prog_path: Path, label: str) -> None:
    """The unfinished stages of one (method, seed) run, from the last finished stage's weights (or the base
    model); each is recorded in progress.json as soon as it is evaluated."""
    from .models import load_model

    current = None
    if prog["stages"]:
        current, _, _ = load_model(str(run_dir / f"stage{len(prog['stages'])}"), dtype=st.cfg.model.dtype)
    for i in range(len(prog["stages"]) + 1, len(st.tasks) + 1):
        model_i = current if current is not None else copy.deepcopy(st.base_model).train()
        current, record, ckpts = _train_stage(st, spec, seed, i, model_i, run_dir / f"stage{i}", label)
        prog["stages"].append(record)
        prog["checkpoints"] += ckpts
        prog_path.write_text(json.dumps(prog, indent=1))
        if not st.keep_checkpoints:
            drop_resume_checkpoints(run_dir / f"stage{i}")


def _train_stage(st: _Stages, spec: str, seed: int, i: int, model, stage_dir: Path,
                 label: str) -> tuple[Any, dict, list[dict]]:
    """Train stage i (on tasks[i-1]) from `model`, resuming the stage's checkpoint if there is one, then evaluate
    every task. Returns (trained model, the stage's progress record, its checkpoints' evaluations)."""
    task = st.tasks[i - 1]
    stage_cfg = load_config(overrides={**_flatten(_run_settings(st.cfg)), **parse_method(spec)[1],
                                       "train.seed": seed, "data.path": _data_path(st.task_specs, i - 1, task)},
                            preset=st.cfg.preset)
    stage_cfg.deviations = list(st.cfg.deviations)
    resume = (stage_dir / "checkpoints").exists()
    last_step = stage_cfg.train.max_steps
    ckpts: list[dict] = []

    def on_step(step, m):
        if step == last_step:  # the end-of-stage evaluation below is this checkpoint's: not twice
            return None
        r = evaluate_stage(m, st.tokenizer, st.base_model, [task], st.retention, st.eval_limit, st.batch_size, False)
        rec = {"stage": i, "step": step, "new_task_acc": r["tasks"][task.name]["accuracy"],
               "retention": r["retention"]["accuracy"]}
        ckpts.append(rec)
        return {"eval_new_task_acc": rec["new_task_acc"], "eval_retention": rec["retention"]}
    print(f"[selfdistill] {label}: stage {i}/{len(st.tasks)} — training on {task.name} ({len(task.train)} "
          f"demonstrations, {last_step} steps)", file=sys.stderr)
    t0 = time.perf_counter()
    res = train_mod.train(stage_cfg, task.train, model, st.tokenizer, stage_dir, resume=resume, overwrite=not resume,
                          on_step=on_step if st.eval_every else None, eval_every=st.eval_every)
    train_s = time.perf_counter() - t0
    if res.stopped_early:  # Ctrl-C / SIGTERM: the stage's checkpoint is saved; rerun to resume
        raise SystemExit(f"[selfdistill] stopped during {spec} seed {seed} stage {i}; rerun the same command to "
                         f"resume from its checkpoint")
    ev = evaluate_stage(res.model, st.tokenizer, st.base_model, st.tasks, st.retention, st.eval_limit,
                        st.batch_size, st.drift, st.drift_prompts, st.also_eval)
    if st.eval_every:  # the last checkpoint is the trained model: its numbers are the stage's evaluation
        ckpts.append({"stage": i, "step": last_step, "new_task_acc": ev["tasks"][task.name]["accuracy"],
                      "retention": ev["retention"]["accuracy"]})
    curves = [{"stage": i, "step": m["step"], "loss": m.get("loss"),
               **{k: m[k] for k in ("forward_kl", "reverse_kl", "jsd", "sft_nll", "completion_len") if k in m}}
              for m in res.metrics]
    record = {"task": task.name, "eval": ev, "train_seconds": train_s, "curves": curves, "config": to_dict(stage_cfg)}
    return res.model, record, ckpts


RUN_LOCK = "RUNNING"


def claim_run(run_dir: Path) -> str | None:
    """Take a (method, seed) run for this process by creating run_dir/RUNNING exclusively (host, pid). Returns None
    when taken, else who holds it. A file left by a process that died on this host is taken over (with a
    notice); one from another host is respected until deleted by hand."""
    path = run_dir / RUN_LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = _read_claim(run_dir)
            if held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
                print(f"[selfdistill] {path}: pid {held['pid']} is gone; taking its run over", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            return _describe_claim(held)
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return "another process"


def _read_claim(run_dir: Path) -> dict:
    """The holder recorded in run_dir/RUNNING; {} when there is none (or its owner is writing it right now)."""
    try:
        return json.loads((run_dir / RUN_LOCK).read_text())
    except (OSError, ValueError):
        return {}


def _describe_claim(held: dict) -> str:
    return f"pid {held.get('pid', '?')} on {held.get('host', '?')} (since {held.get('since', '?')})"


def _holder(run_dir: Path) -> str:
    """', running now: pid P on HOST (since T)' while a process holds the run, else ''."""
    held = _read_claim(run_dir)
    return f", running now: {_describe_claim(held)}" if held else ""


def release_run(run_dir: Path) -> None:
    (run_dir / RUN_LOCK).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_dir_name(spec: str) -> str:
    return spec.replace("@", "_at_").replace("=", "-").replace(",", "_")


def run_sequence(task_specs: list, methods: list[str], seeds: int | list[int], output: str | Path, *,
                 model_name: str = "smollm2-135m", cfg: Config | None = None, eval_every: int = 0,
                 eval_limit: int = 0, batch_size: int = 16, task_kwargs: dict | None = None,
                 retention_kwargs: dict | None = None, probe: dict | None = None, title: str | None = None,
                 notes: list[str] | None = None, model=None, tokenizer=None, write_report: bool = True,
                 drift: bool = True, drift_prompts: int = 0, also_eval: dict | None = None,
                 extra_results: dict | None = None, order: list[tuple[str, int]] | None = None,
                 keep_checkpoints: bool = False) -> dict:
    """Run (or resume) the sequence and write results.json (+ CSVs and the report). Returns the results dict.

    `task_specs`: Task objects or specs (:func:`selfdistill.tasks.task_from_spec`; `task_kwargs` {name: kwargs}
    still works for built-in names). `also_eval` ({label: Task}): tasks evaluated at the base and after every
    stage but never trained on (the other knowledge phrasings are added automatically); they appear in results
    as `also` and in the report's "Also evaluated" table. `extra_results`: keys merged into results.json.
    `order`: the (method, seed) pairs in the order to run them (default: method by method). A run another process
    holds (:func:`claim_run`) is skipped, so the same command started several times on one folder shares the runs
    out. A finished stage's resume checkpoints are deleted (its trained model stays in stage<i>/) unless
    `keep_checkpoints`."""
    from .models import load_model
    from .tasks import get_task

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or load_config(preset="cpu")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    tasks = resolve_tasks(task_specs, task_kwargs or {})
    task_names = [t.name for t in tasks]
    also_eval = {**{k: v for t in tasks for k, v in knowledge_variants(t).items()}, **(also_eval or {})}
    retention = get_task("retention", **(retention_kwargs or {}))
    title = title or f"selfdistill sequence: {' -> '.join(task_names)}"
    _write_plan(out, title, model_name, tasks, task_specs, methods, seed_list)
    if model is None:
        model, tokenizer, _ = load_model(model_name, dtype=cfg.model.dtype)
    base_model = copy.deepcopy(model).eval()
    notes = list(notes or []) + [t.description for t in tasks if t.info.get("whole_file")]
    for t in tasks:
        if t.info.get("whole_file"):
            print(f"[selfdistill] {t.name}: no test= or split= given, so it is evaluated on its {len(t.test)} training "
                  f"records (recall of what was trained, not generalisation); FILE@split=0.2 or FILE@test=TEST "
                  f"holds records out", file=sys.stderr)
    (out / "results_extra.json").write_text(json.dumps({"config": to_dict(cfg), "notes": notes, "machine": _machine(),
                                                        **({"probe": probe} if probe else {}),
                                                        **(extra_results or {})}, indent=1, default=str))

    base_path = out / "base_eval.json"
    if base_path.exists():
        base_eval = json.loads(base_path.read_text())
    else:
        base_eval = evaluate_stage(base_model, tokenizer, base_model, tasks, retention, eval_limit, batch_size, False,
                                   also_eval=also_eval)
        base_path.write_text(json.dumps(base_eval, indent=1))
    st = _Stages(cfg, tasks, task_specs, tokenizer, base_model, retention, also_eval, eval_every, eval_limit,
                 batch_size, drift, drift_prompts, keep_checkpoints)
    runs = []
    pairs = order or [(m, k) for m in methods for k in seed_list]
    for n_run, (spec, seed) in enumerate(pairs, start=1):
        run_dir = out / run_dir_name(spec) / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        prog_path = run_dir / "progress.json"
        prog = json.loads(prog_path.read_text()) if prog_path.exists() else {"stages": [], "checkpoints": []}
        label = f"run {n_run}/{len(pairs)}: {spec} seed {seed}"
        if len(prog["stages"]) < len(tasks):
            holder = claim_run(run_dir)
            if holder:  # another process (the same command started twice, another machine) is running it
                print(f"[selfdistill] {label}: skipped, {holder} is running it ({run_dir / RUN_LOCK}; delete that "
                      f"file if that process is gone)", file=sys.stderr)
                continue
            try:
                _run_stages(st, spec, seed, run_dir, prog, prog_path, label)
            finally:
                release_run(run_dir)
        runs.append(_run_record(spec, seed, task_names, base_eval, prog))
    results = {"title": title, "model": model_name, "machine": _machine(), "date": time.strftime("%Y-%m-%d"),
               "config": to_dict(cfg), "tasks": task_names, "retention_name": "retention (all items)",
               "runs": runs, "notes": notes, **(extra_results or {})}
    if probe is not None:
        results["probe"] = probe
    from .metrics import write_results
    write_results(out, results)
    if write_report:
        from .report import write_report as _wr
        md, html = _wr(out)
        print(f"[selfdistill] report: {html}", file=sys.stderr)
    return results


def resolve_tasks(task_specs: list, task_kwargs: dict) -> list:
    """Task objects from specs (duplicates by name are an error: results are keyed by task name)."""
    from .data import DataError
    from .tasks import Task, get_task, task_from_spec

    tasks = []
    for spec in task_specs:
        if isinstance(spec, Task):
            tasks.append(spec)
        elif spec in task_kwargs:
            tasks.append(get_task(spec, **task_kwargs[spec]))
        else:
            tasks.append(task_from_spec(spec))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"two tasks named {dupes[0]!r}; give one a different name with @name=...")
    return tasks


def _data_path(task_specs: list, i: int, task) -> str:
    """The stage's data.path as recorded in its config: task:<spec> (loadable by `selfdistill train --data`)."""
    spec = task_specs[i]
    return f"task:{spec}" if isinstance(spec, str) and not spec.startswith("task:") else \
        (spec if isinstance(spec, str) else f"task:{task.name}")


def _write_plan(out: Path, title: str, model_name: str, tasks: list, task_specs: list, methods: list[str],
                seeds: list[int]) -> None:
    """plan.json: what the folder is meant to hold. A later command on the same folder and tasks (more seeds, more
    methods, or one process per seed) extends the plan; different tasks replace it."""
    path = out / "plan.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    names = [t.name for t in tasks]
    if old.get("tasks") == names:
        methods = list(dict.fromkeys([*old["methods"], *methods]))
        seeds = list(dict.fromkeys([*old["seeds"], *seeds]))
    plan = {"title": title, "model": model_name, "tasks": names,
            "task_specs": [s if isinstance(s, str) else s.name for s in task_specs],
            "methods": list(methods), "seeds": list(seeds), "run_dirs": {m: run_dir_name(m) for m in methods}}
    path.write_text(json.dumps(plan, indent=1))


def collect_results(out: str | Path) -> dict:
    """results.json's content rebuilt from plan.json, base_eval.json and the progress of every (method, seed)
    found; ``partial`` lists what is missing (runs not started, stages not finished). Used by `report` on a
    stopped run. Raises FileNotFoundError with a one-line message when there is nothing to report."""
    out = Path(out)
    plan_path, base_path = out / "plan.json", out / "base_eval.json"
    if not plan_path.exists() or not base_path.exists():
        raise FileNotFoundError(f"{out}: no results.json, and no finished base evaluation to report from "
                                f"({'plan.json' if not plan_path.exists() else 'base_eval.json'} missing): "
                                f"the run stopped before evaluating anything")
    plan = json.loads(plan_path.read_text())
    base_eval = json.loads(base_path.read_text())
    extra = json.loads((out / "results_extra.json").read_text()) if (out / "results_extra.json").exists() else {}
    runs, missing = [], []
    for spec in plan["methods"]:
        for seed in plan["seeds"]:
            run_dir = out / plan["run_dirs"][spec] / f"seed{seed}"
            prog_path = run_dir / "progress.json"
            prog = json.loads(prog_path.read_text()) if prog_path.exists() else {"stages": [], "checkpoints": []}
            done = len(prog["stages"])
            if done < len(plan["tasks"]):
                missing.append(f"{spec} seed {seed}: " + ("not started" if not run_dir.exists() else
                               f"started, {done} of {len(plan['tasks'])} stages finished") + _holder(run_dir))
            if done:
                runs.append(_run_record(spec, seed, plan["tasks"], base_eval, prog))
    return {"title": plan["title"], "model": plan["model"], "machine": extra.get("machine", _machine()),
            "date": time.strftime("%Y-%m-%d"), "config": extra.get("config", {}), "tasks": plan["tasks"],
            "retention_name": "retention (all items)", "runs": runs, "notes": extra.get("notes", []),
            **{k: v for k, v in extra.items() if k not in ("config", "notes", "machine")},
            "partial": {"missing": missing, "n_planned": len(plan["methods"]) * len(plan["seeds"]),
                        "n_reported": len(runs)}}


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
        "retention_items": {"ids": base_eval["retention"].get("ids"),
                            "correct": [e["retention"].get("correct") for e in evals],
                            "margin": [e["retention"].get("margin") for e in evals]},
        "drift": [e.get("drift", 0.0) for e in evals],
        "curves": [c for s in prog["stages"] for c in s["curves"]],
        "checkpoints": prog["checkpoints"],
        "train_seconds": [s["train_seconds"] for s in prog["stages"]],
        "also": {k: {"accuracy": [e.get("also", {}).get(k, {}).get("accuracy") for e in evals], "n": v["n"]}
                 for k, v in base_eval.get("also", {}).items()},
        "groups": {t: {g: [e["tasks"][t].get("groups", {}).get(g, {}).get("accuracy") for e in evals]
                       for g in base_eval["tasks"][t].get("groups", {})} for t in task_names
                   if base_eval["tasks"][t].get("groups")},
    }


def cli_task_specs(args) -> list[str]:
    """--tasks a,b (built-in names, comma-separated) followed by each --task SPEC (a name or a file with options),
    in the order given on the command line."""
    specs = [t.strip() for t in (getattr(args, "tasks", None) or "").split(",") if t.strip()]
    specs += list(getattr(args, "task", None) or [])
    if not specs:
        raise ConfigError("give tasks with --tasks NAME,NAME and/or --task "
                         "NAME_OR_FILE[@scorer=...,test=FILE,split=0.2] (repeatable)")
    return specs


def run_sequence_cli(args, extra: list[str]) -> int:
    overrides = parse_dotted_overrides(extra)
    overrides["train.max_steps"] = args.max_steps
    cfg = load_config(args.config, overrides, preset=args.preset)
    specs = cli_task_specs(args)
    resolve_tasks(specs, {})  # a bad spec fails before the model loads
    run_sequence(specs, [m.strip() for m in args.methods.split(",") if m.strip()], parse_seeds(args.seeds),
                 args.output, model_name=args.model, cfg=cfg, eval_every=args.eval_every,
                 eval_limit=args.eval_limit, keep_checkpoints=args.keep_checkpoints)
    return 0
