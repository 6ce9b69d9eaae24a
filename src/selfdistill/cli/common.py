"""What several commands share: help texts, the model flag, and the parsers of --seeds, --methods and tasks."""

from __future__ import annotations

import argparse

from ..config import ConfigError
from ..methods import MethodSpec, parse_methods

TASK_HELP = ("a task: a built-in name with loader options (knowledge@n_train=32), or YOUR FILE with options: "
             "FILE[@scorer=contains_word,test=TEST_FILE,split=0.2,name=NAME]; repeatable; a file without test= or "
             "split= is trained on and evaluated whole")
SEEDS_HELP = "training seeds: a count (3 -> seeds 0,1,2; default 1) or a comma-separated list (0,1,2; one seed k: 'k,')"
KEEP_HELP = ("keep each finished stage's resume checkpoints (optimizer state, float32 master weights and the EMA "
             "teacher: 12-16 bytes per weight) beside its trained model; by default they are deleted once the stage "
             "is recorded")
STRIP_HELP = "remove <think>...</think> reasoning blocks before scoring (auto: when the chat template has them)"


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="alias (smollm2-135m), local transformers dir, local .gguf file, or hub id")


def add_run_folder_args(p: argparse.ArgumentParser, eval_every: int, eval_every_help: str | None = None) -> None:
    """The flags `sequence` and `sweep` share: tasks, seeds, model, output, config, preset, evaluation, checkpoints."""
    p.add_argument("--seeds", default="1", help=SEEDS_HELP)
    add_model_arg(p)
    p.add_argument("--output", required=True)
    p.add_argument("--config")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu"])
    p.add_argument("--eval-every", type=int, default=eval_every, dest="eval_every", help=eval_every_help)
    p.add_argument("--eval-limit", type=int, default=0, dest="eval_limit")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints", help=KEEP_HELP)


def parse_seeds(text: str | int | None, flag: str = "--seeds") -> list[int]:
    """The one ``--seeds`` syntax: a count (``3`` -> 0, 1, 2) or a comma-separated list (``0,1,2``; one given
    seed k: ``k,``). A clear one-line error names the flag for anything else."""
    if isinstance(text, int):
        text = str(text)
    text = "1" if text is None else str(text).strip()
    parts = [x.strip() for x in text.split(",")]
    try:
        seeds = [int(x) for x in parts if x]
    except ValueError:
        raise ConfigError(f"{flag} must be a count (3 -> seeds 0,1,2) or a comma-separated list of "
                          f"integers (0,1,2), got {text!r}") from None
    if len(parts) == 1 and seeds:  # a single number is a count
        if seeds[0] < 1:
            raise ConfigError(f"{flag} {text}: a single number is a count of seeds and must be >= 1; for one "
                              f"given seed k write 'k,' (e.g. '{seeds[0]},')")
        return list(range(seeds[0]))
    if not seeds or len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
        raise ConfigError(f"{flag} must list distinct non-negative integers, got {text!r}")
    return seeds


def method_specs_arg(text: str, flag: str = "--methods") -> list[MethodSpec]:
    """--methods parsed once into typed specs; a bad one is a one-line ConfigError naming the flag."""
    try:
        return parse_methods(text, flag)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def task_specs_arg(tasks: str | None, task: list[str] | None) -> list[str]:
    """--tasks a,b (built-in names, comma-separated) followed by each --task SPEC (a name or a file with options),
    in the order given on the command line."""
    specs = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    specs += list(task or [])
    if not specs:
        raise ConfigError("give tasks with --tasks NAME,NAME and/or --task "
                          "NAME_OR_FILE[@scorer=...,test=FILE,split=0.2] (repeatable)")
    return specs
