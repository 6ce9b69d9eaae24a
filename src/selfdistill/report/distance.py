"""Accuracy by generalisation distance: the battery's item tables (results.json ``runs[].item_tables``) read per
phrasing, per method over seeds, and the SDFT − SFT difference per distance, paired by seed, at each method's
best learning rate and at equal retention.

An item table holds, for every test item, what it is (``fields``: ``phrasing``, ``distance``, ``fact_set``) and
what the reply did at every evaluation (``outcomes``: ``correct``, ``attempted``); see
:func:`selfdistill.evaluation.item_table`. Everything here uses the final evaluation of each run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..methods import family_of
from .cells import Estimate, agg_n_cell, num
from .stats import Groups, prop_estimate

TRAINED = "battery"
CONTROL = "battery, control (never trained)"
RETENTION_DROP = 0.05  # a best rate may lose at most this much mean retention (all items) against the base
EQUAL_RETENTION_DROPS = (0.05, 0.10)
PHRASING_LABELS = {"train": "1 training question", "reworded": "2 reworded", "restructured": "3 other structure",
                   "other_name": "4 other name", "used": "5 code used", "reverse": "5 reverse"}


@dataclass(frozen=True)
class PhrasingScore:
    accuracy: float
    attempted: float | None  # share of replies that answered in the right form (None: not recorded)
    n: int


def has_distances(results: Mapping[str, Any]) -> bool:
    return any("distance" in (r.get("item_tables", {}).get(TRAINED, {}).get("fields") or {}) for r in results["runs"])


def phrasings(results: Mapping[str, Any], label: str = TRAINED) -> list[str]:
    """The phrasings of `label`'s items, nearest first."""
    for r in results["runs"]:
        f = r.get("item_tables", {}).get(label, {}).get("fields")
        if f and "phrasing" in f:
            dist = dict(zip(f["phrasing"], f.get("distance", [0] * len(f["phrasing"]))))
            return sorted(dist, key=lambda p: (dist[p], list(dist).index(p)))
    return []


def label_of(phrasing: str) -> str:
    return PHRASING_LABELS.get(phrasing, phrasing)


def by_phrasing(run: Mapping[str, Any], label: str = TRAINED, stage: int = -1) -> dict[str, PhrasingScore]:
    """{phrasing: accuracy, attempt rate, items} of one run at one evaluation (default: the final one; 0 = base)."""
    tab = run.get("item_tables", {}).get(label)
    if not tab:
        return {}
    correct = tab["outcomes"]["correct"][stage]
    attempted = (tab["outcomes"].get("attempted") or [None])[stage]
    if correct is None:
        return {}
    out = {}
    for p in dict.fromkeys(tab["fields"]["phrasing"]):
        idx = [i for i, q in enumerate(tab["fields"]["phrasing"]) if q == p]
        att = None if attempted is None else float(np.mean([attempted[i] for i in idx]))
        out[p] = PhrasingScore(float(np.mean([correct[i] for i in idx])), att, len(idx))
    return out


def overall(run: Mapping[str, Any], label: str = TRAINED, stage: int = -1) -> float:
    """Accuracy over all of `label`'s items."""
    c = run["item_tables"][label]["outcomes"]["correct"][stage]
    return float(np.mean(c)) if c else float("nan")


def phrasing_estimate(runs: Sequence[Mapping[str, Any]], p: str, label: str = TRAINED, stage: int = -1,
                      key: str = "accuracy") -> Estimate:
    """A phrasing's accuracy (or attempt rate) over seeds (t-interval; one seed: Wilson)."""
    scores = [by_phrasing(r, label, stage).get(p) for r in runs]
    scores = [s for s in scores if s is not None and getattr(s, key) is not None]
    return prop_estimate([getattr(s, key) for s in scores], [s.n for s in scores])


def mean_retention(runs: Sequence[Mapping[str, Any]]) -> float:
    return float(np.mean([r["retention"][-1] for r in runs]))


def base_retention(results: Mapping[str, Any]) -> float:
    return float(results["runs"][0]["retention"][0])


def at_or_above(retention: float, floor: float) -> bool:
    """retention >= floor, where a retention that equals the floor up to rounding counts (it is k/n)."""
    return retention >= floor - 1e-9


def keeps_retention(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the runs' mean retention is at most RETENTION_DROP below the base model's."""
    return at_or_above(mean_retention(runs), base_retention(results) - RETENTION_DROP)


def best_specs(results: Mapping[str, Any], groups: Groups) -> dict[str, str]:
    """{family: method spec}: per family (sdft, sft, ...), the learning rate with the highest mean accuracy on the
    trained facts (all phrasings) among those whose mean retention is at most RETENTION_DROP below the base
    model's; where no rate stays that close, the one that keeps the most retention."""
    fams: dict[str, list[str]] = {}
    for m in groups:
        fams.setdefault(family_of(m), []).append(m)
    best = {}
    for fam, specs in fams.items():
        kept = [m for m in specs if keeps_retention(results, groups[m])]
        best[fam] = (max(kept, key=lambda m: np.mean([overall(r) for r in groups[m]])) if kept
                     else max(specs, key=lambda m: mean_retention(groups[m])))
    return best


def paired_difference(a_runs: Sequence[Mapping[str, Any]], b_runs: Sequence[Mapping[str, Any]],
                      p: str) -> dict[str, float]:
    """A − B accuracy on phrasing p, paired by seed (seeds both have), mean with a t-interval over seeds."""
    a = {r["seed"]: by_phrasing(r).get(p) for r in a_runs}
    b = {r["seed"]: by_phrasing(r).get(p) for r in b_runs}
    diffs = [a[s].accuracy - b[s].accuracy for s in a if s in b and a[s] and b[s]]
    return M.aggregate_seeds(diffs)


def best_at_retention(runs: Sequence[Mapping[str, Any]], p: str, floor: float) -> dict[Any, float]:
    """{seed: the best accuracy on phrasing p among the family's runs of that seed with retention >= floor}."""
    out: dict[Any, float] = {}
    for r in runs:
        s = by_phrasing(r).get(p)
        if s is not None and at_or_above(r["retention"][-1], floor):
            out[r["seed"]] = max(out.get(r["seed"], 0.0), s.accuracy)
    return out


def equal_retention_difference(results: Mapping[str, Any], fam_a: str, fam_b: str, p: str,
                               drop: float) -> dict[str, float]:
    """A − B on phrasing p, each family at its best run (any rate) keeping retention >= base − drop, paired by
    seed; seeds where either family has no such run are left out (n)."""
    floor = base_retention(results) - drop
    runs_of = {f: [r for r in results["runs"] if family_of(r["method"]) == f] for f in (fam_a, fam_b)}
    a, b = (best_at_retention(runs_of[f], p, floor) for f in (fam_a, fam_b))
    return M.aggregate_seeds([a[s] - b[s] for s in a if s in b])


def difference_rows(results: Mapping[str, Any], groups: Groups, fam_a: str = "sdft",
                    fam_b: str = "sft") -> list[list[str]]:
    """Rows (distance, A − B at the best rates, A − B at equal retention for each drop) of the comparison."""
    best = best_specs(results, groups)
    rows = []
    for p in phrasings(results):
        row = [label_of(p), agg_n_cell(paired_difference(groups[best[fam_a]], groups[best[fam_b]], p), signed=True)]
        row += [agg_n_cell(equal_retention_difference(results, fam_a, fam_b, p, d), signed=True)
                for d in EQUAL_RETENTION_DROPS]
        rows.append(row)
    return rows


def verdicts(results: Mapping[str, Any], groups: Groups, fam_a: str = "sdft",
             fam_b: str = "sft") -> dict[str, list[str]]:
    """{"a": phrasings where A − B at the best rates is above 0 (interval), "b": below 0, "level": neither}. A
    difference that is the same at every seed gives a zero-width interval, which is no evidence: level."""
    best = best_specs(results, groups)
    out: dict[str, list[str]] = {"a": [], "b": [], "level": []}
    for p in phrasings(results):
        d = paired_difference(groups[best[fam_a]], groups[best[fam_b]], p)
        varied = d["n"] >= 2 and d["sd"] > 0
        key = "a" if varied and d["low"] > 0 else "b" if varied and d["high"] < 0 else "level"
        out[key].append(label_of(p))
    return out


def set_rows(results: Mapping[str, Any], groups: Groups, specs: Sequence[str]) -> list[list[str]]:
    """Accuracy per fact set and phrasing for the given method specs (mean over seeds)."""
    rows = []
    for m in specs:
        tabs = [r["item_tables"][TRAINED] for r in groups[m]]
        sets = list(dict.fromkeys(tabs[0]["fields"]["fact_set"]))
        for fs in sets:
            cells = []
            for p in phrasings(results):
                vals = []
                for t in tabs:
                    idx = [i for i, (a, b) in enumerate(zip(t["fields"]["fact_set"], t["fields"]["phrasing"]))
                           if a == fs and b == p]
                    vals.append(np.mean([t["outcomes"]["correct"][-1][i] for i in idx]))
                cells.append(num(float(np.mean(vals)), 2))
            rows.append([m, fs, *cells])
    return rows
