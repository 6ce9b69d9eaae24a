"""The report's opening: what the run shows, in a few sentences generated from the results (with their intervals
and caveats), and the one figure that shows it: accuracy by distance when the results have it, else the
Pareto frontier (several learning rates) or the accuracy-vs-retention trade-off."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..methods import family_of
from . import distance as D
from .cells import agg_cell, estimate_cell, seed_word
from .plots import plot_distance, plot_frontier, plot_tradeoff
from .render import Block
from .stats import Groups, prop_cell


def lead_section(results: Mapping[str, Any], groups: Groups, summ: Mapping[str, Any], out: Path) -> list[Block]:
    ret_name = str(results.get("retention_name") or "retention")
    if D.has_distances(results):
        text, fig = distance_sentences(results, groups), plot_distance(results, groups, out)
        alt = "Accuracy by distance from the training question, per method and learning rate"
    else:
        text = method_sentences(results, groups, summ)
        sweep = len({str(r["method"]).partition("@")[0] for r in results["runs"]}) < len(groups)
        fig = plot_frontier(results, out, ret_name) if sweep else plot_tradeoff(results, groups, out, ret_name)
        alt = f"New-task accuracy vs. {ret_name}" + (" (Pareto frontiers)" if sweep else "")
    b: list[Block] = [("h2", "What this run shows"), ("ul", text), ("p", caveat(results, groups))]
    return b + ([("img", fig, alt)] if fig is not None else [])


def method_sentences(results: Mapping[str, Any], groups: Groups, summ: Mapping[str, Any]) -> list[str]:
    """One line per method: final new-task accuracy and the change of retention against the base model."""
    lines = []
    for m, rs in groups.items():
        srs = [s for s in summ["runs"] if str(s["method"]) == m]
        acc = prop_cell([s["new_task_acc"] for s in srs], [s["new_task_n"] for s in srs])
        change = agg_cell(summ["methods"][m]["retention_change"], signed=True)
        lines.append(f"{m} ({seed_word(len(rs))}): new-task accuracy {acc}; retention change against the base "
                     f"model {change}.")
    return lines


def distance_sentences(results: Mapping[str, Any], groups: Groups) -> list[str]:
    """Where SDFT and SFT differ by distance at their best rates, what the control shows, how often each
    answered at all far from the training question."""
    best = D.best_specs(results, groups)
    ph = D.phrasings(results)

    def why(m: str) -> str:
        return "" if D.keeps_retention(results, groups[m]) else \
            f"; no {family_of(m)} rate kept retention within {D.RETENTION_DROP:.2f}: the one that kept the most"
    lines = [f"Best rates (highest accuracy on the trained facts losing at most {D.RETENTION_DROP:.2f} retention): "
             + ", ".join(f"{m} ({seed_word(len(groups[m]))}{why(m)})" for m in best.values()) + "."]
    for m in best.values():
        cells = "; ".join(f"{D.label_of(p)} {_est(groups[m], p)}" for p in ph)
        lines.append(f"{m}, accuracy by distance: {cells}.")
    if {"sdft", "sft"} <= set(best):
        v = D.verdicts(results, groups)
        lines.append("SDFT − SFT at these rates, paired by seed: SDFT ahead (interval above 0) at "
                     f"{_list(v['a'])}; SFT ahead at {_list(v['b'])}; no measurable difference at {_list(v['level'])}.")
    if any(D.CONTROL in r.get("item_tables", {}) for r in results["runs"]):
        top = max(D.phrasing_estimate(groups[m], p, D.CONTROL)[0] for m in best.values() for p in ph)
        lines.append(f"Never-trained control facts: at most {top:.2f} accuracy at any distance for these models "
                     "(guessing and form alone).")
    far = ph[2:]
    if far:
        att = "; ".join(f"{m} {_mean_attempt(groups[m], far):.2f}" for m in best.values())
        lines.append(f"Share of replies at distances 3-5 that answered in the right form at all: {att}.")
    return lines


def caveat(results: Mapping[str, Any], groups: Groups) -> str:
    n = min(len(rs) for rs in groups.values())
    return (f"Caveats: {results.get('model', 'the model')} on {results.get('machine', 'this machine')}; "
            f"{seed_word(n)} at least per method; intervals are 95% t-intervals over seeds (Wilson over items, ᵂ, "
            "for one seed), which cover training variance only as far as the seeds sample it. The tables and the "
            "other figures follow.")


def _est(runs, p: str, label: str = D.TRAINED) -> str:
    return estimate_cell(D.phrasing_estimate(runs, p, label))


def _mean_attempt(runs, phrasings: list[str]) -> float:
    vals = [D.phrasing_estimate(runs, p, key="attempted")[0] for p in phrasings]
    return float(sum(vals) / len(vals))


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"
