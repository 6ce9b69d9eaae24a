"""Task accuracy: a Wilson 95% interval and per-item records.

``generate`` tasks are scored with ``task.scorer`` on greedy outputs; ``multiple_choice`` tasks with
:func:`.loglik.choice_logliks` + :func:`selfdistill.tasks.base.mc_correct` (strictly highest log-likelihood; ties
are wrong).
"""

from __future__ import annotations

from ..contexts import render_prompt_ids
from ..data import Example
from ..engines import greedy_completions as greedy_ids
from ..metrics import wilson_interval
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
    items = _select(task, split, limit)
    records = []
    if task.kind == "multiple_choice":
        lls = choice_logliks(model, tokenizer, [ex.prompt for ex in items],
                             [ex.extra["choices"] for ex in items], batch_size, progress=f"eval {task.name}")
        for ex, ll in zip(items, lls):
            ok = bool(mc_correct(ll, ex))
            records.append({"id": item_id(ex), "origin": ex.origin, "prompt": short(ex.prompt[-1]["content"]),
                            "output": ex.extra["choices"][mc_predicted_index(ll)], "reference": reference(ex),
                            "correct": ok, "choice_logliks": [round(v, 4) for v in ll]})
        scoring = ("multiple choice: summed log-prob of the choice tokens as the reply (+ end-of-turn token when "
                   "a choice is a prefix of another); strict argmax, ties wrong")
    else:
        strip = resolve_strip_thinking(tokenizer, strip_thinking)
        prompt_ids = [render_prompt_ids(tokenizer, ex.prompt) for ex in items]
        comps = greedy_ids(model, tokenizer, prompt_ids, task.max_new_tokens, batch_size, engine=engine,
                           progress=f"eval {task.name}")
        for ex, p, c in zip(items, prompt_ids, comps):
            o = scored_text(tokenizer, p, c, strip)
            ok = bool(task.score(o, ex))
            rec = {"id": item_id(ex), "origin": ex.origin, "prompt": short(ex.prompt[-1]["content"]),
                   "output": o, "reference": reference(ex), "correct": ok,
                   **{k: ex.extra[k] for k in task.item_fields if k in ex.extra},
                   **(task.annotate(o, ex) if task.annotate else {})}
            if strip:
                rec["raw_output"] = decode_completion(tokenizer, c)
            records.append(rec)
        scoring = (f"greedy generation (max_new_tokens={task.max_new_tokens}) scored with the task scorer"
                   + ("; <think> reasoning blocks removed before scoring" if strip else ""))
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
