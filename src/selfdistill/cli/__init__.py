"""`selfdistill` command line: train, eval, probe, sequence, sweep, report, demo, env.

One small module per command, each with `add_parser(subparsers)` and `run(args, extra) -> exit code`. The
command modules turn the parsed flags into typed objects (Config, MethodSpec, SequenceOptions, DemoOptions, ...)
before calling domain code: no argparse namespace goes past this package.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError
from ..data import DataError
from ..models import ModelError
from ..training import TrainingError
from ..training.checkpoint import CheckpointError
from . import demo, env, evaluate, report, sequence, sweep, train

# name -> (add its parser, run it, takes dotted config overrides)
COMMANDS = {
    "train": (train.add_parser, train.run, True),
    "eval": (evaluate.add_eval_parser, evaluate.run_eval, False),
    "probe": (evaluate.add_probe_parser, evaluate.run_probe, False),
    "sequence": (sequence.add_parser, sequence.run, True),
    "sweep": (sweep.add_parser, sweep.run, True),
    "report": (report.add_parser, report.run, False),
    "demo": (demo.add_parser, demo.run, True),
    "env": (env.add_parser, env.run, False),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfdistill", description="Self-Distillation Fine-Tuning (SDFT): learn "
                                 "from demonstrations on-policy, with an SFT/DFT baseline in the same loop.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add, _, _ in COMMANDS.values():
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    _, run, takes_overrides = COMMANDS[args.cmd]
    if extra and not takes_overrides:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return run(args, extra)
    except (ConfigError, DataError, ModelError, TrainingError, CheckpointError) as e:
        rank = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"selfdistill {args.cmd}: error{rank}: {e}", file=sys.stderr)
        return 2
