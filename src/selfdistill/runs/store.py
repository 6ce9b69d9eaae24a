"""What a run folder holds, read and written in one place: the plan, run claims, progress, results, the report.

On disk:  OUTPUT/plan.json  (tasks, methods, seeds: what the run will produce; `report` names what is missing)
          OUTPUT/<method>/seed<k>/stage<i>/   (the trained model of stage i, metrics.jsonl, checkpoints)
          OUTPUT/<method>/seed<k>/progress.json  (evaluations of finished stages)
          OUTPUT/<method>/seed<k>/RUNNING  (held while a process runs that (method, seed); host, pid, since)
          OUTPUT/base_eval.json, OUTPUT/results_extra.json, OUTPUT/results.json (+ CSVs), OUTPUT/report.md / .html
The <method> folder is the method spec's `dir_name` (selfdistill.methods.MethodSpec).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import metrics as M
from ..methods import MethodSpec
from ..report import RESULTS_FILE, load_results, write_report


def machine() -> str:
    """The machine in one line, for results and reports."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{platform.machine()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"


RUN_LOCK = "RUNNING"


def _read_json(path: Path, missing):
    """A JSON file of the folder, or `missing` when it has not been written yet."""
    return json.loads(path.read_text()) if path.exists() else missing


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


def holder_note(run_dir: Path) -> str:
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


def write_plan(out: Path, title: str, model_name: str, tasks: list, task_specs: list, methods: list[MethodSpec],
               seeds: list[int]) -> None:
    """plan.json: what the folder is meant to hold. A later command on the same folder and tasks (more seeds, more
    methods, or one process per seed) extends the plan; different tasks replace it."""
    path = out / "plan.json"
    old = _read_json(path, {})
    names = [t.name for t in tasks]
    texts = [str(m) for m in methods]
    if old.get("tasks") == names:
        texts = list(dict.fromkeys([*old["methods"], *texts]))
        seeds = list(dict.fromkeys([*old["seeds"], *seeds]))
    plan = {"title": title, "model": model_name, "tasks": names,
            "task_specs": [s if isinstance(s, str) else s.name for s in task_specs],
            "methods": texts, "seeds": list(seeds), "run_dirs": {m: MethodSpec.parse(m).dir_name for m in texts}}
    path.write_text(json.dumps(plan, indent=1))


@dataclass
class RunProgress:
    """One (method, seed) run's finished stages: OUTPUT/<method>/seed<k>/progress.json. Each stage record holds
    its task, evaluation, training seconds, curves and config; `checkpoints` the evaluations along training."""
    path: Path
    stages: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: Path) -> RunProgress:
        path = run_dir / "progress.json"
        rec = _read_json(path, {})
        return cls(path, rec.get("stages", []), rec.get("checkpoints", []))

    def add_stage(self, record: dict, checkpoints: list[dict]) -> None:
        """Record a finished stage (written at once: a stopped run resumes after it)."""
        self.stages.append(record)
        self.checkpoints += checkpoints
        self.path.write_text(json.dumps({"stages": self.stages, "checkpoints": self.checkpoints}, indent=1))


def run_dir(out: Path, spec: MethodSpec | str, seed: int) -> Path:
    return out / MethodSpec.parse(spec).dir_name / f"seed{seed}"


def load_base_eval(out: Path) -> dict | None:
    return _read_json(out / "base_eval.json", None)


def save_base_eval(out: Path, base_eval: dict) -> None:
    (out / "base_eval.json").write_text(json.dumps(base_eval, indent=1))


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
    extra = load_results_extra(out)
    runs, missing = [], []
    for spec in plan["methods"]:
        for seed in plan["seeds"]:
            folder = out / plan["run_dirs"][spec] / f"seed{seed}"
            prog = RunProgress.load(folder)
            done = len(prog.stages)
            if done < len(plan["tasks"]):
                missing.append(f"{spec} seed {seed}: " + ("not started" if not folder.exists() else
                               f"started, {done} of {len(plan['tasks'])} stages finished") + holder_note(folder))
            if done:
                runs.append(run_record(spec, seed, plan["tasks"], base_eval, prog))
    return {"title": plan["title"], "model": plan["model"], "machine": extra.get("machine", machine()),
            "date": time.strftime("%Y-%m-%d"), "config": extra.get("config", {}), "tasks": plan["tasks"],
            "retention_name": "retention (all items)", "runs": runs, "notes": extra.get("notes", []),
            **{k: v for k, v in extra.items() if k not in ("config", "notes", "machine")},
            "partial": {"missing": missing, "n_planned": len(plan["methods"]) * len(plan["seeds"]),
                        "n_reported": len(runs)}}


def run_record(spec: str, seed: int, task_names: list[str], base_eval: dict, prog: RunProgress) -> dict:
    """One run's entry of results.json (schema: selfdistill.report.schema)."""
    evals = [base_eval] + [s["eval"] for s in prog.stages]
    eval_s = [e.get("seconds") for e in evals]  # absent in folders written before 2026-12-02: not invented
    timed = {"eval_seconds": [eval_s[0]] + [x + s.get("checkpoint_eval_seconds", 0.0) for x, s in
                                            zip(eval_s[1:], prog.stages)]} if None not in eval_s else {}
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
        "curves": [c for s in prog.stages for c in s["curves"]],
        "checkpoints": prog.checkpoints,
        "train_seconds": [s["train_seconds"] for s in prog.stages],
        "also": {k: {"accuracy": [e.get("also", {}).get(k, {}).get("accuracy") for e in evals], "n": v["n"]}
                 for k, v in base_eval.get("also", {}).items()},
        "groups": {t: {g: [e["tasks"][t].get("groups", {}).get(g, {}).get("accuracy") for e in evals]
                       for g in base_eval["tasks"][t].get("groups", {})} for t in task_names
                   if base_eval["tasks"][t].get("groups")},
        **({"item_tables": item_tables(evals)} if base_eval.get("item_tables") else {}),
        **timed,
    }


def item_tables(evals: list[dict]) -> dict:
    """{label: {ids, fields, outcomes: {name: [per evaluation (base, stage 1, ...): [0/1 per item]]}}}, for the
    tasks evaluated item by item (evaluation.item_table); a stage without a label's table gives None there."""
    out = {}
    for label, base in evals[0]["item_tables"].items():
        stages = [e.get("item_tables", {}).get(label) for e in evals]
        out[label] = {"ids": base["ids"], "fields": base["fields"],
                      "outcomes": {k: [None if t is None else t["outcomes"][k] for t in stages]
                                   for k in base["outcomes"]}}
    return out


def write_results_extra(out: Path, extra: dict) -> None:
    """results_extra.json: what results.json holds beyond the runs (config, notes, machine, probe, sweep axes)."""
    (out / "results_extra.json").write_text(json.dumps(extra, indent=1, default=str))


def load_results_extra(out: Path) -> dict:
    return _read_json(out / "results_extra.json", {})


def report_folder(out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md + report.html (+ PNGs and CSVs) for a run folder; returns their paths.

    A sequence/sweep/demo folder (plan.json and base_eval.json): its progress files are the record (a stopped run,
    or several processes or commands sharing the folder), and results.json is rewritten from them; the report is
    marked partial and names what is missing. Otherwise the folder's results.json (any producer, schema in
    selfdistill.report.schema). A one-line FileNotFoundError when there is nothing to report."""
    out = Path(out_dir)
    if (out / "plan.json").exists() and (out / "base_eval.json").exists():
        results = collect_results(out)
        if results["runs"]:
            M.write_results(out, {k: v for k, v in results.items() if k != "partial" or v["missing"]})
        if not results["partial"]["missing"]:
            del results["partial"]
    elif (out / RESULTS_FILE).exists():
        results = load_results(out)
    else:
        results = collect_results(out)  # raises the one-line FileNotFoundError: nothing to report
    return write_report(out, results)
