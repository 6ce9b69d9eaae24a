"""`selfdistill sweep`: methods x learning rates (x any config key) x seeds, with each method's frontier."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..config import ConfigError, load_config, parse_dotted_overrides
from ..methods import METHODS
from ..runs import SequenceOptions, SweepAxes, run_sweep
from ..runs.presets import DEMO
from ..runs.sequence import resolve_tasks
from .common import TASK_HELP, add_run_folder_args, parse_seeds, task_specs_arg


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="methods x learning rates (x any config key) x seeds on a task or sequence; "
                       "report with each method's frontier of new-task accuracy vs retention",
                       epilog="Resumable: rerun the same command to skip finished runs. Other config keys as "
                              "dotted flags, e.g. --train.max_steps 40 --rollout.max_new_tokens 32")
    p.add_argument("--tasks", help="comma-separated built-in task names (a sequence when several)")
    p.add_argument("--task", action="append", help=TASK_HELP)
    p.add_argument("--methods", default="sdft,sft", help="comma-separated methods (sdft, sft, dft)")
    p.add_argument("--lrs", required=True, help="comma-separated learning rates, e.g. 3e-5,1e-4,3e-4,1e-3")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep any dotted config key too, e.g. --grid model.lora=true,false (repeatable)")
    add_run_folder_args(p, eval_every=10,
                        eval_every_help="evaluate checkpoints every N steps (the frontier's points; default 10)")
    p.add_argument("--demo-settings", action="store_true", dest="demo_settings",
                   help="start from the demo's settings (32 knowledge facts' budget: 40 steps of 8 prompts, 32 "
                        "new tokens, teacher template paper_no_thinking, ...) before your flags")


def parse_lrs(text: str, flag: str = "--lrs") -> list[str]:
    """'1e-4,3e-4' -> ['1e-4', '3e-4'] (kept as written, for run names); a one-line error naming the flag."""
    vals = [v.strip() for v in str(text).split(",") if v.strip()]
    if not vals:
        raise ConfigError(f"{flag} needs at least one learning rate, e.g. 1e-4,3e-4")
    for v in vals:
        try:
            ok = math.isfinite(float(v)) and float(v) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{flag}: {v!r} is not a positive number (in {text!r})")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{flag} lists a value twice: {text!r}")
    return vals


def parse_grid(items: list[str], flag: str = "--grid") -> dict[str, list[str]]:
    """['model.lora=true,false'] -> {'model.lora': ['true', 'false']}; each value is checked against the config
    (type, allowed choices) so a bad value fails here, naming the flag."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, eq, vals = item.partition("=")
        key = key.strip().lstrip("-")
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not eq or "." not in key or not values:
            raise ConfigError(f"{flag} {item!r}: expected KEY=V1,V2 with a dotted config key, "
                              "e.g. model.lora=true,false")
        if key in ("optim.lr", "train.method", "train.seed"):
            raise ConfigError(f"{flag} {item!r}: use --lrs / --methods / --seeds for {key}")
        for v in values:
            try:
                load_config(overrides={key: v}, preset="cpu")
            except ConfigError as e:
                raise ConfigError(f"{flag} {item!r}: value {v!r} does not parse ({e})") from None
        grid[key] = values
    return grid


def plain_methods(text: str) -> list[str]:
    """--methods of a sweep: plain method names (variants come from --lrs and --grid)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: unknown method {m!r} ({', '.join(METHODS)}); vary other "
                              "settings with --grid")
    return methods


def run(args: argparse.Namespace, extra: list[str]) -> int:
    specs = task_specs_arg(args.tasks, args.task)
    axes = SweepAxes(plain_methods(args.methods), parse_lrs(args.lrs), parse_grid(args.grid))
    seeds = parse_seeds(args.seeds)
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    if args.demo_settings:
        overrides.update(DEMO.config_overrides())
        overrides.pop("optim.lr", None)
        notes.append("Settings: the demo's (selfdistill demo), learning rate swept. " + DEMO.why[1])
    overrides.update(parse_dotted_overrides(extra))
    cfg = load_config(args.config, overrides, preset=args.preset)
    for spec in axes.specs():  # every combination is a valid config before anything runs
        load_config(args.config, {**overrides, **spec.overrides}, preset=args.preset)
    resolve_tasks(specs)  # a bad task spec fails before the model loads
    opts = SequenceOptions(args.output, cfg, seeds=seeds, model_name=args.model, eval_every=args.eval_every,
                           eval_limit=args.eval_limit, notes=notes, keep_checkpoints=args.keep_checkpoints)
    run_sweep(specs, axes, opts)
    return 0
