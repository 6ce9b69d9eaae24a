"""`selfdistill sweep`: methods x learning rates (x any dotted config key) x seeds on one task or a sequence.

Every combination is one run of :func:`.sequence.run_sequence` under the method spec
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
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..methods import MethodSpec
from .options import SequenceOptions
from .sequence import run_sequence
from .store import load_results_extra


@dataclass
class SweepAxes:
    """What a sweep varies: methods (sdft, sft, dft), learning rates (as written, for run names), any other
    dotted config key ({key: [values]})."""
    methods: list[str]
    lrs: list[str]
    grid: dict[str, list[str]] = field(default_factory=dict)

    def specs(self) -> list[MethodSpec]:
        """The method specs of the sweep: lr-major, methods interleaved, grid values innermost."""
        keys = list(self.grid)
        combos = list(itertools.product(*(self.grid[k] for k in keys))) or [()]
        return [MethodSpec.variant(m, lr, tuple(zip(keys, combo)))
                for lr in self.lrs for m in self.methods for combo in combos]


def sweep_order(specs: list[MethodSpec], seeds: list[int]) -> list[tuple[MethodSpec, int]]:
    """Seed-major: every method and rate at the first seed before any at the second."""
    return [(spec, seed) for seed in seeds for spec in specs]


def run_sweep(task_specs: list, axes: SweepAxes, opts: SequenceOptions, **model_kw) -> dict:
    specs = axes.specs()
    opts.title = opts.title or "selfdistill sweep: methods x learning rates x seeds, frontiers"
    print(f"[selfdistill sweep] {len(specs)} settings x {len(opts.seeds)} seeds = {len(specs) * len(opts.seeds)} "
          f"runs", file=sys.stderr)
    sweep = merged_sweep(opts.output, {"methods": axes.methods, "lrs": axes.lrs, "grid": axes.grid,
                                       "seeds": opts.seeds})
    opts.order = sweep_order(specs, opts.seeds)
    opts.extra_results = {**opts.extra_results, "sweep": sweep}
    return run_sequence(task_specs, specs, opts, **model_kw)


def merged_sweep(output: str | Path, sweep: dict) -> dict:
    """This command's axes joined to those an earlier command (or another process) recorded in the same folder,
    as plan.json joins their runs: results.json then describes every run the folder holds."""
    old = load_results_extra(Path(output)).get("sweep")
    if not old:
        return sweep

    def union(a, b):
        return list(dict.fromkeys([*a, *b]))
    grid = {k: union(old.get("grid", {}).get(k, []), sweep["grid"].get(k, []))
            for k in union(old.get("grid", {}), sweep["grid"])}
    return {"methods": union(old["methods"], sweep["methods"]), "lrs": union(old["lrs"], sweep["lrs"]),
            "grid": grid, "seeds": union(old["seeds"], sweep["seeds"])}
