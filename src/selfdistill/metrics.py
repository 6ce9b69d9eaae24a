"""Continual-learning metrics, confidence intervals and result writers.

Pure functions over plain Python / numpy data; no torch, no plotting.

Accuracy-matrix convention
--------------------------
An accuracy matrix ``R`` has shape ``(S + 1, T)``:

* column ``j`` is evaluation task ``j`` (tasks in the order they are trained);
* row ``0`` is the **base model**, before any fine-tuning;
* row ``i`` (``1 <= i <= S``) is the model **after training stage i**, and stage
  ``i`` trains on task ``i - 1`` (0-based). So ``R[i + 1, i]`` is the accuracy on
  task ``i`` right after it was learned, and ``R[S]`` (the last row) is the final
  model.

The sequence metrics (:func:`backward_transfer`, :func:`forgetting_per_task`,
:func:`forward_transfer`) need one stage per task, ``S == T``; a single-task run
is ``S == T == 1`` (a 2 x 1 matrix). Missing entries may be ``None`` and become
``NaN``; NaN propagates (it is never silently averaged away).

In the formulas below ``T`` is the number of tasks and rows are indexed as above,
so the paper formulas' ``R[T, i]`` is our last row ``R[T]`` and their ``R[i, i]``
(1-based) is our ``R[i + 1, i]`` (0-based task ``i``).

Intervals
---------
* :func:`wilson_interval` -- score interval for one binomial proportion (the
  uncertainty from a finite number of evaluation items, one seed).
* :func:`aggregate_seeds` -- mean over seeds with a Student-t interval
  (``n - 1`` degrees of freedom). With one seed the interval is ``NaN``: one run
  says nothing about seed-to-seed variation.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "wilson_interval",
    "t_quantile",
    "aggregate_seeds",
    "as_matrix",
    "average_accuracy",
    "backward_transfer",
    "forgetting_per_task",
    "average_forgetting",
    "forward_transfer",
    "learning_accuracy",
    "new_task_accuracy",
    "retention_change",
    "acquisition_matched",
    "mcnemar_exact_p",
    "paired_bootstrap_interval",
    "paired_retention_change",
    "margin_change",
    "conditional_retention",
    "pareto_frontier",
    "frontier_value",
    "frontier_comparison",
    "summarize_run",
    "summarize_results",
    "write_results",
    "write_tables",
]

# --------------------------------------------------------------------------- #
# Intervals
# --------------------------------------------------------------------------- #


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` trials.

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``. ``k`` may be a float
    (e.g. ``accuracy * n``); it is clipped to ``[0, n]``.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return (0.0, 1.0)
    k = min(max(float(k), 0.0), float(n))
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


# Two-sided 95% Student-t critical values t_{0.975, dof} for dof = 1..30.
_T975 = (
    12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818,
    2.4469119, 2.3646243, 2.3060041, 2.2621572, 2.2281389,
    2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495,
    2.1199053, 2.1098156, 2.1009220, 2.0930241, 2.0859634,
    2.0796138, 2.0738731, 2.0686576, 2.0638986, 2.0595386,
    2.0555294, 2.0518305, 2.0484071, 2.0452296, 2.0422725,
)


def _t975_fallback(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    # Cornish-Fisher expansion of the t quantile around the normal one
    # (error < 1e-5 for dof > 30).
    z = 1.959963984540054
    v = float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def t_quantile(dof: int, confidence: float = 0.95, use_scipy: bool | None = None) -> float:
    """Two-sided Student-t critical value ``t_{(1+confidence)/2, dof}``.

    Uses ``scipy.stats.t`` when scipy is importable (``use_scipy=None``, the
    default); otherwise a built-in table, which only covers ``confidence=0.95``.
    """
    dof = int(dof)
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if use_scipy is None or use_scipy:
        try:
            from scipy import stats  # type: ignore
        except ImportError:
            if use_scipy:
                raise
        else:
            return float(stats.t.ppf(0.5 + confidence / 2.0, dof))
    if abs(confidence - 0.95) > 1e-12:
        raise ValueError("without scipy only confidence=0.95 is supported")
    return _t975_fallback(dof)


def aggregate_seeds(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean over seeds with a Student-t confidence interval.

    Returns ``{"mean", "low", "high", "n", "sd"}``. NaN values are dropped (and
    not counted in ``n``). With ``n == 1`` the interval (and ``sd``) is NaN --
    a single seed carries no information about seed variance. With ``n == 0``
    everything is NaN.
    """
    arr = np.asarray([float("nan") if v is None else float(v) for v in values], dtype=float)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "low": nan, "high": nan, "n": 0, "sd": nan}
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "low": nan, "high": nan, "n": 1, "sd": nan}
    sd = float(arr.std(ddof=1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}


# --------------------------------------------------------------------------- #
# Accuracy-matrix metrics
# --------------------------------------------------------------------------- #


def as_matrix(R: Any) -> np.ndarray:
    """Convert a nested list (``None`` allowed) to a float ``(S+1, T)`` array."""
    rows = [[float("nan") if v is None else float(v) for v in row] for row in R]
    if not rows or any(len(r) != len(rows[0]) for r in rows) or len(rows[0]) == 0:
        raise ValueError("accuracy matrix must be a non-empty rectangular 2-D array")
    M = np.asarray(rows, dtype=float)
    if M.shape[0] < 2:
        raise ValueError("accuracy matrix needs the base row 0 plus at least one stage row")
    return M


def _square(R: Any) -> tuple[np.ndarray, int]:
    M = as_matrix(R)
    T = M.shape[1]
    if M.shape[0] != T + 1:
        raise ValueError(
            f"sequence metrics need one stage per task: shape (T+1, T), got {M.shape}")
    return M, T


def average_accuracy(R: Any) -> float:
    """Mean accuracy of the final model over all tasks (mean of the last row)."""
    return float(as_matrix(R)[-1].mean())


def learning_accuracy(R: Any) -> float:
    """Mean accuracy on each task right after it was learned: mean_i R[i+1, i]."""
    M, T = _square(R)
    return float(np.mean([M[i + 1, i] for i in range(T)]))


def new_task_accuracy(R: Any) -> float:
    """Final model's accuracy on the last-trained task: ``R[S, S-1]``."""
    M = as_matrix(R)
    S = M.shape[0] - 1
    if S > M.shape[1]:
        raise ValueError(f"more stages ({S}) than tasks ({M.shape[1]})")
    return float(M[S, S - 1])


def backward_transfer(R: Any) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017).

    ``BWT = 1/(T-1) * sum_{i=0}^{T-2} (R[T, i] - R[i+1, i])`` -- how much the
    final model's accuracy on each earlier task moved since right after it was
    learned. Negative = forgetting. NaN when ``T == 1``.
    """
    M, T = _square(R)
    if T < 2:
        return float("nan")
    return float(np.mean([M[T, i] - M[i + 1, i] for i in range(T - 1)]))


def forgetting_per_task(R: Any) -> list[float]:
    """Forgetting per earlier task (Chaudhry et al., 2018).

    For each task ``j < T-1`` (every task but the last):
    ``f_j = max_{l in 1..T-1} R[l, j] - R[T, j]`` -- the best accuracy any earlier
    trained stage (the base row 0 is excluded) reached on task ``j``, minus the
    final accuracy. Returns ``T - 1`` values (empty for one task).
    """
    M, T = _square(R)
    return [float(np.max(M[1:T, j]) - M[T, j]) for j in range(T - 1)]


def average_forgetting(R: Any) -> float:
    """Mean of :func:`forgetting_per_task`; NaN for a single task."""
    f = forgetting_per_task(R)
    return float(np.mean(f)) if f else float("nan")


def forward_transfer(R: Any) -> float:
    """Forward transfer (Lopez-Paz & Ranzato, 2017), base row as the baseline.

    ``FWT = 1/(T-1) * sum_{i=1}^{T-1} (R[i, i] - R[0, i])`` -- accuracy on task
    ``i`` just before it is trained, minus the base model's. NaN when ``T == 1``.
    """
    M, T = _square(R)
    if T < 2:
        return float("nan")
    return float(np.mean([M[i, i] - M[0, i] for i in range(1, T)]))


def retention_change(retention: Sequence[float | None]) -> float:
    """Retention score after the last stage minus before training (index 0)."""
    vals = [float("nan") if v is None else float(v) for v in retention]
    if len(vals) < 2:
        raise ValueError("retention needs the base value plus at least one stage")
    return vals[-1] - vals[0]


# --------------------------------------------------------------------------- #
# Acquisition-matched comparison
# --------------------------------------------------------------------------- #


def _points(points: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in points:
        if isinstance(p, Mapping):
            x, y = p["new_task_acc"], p["retention"]
        else:
            x, y = p[0], p[1]
        if x is None or y is None:
            continue
        x, y = float(x), float(y)
        if math.isnan(x) or math.isnan(y):
            continue
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros(0), np.zeros(0)
    x = np.asarray(xs)
    y = np.asarray(ys)
    # sort by new-task accuracy and average retention over duplicate x values
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.bincount(inv, weights=y) / np.bincount(inv)
    return ux, uy


def acquisition_matched(points_a: Iterable[Any], points_b: Iterable[Any],
                        levels: Sequence[float] | None = None,
                        n_levels: int = 5) -> dict[str, Any]:
    """Compare two methods' retention at equal new-task accuracy.

    ``points_a`` / ``points_b``: training checkpoints of each method, each a
    ``(new_task_acc, retention)`` pair or a mapping with those keys. Each
    method's points are sorted by new-task accuracy (retention is averaged over
    equal accuracies) and linearly interpolated -- only inside the range that
    method actually achieved; nothing is extrapolated.

    Levels: the given ``levels`` restricted to the shared range
    ``[max(min_a, min_b), min(max_a, max_b)]``, or else ``n_levels`` evenly
    spaced points over it. An empty shared range gives empty lists.

    Returns ``{"levels", "retention_a", "retention_b", "difference" (a - b),
    "range": (lo, hi) or None}``.
    """
    xa, ya = _points(points_a)
    xb, yb = _points(points_b)
    out: dict[str, Any] = {"levels": [], "retention_a": [], "retention_b": [],
                           "difference": [], "range": None}
    if xa.size == 0 or xb.size == 0:
        return out
    lo = max(xa[0], xb[0])
    hi = min(xa[-1], xb[-1])
    if lo > hi + 1e-12:
        return out
    hi = max(hi, lo)
    out["range"] = (float(lo), float(hi))
    if levels is not None:
        lv = np.asarray([float(v) for v in levels if lo - 1e-12 <= float(v) <= hi + 1e-12])
    elif hi - lo < 1e-12:
        lv = np.asarray([lo])
    else:
        lv = np.linspace(lo, hi, max(int(n_levels), 2))
    ra = np.interp(lv, xa, ya)
    rb = np.interp(lv, xb, yb)
    out["levels"] = [float(v) for v in lv]
    out["retention_a"] = [float(v) for v in ra]
    out["retention_b"] = [float(v) for v in rb]
    out["difference"] = [float(v) for v in ra - rb]
    return out


# --------------------------------------------------------------------------- #
# Forgetting on a fixed item set, paired with the base model
# --------------------------------------------------------------------------- #


def mcnemar_exact_p(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: under H0 the discordant items split 50/50, so the p-value is
    ``min(1, 2 * P[Binomial(lost + gained, 1/2) <= min(lost, gained)])``; 1.0 without discordant items."""
    n = int(lost) + int(gained)
    if n == 0:
        return 1.0
    k = min(int(lost), int(gained))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired_bootstrap_interval(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0,
                              confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-item paired differences, items resampled with replacement
    (``n_boot`` resamples from ``numpy.random.default_rng(seed)``: deterministic)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(int(n_boot), d.size))].mean(axis=1)
    a = (1.0 - confidence) / 2.0
    return (float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a)))


def paired_retention_change(base_correct: Sequence[Any], now_correct: Sequence[Any], n_boot: int = 10000,
                            seed: int = 0) -> dict[str, Any]:
    """Accuracy change on ALL items between the base model and a tuned one, paired item by item.

    Returns ``{"change": mean(now - base), "low", "high": paired-bootstrap 95% interval, "lost": items right
    before and wrong after, "gained": wrong before and right after, "n", "p_mcnemar": exact McNemar p}``."""
    b = np.asarray([int(bool(v)) for v in base_correct])
    c = np.asarray([int(bool(v)) for v in now_correct])
    if b.size != c.size:
        raise ValueError(f"{b.size} base items vs {c.size} tuned items: the item sets must be the same")
    nan = float("nan")
    if b.size == 0:
        return {"change": nan, "low": nan, "high": nan, "lost": 0, "gained": 0, "n": 0, "p_mcnemar": nan}
    lost, gained = int(((b == 1) & (c == 0)).sum()), int(((b == 0) & (c == 1)).sum())
    lo, hi = paired_bootstrap_interval(c - b, n_boot, seed)
    return {"change": float((c - b).mean()), "low": lo, "high": hi, "lost": lost, "gained": gained,
            "n": int(b.size), "p_mcnemar": mcnemar_exact_p(lost, gained)}


def margin_change(base_margin: Sequence[float], now_margin: Sequence[float],
                  confidence: float = 0.95) -> dict[str, Any]:
    """Mean change of the correct choice's log-likelihood margin (correct minus best other choice), paired by
    item, with a Student-t interval over items. A continuous forgetting measure: it moves before answers flip."""
    d = np.asarray(now_margin, dtype=float) - np.asarray(base_margin, dtype=float)
    d = d[~np.isnan(d)]
    agg = aggregate_seeds(d.tolist(), confidence)
    return {"change": agg["mean"], "low": agg["low"], "high": agg["high"], "n": agg["n"]}


def conditional_retention(base_correct: Sequence[Any], now_correct: Sequence[Any]) -> dict[str, Any]:
    """Accuracy on the items the base model got right (CONDITIONAL on base-correct: biased downwards, since
    items that flip the other way are not counted). ``{"value", "n"}``."""
    keep = [bool(n) for b, n in zip(base_correct, now_correct) if bool(b)]
    return {"value": (sum(keep) / len(keep)) if keep else float("nan"), "n": len(keep)}


# --------------------------------------------------------------------------- #
# Pareto frontiers of (new-task accuracy, retention)
# --------------------------------------------------------------------------- #


def pareto_frontier(points: Iterable[Any]) -> list[tuple[float, float]]:
    """The points not dominated by another (higher or equal in both coordinates, higher in one), sorted by
    new-task accuracy; both coordinates are "higher is better". Points: pairs or mappings as in
    :func:`acquisition_matched`."""
    pts = []
    for p in points:
        x, y = (p["new_task_acc"], p["retention"]) if isinstance(p, Mapping) else (p[0], p[1])
        if x is None or y is None or math.isnan(float(x)) or math.isnan(float(y)):
            continue
        pts.append((float(x), float(y)))
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in sorted(set(pts), key=lambda q: (-q[0], -q[1])):  # from the highest accuracy down
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def frontier_value(points: Iterable[Any], level: float) -> float:
    """Best retention among the points with new-task accuracy >= `level` (the frontier read at `level`);
    NaN when no point reaches it."""
    best = [y for x, y in pareto_frontier(points) if x >= level - 1e-12]
    return max(best) if best else float("nan")


def frontier_comparison(points_a: Mapping[Any, Sequence[Any]], points_b: Mapping[Any, Sequence[Any]],
                        levels: Sequence[float], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Acquisition-matched comparison read off per-seed frontiers.

    ``points_a`` / ``points_b``: {seed: points of every run and checkpoint of that method at that seed (all
    learning rates), the base model's point included}. At each level: each method's frontier value per seed,
    their mean with a t-interval over seeds, and the difference A - B paired by seed (seeds both have) with
    its t-interval. Seeds whose frontier does not reach the level are left out (``n_*`` count the rest)."""
    out = []
    for lv in levels:
        fa = {k: frontier_value(v, lv) for k, v in points_a.items()}
        fb = {k: frontier_value(v, lv) for k, v in points_b.items()}
        diff = [fa[k] - fb[k] for k in fa if k in fb]
        out.append({"level": float(lv), "a": aggregate_seeds(fa.values(), confidence),
                    "b": aggregate_seeds(fb.values(), confidence), "diff": aggregate_seeds(diff, confidence)})
    return out


# --------------------------------------------------------------------------- #
# Per-run / per-method summaries
# --------------------------------------------------------------------------- #

_RUN_METRICS = ("new_task_acc", "avg_acc", "learning_acc", "bwt", "avg_forgetting", "fwt",
                "retention_before", "retention_after", "retention_change", "drift_final")


def _nan_if_error(fn, *args) -> float:
    try:
        return float(fn(*args))
    except (ValueError, IndexError):
        return float("nan")


def summarize_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar metrics of one run (one method x one seed) of the results schema.

    Keys: ``method, seed`` plus ``new_task_acc`` (R[S, S-1]), ``new_task_n``
    (items behind it, or None), ``avg_acc``, ``learning_acc``, ``bwt``,
    ``avg_forgetting``, ``fwt``, ``retention_before``, ``retention_after``,
    ``retention_change``, ``retention_n``, ``drift_final``. Metrics that do not
    apply (e.g. BWT for one task) are NaN.
    """
    M = as_matrix(run["matrix"])
    S = M.shape[0] - 1
    out: dict[str, Any] = {"method": run.get("method"), "seed": run.get("seed")}
    out["new_task_acc"] = _nan_if_error(new_task_accuracy, M)
    n_mat = run.get("matrix_n")
    out["new_task_n"] = None
    if n_mat is not None:
        try:
            out["new_task_n"] = int(n_mat[S][S - 1])
        except (IndexError, TypeError, ValueError):
            out["new_task_n"] = None
    out["avg_acc"] = average_accuracy(M)
    out["learning_acc"] = _nan_if_error(learning_accuracy, M)
    out["bwt"] = _nan_if_error(backward_transfer, M)
    out["avg_forgetting"] = _nan_if_error(average_forgetting, M)
    out["fwt"] = _nan_if_error(forward_transfer, M)
    ret = run.get("retention") or []
    nan = float("nan")
    vals = [nan if v is None else float(v) for v in ret]
    out["retention_before"] = vals[0] if vals else nan
    out["retention_after"] = vals[-1] if len(vals) >= 2 else nan
    out["retention_change"] = retention_change(vals) if len(vals) >= 2 else nan
    out["retention_n"] = run.get("retention_n")
    drift = run.get("drift") or []
    out["drift_final"] = float(drift[-1]) if drift and drift[-1] is not None else nan
    return out


def summarize_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per-run summaries and per-method seed aggregates.

    Returns ``{"runs": [summarize_run(...)...], "methods": {method: {metric:
    aggregate_seeds(...) for metric in _RUN_METRICS}}}``; methods keep their
    first-appearance order.
    """
    runs = [summarize_run(r) for r in results.get("runs", [])]
    methods: dict[str, dict[str, Any]] = {}
    for m in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == m]
        methods[m] = {k: aggregate_seeds([r[k] for r in mine]) for k in _RUN_METRICS}
        methods[m]["seeds"] = [r["seed"] for r in mine]
    return {"runs": runs, "methods": methods}


# --------------------------------------------------------------------------- #
# Writers
# --------------------------------------------------------------------------- #


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars/arrays -> Python, for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt_csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _safe_name(s: Any) -> str:
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(s))


def write_tables(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> list[Path]:
    """Write the CSV tables (no JSON). Returns the paths written.

    * ``matrix_<method>_seed<seed>.csv``: one per run; columns ``stage, label,
      <task names...>``; stage 0 = ``base``, stage i = ``after <task i-1>``.
    * ``summary.csv``: one row per run (``seed`` = the seed) plus, per method,
      rows ``seed=mean`` / ``ci95_low`` / ``ci95_high`` (t-interval over seeds;
      empty with one seed). Empty cells = not applicable / NaN.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(results.get("tasks") or [])
    written: list[Path] = []
    for run in results.get("runs", []):
        M = as_matrix(run["matrix"])
        names = tasks if len(tasks) == M.shape[1] else [f"task{j}" for j in range(M.shape[1])]
        p = out / f"matrix_{_safe_name(run.get('method'))}_seed{_safe_name(run.get('seed'))}.csv"
        with p.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["stage", "label", *names])
            for i, row in enumerate(M):
                label = "base" if i == 0 else f"after {names[i - 1] if i - 1 < len(names) else i}"
                w.writerow([i, label, *[_fmt_csv(float(v)) for v in row]])
        written.append(p)
    summ = summarize_results(results)
    cols = ["method", "seed", *_RUN_METRICS]
    p = out / "summary.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in summ["runs"]:
            w.writerow([_fmt_csv(r.get(c)) for c in cols])
        for m, agg in summ["methods"].items():
            for key, label in (("mean", "mean"), ("low", "ci95_low"), ("high", "ci95_high")):
                w.writerow([m, label, *[_fmt_csv(agg[k][key]) for k in _RUN_METRICS]])
    written.append(p)
    return written


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> list[Path]:
    """Write ``results.json`` (strict JSON, NaN -> null) plus :func:`write_tables` CSVs.

    ``results`` follows the schema documented in :mod:`selfdistill.report.schema`.
    Returns the paths written, ``results.json`` first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = out / "results.json"
    p.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    return [p, *write_tables(out, results)]
