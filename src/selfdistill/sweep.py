"""`selfdistill sweep`: methods x learning rates (x any dotted config key) x seeds on one task or a sequence.

Every combination is one run of :func:`selfdistill.sequence.run_sequence` under the method spec
``<method>@lr=<lr>[,<key>=<value>...]`` (e.g. ``sft@lr=1e-4,model.lora=true``), so a sweep is resumable exactly
like `sequence`: rerunning the same command skips the finished runs and stages, and continues a stopped stage
from its checkpoint. Runs are ordered seed by seed, and within a seed learning rate by learning rate with the
methods interleaved, so a sweep stopped early still has every method at the rates it reached.

The report (:mod:`selfdistill.report`) plots every run and its checkpoints as (new-task accuracy, retention),
draws each method's Pareto frontier from the base model's point, and reads the acquisition-matched comparison
off the frontiers, with intervals over seeds.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

from .config import ConfigError, load_config, parse_dotted_overrides


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


def method_specs(methods: list[str], lrs: list[str], grid: dict[str, list[str]]) -> list[str]:
    """Method specs of the sweep: lr-major, methods interleaved, grid values innermost."""
    for m in methods:
        if m not in ("sdft", "sft", "dft"):
            raise ConfigError(f"--methods: unknown method {m!r} (sdft, sft, dft); vary other "
                             "settings with --grid")
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) or [()]
    return [f"{m}@lr={lr}" + "".join(f",{k}={v}" for k, v in zip(keys, combo))
            for lr in lrs for m in methods for combo in combos]


def sweep_order(specs: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Seed-major: every method and rate at the first seed before any at the second."""
    return [(spec, seed) for seed in seeds for spec in specs]


def run_sweep(task_specs: list, methods: list[str], lrs: list[str], grid: dict[str, list[str]], seeds: list[int],
              output: str, **kw: Any) -> dict:
    from .sequence import run_sequence

    specs = method_specs(methods, lrs, grid)
    title = kw.pop("title", None) or "selfdistill sweep: methods x learning rates x seeds, frontiers"
    print(f"[selfdistill sweep] {len(specs)} settings x {len(seeds)} seeds = {len(specs) * len(seeds)} runs",
          file=sys.stderr)
    sweep = _merged_sweep(output, {"methods": methods, "lrs": lrs, "grid": grid, "seeds": seeds})
    return run_sequence(task_specs, specs, seeds, output, title=title, order=sweep_order(specs, seeds),
                        extra_results={"sweep": sweep}, **kw)


def _merged_sweep(output: str, sweep: dict) -> dict:
    """This command's axes joined to those an earlier command (or another process) recorded in the same folder,
    as plan.json joins their runs: results.json then describes every run the folder holds."""
    import json
    from pathlib import Path

    path = Path(output) / "results_extra.json"
    old = json.loads(path.read_text()).get("sweep") if path.exists() else None
    if not old:
        return sweep

    def union(a, b):
        return list(dict.fromkeys([*a, *b]))
    grid = {k: union(old.get("grid", {}).get(k, []), sweep["grid"].get(k, []))
            for k in union(old.get("grid", {}), sweep["grid"])}
    return {"methods": union(old["methods"], sweep["methods"]), "lrs": union(old["lrs"], sweep["lrs"]),
            "grid": grid, "seeds": union(old["seeds"], sweep["seeds"])}


def run_sweep_cli(args, extra: list[str]) -> int:
    from .sequence import cli_task_specs, parse_seeds, resolve_tasks

    specs = cli_task_specs(args)
    lrs = parse_lrs(args.lrs)
    grid = parse_grid(args.grid)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = parse_seeds(args.seeds)
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    if args.demo_settings:
        from .demo import DEMO_OVERRIDES, DEMO_SETTINGS_WHY, fast_bf16
        overrides.update({**DEMO_OVERRIDES, "train.bf16": fast_bf16()})
        overrides.pop("optim.lr", None)
        notes.append("Settings: the demo's (selfdistill demo), learning rate swept. " + DEMO_SETTINGS_WHY[1])
    overrides.update(parse_dotted_overrides(extra))
    from .sequence import parse_method
    cfg = load_config(args.config, overrides, preset=args.preset)
    for spec in method_specs(methods, lrs, grid):  # every combination is a valid config before anything runs
        load_config(args.config, {**overrides, **parse_method(spec)[1]}, preset=args.preset)
    resolve_tasks(specs, {})  # a bad task spec fails before the model loads
    run_sweep(specs, methods, lrs, grid, seeds, args.output, model_name=args.model, cfg=cfg,
              eval_every=args.eval_every, eval_limit=args.eval_limit, notes=notes,
              keep_checkpoints=args.keep_checkpoints)
    return 0
