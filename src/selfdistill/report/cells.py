"""The text of the report's cells: numbers, 95% intervals, seed counts, stage names ("n/a" = not measured or not
defined)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

# mean, low, high, kind of interval: "t" (over seeds), "W" (Wilson, from item counts) or "" (none)
Estimate = tuple[float, float, float, str]


def is_nan(v: Any) -> bool:
    """None or a float NaN."""
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def num(v: Any, digits: int = 3) -> str:
    if is_nan(v):
        return "n/a"
    return f"{float(v):.{digits}f}"


def signed_num(v: Any) -> str:
    if is_nan(v):
        return "n/a"
    return f"{float(v):+.3f}"


def ci(mean: Any, low: Any, high: Any, signed: bool = False) -> str:
    """'mean [low, high]'; the mean alone without an interval; 'n/a' without a mean."""
    f = signed_num if signed else num
    if is_nan(mean):
        return "n/a"
    if is_nan(low) or is_nan(high):
        return f(mean)
    return f"{f(mean)} [{num(low)}, {num(high)}]"


def estimate_cell(est: Estimate) -> str:
    """An estimate with its interval, marked ᵂ when the interval is Wilson's."""
    mean, low, high, kind = est
    return ci(mean, low, high) + ("ᵂ" if kind == "W" and not is_nan(low) else "")


def agg_cell(agg: Mapping[str, Any], signed: bool = False) -> str:
    """A :func:`selfdistill.metrics.aggregate_seeds` result."""
    return ci(agg["mean"], agg["low"], agg["high"], signed=signed)


def agg_n_cell(agg: Mapping[str, Any], signed: bool = False) -> str:
    """Mean [t-interval over seeds] (n=seeds); a retention level (not signed) is clipped to [0, 1]."""
    if agg["n"] == 0:
        return "not reached"
    if not signed:
        agg = {**agg, "low": max(0.0, agg["low"]) if not is_nan(agg["low"]) else agg["low"],
               "high": min(1.0, agg["high"]) if not is_nan(agg["high"]) else agg["high"]}
    return agg_cell(agg, signed=signed) + f" (n={agg['n']})"


def seed_word(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def stage_labels(tasks: Sequence[str], n_rows: int) -> list[str]:
    """'base', 'after <task>', ... for the rows of an accuracy matrix."""
    return ["base"] + [f"after {tasks[i - 1] if i - 1 < len(tasks) else i}"
                       for i in range(1, n_rows)]


def stage_task(tasks: Sequence[str], s: int) -> str:
    """The task trained in stage s (its number when the stage has no task name)."""
    return tasks[s - 1] if s - 1 < len(tasks) else str(s)
