"""Task accuracy: a Wilson 95% interval and per-item records.

``generate`` tasks are scored with ``task.scorer`` on greedy outputs; ``multiple_choice`` tasks with
:func:`.loglik.choice_logliks` + :func:`selfdistill.tasks.base.mc_correct` (strictly highest log-likelihood; ties
are wrong).
"""

from __future__ import annotations

from ..contexts import render_prompt_ids
from ..data import Example
from ..engines import greedy_completions as greedy_ids
from ..engines import inference_model
from ..metrics import wilson_interval
from ..tasks import with_token_budget
from ..tasks.base import mc_correct, mc_predicted_index
from .loglik import choice_logliks
from .replies import decode_completion, resolve_strip_thinking, scored_text


def short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def item_id(ex: Example) -> str:
    return str(ex.extra.get("id", ex.origin))


def reference(ex: Example) -> str:
    if "choices" in ex.extra and "answer_index" in ex.extra:
        return str(ex.extra["choices"][ex.extra["answer_index"]])
    for k in ("reference", "answer", "target", "code"):
        if k in ex.extra and isinstance(ex.extra[k], (str, int, float)):
            return str(ex.extra[k])
    return short(ex.demonstration, 200)


def summary(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": (k / n) if n else float("nan"), "ci95": [lo, hi]}


def _select(task, split: str, limit: int) -> list[Example]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    items = list(getattr(task, split))
    return items[:limit] if limit and limit > 0 else items


def evaluate_task(model, tokenizer, task, split: str = "test", limit: int = 0, batch_size: int = 16,
                  strip_thinking: bool | str | None = None, engine=None) -> dict:
    """Accuracy on `task`'s split with a Wilson 95% interval and per-item records.

    `strip_thinking` (generate tasks): score the reply without its <think>...</think> blocks; None/"auto" = on
    when the chat template has them (resolve_strip_thinking). The item's `raw_output` keeps the full reply.
    Returns {task, split, kind, scoring, n, correct, accuracy, ci95: [lo, hi], items: [{id, origin, prompt,
    output, (raw_output), reference, correct, (choice_logliks), (the task's item_fields and annotate keys)}]}.
    """
    return evaluate_tasks(model, tokenizer, {task.name: (task, limit)}, split, batch_size, strip_thinking,
                          engine)[task.name]


def evaluate_tasks(model, tokenizer, tasks: dict, split: str = "test", batch_size: int = 16,
                   strip_thinking: bool | str | None = None, engine=None) -> dict:
    """Several tasks at once, `tasks` = {label: (task, limit)}: the generate items of tasks whose budgets are within
    2x of each other in one greedy engine call (prompts longest first in batches of `batch_size`, whatever their
    task: fewer decode steps than task by task; each reply cut at its task's budget), every multiple-choice item
    in one log-likelihood pass. Returns {label:
    evaluate_task's result for that task}, the same records as task by task (greedy decoding per item). A file
    task's derived budget is tightened for `tokenizer` first (`tasks.with_token_budget`). On CPU the model is
    evaluated through its `engines.packed_copy` (oneDNN linear layers; the same greedy tokens, faster)."""
    with inference_model(model) as model:
        return _evaluate_tasks(model, tokenizer, tasks, split, batch_size, strip_thinking, engine)


def _evaluate_tasks(model, tokenizer, tasks: dict, split: str, batch_size: int, strip_thinking, engine) -> dict:
    tasks = {k: (with_token_budget(t, tokenizer), lim) for k, (t, lim) in tasks.items()}
    items = {k: _select(t, split, lim) for k, (t, lim) in tasks.items()}
    gen = [k for k, (t, _) in tasks.items() if t.kind != "multiple_choice"]
    mc = [k for k, (t, _) in tasks.items() if t.kind == "multiple_choice"]
    strip = resolve_strip_thinking(tokenizer, strip_thinking) if gen else False
    prompt_ids = {k: [render_prompt_ids(tokenizer, ex.prompt) for ex in items[k]] for k in gen}
    comps: dict[str, list] = {}
    for keys in budget_groups({k: tasks[k][0].max_new_tokens for k in gen}):
        budget = max(tasks[k][0].max_new_tokens for k in keys)
        flat = greedy_ids(model, tokenizer, [p for k in keys for p in prompt_ids[k]], budget, batch_size,
                          engine=engine, progress="eval " + ", ".join(tasks[k][0].name for k in keys))
        for k in keys:  # greedy: a reply cut at its own task's budget is the reply generated with that budget
            comps[k] = [c[:tasks[k][0].max_new_tokens] for c in flat[:len(items[k])]]
            flat = flat[len(items[k]):]
    lls = choice_logliks(model, tokenizer, [ex.prompt for k in mc for ex in items[k]],
                         [ex.extra["choices"] for k in mc for ex in items[k]], batch_size,
                         progress="eval " + ", ".join(tasks[k][0].name for k in mc)) if mc else []
    out = {}
    for k, (task, _) in tasks.items():
        if k in mc:
            records = _mc_records(items[k], lls[:len(items[k])])
            lls = lls[len(items[k]):]
        else:
            records = _generate_records(tokenizer, task, items[k], prompt_ids[k], comps[k], strip)
        out[k] = _result(task, split, items[k], records, _scoring(task, strip))
    return out


def budget_groups(budgets: dict) -> list[list]:
    """Keys grouped for shared generation calls: budgets within 2x of their group's smallest share one call (at
    the group's largest budget), so a short task never decodes more than twice its own budget."""
    groups: list[list] = []
    for k in sorted(budgets, key=lambda k: budgets[k]):
        if groups and budgets[k] <= 2 * budgets[groups[-1][0]]:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _mc_records(items: list[Example], lls: list[list[float]]) -> list[dict]:
    return [{"id": item_id(ex), "origin": ex.origin, "prompt": short(ex.prompt[-1]["content"]),
             "output": ex.extra["choices"][mc_predicted_index(ll)], "reference": reference(ex),
             "correct": bool(mc_correct(ll, ex)), "choice_logliks": [round(v, 4) for v in ll]}
            for ex, ll in zip(items, lls)]


def _generate_records(tokenizer, task, items: list[Example], prompt_ids, comps, strip: bool) -> list[dict]:
    records = []
    for ex, p, c in zip(items, prompt_ids, comps):
        o = scored_text(tokenizer, p, c, strip)
        rec = {"id": item_id(ex), "origin": ex.origin, "prompt": short(ex.prompt[-1]["content"]),
               "output": o, "reference": reference(ex), "correct": bool(task.score(o, ex)),
               **{k: ex.extra[k] for k in task.item_fields if k in ex.extra},
               **(task.annotate(o, ex) if task.annotate else {})}
        if strip:
            rec["raw_output"] = decode_completion(tokenizer, c)
        records.append(rec)
    return records


def _scoring(task, strip: bool) -> str:
    if task.kind == "multiple_choice":
        return ("multiple choice: summed log-prob of the choice tokens as the reply (+ end-of-turn token when "
                "a choice is a prefix of another); strict argmax, ties wrong")
    return (f"greedy generation (max_new_tokens={task.max_new_tokens}) scored with the task scorer"
            + ("; <think> reasoning blocks removed before scoring" if strip else ""))


def _result(task, split: str, items: list[Example], records: list[dict], scoring: str) -> dict:
    k = sum(r["correct"] for r in records)
    out = {"task": task.name, "split": split, "kind": task.kind, "scoring": scoring, **summary(k, len(records)),
           "items": records}
    groups = _group_summaries(items, records)
    if groups:
        out["groups"] = groups
    return out


def item_table(task, result: dict) -> dict | None:
    """Every item of a generate task's result as columns: ``ids``; ``fields``: the task's ``item_fields`` (what the
    item is, e.g. its distance); ``outcomes``: ``correct`` and the ``annotate`` keys (what the reply did; booleans
    as 0/1). None for multiple-choice tasks and tasks with neither item_fields nor annotate."""
    recs = result.get("items", [])
    if task.kind != "generate" or not (task.item_fields or task.annotate) or not recs:
        return None
    fields = [k for k in task.item_fields if k in recs[0]]
    outcomes = ["correct", *(k for k in recs[0] if k not in _RECORD_KEYS and k not in task.item_fields)]
    return {"ids": [r["id"] for r in recs],
            "fields": {k: [r[k] for r in recs] for k in fields},
            "outcomes": {k: [int(r[k]) for r in recs] for k in outcomes}}


_RECORD_KEYS = frozenset({"id", "origin", "prompt", "output", "raw_output", "reference", "correct", "group",
                          "choice_logliks"})


def item_group(ex: Example) -> str | None:
    """The item's group for separate reporting: ``extra["group"]``, else ``extra["phrasing"]`` (knowledge)."""
    g = ex.extra.get("group", ex.extra.get("phrasing"))
    return None if g is None else str(g)


def _group_summaries(items: list[Example], records: list[dict]) -> dict:
    """{group: summary} when the items fall into more than one group (e.g. the knowledge phrasings), else {}."""
    by: dict[str, list[bool]] = {}
    for ex, r in zip(items, records):
        g = item_group(ex)
        r["group"] = g
        by.setdefault(g, []).append(r["correct"])
    if len(by) < 2:
        return {}
    return {str(g): summary(sum(v), len(v)) for g, v in by.items()}
