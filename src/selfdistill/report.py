"""Markdown + self-contained HTML report of a continual-learning run.

``write_report(run_dir)`` reads ``<run_dir>/results.json`` (or, for a stopped run without one, rebuilds the
finished part from the run's plan.json and progress files and marks the report PARTIAL, naming what is
missing) and writes, beside it:
``report.md`` (references the PNGs by relative name), ``report.html`` (one file,
PNGs embedded as base64 data URIs, inline CSS), ``fig_*.png`` and the CSV
tables of :func:`selfdistill.metrics.write_tables` (``summary.csv``,
``matrix_<method>_seed<seed>.csv``).

results.json schema
-------------------
Accuracy/retention values are fractions in ``[0, 1]``; ``null`` = not measured.
Optional keys may be left out. ``S`` = number of training stages (one task per
stage, ``S == len(tasks)`` for the sequence metrics; a single-task run has
``S = 1``). Row/stage index 0 is always the base model before any training;
stage ``i >= 1`` is after training on ``tasks[i-1]`` (see
:mod:`selfdistill.metrics`)::

    {
      "title":   str,                    # optional, report heading
      "model":   str,                    # base model id
      "machine": str,                    # hardware the runs used, e.g. "1x H100 80GB"
      "date":    str,                    # e.g. "2026-02-01"
      "config":  {...},                  # optional, any JSON: hyper-parameters shown as-is
      "tasks":   [str, ...],             # task names, in training (stage) order; length T
      "retention_name": str,             # optional, label of the retention score
                                         #   (default "retention")
      "runs": [                          # one entry per (method, seed)
        {
          "method": str,                 # "sdft" | "sft" | "dft" | any other name
          "seed":   int,
          "matrix":   [[float|null] * T] * (S+1),  # R[stage][task]; row 0 = base
          "matrix_n": [[int] * T] * (S+1),         # optional: eval items behind each cell
          "retention":   [float|null] * (S+1),     # optional: retention score per stage
          "retention_n": int,                      # optional: items behind each retention value
          "drift":       [float|null] * (S+1),     # optional: KL(base || tuned) per stage, base = 0
          "curves": [                              # optional: training curves
            {"stage": int, "step": int, "loss": float, ...}   # extra keys are ignored;
          ],                                                  # "global_step" is used if given
          "checkpoints": [                         # optional: evals during training
            {"stage": int, "step": int, "new_task_acc": float, "retention": float}
          ],
          "also": {                                # optional: tasks evaluated but never trained on
            label: {"accuracy": [float|null] * (S+1), "n": int}
          }
        }, ...
      ],
      "probe": {                         # optional: teacher-vs-student probe on held-out items
        "student_acc": float, "teacher_acc": float, "n": int, "kl_teacher_student": float
      },                                 #   (also accepted: student_n / teacher_n)
      "notes": [str, ...]                # optional: free text, printed verbatim
    }

Intervals in the report (always 95%): with several seeds of a method, a
Student-t interval over the per-seed values (``n - 1`` dof); with one seed,
a Wilson interval from the item counts where counts are given
(``matrix_n`` / ``retention_n`` / ``probe.n``), otherwise none ("n/a").
If the seeds agree exactly (e.g. the shared base model) and counts are given, the
Wilson interval is shown instead of a zero-width t-interval. Derived quantities
(BWT, forgetting, changes) with one seed get no interval.
The report states the seed count and never draws conclusions beyond these numbers.

CLI: ``python -m selfdistill.report RUN_DIR`` (calls :func:`main_report`).
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics as M

__all__ = ["load_results", "validate_results", "write_report", "main_report"]

RESULTS_FILE = "results.json"
_METHOD_COLORS = {"sdft": "#1f77b4", "sft": "#d62728", "dft": "#2ca02c"}
_FALLBACK_COLORS = ["#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# --------------------------------------------------------------------------- #
# Loading / validation
# --------------------------------------------------------------------------- #


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
        where = f"runs[{k}]"
        if not isinstance(run, Mapping):
            probs.append(f"{where} must be an object")
            continue
        for key in ("method", "seed", "matrix"):
            if key not in run:
                probs.append(f"{where} lacks '{key}'")
        if "matrix" not in run:
            continue
        try:
            R = M.as_matrix(run["matrix"])
        except (ValueError, TypeError) as e:
            probs.append(f"{where}.matrix: {e}")
            continue
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
                probs.append(f"{where}.{key} has {len(v)} values, expected {rows} "
                             "(base + one per stage)")
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


# --------------------------------------------------------------------------- #
# Formatting helpers
# --------------------------------------------------------------------------- #


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _f(v: Any, digits: int = 3) -> str:
    if _isnan(v):
        return "n/a"
    return f"{float(v):.{digits}f}"


def _fs(v: Any) -> str:
    """Signed number."""
    if _isnan(v):
        return "n/a"
    return f"{float(v):+.3f}"


def _ci(mean: Any, low: Any, high: Any, signed: bool = False) -> str:
    f = _fs if signed else _f
    if _isnan(mean):
        return "n/a"
    if _isnan(low) or _isnan(high):
        return f(mean)
    return f"{f(mean)} [{_f(low)}, {_f(high)}]"


def _nanfloat(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _wrap_to(fig, title: str) -> str:
    """Wrap a 9-pt figure title to the figure's width (about 13 characters per inch) so it is never cut off."""
    return textwrap.fill(title, width=max(40, int(fig.get_figwidth() * 13)))


def _prop_estimate(values: Sequence[Any], ns: Sequence[Any]) -> tuple[float, float, float, str]:
    """Mean and 95% interval of a proportion over seeds.

    Several seeds -> t-interval over seeds ("t"); one seed with an item count ->
    Wilson ("W"); otherwise no interval ("").
    """
    vals = [_nanfloat(v) for v in values]
    good = [(v, n) for v, n in zip(vals, ns) if not math.isnan(v)]
    if len(good) >= 2:
        a = M.aggregate_seeds([v for v, _ in good])
        if a["sd"] > 0 or any(n is None for _, n in good):  # a proportion: the t-interval is clipped to [0, 1]
            return a["mean"], max(0.0, a["low"]), min(1.0, a["high"]), "t"
        # identical across seeds (e.g. the shared base model): a zero-width t-interval
        # would hide the item-sampling uncertainty, so fall back to Wilson.
    if len(good) >= 1:
        v, n = good[0]
        if n is not None and int(n) > 0:
            lo, hi = M.wilson_interval(round(v * int(n)), int(n))
            return v, lo, hi, "W"
        return v, float("nan"), float("nan"), ""
    return float("nan"), float("nan"), float("nan"), ""


def _prop_cell(values: Sequence[Any], ns: Sequence[Any]) -> str:
    m, lo, hi, kind = _prop_estimate(values, ns)
    s = _ci(m, lo, hi)
    return s + ("ᵂ" if kind == "W" and not _isnan(lo) else "")


def _agg_cell(agg: Mapping[str, Any], signed: bool = False) -> str:
    return _ci(agg["mean"], agg["low"], agg["high"], signed=signed)


def _color(method: str, methods: Sequence[str]) -> str:
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    others = [m for m in methods if m not in _METHOD_COLORS]
    return _FALLBACK_COLORS[others.index(method) % len(_FALLBACK_COLORS)]


def _stage_labels(tasks: Sequence[str], n_rows: int) -> list[str]:
    return ["base"] + [f"after {tasks[i - 1] if i - 1 < len(tasks) else i}"
                       for i in range(1, n_rows)]


# --------------------------------------------------------------------------- #
# Data grouping
# --------------------------------------------------------------------------- #


def _by_method(results: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for run in results["runs"]:
        out.setdefault(str(run["method"]), []).append(run)
    return out


def _cell_stats(runs: Sequence[Mapping[str, Any]], i: int, j: int) -> tuple[float, float, float, str]:
    vals, ns = [], []
    for r in runs:
        R = M.as_matrix(r["matrix"])
        vals.append(R[i, j] if i < R.shape[0] else float("nan"))
        mn = r.get("matrix_n")
        try:
            ns.append(None if mn is None else mn[i][j])
        except (IndexError, TypeError):
            ns.append(None)
    return _prop_estimate(vals, ns)


def _series_stats(runs: Sequence[Mapping[str, Any]], key: str, n_key: str | None,
                  length: int) -> list[tuple[float, float, float, str]]:
    out = []
    for i in range(length):
        vals, ns = [], []
        for r in runs:
            s = r.get(key)
            if s is None or i >= len(s):
                continue
            vals.append(s[i])
            ns.append(r.get(n_key) if n_key else None)
        out.append(_prop_estimate(vals, ns))
    return out


# --------------------------------------------------------------------------- #
# Plots (matplotlib Figure API, Agg canvas: no pyplot global state)
# --------------------------------------------------------------------------- #


def _new_fig(w: float, h: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _err(stats: Sequence[tuple[float, float, float, str]]) -> tuple[np.ndarray, np.ndarray]:
    m = np.array([s[0] for s in stats], dtype=float)
    lo = np.array([s[1] for s in stats], dtype=float)
    hi = np.array([s[2] for s in stats], dtype=float)
    yerr = np.vstack([np.where(np.isnan(lo), 0, m - lo), np.where(np.isnan(hi), 0, hi - m)])
    return m, np.clip(np.nan_to_num(yerr), 0, None)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    return path


def _plot_accuracy(results, groups, out: Path) -> Path:
    tasks = results["tasks"]
    methods = list(groups)
    fig, axes = _new_fig(4.2 * len(methods) + 0.6, 3.8, 1, len(methods))
    for ax, m in zip(axes[0], methods):
        runs = groups[m]
        rows = max(M.as_matrix(r["matrix"]).shape[0] for r in runs)
        x = np.arange(rows)
        for j, t in enumerate(tasks):
            stats = [_cell_stats(runs, i, j) for i in range(rows)]
            y, yerr = _err(stats)
            ax.errorbar(x + (j - (len(tasks) - 1) / 2) * 0.04, y, yerr=yerr, marker=_MARKERS[j % 8],
                        capsize=3, label=t)
        ax.set_xticks(x, _stage_labels(tasks, rows), rotation=20, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{m} ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="task", title_fontsize=8)
    fig.suptitle("Accuracy per task across stages (95% intervals)", fontsize=11)
    return _save(fig, out / "fig_accuracy_per_task.png")


def _plot_series(results, groups, out: Path, key: str, n_key: str | None, ylabel: str,
                 title: str, fname: str, unit_interval: bool) -> Path | None:
    methods = list(groups)
    if not any(r.get(key) for runs in groups.values() for r in runs):
        return None
    rows = max(len(r[key]) for runs in groups.values() for r in runs if r.get(key))
    fig, axes = _new_fig(7.5, 4.2)
    ax = axes[0][0]
    x = np.arange(rows)
    for k, m in enumerate(methods):
        runs = [r for r in groups[m] if r.get(key)]
        if not runs:
            continue
        stats = _series_stats(runs, key, n_key, rows)
        y, yerr = _err(stats)
        ax.errorbar(x + (k - (len(methods) - 1) / 2) * 0.05, y, yerr=yerr, marker=_MARKERS[k % 8],
                    capsize=3, color=_color(m, methods), label=f"{m} (n={len(runs)})")
    ax.set_xticks(x, _stage_labels(results["tasks"], rows), rotation=20, ha="right", fontsize=8)
    if unit_interval:
        ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / fname)


def _plot_tradeoff(results, groups, out: Path, ret_name: str) -> Path | None:
    """One panel per stage s: x = accuracy on the task trained in stage s, y = retention.

    Markers: each method/seed at the end of the stage (R[s, s-1], retention[s]) with
    Wilson bars where item counts are given; thin lines: that stage's checkpoints;
    star: the base model (R[0, s-1], retention[0]) as a reference.
    """
    methods = list(groups)
    n_stages = max(M.as_matrix(r["matrix"]).shape[0] - 1 for rs in groups.values() for r in rs)
    has_ckpt = any(r.get("checkpoints") for runs in groups.values() for r in runs)
    has_ret = any(r.get("retention") for runs in groups.values() for r in runs)
    if not has_ret and not has_ckpt:
        return None
    tasks = results["tasks"]
    fig, axes = _new_fig(5.2 * n_stages + 0.6, 5.0, 1, n_stages)
    for s, ax in enumerate(axes[0], start=1):
        task = tasks[s - 1] if s - 1 < len(tasks) else str(s)
        base_pts = []
        for k, m in enumerate(methods):
            c = _color(m, methods)
            first = True
            for run in groups[m]:
                ck = sorted((p for p in (run.get("checkpoints") or [])
                             if int(p.get("stage", 0)) == s and p.get("new_task_acc") is not None
                             and p.get("retention") is not None),
                            key=lambda p: p.get("step", 0))
                if ck:
                    ax.plot([p["new_task_acc"] for p in ck], [p["retention"] for p in ck], "-",
                            color=c, alpha=0.35, lw=1, marker=".", ms=4)
                R = M.as_matrix(run["matrix"])
                ret = run.get("retention") or []
                if R.shape[0] <= s or len(ret) <= s:
                    continue
                if ret[0] is not None:
                    base_pts.append((R[0, s - 1], ret[0]))
                x, y = R[s, s - 1], ret[s]
                if _isnan(x) or _isnan(y):
                    continue
                xerr = yerr = None
                try:
                    nx = run["matrix_n"][s][s - 1]
                except (KeyError, IndexError, TypeError):
                    nx = None
                if nx:
                    lo, hi = M.wilson_interval(round(x * nx), nx)
                    xerr = [[max(x - lo, 0)], [max(hi - x, 0)]]
                ny = run.get("retention_n")
                if ny:
                    lo, hi = M.wilson_interval(round(y * ny), ny)
                    yerr = [[max(y - lo, 0)], [max(hi - y, 0)]]
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=_MARKERS[k % 8], color=c, ms=8,
                            capsize=3, mec="black", label=m if first else None)
                first = False
        if base_pts:
            bx, by = np.nanmean(np.array(base_pts, dtype=float), axis=0)
            ax.plot([bx], [by], marker="*", color="black", ms=14, ls="none", label="base model")
        ax.set_xlabel(f"accuracy on {task} (task of stage {s})")
        ax.set_ylabel(f"{ret_name}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"stage {s}: after training on {task}", fontsize=10)
        ax.legend(fontsize=8)
    ttl = "New-task accuracy vs. retention: one marker per method/seed at the end of each stage"
    if has_ckpt:
        ttl += "; thin lines = checkpoint trajectories within the stage"
    fig.suptitle(_wrap_to(fig, ttl + " (bars: Wilson 95%)"), fontsize=9)
    return _save(fig, out / "fig_tradeoff.png")


def _curve_xy(curves: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [c for c in curves if c.get(key) is not None and c.get("step") is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    if all(c.get("global_step") is not None for c in pts):
        xs = [float(c["global_step"]) for c in pts]
    else:
        # steps restart at each stage -> offset each stage by the previous stages' max
        offset, stage_offset = 0.0, {}
        stages = sorted({int(c.get("stage", 0)) for c in pts})
        restart = any(
            min(float(c["step"]) for c in pts if int(c.get("stage", 0)) == s)
            < max(float(c["step"]) for c in pts if int(c.get("stage", 0)) == p)
            for p, s in zip(stages, stages[1:]))
        for s in stages:
            stage_offset[s] = offset
            offset += max(float(c["step"]) for c in pts if int(c.get("stage", 0)) == s)
        xs = [float(c["step"]) + (stage_offset[int(c.get("stage", 0))] if restart else 0.0)
              for c in pts]
    order = np.argsort(xs, kind="stable")
    return np.asarray(xs)[order], np.asarray([float(c[key]) for c in pts])[order]


def _plot_curves(results, groups, out: Path) -> Path | None:
    methods = [m for m in groups if any(r.get("curves") for r in groups[m])]
    if not methods:
        return None
    fig, axes = _new_fig(4.2 * len(methods) + 0.6, 3.6, 1, len(methods))
    for ax, m in zip(axes[0], methods):
        c = _color(m, list(groups))
        for i, run in enumerate(groups[m]):
            x, y = _curve_xy(run.get("curves") or [], "loss")
            if x.size:
                ax.plot(x, y, color=c, alpha=0.8, lw=1.2, ls=("-", "--", ":", "-.")[i % 4],
                        label=f"seed {run.get('seed')}")
        ax.set_title(f"{m}: training loss", fontsize=10)
        ax.set_xlabel("step (cumulative over stages)")
        ax.set_ylabel("loss (method's own objective)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_wrap_to(fig, "Training curves (losses of different methods are different objectives; "
                          "compare shapes, not levels)"), fontsize=9)
    return _save(fig, out / "fig_training_curves.png")


def _family(spec: str) -> str:
    """'sdft@lr=1e-4,model.lora=true' -> 'sdft@model.lora=true'; 'sft@lr=2e-5' -> 'sft': a method and its
    settings other than the learning rate, i.e. what a frontier is drawn for."""
    base, _, rest = str(spec).partition("@")
    keep = [kv for kv in rest.split(",") if kv and not kv.startswith(("lr=", "optim.lr="))]
    return base + ("@" + ",".join(keep) if keep else "")


def _stage_points(run: Mapping[str, Any], s: int) -> list[tuple[float, float]]:
    """(new-task accuracy, retention) of every checkpoint of stage s and the end of stage s."""
    pts = [(float(p["new_task_acc"]), float(p["retention"])) for p in (run.get("checkpoints") or [])
           if int(p.get("stage", 0)) == s and p.get("new_task_acc") is not None and p.get("retention") is not None]
    R = M.as_matrix(run["matrix"])
    ret = run.get("retention") or []
    if R.shape[0] > s and len(ret) > s and not _isnan(R[s, s - 1]) and not _isnan(ret[s]):
        pts.append((float(R[s, s - 1]), float(ret[s])))
    return pts


def _base_point(results, s: int) -> tuple[float, float] | None:
    for run in results["runs"]:
        R = M.as_matrix(run["matrix"])
        ret = run.get("retention") or []
        if ret and ret[0] is not None and not _isnan(R[0, s - 1]):
            return float(R[0, s - 1]), float(ret[0])
    return None


def _family_points(results, s: int) -> dict[str, dict[Any, list[tuple[float, float]]]]:
    """{family: {seed: points of all its runs (every lr) at stage s, base point included}}."""
    base = _base_point(results, s)
    fam: dict[str, dict[Any, list]] = {}
    for run in results["runs"]:
        pts = _stage_points(run, s)
        if not pts:
            continue
        seeds = fam.setdefault(_family(run["method"]), {})
        seeds.setdefault(run.get("seed"), [base] if base else []).extend(pts)
    return fam


def _n_stages(results) -> int:
    return max(M.as_matrix(r["matrix"]).shape[0] - 1 for r in results["runs"])


def _frontier_levels(fams: Mapping[str, Mapping[Any, list]], base_x: float, n: int = 5) -> list[float]:
    tops = [max(x for pts in seeds.values() for x, _ in pts) for seeds in fams.values()]
    top = min(tops) if tops else base_x
    if not top > base_x + 1e-9:
        return []
    return [float(v) for v in np.linspace(base_x, top, n)]


def _plot_frontier(results, out: Path, ret_name: str) -> Path | None:
    """Every run's checkpoints (small) and end points (large) as (new-task accuracy, retention), each family's
    Pareto frontier over all its seeds and learning rates (thick steps; thin: per seed), the base model (star)."""
    n_stages = _n_stages(results)
    if not any(_family_points(results, s) for s in range(1, n_stages + 1)):
        return None
    tasks = results["tasks"]
    fig, axes = _new_fig(5.6 * n_stages + 0.6, 5.2, 1, n_stages)
    for s, ax in enumerate(axes[0], start=1):
        fams = _family_points(results, s)
        names = list(fams)
        for k, fam in enumerate(names):
            c = _color(fam, names)
            pooled = [p for pts in fams[fam].values() for p in pts]
            ck = [p for r in results["runs"] if _family(r["method"]) == fam for p in _stage_points(r, s)]
            ax.plot([p[0] for p in ck], [p[1] for p in ck], ls="none", marker=_MARKERS[k % 8], color=c, ms=4,
                    alpha=0.45)
            for pts in fams[fam].values():
                fr = M.pareto_frontier(pts)
                ax.step([p[0] for p in fr], [p[1] for p in fr], where="pre", color=c, lw=0.8, alpha=0.5, ls="--")
            fr = M.pareto_frontier(pooled)
            ax.step([p[0] for p in fr], [p[1] for p in fr], where="pre", color=c, lw=2.2,
                    label=f"{fam} frontier ({len(fams[fam])} seed{'s' if len(fams[fam]) != 1 else ''})")
        base = _base_point(results, s)
        if base:
            ax.plot([base[0]], [base[1]], marker="*", color="black", ms=15, ls="none", label="base model")
        task = tasks[s - 1] if s - 1 < len(tasks) else str(s)
        ax.set_xlabel(f"accuracy on {task} (new task of stage {s})")
        ax.set_ylabel(ret_name)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(f"stage {s}: every run and checkpoint", fontsize=10)
    fig.suptitle(_wrap_to(fig, "Pareto frontiers of new-task accuracy vs. retention: dots = every checkpoint and "
                          "end of every run (all learning rates and seeds); thick = frontier over all seeds, dashed "
                          "= per seed; star = base model, the common start"), fontsize=9)
    return _save(fig, out / "fig_frontier.png")


def _frontier_rows(results) -> list[list[str]]:
    rows = []
    for s in range(1, _n_stages(results) + 1):
        fams = _family_points(results, s)
        if len(fams) < 2:
            continue
        base = _base_point(results, s)
        for ref, other in _comparison_pairs(list(fams)):
            levels = _frontier_levels({ref: fams[ref], other: fams[other]}, base[0] if base else 0.0)
            if not levels:
                rows.append([str(s), f"A={ref}, B={other}", "no accuracy above the base reached by both",
                             "", "", ""])
            for r in M.frontier_comparison(fams[ref], fams[other], levels):
                rows.append([str(s), f"A={ref}, B={other}", _f(r["level"]), _agg_n(r["a"]), _agg_n(r["b"]),
                             _agg_n(r["diff"], signed=True)])
    return rows


def _comparison_pairs(families: list[str]) -> list[tuple[str, str]]:
    """(A, B) pairs of the acquisition-matched table: every other family against the SDFT family with the same
    settings (sft@model.lora=true against sdft@model.lora=true), else against plain sdft, else against the first
    family. Each pair is read over the accuracy range both of its families reached."""
    pairs = []
    for fam in families:
        method, _, settings = fam.partition("@")
        if method == "sdft":
            continue
        ref = "sdft" + ("@" + settings if settings else "")
        if ref not in families:
            ref = "sdft" if "sdft" in families else families[0]
        if ref != fam:
            pairs.append((ref, fam))
    return pairs


def _agg_n(agg: Mapping[str, Any], signed: bool = False) -> str:
    """Mean [t-interval over seeds] (n=seeds); a retention level (not signed) is clipped to [0, 1]."""
    if agg["n"] == 0:
        return "not reached"
    if not signed:
        agg = {**agg, "low": max(0.0, agg["low"]) if not _isnan(agg["low"]) else agg["low"],
               "high": min(1.0, agg["high"]) if not _isnan(agg["high"]) else agg["high"]}
    return _agg_cell(agg, signed=signed) + f" (n={agg['n']})"


def _forgetting_tables(results) -> tuple[list[list[str]], list[list[str]]]:
    """Per run and per method: paired change on all retention items, margin change, conditional figure."""
    per_run, by_method = [], {}
    for run in results["runs"]:
        it = run.get("retention_items") or {}
        corr, marg = it.get("correct") or [], it.get("margin") or []
        if len(corr) < 2 or corr[0] is None or corr[-1] is None:
            continue
        ch = M.paired_retention_change(corr[0], corr[-1])
        mc = (M.margin_change(marg[0], marg[-1]) if len(marg) >= 2 and marg[0] is not None and marg[-1] is not None
              else {"change": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0})
        cond = M.conditional_retention(corr[0], corr[-1])
        per_run.append([str(run["method"]), str(run.get("seed")), f"{_ci(ch['change'], ch['low'], ch['high'], True)}",
                        f"{ch['lost']} / {ch['gained']}", f"{ch['p_mcnemar']:.3g}",
                        _ci(mc["change"], mc["low"], mc["high"], True), f"{_f(cond['value'])} (n={cond['n']})"])
        d = by_method.setdefault(str(run["method"]), {"acc": [], "margin": [], "cond": []})
        d["acc"].append(ch["change"])
        d["margin"].append(mc["change"])
        d["cond"].append(cond["value"])
    agg = [[m, str(len(v["acc"])), _agg_cell(M.aggregate_seeds(v["acc"]), True),
            _agg_cell(M.aggregate_seeds(v["margin"]), True), _agg_cell(M.aggregate_seeds(v["cond"]))]
           for m, v in by_method.items()]
    return per_run, agg


# --------------------------------------------------------------------------- #
# Document model -> markdown / html
# --------------------------------------------------------------------------- #


def _md_text(s: Any) -> str:
    """Escape the characters that would turn plain text into markdown/HTML markup."""
    s = str(s).replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
    return s.replace("<", "&lt;").replace(">", "&gt;")


def _md_escape(s: Any) -> str:
    """Table cell: plain-text escape plus pipes and newlines."""
    return _md_text(s).replace("|", "\\|").replace("\n", " ")


def _render_md(blocks: list[tuple]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {_md_text(b[1])}\n")
        elif kind == "h2":
            out.append(f"## {_md_text(b[1])}\n")
        elif kind == "h3":
            out.append(f"### {_md_text(b[1])}\n")
        elif kind == "p":
            out.append(f"{_md_text(b[1])}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {_md_text(x)}" for x in b[1]) + "\n")
        elif kind == "code":
            out.append("```\n" + b[1].rstrip() + "\n```\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            for r in rows:
                out.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
            out.append("")
        elif kind == "img":
            path, alt = b[1], b[2]
            out.append(f"![{_md_escape(alt).replace('[', '(').replace(']', ')')}]({path.name})\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
"""

_IMG_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  }
  document.title = 'images-ok:' + ok + '/' + imgs.length;
});
"""


def _render_html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>",
           f"<script>{_IMG_CHECK_JS}</script>", "</head>", "<body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "code":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head)
                       + "</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
            out.append("</tbody></table>")
        elif kind == "img":
            path, alt = b[1], b[2]
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
                       f"<figcaption>{e(alt)}</figcaption></figure>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _seed_word(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _build_blocks(results: Mapping[str, Any], out: Path) -> list[tuple]:
    tasks = list(results["tasks"])
    groups = _by_method(results)
    methods = list(groups)
    summ = M.summarize_results(results)
    ret_name = str(results.get("retention_name") or "retention")
    title = str(results.get("title") or "selfdistill continual-learning report")
    b: list[tuple] = [("h1", title)]
    b += _partial_blocks(results)

    # ---- header
    seeds_desc = "; ".join(
        f"{m}: {_seed_word(len(rs))} ({', '.join(str(r.get('seed')) for r in rs)})"
        for m, rs in groups.items())
    b.append(("table", ["field", "value"], [
        ["model", results.get("model", "n/a")],
        ["machine", results.get("machine", "n/a")],
        ["date", results.get("date", "n/a")],
        ["tasks (training order)", " → ".join(tasks)],
        ["retention score ('retention' below)", ret_name],
        ["methods / seeds", seeds_desc],
    ]))
    min_seeds = min(len(rs) for rs in groups.values())
    b.append(("p", "How to read the numbers: every interval is 95%. "
              "Where a method has several seeds, the interval is a Student-t interval over "
              "the per-seed values (n−1 degrees of freedom; for accuracies clipped to [0, 1]). "
              "Where it has one seed (or all seeds give the identical value, e.g. the shared base "
              "model), accuracy intervals (marked ᵂ) are Wilson score intervals from the number of "
              "evaluation items; they cover item sampling only, not run-to-run training variance, and "
              "derived quantities (changes, BWT, forgetting) get no interval. "
              "'n/a' = not measured or not defined."))
    if min_seeds == 1:
        b.append(("p", "Caution: at least one method has a single seed, so seed-to-seed "
                  "variation is unmeasured for it and its intervals understate the real "
                  "uncertainty of a comparison between methods."))

    # ---- probe
    probe = results.get("probe")
    if probe:
        b.append(("h2", "Probe: student vs. demonstration-conditioned teacher"))
        n = probe.get("n")
        rows = []
        for label, key in (("student (no demonstration)", "student_acc"),
                           ("teacher (with demonstration)", "teacher_acc")):
            v = probe.get(key)
            nn = probe.get(key.replace("_acc", "_n"), n)
            rows.append([label, _prop_cell([v], [nn]), "n/a" if nn is None else str(nn)])
        b.append(("table", ["model", "accuracy [95% Wilson]", "items"], rows))
        extra = []
        if probe.get("kl_teacher_student") is not None:
            kl = float(probe["kl_teacher_student"])
            extra.append(f"mean per-token KL(teacher ‖ student) on the student's rollouts: {kl:.4g}")
        for k, v in probe.items():
            if k not in ("student_acc", "teacher_acc", "n", "kl_teacher_student", "student_n", "teacher_n"):
                extra.append(f"{k}: {v}")
        if extra:
            b.append(("ul", extra))

    # ---- summary per method
    b.append(("h2", "Summary per method (final model)"))
    head = ["method", "seeds", "new-task acc", "avg acc (all tasks)",
            "retention before", "retention after", "Δ retention", "BWT",
            "avg forgetting", "final drift KL"]
    rows = []
    for m, rs in groups.items():
        srs = [s for s in summ["runs"] if str(s["method"]) == m]
        agg = summ["methods"][m]
        new_n = [s["new_task_n"] for s in srs]
        # average accuracy: Wilson only when one task (then it is a single cell)
        avg_cell = (_prop_cell([s["avg_acc"] for s in srs], new_n) if len(tasks) == 1
                    else _agg_cell(agg["avg_acc"]))
        rows.append([
            m, str(len(rs)),
            _prop_cell([s["new_task_acc"] for s in srs], new_n),
            avg_cell,
            _prop_cell([s["retention_before"] for s in srs], [s["retention_n"] for s in srs]),
            _prop_cell([s["retention_after"] for s in srs], [s["retention_n"] for s in srs]),
            _agg_cell(agg["retention_change"], signed=True),
            _agg_cell(agg["bwt"], signed=True),
            _agg_cell(agg["avg_forgetting"], signed=True),
            _ci(agg["drift_final"]["mean"], agg["drift_final"]["low"], agg["drift_final"]["high"]),
        ])
    b.append(("table", head, rows))
    b.append(("p", "new-task acc = accuracy on the last-trained task after the final stage; "
              "avg acc = mean of the final matrix row; "
              "BWT = 1/(T−1)·Σ_{i<T}(R[T,i] − R[i,i]) (Lopez-Paz & Ranzato 2017); "
              "forgetting = max over earlier trained stages of R[l,j] − R[T,j], averaged over "
              "j<T (Chaudhry et al. 2018); both n/a for a single task. "
              "drift = KL from the base model, as logged."))

    # ---- per-run table
    b.append(("h3", "Per run"))
    rows = []
    for s in summ["runs"]:
        rows.append([str(s["method"]), str(s["seed"]), _f(s["new_task_acc"]), _f(s["avg_acc"]),
                     _f(s["retention_before"]), _f(s["retention_after"]),
                     _fs(s["retention_change"]), _fs(s["bwt"]), _fs(s["avg_forgetting"]),
                     _fs(s["fwt"]), _f(s["drift_final"], 4)])
    b.append(("table", ["method", "seed", "new-task acc", "avg acc", "retention before",
                        "retention after", "Δ retention", "BWT", "avg forgetting", "FWT",
                        "final drift KL"], rows))

    # ---- accuracy matrices
    b.append(("h2", "Accuracy matrices"))
    b.append(("p", "Rows: the model after each stage (row 'base' = before training); "
              "columns: evaluation task. Mean over seeds with 95% interval."))
    for m, rs in groups.items():
        rows_n = max(M.as_matrix(r["matrix"]).shape[0] for r in rs)
        labels = _stage_labels(tasks, rows_n)
        rows = []
        for i in range(rows_n):
            cells = []
            for j in range(len(tasks)):
                mean, lo, hi, kind = _cell_stats(rs, i, j)
                cells.append(_ci(mean, lo, hi) + ("ᵂ" if kind == "W" and not _isnan(lo) else ""))
            rows.append([labels[i], *cells])
        b.append(("h3", f"{m} ({_seed_word(len(rs))})"))
        b.append(("table", ["stage", *tasks], rows))
        if len(tasks) >= 2:
            fg = [[M.forgetting_per_task(r["matrix"])[j] for r in rs
                   if M.as_matrix(r["matrix"]).shape[0] == len(tasks) + 1]
                  for j in range(len(tasks) - 1)]
            ag = summ["methods"][m]
            items = [f"average accuracy: {_agg_cell(ag['avg_acc'])}",
                     f"BWT: {_agg_cell(ag['bwt'], signed=True)}",
                     f"FWT (vs. base row): {_agg_cell(ag['fwt'], signed=True)}"]
            items += [f"forgetting on {tasks[j]}: {_agg_cell(M.aggregate_seeds(fg[j]), signed=True)}"
                      for j in range(len(tasks) - 1)]
            b.append(("ul", items))

    # ---- tasks evaluated but not trained on
    labels = list(dict.fromkeys(k for rs in groups.values() for r in rs for k in (r.get("also") or {})))
    if labels:
        b.append(("h2", "Also evaluated (never trained on)"))
        b.append(("p", "Accuracy before training (base) and after the final stage, 95% intervals."))
        rows = []
        for m, rs in groups.items():
            for when, idx in (("base", 0), ("final", -1)):
                if when == "base" and m != methods[0]:
                    continue
                cells = []
                for k in labels:
                    recs = [r["also"][k] for r in rs if k in (r.get("also") or {})]
                    vals = [rec["accuracy"][idx] for rec in recs if rec["accuracy"]]
                    cells.append(_prop_cell(vals, [rec["n"] for rec in recs][:len(vals)]) if vals else "n/a")
                rows.append(["base" if when == "base" else m, *cells])
        b.append(("table", ["model", *labels], rows))

    # ---- acquisition matched
    acq = _acquisition_rows(results, groups)
    if acq:
        b.append(("h2", "Retention at equal new-task accuracy (checkpoints)"))
        b.append(("p", "Each method's checkpoints of a stage (pooled over its seeds) are sorted by "
                  "new-task accuracy and linearly interpolated, only inside the accuracy range "
                  "both methods reached; nothing is extrapolated. No interval is attached: "
                  "read it as a description of these trajectories, not as a test."))
        b.append(("table", ["stage", "comparison", "new-task acc", "retention A",
                            "retention B", "A − B"], acq))

    # ---- forgetting, paired with the base model on every retention item
    per_run, per_method = _forgetting_tables(results)
    if per_run:
        b.append(("h2", "Forgetting on the retention suite, item by item against the base model"))
        b.append(("p", "Δ accuracy on ALL items: tuned minus base, paired by item, with a paired-bootstrap 95% "
                  "interval (10,000 resamples of items); lost / gained = items right before and wrong after / "
                  "wrong before and right after; p = exact McNemar test of lost vs. gained. Δ margin: mean change "
                  "of the correct choice's log-likelihood margin (correct minus best other choice, nats) with a "
                  "t-interval over items, a continuous measure that moves before answers flip. Conditional = "
                  "accuracy on the items the base model got right: it is biased downwards (items near the "
                  "decision boundary flip both ways, and only the losses are counted), so it is not the "
                  "forgetting figure."))
        b.append(("table", ["method", "seed", "Δ accuracy, all items [bootstrap 95%]", "lost / gained",
                            "McNemar p", "Δ margin [t 95%]", "conditional: base-correct items"], per_run))
        b.append(("h3", "Per method, over seeds (t-interval over seeds)"))
        b.append(("table", ["method", "seeds", "Δ accuracy, all items", "Δ margin", "conditional"], per_method))

    # ---- frontiers
    fr_rows = _frontier_rows(results)
    b.append(("h2", "Pareto frontiers: new-task accuracy vs. retention"))
    b.append(("p", "Every run (all learning rates, all seeds) and each of its evaluated checkpoints is one point; a "
              "method's frontier is the set of its points that no other point of the same method beats on both "
              "axes, with the base model as the common start. The acquisition-matched comparison below reads "
              "each method's per-seed frontier at equal new-task accuracy (the best retention among its points "
              "with at least that accuracy), between the base model's accuracy and the highest accuracy both "
              "methods reached; mean over seeds with a t-interval, difference paired by seed. Seeds whose "
              "frontier does not reach a level are left out (n). Nothing is extrapolated."))
    if fr_rows:
        b.append(("table", ["stage", "comparison", "new-task acc ≥", "retention A", "retention B", "A − B"],
                  fr_rows))
    else:
        b.append(("p", "Only one method (family): no comparison to read."))

    # ---- figures
    b.append(("h2", "Figures"))
    figs = [
        (_plot_accuracy(results, groups, out),
         "Accuracy on each task across stages, per method (95% intervals)"),
        (_plot_series(results, groups, out, "retention", "retention_n", ret_name,
                      f"{ret_name} across stages (95% intervals)", "fig_retention.png", True),
         f"{ret_name} across stages per method"),
        (_plot_frontier(results, out, ret_name),
         f"Pareto frontiers of new-task accuracy vs. {ret_name} (every run and checkpoint; base model = star)"),
        (_plot_tradeoff(results, groups, out, ret_name),
         f"New-task accuracy vs. {ret_name} per stage (one marker per method/seed; "
         "checkpoint trajectories)"),
        (_plot_curves(results, groups, out), "Training loss vs. step per method"),
        (_plot_series(results, groups, out, "drift", None, "KL from base",
                      "Drift from the base model across stages", "fig_drift.png", False),
         "Drift (KL from the base model) across stages"),
    ]
    for path, alt in figs:
        if path is not None:
            b.append(("img", path, alt))

    # ---- config, notes, files
    if results.get("config"):
        b.append(("h2", "Configuration"))
        b.append(("code", json.dumps(results["config"], indent=2, sort_keys=True, default=str)))
    notes = results.get("notes") or []
    if notes:
        b.append(("h2", "Notes"))
        b.append(("ul", [str(n) for n in notes]))
    b.append(("h2", "Files"))
    b.append(("p", "results.json (input), summary.csv, matrix_<method>_seed<seed>.csv, "
              "fig_*.png, report.md, report.html — all in the run directory."))
    return b


def _acquisition_rows(results, groups) -> list[list[str]]:
    methods = [m for m in groups if any(r.get("checkpoints") for r in groups[m])]
    if len(methods) < 2:
        return []
    ref = next((m for m in methods if _family(m) == "sdft"), methods[0])
    stages = sorted({int(p.get("stage", 0)) for m in methods for r in groups[m]
                     for p in (r.get("checkpoints") or [])})
    rows = []
    for st in stages:
        pts = {m: [p for r in groups[m] for p in (r.get("checkpoints") or [])
                   if int(p.get("stage", 0)) == st] for m in methods}
        for other in methods:  # the reference against the other methods' runs (not its own family's)
            if _family(other) == _family(ref) or not pts[ref] or not pts[other]:
                continue
            res = M.acquisition_matched(pts[ref], pts[other])
            if not res["levels"]:
                rows.append([str(st), f"A={ref}, B={other}", "no shared range", "", "", ""])
                continue
            for lv, ra, rb, d in zip(res["levels"], res["retention_a"], res["retention_b"],
                                     res["difference"]):
                rows.append([str(st), f"A={ref}, B={other}", _f(lv), _f(ra), _f(rb), _fs(d)])
    return rows


def _partial_blocks(results: Mapping[str, Any]) -> list[tuple]:
    part = results.get("partial")
    if not part:
        return []
    return [("h2", "PARTIAL REPORT: not every planned run has finished (stopped, or still running)"),
            ("p", f"{part['n_reported']} of {part['n_planned']} planned runs have at least one finished stage and "
             "are reported below (a run's unfinished stages are left out). Missing: rerun the same command to "
             "resume; it skips everything finished and every run another process is running."),
            ("ul", list(part["missing"]) or ["nothing"])]


def _empty_partial_blocks(results: Mapping[str, Any]) -> list[tuple]:
    return [("h1", str(results.get("title") or "selfdistill report")), *_partial_blocks(results),
            ("p", "No run has finished a stage yet: there is nothing to report beyond the plan above.")]


def write_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.md`` + ``report.html`` (+ PNGs and CSVs) into ``run_dir``.

    Reads ``<run_dir>/results.json`` (schema in the module docstring).
    Returns ``(md_path, html_path)``.
    """
    out = Path(run_dir)
    if (out / "plan.json").exists() and (out / "base_eval.json").exists():
        # a sequence/sweep/demo folder: its progress files are the record (a stopped run, or several processes
        # or commands sharing the folder); results.json is rewritten from them
        from .sequence import collect_results
        results = collect_results(out)
        if results["runs"]:
            M.write_results(out, {k: v for k, v in results.items() if k != "partial" or v["missing"]})
        if not results["partial"]["missing"]:
            del results["partial"]
    elif (out / RESULTS_FILE).exists():
        results = load_results(out)
    else:
        from .sequence import collect_results
        results = collect_results(out)  # raises a one-line FileNotFoundError: nothing to report
    if results["runs"]:
        M.write_tables(out, results)
        blocks = _build_blocks(results, out)
    else:
        blocks = _empty_partial_blocks(results)
    title = str(results.get("title") or "selfdistill continual-learning report")
    md_path = out / "report.md"
    html_path = out / "report.html"
    md_path.write_text(_render_md(blocks), encoding="utf-8")
    html_path.write_text(_render_html(blocks, title), encoding="utf-8")
    return md_path, html_path


def main_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """CLI entry: write the report for ``run_dir`` and print both paths."""
    md_path, html_path = write_report(run_dir)
    print(md_path)
    print(html_path)
    return md_path, html_path


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m selfdistill.report",
                                 description="Write report.md/report.html for a run directory.")
    ap.add_argument("run_dir", help="directory holding results.json")
    args = ap.parse_args(argv)
    main_report(args.run_dir)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
