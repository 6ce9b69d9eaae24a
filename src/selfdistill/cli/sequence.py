"""`selfdistill sequence`: continual learning, tasks trained one after another and all evaluated after each."""

from __future__ import annotations

import argparse

from ..config import load_config, parse_dotted_overrides
from ..runs import SequenceOptions, run_sequence
from ..runs.sequence import resolve_tasks
from .common import TASK_HELP, add_run_folder_args, method_specs_arg, parse_seeds, task_specs_arg


def add_parser(sub) -> None:
    p = sub.add_parser("sequence", help="continual learning: train on tasks one after another and evaluate all")
    p.add_argument("--tasks", help="comma-separated built-in task names, trained in this order")
    p.add_argument("--task", action="append", help=TASK_HELP + ", trained after --tasks in the order given")
    p.add_argument("--methods", default="sdft,sft", help="comma-separated methods, variants as sft@lr=2e-5")
    p.add_argument("--max-steps", type=int, default=20, dest="max_steps")
    add_run_folder_args(p, eval_every=0)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = parse_dotted_overrides(extra)
    overrides["train.max_steps"] = args.max_steps
    cfg = load_config(args.config, overrides, preset=args.preset)
    specs = task_specs_arg(args.tasks, args.task)
    methods = method_specs_arg(args.methods)
    seeds = parse_seeds(args.seeds)
    resolve_tasks(specs)  # a bad spec fails before the model loads
    opts = SequenceOptions(args.output, cfg, seeds=seeds, model_name=args.model, eval_every=args.eval_every,
                           eval_limit=args.eval_limit, keep_checkpoints=args.keep_checkpoints)
    run_sequence(specs, methods, opts)
    return 0
