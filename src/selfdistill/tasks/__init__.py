"""Tasks: train/test examples + a scorer + generation settings.

``get_task(name, **kwargs)`` builds a registered task:

==========================  ==========================================================================  =========
name                        what                                                                        licence
==========================  ==========================================================================  =========
``tooluse``                 BFCL v4 simple_python, 300 train / 100 test (:mod:`.tooluse`)               Apache-2.0
``knowledge``               ISO 4217 codes of 64 lesser-known currencies; 4 test phrasings (:mod:`.knowledge`)  LGPL-2.1
``retention``               120 multiple-choice prior-capability probes, eval-only (:mod:`.retention`)  see module
``retention_if``            21 IFEval-style instruction-following items, eval-only                      see module
``paper_tooluse:<path>``    the SDFT paper's tool-use data from a local folder (:mod:`.paper`)          none found
``paper_science:<path>``    the SDFT paper's science data from a local folder                           none found
==========================  ==========================================================================  =========

``user_task(data_path, scorer=...)`` builds a task from the user's own demonstration file (via
:func:`selfdistill.data.load_examples`).
"""

from __future__ import annotations

import difflib
import random
from pathlib import Path
from typing import Any, Callable

from selfdistill.tasks.base import Task, check_mc_example, mc_correct, mc_predicted_index
from selfdistill.tasks.scorers import exact_match, function_call_match, regex_match

__all__ = ["Task", "get_task", "user_task", "task_names", "mc_correct", "mc_predicted_index", "USER_SCORERS", "load_training_examples"]


def _tooluse(**kw: Any) -> Task:
    from selfdistill.tasks.tooluse import load_task

    return load_task(**kw)


def _knowledge(**kw: Any) -> Task:
    from selfdistill.tasks.knowledge import load_task

    return load_task(**kw)


def _retention(**kw: Any) -> Task:
    from selfdistill.tasks.retention import load_task

    return load_task(**kw)


def _retention_if(**kw: Any) -> Task:
    from selfdistill.tasks.retention import load_if_task

    return load_if_task(**kw)


def _paper_tooluse(path: str, **kw: Any) -> Task:
    from selfdistill.tasks.paper import load_tooluse_task

    return load_tooluse_task(path, **kw)


def _paper_science(path: str, **kw: Any) -> Task:
    from selfdistill.tasks.paper import load_science_task

    return load_science_task(path, **kw)


_TASKS: dict[str, Callable[..., Task]] = {
    "tooluse": _tooluse,
    "knowledge": _knowledge,
    "retention": _retention,
    "retention_if": _retention_if,
}
_PATH_TASKS: dict[str, Callable[..., Task]] = {
    "paper_tooluse": _paper_tooluse,
    "paper_science": _paper_science,
}


def task_names() -> list[str]:
    return [*_TASKS, *(f"{k}:<path>" for k in _PATH_TASKS)]


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a registered task. Keyword arguments go to the task's loader (e.g. ``n_test=50`` for tooluse,
    ``test_phrasing="train"`` for knowledge, ``filter_ids=[...]`` for retention, ``limit=68`` for paper_tooluse)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty string; known: {', '.join(task_names())}")
    if name in _TASKS:
        return _TASKS[name](**kwargs)
    prefix, sep, path = name.partition(":")
    if sep and prefix in _PATH_TASKS:
        if not path:
            raise ValueError(f"task {name!r}: give the data folder after the colon, e.g. {prefix}:/path/to/folder")
        return _PATH_TASKS[prefix](path, **kwargs)
    known = [*_TASKS, *_PATH_TASKS]
    close = difflib.get_close_matches(prefix if sep else name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(task_names())}")


# ----------------------------------------------------------------------------------------------------------------
# tasks from the user's own data
# ----------------------------------------------------------------------------------------------------------------

USER_SCORERS = ("exact", "regex", "function_call", "multiple_choice")


def _reference(ex: Any) -> Any:
    """extra['reference'], else extra['answer'], else the demonstration."""
    for key in ("reference", "answer"):
        if ex.extra.get(key) is not None:
            return ex.extra[key]
    return ex.demonstration


def _score_exact(out: str, ex: Any) -> bool:
    ref = _reference(ex)
    refs = ref if isinstance(ref, list) else [ref]  # a list of acceptable answers
    return any(exact_match(out, str(r)) for r in refs)


def _score_regex(out: str, ex: Any) -> bool:
    pattern = ex.extra.get("pattern", ex.extra.get("reference", ex.extra.get("answer")))
    if pattern is None:
        raise ValueError(f"{ex.origin}: regex scoring needs extra 'pattern' (or 'reference'/'answer')")
    return regex_match(out, str(pattern))


def _score_function_call(out: str, ex: Any) -> bool:
    gt = ex.extra.get("ground_truth", ex.extra.get("reference", ex.extra.get("answer")))
    if gt is None:
        raise ValueError(f"{ex.origin}: function_call scoring needs extra 'ground_truth' "
                         "(BFCL possible_answer format: [{name: {param: [allowed values]}}])")
    return function_call_match(out, gt, ex.extra.get("required"))


def _score_mc_text(out: str, ex: Any) -> bool:
    return exact_match(out, ex.extra["choices"][ex.extra["answer_index"]])


_USER_SCORER_FNS = {"exact": _score_exact, "regex": _score_regex, "function_call": _score_function_call,
                    "multiple_choice": _score_mc_text}


def user_task(data_path: str | Path, scorer: str = "exact", *, test_path: str | Path | None = None,
              n_test: int | None = None, test_fraction: float = 0.2, seed: int = 0, name: str | None = None,
              max_new_tokens: int = 256, description: str = "") -> Task:
    """A task from the user's demonstration file(s) (anything :func:`selfdistill.data.load_examples` reads).

    `scorer`:
      * ``"exact"``: :func:`exact_match` against ``extra["reference"]`` or ``extra["answer"]`` (a string, or a list
        of acceptable strings), falling back to the demonstration itself;
      * ``"regex"``: :func:`regex_match` with ``extra["pattern"]`` (or ``reference``/``answer``);
      * ``"function_call"``: :func:`function_call_match` with ``extra["ground_truth"]`` (BFCL possible-answer
        format) and optional ``extra["required"]``;
      * ``"multiple_choice"``: log-likelihood multiple choice; records need ``choices`` and ``answer_index``.
    Split: `test_path` gives the test set (all of `data_path` trains); otherwise the records are shuffled with
    `seed` and ``n_test`` (or ``round(test_fraction * N)``, at least 1 when N > 1) go to test.
    """
    if scorer not in _USER_SCORER_FNS:
        close = difflib.get_close_matches(str(scorer), USER_SCORERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown scorer {scorer!r}.{hint} Known: {', '.join(USER_SCORERS)}")
    from selfdistill.data import load_examples

    examples = load_examples(data_path)
    if test_path is not None:
        train, test = examples, load_examples(test_path)
    else:
        n = len(examples)
        if n_test is None:
            if not 0.0 <= test_fraction < 1.0:
                raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
            n_test = max(1, round(test_fraction * n)) if n > 1 and test_fraction > 0 else 0
        if not 0 <= n_test <= n:
            raise ValueError(f"n_test must be in [0, {n}], got {n_test}")
        order = list(range(n))
        random.Random(seed).shuffle(order)
        test = [examples[i] for i in sorted(order[:n_test])]
        train = [examples[i] for i in sorted(order[n_test:])]
    kind = "multiple_choice" if scorer == "multiple_choice" else "generate"
    if kind == "multiple_choice":
        for ex in [*train, *test]:
            check_mc_example(ex)
    return Task(
        name=name or Path(str(data_path)).stem,
        description=description or f"user data from {data_path}, scored with {scorer!r}",
        train=train, test=test, scorer=_USER_SCORER_FNS[scorer], kind=kind,
        source_and_license=f"user data: {data_path}" + (f" (test: {test_path})" if test_path else ""),
        max_new_tokens=max_new_tokens,
        info={"n_train": len(train), "n_test": len(test), "seed": seed, "scorer": scorer},
    )


def load_training_examples(spec: str) -> list:
    """`task:<name>` -> the built-in task's train split; anything else -> selfdistill.data.load_examples(spec).

    An unknown task name is a DataError (so the CLI prints it as one line) with a suggestion.
    """
    from selfdistill.data import DataError, load_examples

    if spec.startswith("task:"):
        try:
            task = get_task(spec[len("task:"):])
        except ValueError as e:
            raise DataError(str(e)) from None
        if not task.train:
            raise DataError(f"task {task.name!r} has no training split")
        return task.train
    return load_examples(spec)
