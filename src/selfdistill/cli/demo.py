"""`selfdistill demo`: the main job (probe, SDFT vs SFT on the default task, evaluation, report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import parse_dotted_overrides
from ..runs import DemoOptions, run_demo
from .common import KEEP_HELP, SEEDS_HELP, add_model_arg, method_specs_arg, parse_seeds


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: probe, SDFT vs SFT on the default task, evaluation, report")
    p.add_argument("--output", default="runs/demo")
    add_model_arg(p)
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods instead of the demo's (sdft,sft@lr=1e-4,sft@lr=2e-5), e.g. "
                        "'sdft@template=paper,sft@lr=3e-4' for an ablation at the demo's settings")
    p.add_argument("--seeds", default="1",
                   help=SEEDS_HELP + "; each seed of each method is one more training run (~2.5-6 min each on 2 "
                        "CPU cores)")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints", help=KEEP_HELP)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    opts = DemoOptions(Path(args.output), args.model, args.quick,  # bad flags fail here, before the model loads
                       method_specs_arg(args.methods) if args.methods else None, parse_seeds(args.seeds),
                       args.keep_checkpoints, parse_dotted_overrides(extra))
    run_demo(opts)
    return 0
