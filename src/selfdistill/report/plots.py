"""The report's figures, written as fig_*.png beside it (matplotlib Figure API on an Agg canvas: no pyplot
global state, no display needed). Each plot function returns the PNG's path, or None when the results hold
nothing to draw."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import metrics as M
from ..methods import family_of
from . import distance as D
from .cells import Estimate, is_nan, seed_word, stage_labels, stage_task
from .stats import Groups, base_point, cell_n, cell_stats, family_points, n_stages, series_stats, \
    stage_checkpoints, stage_points

_METHOD_COLORS = {"sdft": "#1f77b4", "sft": "#d62728", "dft": "#2ca02c"}
_FALLBACK_COLORS = ["#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_FAMILY_MAPS = {"sdft": "Blues", "sft": "Reds", "dft": "Greens"}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _new_fig(w: float, h: float, nrows: int = 1, ncols: int = 1):
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    return path


def _wrap_to(fig, title: str) -> str:
    """Wrap a 9-pt figure title to the figure's width (about 13 characters per inch) so it is never cut off."""
    return textwrap.fill(title, width=max(40, int(fig.get_figwidth() * 13)))


def _color(method: str, methods: Sequence[str]) -> str:
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    others = [m for m in methods if m not in _METHOD_COLORS]
    return _FALLBACK_COLORS[others.index(method) % len(_FALLBACK_COLORS)]


def _err(stats: Sequence[Estimate]) -> tuple[np.ndarray, np.ndarray]:
    """Means and asymmetric error bars (0 where there is no interval)."""
    m = np.array([s[0] for s in stats], dtype=float)
    lo = np.array([s[1] for s in stats], dtype=float)
    hi = np.array([s[2] for s in stats], dtype=float)
    yerr = np.vstack([np.where(np.isnan(lo), 0, m - lo), np.where(np.isnan(hi), 0, hi - m)])
    return m, np.clip(np.nan_to_num(yerr), 0, None)


def _wilson_err(v: float, n: Any) -> list[list[float]] | None:
    """Error bar of a proportion measured on n items (None without a count)."""
    if not n:
        return None
    lo, hi = M.wilson_interval(round(v * n), n)
    return [[max(v - lo, 0)], [max(hi - v, 0)]]


def _unit_panel(ax, xlabel: str, ylabel: str, title: str, **legend: Any) -> None:
    """Axes, grid, title and legend of an accuracy-vs-retention panel: both axes on [0, 1]."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, **legend)


# --------------------------------------------------------------------------- #
# Across stages
# --------------------------------------------------------------------------- #


def plot_accuracy(results: Mapping[str, Any], groups: Groups, out: Path) -> Path:
    """One panel per method: accuracy on each task after each stage (95% intervals)."""
    tasks = results["tasks"]
    methods = list(groups)
    fig, axes = _new_fig(4.2 * len(methods) + 0.6, 3.8, 1, len(methods))
    for ax, m in zip(axes[0], methods):
        runs = groups[m]
        rows = max(M.as_matrix(r["matrix"]).shape[0] for r in runs)
        for j, t in enumerate(tasks):
            _dodged_errorbar(ax, [cell_stats(runs, i, j) for i in range(rows)], j, len(tasks), 0.04, label=t)
        _stages_panel(ax, tasks, rows, "accuracy", f"{m} ({seed_word(len(runs))})",
                      legend_kw={"title": "task", "title_fontsize": 8})
    fig.suptitle("Accuracy per task across stages (95% intervals)", fontsize=11)
    return _save(fig, out / "fig_accuracy_per_task.png")


def plot_series(results: Mapping[str, Any], groups: Groups, out: Path, key: str, n_key: str | None, ylabel: str,
                title: str, fname: str, unit_interval: bool) -> Path | None:
    """A per-stage series of the runs (``key``: retention, drift), one line per method."""
    methods = list(groups)
    if not any(r.get(key) for runs in groups.values() for r in runs):
        return None
    rows = max(len(r[key]) for runs in groups.values() for r in runs if r.get(key))
    fig, axes = _new_fig(7.5, 4.2)
    ax = axes[0][0]
    for k, m in enumerate(methods):
        runs = [r for r in groups[m] if r.get(key)]
        if not runs:
            continue
        _dodged_errorbar(ax, series_stats(runs, key, n_key, rows), k, len(methods), 0.05,
                         color=_color(m, methods), label=f"{m} (n={len(runs)})")
    _stages_panel(ax, results["tasks"], rows, ylabel, title, title_kw={"fontsize": 11}, unit_interval=unit_interval)
    return _save(fig, out / fname)


def _dodged_errorbar(ax, stats: Sequence[Estimate], k: int, n: int, width: float, **kw: Any) -> None:
    """Line k of n over the stages, shifted sideways by ``width`` per line so that the error bars do not overlap."""
    y, yerr = _err(stats)
    x = np.arange(len(stats))
    ax.errorbar(x + (k - (n - 1) / 2) * width, y, yerr=yerr, marker=_MARKERS[k % 8], capsize=3, **kw)


def _stages_panel(ax, tasks: Sequence[str], rows: int, ylabel: str, title: str, *, unit_interval: bool = True,
                  title_kw: Mapping[str, Any] | None = None, legend_kw: Mapping[str, Any] | None = None) -> None:
    """Stage names on the x axis, labels, grid and legend of a panel drawn over the stages."""
    ax.set_xticks(np.arange(rows), stage_labels(tasks, rows), rotation=20, ha="right", fontsize=8)
    if unit_interval:
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, **(title_kw or {}))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **(legend_kw or {}))


# --------------------------------------------------------------------------- #
# New-task accuracy vs. retention
# --------------------------------------------------------------------------- #


def plot_tradeoff(results: Mapping[str, Any], groups: Groups, out: Path, ret_name: str) -> Path | None:
    """One panel per stage s: x = accuracy on the task trained in stage s, y = retention.

    Markers: each method/seed at the end of the stage (R[s, s-1], retention[s]) with
    Wilson bars where item counts are given; thin lines: that stage's checkpoints;
    star: the base model (R[0, s-1], retention[0]) as a reference.
    """
    methods = list(groups)
    stages = n_stages(results)
    has_ckpt = any(r.get("checkpoints") for runs in groups.values() for r in runs)
    has_ret = any(r.get("retention") for runs in groups.values() for r in runs)
    if not has_ret and not has_ckpt:
        return None
    fig, axes = _new_fig(5.2 * stages + 0.6, 5.0, 1, stages)
    for s, ax in enumerate(axes[0], start=1):
        task = stage_task(results["tasks"], s)
        base_pts: list[tuple[float, float]] = []
        for k, m in enumerate(methods):
            base_pts += _tradeoff_method(ax, groups[m], s, m, _MARKERS[k % 8], _color(m, methods))
        if base_pts:
            bx, by = np.nanmean(np.array(base_pts, dtype=float), axis=0)
            ax.plot([bx], [by], marker="*", color="black", ms=14, ls="none", label="base model")
        _unit_panel(ax, f"accuracy on {task} (task of stage {s})", f"{ret_name}",
                    f"stage {s}: after training on {task}")
    ttl = "New-task accuracy vs. retention: one marker per method/seed at the end of each stage"
    if has_ckpt:
        ttl += "; thin lines = checkpoint trajectories within the stage"
    fig.suptitle(_wrap_to(fig, ttl + " (bars: Wilson 95%)"), fontsize=9)
    return _save(fig, out / "fig_tradeoff.png")


def _tradeoff_method(ax, runs: Sequence[Mapping[str, Any]], s: int, label: str, marker: str,
                     color: str) -> list[tuple[float, float]]:
    """Draw one method's runs in the panel of stage s; return their base points (accuracy, retention)."""
    base_pts = []
    first = True
    for run in runs:
        ck = sorted(stage_checkpoints(run, s), key=lambda p: p.get("step", 0))
        if ck:
            ax.plot([p["new_task_acc"] for p in ck], [p["retention"] for p in ck], "-",
                    color=color, alpha=0.35, lw=1, marker=".", ms=4)
        R = M.as_matrix(run["matrix"])
        ret = run.get("retention") or []
        if R.shape[0] <= s or len(ret) <= s:
            continue
        if ret[0] is not None:
            base_pts.append((R[0, s - 1], ret[0]))
        x, y = R[s, s - 1], ret[s]
        if is_nan(x) or is_nan(y):
            continue
        ax.errorbar([x], [y], xerr=_wilson_err(x, cell_n(run, s, s - 1)), yerr=_wilson_err(y, run.get("retention_n")),
                    fmt=marker, color=color, ms=8, capsize=3, mec="black", label=label if first else None)
        first = False
    return base_pts


def plot_frontier(results: Mapping[str, Any], out: Path, ret_name: str) -> Path | None:
    """Every run's checkpoints (small) and end points (large) as (new-task accuracy, retention), each family's
    Pareto frontier over all its seeds and learning rates (thick steps; thin: per seed), the base model (star)."""
    stages = n_stages(results)
    if not any(family_points(results, s) for s in range(1, stages + 1)):
        return None
    fig, axes = _new_fig(5.6 * stages + 0.6, 5.2, 1, stages)
    for s, ax in enumerate(axes[0], start=1):
        fams = family_points(results, s)
        names = list(fams)
        for k, fam in enumerate(names):
            _frontier_family(ax, results, s, fam, fams[fam], _MARKERS[k % 8], _color(fam, names))
        base = base_point(results, s)
        if base:
            ax.plot([base[0]], [base[1]], marker="*", color="black", ms=15, ls="none", label="base model")
        task = stage_task(results["tasks"], s)
        _unit_panel(ax, f"accuracy on {task} (new task of stage {s})", ret_name,
                    f"stage {s}: every run and checkpoint", loc="lower left")
    fig.suptitle(_wrap_to(fig, "Pareto frontiers of new-task accuracy vs. retention: dots = every checkpoint and "
                          "end of every run (all learning rates and seeds); thick = frontier over all seeds, dashed "
                          "= per seed; star = base model, the common start"), fontsize=9)
    return _save(fig, out / "fig_frontier.png")


def _frontier_family(ax, results: Mapping[str, Any], s: int, fam: str, seeds: Mapping[Any, list],
                     marker: str, color: str) -> None:
    """One family in the panel of stage s: its points, each seed's frontier (dashed), the pooled one (thick)."""
    pooled = [p for pts in seeds.values() for p in pts]
    ck = [p for r in results["runs"] if family_of(r["method"]) == fam for p in stage_points(r, s)]
    ax.plot([p[0] for p in ck], [p[1] for p in ck], ls="none", marker=marker, color=color, ms=4, alpha=0.45)
    for pts in seeds.values():
        fr = M.pareto_frontier(pts)
        ax.step([p[0] for p in fr], [p[1] for p in fr], where="pre", color=color, lw=0.8, alpha=0.5, ls="--")
    fr = M.pareto_frontier(pooled)
    ax.step([p[0] for p in fr], [p[1] for p in fr], where="pre", color=color, lw=2.2,
            label=f"{fam} frontier ({seed_word(len(seeds))})")


# --------------------------------------------------------------------------- #
# Training curves
# --------------------------------------------------------------------------- #


def _curve_xy(curves: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) of a curve, sorted by step; steps that restart at each stage are made cumulative."""
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


def plot_curves(groups: Groups, out: Path) -> Path | None:
    """One panel per method with curves: training loss vs. cumulative step, one line per seed."""
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


# --------------------------------------------------------------------------- #
# Accuracy by generalisation distance
# --------------------------------------------------------------------------- #


def plot_distance(results: Mapping[str, Any], groups: Groups, out: Path) -> Path | None:
    """One panel per method family: accuracy on the trained facts per phrasing (nearest first), one line per
    learning rate (mean over seeds, t-interval; Wilson for one seed); dotted: the same on never-trained control
    facts; grey: the base model."""
    ph = D.phrasings(results)
    if not ph:
        return None
    fams: dict[str, list[str]] = {}
    for m in groups:
        fams.setdefault(family_of(m), []).append(m)
    fig, axes = _new_fig(5.4 * len(fams) + 0.6, 4.4, 1, len(fams))
    x = np.arange(len(ph))
    first = next(iter(groups.values()))
    for ax, (fam, specs) in zip(axes[0], fams.items()):
        y, _ = _err([D.phrasing_estimate(first, p, stage=0) for p in ph])
        ax.plot(x, y, color="grey", marker="*", lw=1, label="base model")
        for k, m in enumerate(specs):
            stats = [D.phrasing_estimate(groups[m], p) for p in ph]
            y, yerr = _err(stats)
            shade = 0.45 + 0.5 * k / max(1, len(specs) - 1)  # a family's rates: light (first) to dark (last)
            color = colormaps[_FAMILY_MAPS.get(fam.partition("@")[0], "Purples")](shade)
            shift = (k - (len(specs) - 1) / 2) * 0.06
            ax.errorbar(x + shift, y, yerr=yerr, marker=_MARKERS[k % 8], capsize=3, color=color,
                        label=f"{m} ({seed_word(len(groups[m]))})")
            ctrl = [D.phrasing_estimate(groups[m], p, D.CONTROL) for p in ph]
            if not all(is_nan(s[0]) for s in ctrl):
                ax.plot(x + shift, _err(ctrl)[0], ls=":", color=color, lw=1)
        ax.set_xticks(x, [D.label_of(p) for p in ph], rotation=25, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy on the trained facts")
        ax.set_title(f"{fam}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_wrap_to(fig, "Accuracy by distance from the training question (final models; bars: 95% "
                          "t-interval over seeds; dotted: the same run on never-trained control facts)"), fontsize=9)
    return _save(fig, out / "fig_distance.png")
