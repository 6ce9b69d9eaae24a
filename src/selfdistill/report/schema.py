"""The results.json schema, as code: what a report is made from, how it is read and checked.

Accuracy/retention values are fractions in ``[0, 1]``; ``null`` (None) = not measured. Keys marked
``NotRequired`` may be left out. ``S`` = number of training stages (one task per stage, ``S == len(tasks)`` for the
sequence metrics; a single-task run has ``S = 1``). Row/stage index 0 is always the base model before any
training; stage ``i >= 1`` is after training on ``tasks[i-1]`` (see :mod:`selfdistill.metrics`). ``T`` =
``len(tasks)``. Keys the report does not know are kept and ignored.

Intervals in the report (always 95%): with several seeds of a method, a Student-t interval over the per-seed
values (``n - 1`` dof); with one seed, a Wilson interval from the item counts where counts are given
(``matrix_n`` / ``retention_n`` / ``probe.n``), otherwise none ("n/a"). If the seeds agree exactly (e.g. the
shared base model) and counts are given, the Wilson interval is shown instead of a zero-width t-interval.
Derived quantities (BWT, forgetting, changes) with one seed get no interval. The report states the seed count
and never draws conclusions beyond these numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NotRequired, TypedDict

from .. import metrics as M

__all__ = ["RESULTS_FILE", "Results", "Run", "CurvePoint", "Checkpoint", "AlsoEval", "RetentionItems", "Probe",
           "Partial", "validate_results", "load_results"]

RESULTS_FILE = "results.json"


class CurvePoint(TypedDict):
    """One logged training step; extra keys (lr, forward_kl, ...) are ignored by the report."""

    stage: int
    step: int  # may restart at each stage: the loss plot then offsets each stage by the previous stages' last step
    loss: float
    global_step: NotRequired[int]  # used for the x axis when every point has it


class Checkpoint(TypedDict):
    """An evaluation during training."""

    stage: int
    step: int
    new_task_acc: float  # accuracy on the task trained in this stage
    retention: float


class AlsoEval(TypedDict):
    """A task evaluated but never trained on."""

    accuracy: list[float | None]  # per stage, (S+1) values; row 0 = base
    n: int  # eval items behind each value


class RetentionItems(TypedDict):
    """Per-item retention results, one list per stage (None where not kept); the forgetting section pairs the
    final stage with the base model item by item."""

    ids: NotRequired[list[str] | None]  # item ids, in the order of every list below
    correct: list[list[int] | None]  # 0/1 per item, per stage
    margin: NotRequired[list[list[float] | None]]  # correct choice's log-likelihood minus the best other's (nats)


class ItemTable(TypedDict):
    """Every test item of a task, item by item (tasks with item fields or annotations, e.g. the battery)."""

    ids: list[str]
    fields: dict[str, list[Any]]  # what each item is: {"phrasing": [...], "distance": [...], "fact_set": [...]}
    outcomes: dict[str, list[list[int] | None]]  # per stage (row 0 = base): {"correct": [0/1 per item], ...}


class Run(TypedDict):
    """One (method, seed)."""

    method: str  # a method spec: "sdft" | "sft" | "dft", optionally "@key=value,...": see selfdistill.methods
    seed: int
    matrix: list[list[float | None]]  # R[stage][task], (S+1) rows of T; row 0 = base
    matrix_n: NotRequired[list[list[int]]]  # eval items behind each cell, the shape of matrix
    retention: NotRequired[list[float | None]]  # retention score per stage, (S+1) values
    retention_n: NotRequired[int]  # items behind each retention value
    retention_items: NotRequired[RetentionItems]
    drift: NotRequired[list[float | None]]  # KL(base || tuned) per stage, (S+1) values, base = 0
    curves: NotRequired[list[CurvePoint]]  # training curves
    checkpoints: NotRequired[list[Checkpoint]]  # evaluations during training
    also: NotRequired[dict[str, AlsoEval]]  # {label: ...} of tasks evaluated but never trained on
    train_seconds: NotRequired[list[float]]  # per stage, evaluations during training excluded; not shown
    eval_seconds: NotRequired[list[float]]  # base + per stage (with its checkpoints'); the base's is shared by all runs
    groups: NotRequired[dict[str, dict[str, list[float | None]]]]  # {task: {group: accuracy per stage}}; not shown
    item_tables: NotRequired[dict[str, ItemTable]]  # {task or also-evaluated label: its items}; accuracy by distance


class Probe(TypedDict, total=False):
    """Teacher-vs-student probe on held-out items; other keys are listed as they are."""

    student_acc: float
    teacher_acc: float
    n: int  # items behind both accuracies, unless student_n / teacher_n say otherwise
    student_n: int
    teacher_n: int
    kl_teacher_student: float  # mean per-token KL(teacher || student) on the student's rollouts


class Partial(TypedDict):
    """Present while not every planned run has finished: the report is then marked PARTIAL."""

    missing: list[str]  # one line per unfinished (method, seed)
    n_planned: int
    n_reported: int


class Results(TypedDict):
    """The whole of results.json."""

    title: NotRequired[str]  # report heading
    model: NotRequired[str]  # base model id (the report says "n/a" when one of these three is left out)
    machine: NotRequired[str]  # hardware the runs used, e.g. "1x H100 80GB"
    date: NotRequired[str]  # e.g. "2026-02-01"
    config: NotRequired[Any]  # any JSON: hyper-parameters, shown as-is
    tasks: list[str]  # task names, in training (stage) order; length T
    retention_name: NotRequired[str]  # label of the retention score (default "retention")
    runs: list[Run]  # one entry per (method, seed)
    probe: NotRequired[Probe]
    notes: NotRequired[list[str]]  # free text, printed verbatim
    partial: NotRequired[Partial]
    sweep: NotRequired[dict[str, Any]]  # a sweep's grid (methods, lrs, grid, seeds); not shown


def validate_results(results: Mapping[str, Any]) -> list[str]:
    """Return a list of schema problems (empty when the results are usable)."""
    probs: list[str] = []
    tasks = results.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        probs.append("'tasks' must be a non-empty list of task names")
        tasks = None
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        probs.append("'runs' must be a non-empty list")
        return probs
    for k, run in enumerate(runs):
        probs += _run_problems(f"runs[{k}]", run, tasks)
    return probs


def _run_problems(where: str, run: Any, tasks: list[str] | None) -> list[str]:
    if not isinstance(run, Mapping):
        return [f"{where} must be an object"]
    probs = [f"{where} lacks '{key}'" for key in ("method", "seed", "matrix") if key not in run]
    if "matrix" not in run:
        return probs
    try:
        R = M.as_matrix(run["matrix"])
    except (ValueError, TypeError) as e:
        return probs + [f"{where}.matrix: {e}"]
    rows, cols = R.shape
    if tasks is not None and cols != len(tasks):
        probs.append(f"{where}.matrix has {cols} columns but there are {len(tasks)} tasks")
    if rows - 1 > cols:
        probs.append(f"{where}.matrix has {rows - 1} stages for {cols} tasks")
    if run.get("matrix_n") is not None:
        mn = run["matrix_n"]
        if len(mn) != rows or any(len(r) != cols for r in mn):
            probs.append(f"{where}.matrix_n must have the shape of matrix ({rows}x{cols})")
    for key in ("retention", "drift"):
        v = run.get(key)
        if v is not None and len(v) != rows:
            probs.append(f"{where}.{key} has {len(v)} values, expected {rows} (base + one per stage)")
    for key in ("curves", "checkpoints"):
        v = run.get(key)
        if v is not None and not isinstance(v, list):
            probs.append(f"{where}.{key} must be a list")
    return probs


def load_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``<run_dir>/results.json`` (ValueError on schema problems)."""
    path = Path(run_dir) / RESULTS_FILE
    results = json.loads(path.read_text())
    probs = validate_results(results)
    if probs:
        raise ValueError(f"{path}: invalid results:\n  - " + "\n  - ".join(probs))
    return results
