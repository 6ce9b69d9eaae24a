"""The options of a continual run, one typed object for `sequence`, `sweep` and `demo` (never an argparse
namespace: the command line builds this, see selfdistill.cli)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..methods import MethodSpec


@dataclass
class SequenceOptions:
    """Everything a continual run is told besides its tasks and methods.

    `also_eval` ({label: Task}): tasks evaluated at the base and after every stage but never trained on (the other
    knowledge phrasings are added automatically); they appear in results as `also` and in the report's "Also
    evaluated" table. `retention`: the retention suite's Task (default: the built-in `retention`, all items).
    `extra_results`: keys merged into results.json. `order`: the (method, seed) pairs in the order to run them
    (default: method by method). `keep_checkpoints`: keep a finished stage's resume checkpoints (deleted by
    default once the stage is recorded; its trained model stays in stage<i>/)."""
    output: Path
    cfg: Config
    seeds: list[int] = field(default_factory=lambda: [0])
    model_name: str = "smollm2-135m"
    eval_every: int = 0
    eval_limit: int = 0
    batch_size: int = 32  # items per evaluation batch (generation and log-likelihoods), across tasks
    drift: bool = True
    drift_prompts: int = 0
    keep_checkpoints: bool = False
    write_report: bool = True
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    probe: dict | None = None
    retention: Any = None
    also_eval: dict = field(default_factory=dict)
    extra_results: dict = field(default_factory=dict)
    order: list[tuple[MethodSpec, int]] | None = None

    def __post_init__(self) -> None:
        self.output = Path(self.output)
