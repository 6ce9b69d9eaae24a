"""The report's sections, one function each: what a section shows, the prose that says how to read it, and its
figures. Each returns a list of blocks (:mod:`.render`); :func:`build_blocks` puts them in order."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .. import metrics as M
from .cells import agg_cell, ci, estimate_cell, num, seed_word, signed_num, stage_labels
from .plots import plot_accuracy, plot_curves, plot_frontier, plot_series, plot_tradeoff
from . import distance as D
from .lead import lead_section
from .render import Block
from .stats import Groups, acquisition_rows, by_method, cell_stats, forgetting_tables, frontier_rows, prop_cell

DEFAULT_TITLE = "selfdistill continual-learning report"


def report_title(results: Mapping[str, Any]) -> str:
    return str(results.get("title") or DEFAULT_TITLE)


def build_blocks(results: Mapping[str, Any], out: Path) -> list[Block]:
    """The whole report of results that hold at least one run; its figures are written into ``out``."""
    tasks = list(results["tasks"])
    groups = by_method(results)
    summ = M.summarize_results(results)
    lead = lead_section(results, groups, summ, out)
    shown = {b[1] for b in lead if b[0] == "img"}  # the lead's figure is not repeated under Figures
    return [
        ("h1", report_title(results)),
        *partial_section(results),
        *lead,
        *header_section(results, groups),
        *probe_section(results.get("probe")),
        *summary_section(tasks, groups, summ),
        *per_run_section(summ),
        *matrices_section(tasks, groups, summ),
        *also_evaluated_section(groups),
        *distance_section(results, groups),
        *acquisition_section(groups),
        *forgetting_section(results),
        *frontier_section(results),
        *(b for b in figures_section(results, groups, out) if not (b[0] == "img" and b[1] in shown)),
        *config_section(results.get("config")),
        *notes_section(results.get("notes") or []),
        *files_section(),
    ]


def empty_blocks(results: Mapping[str, Any]) -> list[Block]:
    """The report of a run none of whose (method, seed) runs has finished a stage."""
    return [("h1", str(results.get("title") or "selfdistill report")), *partial_section(results),
            ("p", "No run has finished a stage yet: there is nothing to report beyond the plan above.")]


def partial_section(results: Mapping[str, Any]) -> list[Block]:
    """What is missing, when not every planned run has finished."""
    part = results.get("partial")
    if not part:
        return []
    return [("h2", "PARTIAL REPORT: not every planned run has finished (stopped, or still running)"),
            ("p", f"{part['n_reported']} of {part['n_planned']} planned runs have at least one finished stage and "
             "are reported below (a run's unfinished stages are left out). Missing: rerun the same command to "
             "resume; it skips everything finished and every run another process is running."),
            ("ul", list(part["missing"]) or ["nothing"])]


def header_section(results: Mapping[str, Any], groups: Groups) -> list[Block]:
    """Model, machine, date, tasks, methods and seeds; how to read the intervals."""
    seeds_desc = "; ".join(
        f"{m}: {seed_word(len(rs))} ({', '.join(str(r.get('seed')) for r in rs)})"
        for m, rs in groups.items())
    b: list[Block] = [("table", ["field", "value"], [
        ["model", results.get("model", "n/a")],
        ["machine", results.get("machine", "n/a")],
        ["date", results.get("date", "n/a")],
        ["tasks (training order)", " → ".join(results["tasks"])],
        ["retention score ('retention' below)", _retention_name(results)],
        ["methods / seeds", seeds_desc],
    ])]
    b.append(("p", "How to read the numbers: every interval is 95%. "
              "Where a method has several seeds, the interval is a Student-t interval over "
              "the per-seed values (n−1 degrees of freedom; for accuracies clipped to [0, 1]). "
              "Where it has one seed (or all seeds give the identical value, e.g. the shared base "
              "model), accuracy intervals (marked ᵂ) are Wilson score intervals from the number of "
              "evaluation items; they cover item sampling only, not run-to-run training variance, and "
              "derived quantities (changes, BWT, forgetting) get no interval. "
              "'n/a' = not measured or not defined."))
    if min(len(rs) for rs in groups.values()) == 1:
        b.append(("p", "Caution: at least one method has a single seed, so seed-to-seed "
                  "variation is unmeasured for it and its intervals understate the real "
                  "uncertainty of a comparison between methods."))
    return b


def probe_section(probe: Mapping[str, Any] | None) -> list[Block]:
    """Student vs. demonstration-conditioned teacher on held-out items."""
    if not probe:
        return []
    n = probe.get("n")
    rows = []
    for label, key in (("student (no demonstration)", "student_acc"),
                       ("teacher (with demonstration)", "teacher_acc")):
        v = probe.get(key)
        nn = probe.get(key.replace("_acc", "_n"), n)
        rows.append([label, prop_cell([v], [nn]), "n/a" if nn is None else str(nn)])
    b: list[Block] = [("h2", "Probe: student vs. demonstration-conditioned teacher"),
                      ("table", ["model", "accuracy [95% Wilson]", "items"], rows)]
    extra = []
    if probe.get("kl_teacher_student") is not None:
        kl = float(probe["kl_teacher_student"])
        extra.append(f"mean per-token KL(teacher ‖ student) on the student's rollouts: {kl:.4g}")
    for k, v in probe.items():
        if k not in ("student_acc", "teacher_acc", "n", "kl_teacher_student", "student_n", "teacher_n"):
            extra.append(f"{k}: {v}")
    if extra:
        b.append(("ul", extra))
    return b


def summary_section(tasks: list[str], groups: Groups, summ: Mapping[str, Any]) -> list[Block]:
    """The final model of each method: accuracies, retention, BWT, forgetting, drift."""
    head = ["method", "seeds", "new-task acc", "avg acc (all tasks)",
            "retention before", "retention after", "Δ retention", "BWT",
            "avg forgetting", "final drift KL"]
    rows = []
    for m, rs in groups.items():
        srs = [s for s in summ["runs"] if str(s["method"]) == m]
        agg = summ["methods"][m]
        new_n = [s["new_task_n"] for s in srs]
        ret_n = [s["retention_n"] for s in srs]
        # average accuracy: Wilson only when one task (then it is a single cell)
        avg_cell = (prop_cell([s["avg_acc"] for s in srs], new_n) if len(tasks) == 1
                    else agg_cell(agg["avg_acc"]))
        rows.append([
            m, str(len(rs)),
            prop_cell([s["new_task_acc"] for s in srs], new_n),
            avg_cell,
            prop_cell([s["retention_before"] for s in srs], ret_n),
            prop_cell([s["retention_after"] for s in srs], ret_n),
            agg_cell(agg["retention_change"], signed=True),
            agg_cell(agg["bwt"], signed=True),
            agg_cell(agg["avg_forgetting"], signed=True),
            ci(agg["drift_final"]["mean"], agg["drift_final"]["low"], agg["drift_final"]["high"]),
        ])
    return [("h2", "Summary per method (final model)"),
            ("table", head, rows),
            ("p", "new-task acc = accuracy on the last-trained task after the final stage; "
             "avg acc = mean of the final matrix row; "
             "BWT = 1/(T−1)·Σ_{i<T}(R[T,i] − R[i,i]) (Lopez-Paz & Ranzato 2017); "
             "forgetting = max over earlier trained stages of R[l,j] − R[T,j], averaged over "
             "j<T (Chaudhry et al. 2018); both n/a for a single task. "
             "drift = KL from the base model, as logged.")]


def per_run_section(summ: Mapping[str, Any]) -> list[Block]:
    """The summary figures of every (method, seed), FWT included."""
    rows = [[str(s["method"]), str(s["seed"]), num(s["new_task_acc"]), num(s["avg_acc"]),
             num(s["retention_before"]), num(s["retention_after"]),
             signed_num(s["retention_change"]), signed_num(s["bwt"]), signed_num(s["avg_forgetting"]),
             signed_num(s["fwt"]), num(s["drift_final"], 4)]
            for s in summ["runs"]]
    return [("h3", "Per run"),
            ("table", ["method", "seed", "new-task acc", "avg acc", "retention before",
                       "retention after", "Δ retention", "BWT", "avg forgetting", "FWT",
                       "final drift KL"], rows)]


def matrices_section(tasks: list[str], groups: Groups, summ: Mapping[str, Any]) -> list[Block]:
    """Each method's accuracy matrix over seeds; with several tasks, its sequence metrics below it."""
    b: list[Block] = [("h2", "Accuracy matrices"),
                      ("p", "Rows: the model after each stage (row 'base' = before training); "
                       "columns: evaluation task. Mean over seeds with 95% interval.")]
    for m, rs in groups.items():
        rows_n = max(M.as_matrix(r["matrix"]).shape[0] for r in rs)
        labels = stage_labels(tasks, rows_n)
        rows = [[labels[i], *(estimate_cell(cell_stats(rs, i, j)) for j in range(len(tasks)))]
                for i in range(rows_n)]
        b.append(("h3", f"{m} ({seed_word(len(rs))})"))
        b.append(("table", ["stage", *tasks], rows))
        if len(tasks) >= 2:
            b.append(("ul", _sequence_metrics(tasks, rs, summ["methods"][m])))
    return b


def _sequence_metrics(tasks: list[str], rs: list[Mapping[str, Any]], ag: Mapping[str, Any]) -> list[str]:
    """Average accuracy, BWT, FWT and the forgetting on each earlier task, over the seeds of a method."""
    fg = [[M.forgetting_per_task(r["matrix"])[j] for r in rs
           if M.as_matrix(r["matrix"]).shape[0] == len(tasks) + 1]
          for j in range(len(tasks) - 1)]
    items = [f"average accuracy: {agg_cell(ag['avg_acc'])}",
             f"BWT: {agg_cell(ag['bwt'], signed=True)}",
             f"FWT (vs. base row): {agg_cell(ag['fwt'], signed=True)}"]
    items += [f"forgetting on {tasks[j]}: {agg_cell(M.aggregate_seeds(fg[j]), signed=True)}"
              for j in range(len(tasks) - 1)]
    return items


def also_evaluated_section(groups: Groups) -> list[Block]:
    """Tasks evaluated but never trained on: the base model, and each method's final model."""
    labels = list(dict.fromkeys(k for rs in groups.values() for r in rs for k in (r.get("also") or {})))
    if not labels:
        return []
    first = next(iter(groups))
    rows = []
    for m, rs in groups.items():
        if m == first:
            rows.append(["base", *(_also_cell(rs, k, 0) for k in labels)])
        rows.append([m, *(_also_cell(rs, k, -1) for k in labels)])
    return [("h2", "Also evaluated (never trained on)"),
            ("p", "Accuracy before training (base) and after the final stage, 95% intervals."),
            ("table", ["model", *labels], rows)]


def _also_cell(rs: list[Mapping[str, Any]], label: str, idx: int) -> str:
    recs = [r["also"][label] for r in rs if label in (r.get("also") or {})]
    vals = [rec["accuracy"][idx] for rec in recs if rec["accuracy"]]
    return prop_cell(vals, [rec["n"] for rec in recs][:len(vals)]) if vals else "n/a"


def distance_section(results: Mapping[str, Any], groups: Groups) -> list[Block]:
    """Accuracy and attempt rate per phrasing (distance from the training question), the same on never-trained
    control facts, per fact set, and SDFT − SFT per distance (:mod:`.distance`)."""
    ph = D.phrasings(results)
    if not ph:
        return []
    first = next(iter(groups.values()))
    head = ["model", "seeds", *(D.label_of(p) for p in ph)]

    def rows(label: str, key: str) -> list[list[str]]:
        base = [["base", "–", *(estimate_cell(D.phrasing_estimate(first, p, label, 0, key)) for p in ph)]]
        return base + [[m, str(len(rs)), *(estimate_cell(D.phrasing_estimate(rs, p, label, -1, key)) for p in ph)]
                       for m, rs in groups.items()]
    b: list[Block] = [
        ("h2", "Accuracy by distance from the training question"),
        ("p", "The trained facts asked with the training question (1), a light rewording (2), another sentence "
         "structure sharing no phrase with it beyond the entity (3), the entity named differently (4), and the fact "
         "used in a task or asked in reverse (5). Final models; mean over seeds with a 95% t-interval (one seed: "
         "Wilson over items, ᵂ)."),
        ("table", head, rows(D.TRAINED, "accuracy")),
        ("h3", "Replies that answered in the right form (attempted), right or wrong"),
        ("p", "The share of replies holding an answer of the asked form (a valid code of the set; for reverse "
         "questions, a name of the set's kind). Accuracy far below this rate = the model answers with the wrong "
         "fact; both low = it stopped answering (e.g. restates the question)."),
        ("table", head, rows(D.TRAINED, "attempted"))]
    if any(D.CONTROL in r.get("item_tables", {}) for r in results["runs"]):
        b += [("h3", "Control: never-trained facts of the same kind, asked the same ways"),
              ("p", "What answering in the right form earns without the fact (guessing, a code's letters following "
               "the name or the issuing country): read the trained facts' accuracy against this."),
              ("table", head, rows(D.CONTROL, "accuracy"))]
    best = D.best_specs(results, groups)
    b += [("h3", "Per fact set, at each method's best rate (mean over seeds)"),
          ("table", ["model", "fact set", *(D.label_of(p) for p in ph)], D.set_rows(results, groups, list(best.values())))]
    if {"sdft", "sft"} <= set(best):
        b += [("h3", "SDFT − SFT per distance, paired by seed"),
              ("p", f"Best rate: per method, the learning rate with the highest mean accuracy on the trained facts "
               f"among those losing at most {D.RETENTION_DROP:.2f} of mean retention against the base model "
               f"(here SDFT {best['sdft']}, SFT {best['sft']}). Equal retention: per seed, each method's best "
               "accuracy at that distance among its runs (any rate) keeping retention at or above base − drop. "
               "Mean difference with a t-interval over seeds; n = seeds compared."),
              ("table", ["distance", "at the best rates", *(f"at equal retention (drop ≤ {d:.2f})"
                                                             for d in D.EQUAL_RETENTION_DROPS)],
               D.difference_rows(results, groups))]
    return b


def acquisition_section(groups: Groups) -> list[Block]:
    """Retention at equal new-task accuracy, interpolated between checkpoints."""
    acq = acquisition_rows(groups)
    if not acq:
        return []
    return [("h2", "Retention at equal new-task accuracy (checkpoints)"),
            ("p", "Each method's checkpoints of a stage (pooled over its seeds) are sorted by "
             "new-task accuracy and linearly interpolated, only inside the accuracy range "
             "both methods reached; nothing is extrapolated. No interval is attached: "
             "read it as a description of these trajectories, not as a test."),
            ("table", ["stage", "comparison", "new-task acc", "retention A",
                       "retention B", "A − B"], acq)]


def forgetting_section(results: Mapping[str, Any]) -> list[Block]:
    """Forgetting, paired with the base model on every retention item."""
    per_run, per_method = forgetting_tables(results)
    if not per_run:
        return []
    return [("h2", "Forgetting on the retention suite, item by item against the base model"),
            ("p", "Δ accuracy on ALL items: tuned minus base, paired by item, with a paired-bootstrap 95% "
             "interval (10,000 resamples of items); lost / gained = items right before and wrong after / "
             "wrong before and right after; p = exact McNemar test of lost vs. gained. Δ margin: mean change "
             "of the correct choice's log-likelihood margin (correct minus best other choice, nats) with a "
             "t-interval over items, a continuous measure that moves before answers flip. Conditional = "
             "accuracy on the items the base model got right: it is biased downwards (items near the "
             "decision boundary flip both ways, and only the losses are counted), so it is not the "
             "forgetting figure."),
            ("table", ["method", "seed", "Δ accuracy, all items [bootstrap 95%]", "lost / gained",
                       "McNemar p", "Δ margin [t 95%]", "conditional: base-correct items"], per_run),
            ("h3", "Per method, over seeds (t-interval over seeds)"),
            ("table", ["method", "seeds", "Δ accuracy, all items", "Δ margin", "conditional"], per_method)]


def frontier_section(results: Mapping[str, Any]) -> list[Block]:
    """Pareto frontiers of new-task accuracy vs. retention, compared at equal new-task accuracy."""
    fr_rows = frontier_rows(results)
    b: list[Block] = [
        ("h2", "Pareto frontiers: new-task accuracy vs. retention"),
        ("p", "Every run (all learning rates, all seeds) and each of its evaluated checkpoints is one point; a "
         "method's frontier is the set of its points that no other point of the same method beats on both "
         "axes, with the base model as the common start. The acquisition-matched comparison below reads "
         "each method's per-seed frontier at equal new-task accuracy (the best retention among its points "
         "with at least that accuracy), between the base model's accuracy and the highest accuracy both "
         "methods reached; mean over seeds with a t-interval, difference paired by seed. Seeds whose "
         "frontier does not reach a level are left out (n). Nothing is extrapolated.")]
    if fr_rows:
        b.append(("table", ["stage", "comparison", "new-task acc ≥", "retention A", "retention B", "A − B"],
                  fr_rows))
    else:
        b.append(("p", "Only one method (family): no comparison to read."))
    return b


def figures_section(results: Mapping[str, Any], groups: Groups, out: Path) -> list[Block]:
    """Draws the figures into ``out``; one image block for each figure there is something to draw for."""
    ret_name = _retention_name(results)
    figs = [
        (plot_accuracy(results, groups, out),
         "Accuracy on each task across stages, per method (95% intervals)"),
        (plot_series(results, groups, out, "retention", "retention_n", ret_name,
                     f"{ret_name} across stages (95% intervals)", "fig_retention.png", True),
         f"{ret_name} across stages per method"),
        (plot_frontier(results, out, ret_name),
         f"Pareto frontiers of new-task accuracy vs. {ret_name} (every run and checkpoint; base model = star)"),
        (plot_tradeoff(results, groups, out, ret_name),
         f"New-task accuracy vs. {ret_name} per stage (one marker per method/seed; "
         "checkpoint trajectories)"),
        (plot_curves(groups, out), "Training loss vs. step per method"),
        (plot_series(results, groups, out, "drift", None, "KL from base",
                     "Drift from the base model across stages", "fig_drift.png", False),
         "Drift (KL from the base model) across stages"),
    ]
    return [("h2", "Figures"), *(("img", path, alt) for path, alt in figs if path is not None)]


def config_section(config: Any) -> list[Block]:
    """The hyper-parameters, as given."""
    if not config:
        return []
    return [("h2", "Configuration"), ("code", json.dumps(config, indent=2, sort_keys=True, default=str))]


def notes_section(notes: list[Any]) -> list[Block]:
    if not notes:
        return []
    return [("h2", "Notes"), ("ul", [str(n) for n in notes])]


def files_section() -> list[Block]:
    return [("h2", "Files"),
            ("p", "results.json (input), summary.csv, matrix_<method>_seed<seed>.csv, "
             "fig_*.png, report.md, report.html — all in the run directory.")]


def _retention_name(results: Mapping[str, Any]) -> str:
    return str(results.get("retention_name") or "retention")
