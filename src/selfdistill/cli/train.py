"""`selfdistill train`: SDFT (or the SFT/DFT baselines) on demonstrations; `--num-processes N` relaunches itself
under accelerate (DDP, or FSDP2 with --dist fsdp)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from ..config import load_config, parse_dotted_overrides, to_yaml
from ..models import load_model
from ..tasks import load_training_examples
from ..training import check_launch, planned_strategy, train
from .common import add_model_arg
from .launch import relaunch

CONFIG_SHOWN = "SELFDISTILL_CONFIG_SHOWN"  # set by the launcher for its workers: the config is printed once


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train with SDFT (or the SFT/DFT baselines) on demonstrations",
                       epilog="Any config key can be overridden with a dotted flag, e.g. --loss.divergence "
                              "reverse_kl --teacher.kind frozen --rollout.max_new_tokens 128")
    p.add_argument("--method", choices=["sdft", "sft", "dft"])
    add_model_arg(p)
    p.set_defaults(model=None)
    p.add_argument("--data", help="JSONL/JSON/save_to_disk folder/hub dataset, FILE@split=0.2 (train on the rest), "
                                  "or task:<name> (e.g. task:knowledge)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--preset", choices=["paper", "cpu"], help="paper (the paper's settings) or cpu (short "
                   "generations, 8 prompts per step); default: paper with a CUDA GPU, cpu without one")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --output")
    p.add_argument("--num-processes", type=int, dest="num_processes", default=0,
                   help="run under accelerate with N processes (or use `accelerate launch -m selfdistill train`)")
    p.add_argument("--dist", choices=["auto", "ddp", "fsdp"],
                   help="several processes: ddp (replicas; the default) or fsdp (FSDP2: student, EMA teacher and "
                        "optimizer sharded); = --dist.strategy")


def resolve_preset(args_preset: str | None, config_path: str | None, overrides: dict) -> tuple[str | None, str]:
    """The preset `train` uses, and a one-line note. Named (flag, --preset=, config file) wins; otherwise
    `paper` on a machine with a CUDA GPU and `cpu` without one (the paper's 32 prompts x 2048 tokens per step
    take hours per step on a laptop CPU)."""
    named = args_preset or overrides.get("preset")
    if named is None and config_path and Path(config_path).exists():
        named = (yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}).get("preset")
    if named is not None:
        return named, f"# preset: {named} (as asked)"
    if torch.cuda.is_available():
        return "paper", "# preset: paper (the paper's settings; a GPU was found)"
    return "cpu", ("# preset: cpu, because no GPU was found (64 new tokens, 8 prompts per step); "
                   "--preset paper gives the paper's 2048 tokens x 32 prompts (hours per step on a CPU)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = parse_dotted_overrides(extra)
    for key, val in (("train.method", args.method), ("model.name", args.model), ("data.path", args.data),
                     ("train.max_steps", args.max_steps), ("train.seed", args.seed), ("dist.strategy", args.dist)):
        if val is not None:
            overrides[key] = val
    preset, why = resolve_preset(args.preset, args.config, overrides)
    cfg = load_config(args.config, overrides, preset=preset)
    if not cfg.data.path:
        raise SystemExit("selfdistill train: --data is required (a data file, or task:<name> for a built-in task)")
    launcher = bool(args.num_processes and args.num_processes > 1 and "LOCAL_RANK" not in os.environ)
    if launcher:  # every setting that can be checked without a process group fails here, once, before any worker
        check_launch(cfg, args.num_processes, planned_strategy(cfg.dist.strategy, args.num_processes))
    if not os.environ.get(CONFIG_SHOWN) and int(os.environ.get("RANK", "0")) == 0:
        print(why)
        print("# resolved config (preset: %s)" % cfg.preset)
        for d in cfg.deviations:
            print(f"# deviation from the paper: {d}")
        print(to_yaml(cfg))
    examples = load_training_examples(cfg.data.path)
    if launcher:
        return relaunch(args.num_processes, CONFIG_SHOWN)
    model, tok, info = load_model(cfg.model.name, dtype=cfg.model.dtype)
    res = train(cfg, examples, model, tok, args.output, resume=args.resume, overwrite=args.overwrite)
    if res.skipped_records:
        print(f"skipped {res.skipped_records} records over their token budget (data.on_overlength=skip)")
    return 0
