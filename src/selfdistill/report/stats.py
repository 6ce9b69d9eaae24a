"""The report's numbers: a proportion's estimate over seeds, the statistics of matrix cells and series, and the
frontier, forgetting and acquisition tables (rows of cell text, see :mod:`.cells`)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..methods import family_of
from .cells import Estimate, agg_cell, agg_n_cell, ci, estimate_cell, is_nan, num, signed_num

Groups = dict[str, list[Mapping[str, Any]]]  # {method text: its runs}, in order of first appearance
Points = list[tuple[float, float]]  # (new-task accuracy, retention)

_NO_ESTIMATE: Estimate = (float("nan"), float("nan"), float("nan"), "")


# --------------------------------------------------------------------------- #
# Proportions over seeds
# --------------------------------------------------------------------------- #


def _nanfloat(v: Any) -> float:
    return float("nan") if v is None else float(v)


def prop_estimate(values: Sequence[Any], ns: Sequence[Any]) -> Estimate:
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
    return _NO_ESTIMATE


def prop_cell(values: Sequence[Any], ns: Sequence[Any]) -> str:
    """:func:`prop_estimate` as cell text."""
    return estimate_cell(prop_estimate(values, ns))


# --------------------------------------------------------------------------- #
# Runs: grouping, matrix cells, series
# --------------------------------------------------------------------------- #


def by_method(results: Mapping[str, Any]) -> Groups:
    out: Groups = {}
    for run in results["runs"]:
        out.setdefault(str(run["method"]), []).append(run)
    return out


def n_stages(results: Mapping[str, Any]) -> int:
    return max(M.as_matrix(r["matrix"]).shape[0] - 1 for r in results["runs"])


def cell_n(run: Mapping[str, Any], i: int, j: int) -> Any:
    """Eval items behind R[i][j] of a run (None when not given)."""
    try:
        return run["matrix_n"][i][j]
    except (KeyError, IndexError, TypeError):
        return None


def cell_stats(runs: Sequence[Mapping[str, Any]], i: int, j: int) -> Estimate:
    """R[i][j] over the runs (seeds) of one method."""
    vals, ns = [], []
    for r in runs:
        R = M.as_matrix(r["matrix"])
        vals.append(R[i, j] if i < R.shape[0] else float("nan"))
        ns.append(cell_n(r, i, j))
    return prop_estimate(vals, ns)


def series_stats(runs: Sequence[Mapping[str, Any]], key: str, n_key: str | None, length: int) -> list[Estimate]:
    """A per-stage series (retention, drift) over the runs of one method, stage by stage."""
    out = []
    for i in range(length):
        vals, ns = [], []
        for r in runs:
            s = r.get(key)
            if s is None or i >= len(s):
                continue
            vals.append(s[i])
            ns.append(r.get(n_key) if n_key else None)
        out.append(prop_estimate(vals, ns))
    return out


# --------------------------------------------------------------------------- #
# Frontiers: (new-task accuracy, retention) of every run and checkpoint
# --------------------------------------------------------------------------- #


def stage_checkpoints(run: Mapping[str, Any], s: int) -> list[Mapping[str, Any]]:
    """The run's checkpoints of stage s that have both a new-task accuracy and a retention."""
    return [p for p in (run.get("checkpoints") or []) if int(p.get("stage", 0)) == s
            and p.get("new_task_acc") is not None and p.get("retention") is not None]


def stage_points(run: Mapping[str, Any], s: int) -> Points:
    """(new-task accuracy, retention) of every checkpoint of stage s and the end of stage s."""
    pts = [(float(p["new_task_acc"]), float(p["retention"])) for p in stage_checkpoints(run, s)]
    R = M.as_matrix(run["matrix"])
    ret = run.get("retention") or []
    if R.shape[0] > s and len(ret) > s and not is_nan(R[s, s - 1]) and not is_nan(ret[s]):
        pts.append((float(R[s, s - 1]), float(ret[s])))
    return pts


def base_point(results: Mapping[str, Any], s: int) -> tuple[float, float] | None:
    """The base model's (accuracy on the task of stage s, retention), from the first run that has both."""
    for run in results["runs"]:
        R = M.as_matrix(run["matrix"])
        ret = run.get("retention") or []
        if ret and ret[0] is not None and not is_nan(R[0, s - 1]):
            return float(R[0, s - 1]), float(ret[0])
    return None


def family_points(results: Mapping[str, Any], s: int) -> dict[str, dict[Any, Points]]:
    """{family: {seed: points of all its runs (every lr) at stage s, base point included}}."""
    base = base_point(results, s)
    fam: dict[str, dict[Any, Points]] = {}
    for run in results["runs"]:
        pts = stage_points(run, s)
        if not pts:
            continue
        seeds = fam.setdefault(family_of(run["method"]), {})
        seeds.setdefault(run.get("seed"), [base] if base else []).extend(pts)
    return fam


def frontier_levels(fams: Mapping[str, Mapping[Any, Points]], base_x: float, n: int = 5) -> list[float]:
    """n accuracy levels from the base model's up to the highest accuracy every family reached ([] if none)."""
    tops = [max(x for pts in seeds.values() for x, _ in pts) for seeds in fams.values()]
    top = min(tops) if tops else base_x
    if not top > base_x + 1e-9:
        return []
    return [float(v) for v in np.linspace(base_x, top, n)]


def comparison_pairs(families: list[str]) -> list[tuple[str, str]]:
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


def frontier_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """Rows (stage, comparison, level, retention A, retention B, A − B) of the frontier comparison."""
    rows = []
    for s in range(1, n_stages(results) + 1):
        fams = family_points(results, s)
        if len(fams) < 2:
            continue
        base = base_point(results, s)
        for ref, other in comparison_pairs(list(fams)):
            levels = frontier_levels({ref: fams[ref], other: fams[other]}, base[0] if base else 0.0)
            if not levels:
                rows.append([str(s), f"A={ref}, B={other}", "no accuracy above the base reached by both",
                             "", "", ""])
            for r in M.frontier_comparison(fams[ref], fams[other], levels):
                rows.append([str(s), f"A={ref}, B={other}", num(r["level"]), agg_n_cell(r["a"]),
                             agg_n_cell(r["b"]), agg_n_cell(r["diff"], signed=True)])
    return rows


# --------------------------------------------------------------------------- #
# Forgetting item by item; retention at equal new-task accuracy
# --------------------------------------------------------------------------- #


def forgetting_tables(results: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """Per run and per method: paired change on all retention items, margin change, conditional figure."""
    per_run, by_meth = [], {}
    for run in results["runs"]:
        it = run.get("retention_items") or {}
        corr, marg = it.get("correct") or [], it.get("margin") or []
        if len(corr) < 2 or corr[0] is None or corr[-1] is None:
            continue
        ch = M.paired_retention_change(corr[0], corr[-1])
        mc = (M.margin_change(marg[0], marg[-1]) if len(marg) >= 2 and marg[0] is not None and marg[-1] is not None
              else {"change": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0})
        cond = M.conditional_retention(corr[0], corr[-1])
        per_run.append([str(run["method"]), str(run.get("seed")), f"{ci(ch['change'], ch['low'], ch['high'], True)}",
                        f"{ch['lost']} / {ch['gained']}", f"{ch['p_mcnemar']:.3g}",
                        ci(mc["change"], mc["low"], mc["high"], True), f"{num(cond['value'])} (n={cond['n']})"])
        d = by_meth.setdefault(str(run["method"]), {"acc": [], "margin": [], "cond": []})
        d["acc"].append(ch["change"])
        d["margin"].append(mc["change"])
        d["cond"].append(cond["value"])
    agg = [[m, str(len(v["acc"])), agg_cell(M.aggregate_seeds(v["acc"]), True),
            agg_cell(M.aggregate_seeds(v["margin"]), True), agg_cell(M.aggregate_seeds(v["cond"]))]
           for m, v in by_meth.items()]
    return per_run, agg


def acquisition_rows(groups: Groups) -> list[list[str]]:
    """Rows (stage, comparison, new-task acc, retention A, retention B, A − B): the SDFT family's checkpoints
    against every other family's, interpolated at equal new-task accuracy ([] with fewer than two methods)."""
    methods = [m for m in groups if any(r.get("checkpoints") for r in groups[m])]
    if len(methods) < 2:
        return []
    ref = next((m for m in methods if family_of(m) == "sdft"), methods[0])
    stages = sorted({int(p.get("stage", 0)) for m in methods for r in groups[m]
                     for p in (r.get("checkpoints") or [])})
    rows = []
    for st in stages:
        pts = {m: [p for r in groups[m] for p in (r.get("checkpoints") or [])
                   if int(p.get("stage", 0)) == st] for m in methods}
        for other in methods:  # the reference against the other methods' runs (not its own family's)
            if family_of(other) == family_of(ref) or not pts[ref] or not pts[other]:
                continue
            res = M.acquisition_matched(pts[ref], pts[other])
            if not res["levels"]:
                rows.append([str(st), f"A={ref}, B={other}", "no shared range", "", "", ""])
                continue
            for lv, ra, rb, d in zip(res["levels"], res["retention_a"], res["retention_b"],
                                     res["difference"]):
                rows.append([str(st), f"A={ref}, B={other}", num(lv), num(ra), num(rb), signed_num(d)])
    return rows
