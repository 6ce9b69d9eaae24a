"""The probe, before training: does the teacher (demonstration in context) beat the student on the task?

Student (prompt only) vs teacher (demonstration in context, the paper's template) greedy accuracy on the task's
train items, with Wilson intervals, plus the mean per-token KL(teacher ‖ student) on the student's own greedy
rollouts, and a plain verdict.
"""

from __future__ import annotations

from typing import Callable

from ..config import ContextConfig
from ..contexts import render_prompt_ids, teacher_messages
from ..data import DataError, Example
from ..engines import greedy_completions as greedy_ids
from ..engines import inference_model, pad_id
from ..tasks import with_token_budget
from ..tasks.scorers import exact_match
from .accuracy import item_id, reference, short, summary
from .drift import mean_token_kl
from .replies import resolve_strip_thinking, scored_text
from .table import fmt_ci


UNLIKELY = ("SDFT is unlikely to help with this model and task: the teacher does not beat the student beyond the "
            "95% intervals (the paper saw SDFT lose to SFT at 3B for this reason)")


def no_demonstrations(task_name: str) -> DataError:
    """The error for a probe of a task without training items (an evaluation-only suite)."""
    return DataError(f"probe: task {task_name!r} has no training items with demonstrations (an evaluation-only "
                     f"suite); probe a task that has them, e.g. knowledge or tooluse, or pass --data")


def probe_verdict(student: dict, teacher: dict) -> tuple[bool, str]:
    """(signal, verdict) from two accuracy summaries ({accuracy, ci95})."""
    s_acc, t_acc = student["accuracy"], teacher["accuracy"]
    overlap = teacher["ci95"][0] <= student["ci95"][1]
    if overlap or not t_acc > s_acc:
        return False, (f"{UNLIKELY}. Teacher {t_acc:.1%} vs student {s_acc:.1%} on {student['n']} items.")
    return True, (f"SDFT has a signal: the teacher (demonstration in context) beats the student by "
                  f"{t_acc - s_acc:+.1%} ({t_acc:.1%} vs {s_acc:.1%} on {student['n']} items; the 95% intervals "
                  f"do not overlap).")


def probe(model, tokenizer, task_or_examples, ctx: ContextConfig | None = None, limit: int = 40,
          batch_size: int = 16, max_new_tokens: int | None = None,
          scorer: Callable[[str, Example], bool] | None = None, n_examples: int = 3,
          strip_thinking: bool | str | None = None) -> dict:
    """Before training: does the in-context teacher beat the student on the task's TRAIN items?

    `task_or_examples`: a Task (its train split and scorer are used) or a list of Examples (scored with
    `scorer`, default exact match against `extra['reference']` or else the demonstration). Both sides decode
    greedily (up to `max_new_tokens`, default the task's). `kl_teacher_student` is the mean per-token
    KL(teacher ‖ student) over the full vocabulary on the student's greedy rollouts (every completion token,
    none skipped), teacher-forced under the teacher context and the student context. `strip_thinking` as in
    :func:`evaluate_task` (both sides' replies are scored without their reasoning blocks). On CPU the model runs
    as its `engines.packed_copy`, as in evaluation.
    """
    with inference_model(model) as model:
        return _probe(model, tokenizer, task_or_examples, ctx, limit, batch_size, max_new_tokens, scorer,
                      n_examples, strip_thinking)


def _probe(model, tokenizer, task_or_examples, ctx, limit, batch_size, max_new_tokens, scorer, n_examples,
           strip_thinking) -> dict:
    ctx = ctx or ContextConfig()
    if isinstance(task_or_examples, (list, tuple)):
        examples = list(task_or_examples)
        name = "examples"
        if scorer is None:
            def scorer(o, ex):  # noqa: E306
                return exact_match(o, str(ex.extra.get("reference", ex.demonstration)))
        mnt = max_new_tokens or 256
    else:
        task = task_or_examples
        examples = list(task.train)
        name = task.name
        scorer = scorer or task.score
        mnt = max_new_tokens or with_token_budget(task, tokenizer).max_new_tokens
    if not examples:
        raise no_demonstrations(name)
    if limit and limit > 0:
        examples = examples[:limit]
    s_ids = [render_prompt_ids(tokenizer, ex.prompt) for ex in examples]
    t_ids = [render_prompt_ids(tokenizer, teacher_messages(ex, ctx)) for ex in examples]
    s_comps = greedy_ids(model, tokenizer, s_ids, mnt, batch_size)
    t_comps = greedy_ids(model, tokenizer, t_ids, mnt, batch_size)
    strip = resolve_strip_thinking(tokenizer, strip_thinking)
    s_out = [scored_text(tokenizer, p, c, strip) for p, c in zip(s_ids, s_comps)]
    t_out = [scored_text(tokenizer, p, c, strip) for p, c in zip(t_ids, t_comps)]
    s_ok = [bool(scorer(o, ex)) for o, ex in zip(s_out, examples)]
    t_ok = [bool(scorer(o, ex)) for o, ex in zip(t_out, examples)]
    student, teacher = summary(sum(s_ok), len(examples)), summary(sum(t_ok), len(examples))
    pad = pad_id(tokenizer)
    kl, n_tok = mean_token_kl(model, t_ids, model, s_ids, s_comps, pad, max(1, batch_size // 2))
    signal, verdict = probe_verdict(student, teacher)
    ex_out = [{"id": item_id(ex), "prompt": short(ex.prompt[-1]["content"]), "reference": reference(ex),
               "student_output": so, "student_correct": sc, "teacher_output": to, "teacher_correct": tc}
              for ex, so, sc, to, tc in zip(examples, s_out, s_ok, t_out, t_ok)]
    return {"task": name, "n": len(examples), "max_new_tokens": mnt, "student": student, "teacher": teacher,
            "gap": teacher["accuracy"] - student["accuracy"], "kl_teacher_student": kl, "kl_tokens": n_tok,
            "signal": signal, "verdict": verdict, "examples": ex_out[:max(0, n_examples)], "items": ex_out}


def format_probe(r: dict) -> str:
    s, t = r["student"], r["teacher"]
    lines = [f"probe: {r['task']}, {r['n']} train items, greedy, max_new_tokens={r['max_new_tokens']}",
             f"  student (prompt only)            accuracy {s['accuracy']:.3f}  95% CI {fmt_ci(s['ci95'])}",
             f"  teacher (demonstration in ctx)   accuracy {t['accuracy']:.3f}  95% CI {fmt_ci(t['ci95'])}",
             f"  mean per-token KL(teacher || student) on student rollouts: {r['kl_teacher_student']:.4f} "
             f"({r['kl_tokens']} tokens)"]
    for e in r["examples"]:
        lines += [f"  - {e['prompt']}  (reference: {e['reference']})",
                  f"      student{' ✓' if e['student_correct'] else ' ✗'}: {short(e['student_output'], 120)}",
                  f"      teacher{' ✓' if e['teacher_correct'] else ' ✗'}: {short(e['teacher_output'], 120)}"]
    lines.append(f"verdict: {r['verdict']}")
    return "\n".join(lines)
