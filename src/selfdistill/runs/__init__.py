"""Runs: continual sequences, sweeps and the demo, over a run folder that several processes may share.

* :mod:`.options`: `SequenceOptions`, the one options object of a run.
* :mod:`.sequence`: `run_sequence`, tasks one after another, every task evaluated after each stage.
* :mod:`.stages`: one (method, seed) run, stage by stage (train, then evaluate).
* :mod:`.sweep`: methods x learning rates x grid x seeds (`SweepAxes`), frontiers in the report.
* :mod:`.demo`: the main job (`selfdistill demo`); :mod:`.presets`: its settings as a named preset.
* :mod:`.store`: what the folder holds (plan, claims, progress, results) and `report_folder`.
"""

from __future__ import annotations

from .demo import DemoOptions, run_demo
from .options import SequenceOptions
from .sequence import run_sequence
from .store import collect_results, report_folder
from .sweep import SweepAxes, run_sweep

__all__ = ["DemoOptions", "SequenceOptions", "SweepAxes", "collect_results", "report_folder", "run_demo",
           "run_sequence", "run_sweep"]
