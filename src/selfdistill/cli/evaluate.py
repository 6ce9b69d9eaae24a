"""`selfdistill eval` (new-task accuracy and retention, lm-eval benchmarks) and `selfdistill probe` (before
training: does the teacher beat the student?)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .. import tasks
from ..config import ContextConfig
from ..data import DataError
from ..engines import make_engine
from ..evaluation import evaluate_tasks, format_probe, probe
from ..evaluation.probe import no_demonstrations
from ..evaluation.lmeval import print_results, run_lm_eval
from ..evaluation.table import fmt_ci, print_table
from ..models import load_model
from .common import STRIP_HELP, TASK_HELP, add_model_arg


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="new-task accuracy and retention, with Wilson 95%% intervals")
    add_model_arg(p)
    p.add_argument("--tasks", default=None, help="comma-separated built-in task names, or lm-eval:<tasks> "
                   "(default knowledge,retention when no --task/--data is given)")
    p.add_argument("--task", action="append", help=TASK_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="at most N items per task (0: all)")
    p.add_argument("--batch-size", type=int, default=32, dest="batch_size",
                   help="items per batch, across tasks (generation and log-likelihoods)")
    p.add_argument("--output", help="write results (and per-item outputs) to this JSON file")
    p.add_argument("--data", help="a data file to evaluate whole (only it, unless --tasks/--task are given too)")
    p.add_argument("--scorer", default="exact",
                   help="scorer for --data: exact | contains_word | regex | function_call | multiple_choice")
    p.add_argument("--strip-thinking", choices=["auto", "yes", "no"], default="auto", dest="strip_thinking",
                   help=STRIP_HELP)
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="generation engine for generated answers: hf (transformers) or vllm (optional extra; docs/vllm.md)")


def add_probe_parser(sub) -> None:
    p = sub.add_parser("probe", help="before training: does the teacher (demonstration in context) beat the student?")
    add_model_arg(p)
    p.add_argument("--task", default="knowledge", help=TASK_HELP.replace("; repeatable", ""))
    p.add_argument("--data", help="a user data file instead of a built-in task")
    p.add_argument("--scorer", default="exact", help="scorer for --data (see eval --help)")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16, dest="batch_size")
    p.add_argument("--output", help="write the probe results to this JSON file")
    p.add_argument("--strip-thinking", choices=["auto", "yes", "no"], default="auto", dest="strip_thinking",
                   help=STRIP_HELP)



def split_task_names(spec: str) -> tuple[list[str], list[str]]:
    """'knowledge,retention,lm-eval:hellaswag,mmlu' -> (['knowledge', 'retention'], ['hellaswag', 'mmlu']).

    Everything after 'lm-eval:' is a comma-separated list of lm-eval task names.
    """
    spec = spec.strip()
    ours, _, lm = spec.partition("lm-eval:")
    own = [t.strip() for t in ours.split(",") if t.strip()]
    lm_tasks = [t.strip() for t in lm.split(",") if t.strip()]
    if "lm-eval:" in spec and not lm_tasks:
        raise ValueError("--tasks lm-eval: needs task names, e.g. lm-eval:hellaswag,mmlu")
    return own, lm_tasks


def resolve_task(name: str, data: str | None = None, scorer: str = "exact", *, all_phrasings: bool = False):
    """A task from a spec (:func:`selfdistill.tasks.task_from_spec`: a built-in name with options, or a file with
    options), or ``user`` built from `data` scored with `scorer`. `all_phrasings`: a bare ``knowledge`` gets
    every test phrasing (``selfdistill eval`` reports them separately)."""
    try:
        if name == "user" or (data and name in ("", None)):
            if not data:
                raise DataError("task 'user' needs --data PATH")
            _, opts = tasks.parse_task_spec(data)
            return tasks.task_from_spec(data if "scorer" in opts else _with_option(data, "scorer", scorer))
        if all_phrasings and name == "knowledge":
            name = "knowledge@test_phrasing=all"
        return tasks.task_from_spec(name)
    except DataError:
        raise
    except ValueError as e:  # unknown task / scorer: one line from the CLI, not a traceback
        raise DataError(str(e)) from None


def _with_option(spec: str, key: str, value: str) -> str:
    name, opts = tasks.parse_task_spec(spec)
    opts[key] = value
    return name + "@" + ",".join(f"{k}={v}" for k, v in opts.items())


def eval_task_specs(tasks_arg: str | None, task_args: list[str] | None, data: str | None) -> tuple[list, list]:
    """(own task specs, lm-eval task names) for `selfdistill eval`: exactly what was asked (`--tasks` names,
    each `--task` spec, `--data`); knowledge and retention only when nothing was asked."""
    own, lm_tasks = split_task_names(tasks_arg or "")
    own += list(task_args or [])
    if data:
        own.append("user")
    if not own and not lm_tasks:
        own = ["knowledge", "retention"]
    return own, lm_tasks


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def write_json(path: str, obj: dict) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default), encoding="utf-8")


def run_eval(args: argparse.Namespace, extra: list[str]) -> int:
    own, lm_tasks = eval_task_specs(args.tasks, args.task, args.data)
    task_objs = [resolve_task(n, args.data, args.scorer, all_phrasings=True) for n in own]  # fail before loading
    model, tok, info = load_model(args.model)
    engine = None
    if args.engine != "hf" and any(t.kind != "multiple_choice" for t in task_objs):  # generated answers via vLLM
        engine = make_engine(args.engine, model, tok, None, batch_size=args.batch_size)
    results: dict[str, Any] = {"model": info.name, "model_path": info.path, "split": args.split,
                               "limit": args.limit, "tasks": {}}
    rows = []
    every = evaluate_tasks(model, tok, {i: (t, args.limit) for i, t in enumerate(task_objs)}, args.split,
                           args.batch_size, args.strip_thinking, engine)  # shared generation batches
    for i, task in enumerate(task_objs):
        r = every[i]
        results["tasks"][task.name] = r
        for label, g in ([(f"{task.name} [{k}]", v) for k, v in r["groups"].items()] if r.get("groups")
                         else [(task.name, r)]):
            rows.append([label, str(g["n"]), f"{g['accuracy']:.3f}", fmt_ci(g["ci95"])])
    if rows:
        print_table(f"selfdistill eval: {info.name} ({args.split} split)", ["task", "n", "accuracy", "95% CI"], rows)
    if lm_tasks:
        lm = run_lm_eval(model, tok, lm_tasks, limit=args.limit or None, batch_size=args.batch_size)
        results["lm_eval"] = {t: {"metric": m, "value": v, "stderr": se} for t, (m, v, se) in lm.items()}
        print_results(lm)
    if args.output:
        write_json(args.output, results)
        print(f"results written to {args.output}")
    return 0


def run_probe(args: argparse.Namespace, extra: list[str]) -> int:
    task = resolve_task("user" if args.data else args.task, args.data, args.scorer)
    if not task.train:
        raise no_demonstrations(task.name)
    model, tok, info = load_model(args.model)
    r = probe(model, tok, task, ContextConfig(), limit=args.limit, batch_size=args.batch_size,
              strip_thinking=args.strip_thinking)
    r["model"] = info.name
    print(format_probe(r))
    if args.output:
        write_json(args.output, r)
        print(f"probe written to {args.output}")
    return 0
