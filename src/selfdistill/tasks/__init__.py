"""Tasks: train/test examples + a scorer + generation settings.

``get_task(name, **kwargs)`` builds a registered task:

==========================  ==========================================================================  =========
name                        what                                                                        licence
==========================  ==========================================================================  =========
``tooluse``                 BFCL v4 simple_python, 300 train / 100 test (:mod:`.tooluse`)               Apache-2.0
``knowledge``               ISO 4217 codes of 64 lesser-known currencies; 4 test phrasings (:mod:`.knowledge`)  LGPL-2.1
``battery``                 4 ISO fact sets x 8 facts, 6 test phrasings at 5 distances (:mod:`.battery`)   LGPL-2.1
``battery_control``         the battery's never-trained control facts (eval-only)                       LGPL-2.1
``retention``               120 multiple-choice prior-capability probes, eval-only (:mod:`.retention`)  see module
``retention_if``            21 IFEval-style instruction-following items, eval-only                      see module
``paper_tooluse:<path>``    the SDFT paper's tool-use data from a local folder (:mod:`.paper`)          none found
``paper_science:<path>``    the SDFT paper's science data from a local folder                           none found
==========================  ==========================================================================  =========

``user_task(data_path, scorer=...)`` builds a task from the user's own demonstration file (via
:func:`selfdistill.data.load_examples`). ``task_from_spec("my.jsonl@scorer=contains_word,test=t.jsonl")`` is the
command line's form of both: a built-in name (with loader options, ``knowledge@n_train=32``) or a file with
options ``scorer``, ``test`` (a separate test file), ``split`` (a fraction or a count held out), ``name``,
``seed``, ``max_new_tokens``; a file given without ``test``/``split`` is used whole.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import random
from pathlib import Path
from typing import Any, Callable

from selfdistill.data import DataError, load_examples
from selfdistill.tasks import battery, knowledge, paper, retention, tooluse
from selfdistill.tasks.base import Task, check_mc_example, mc_correct, mc_predicted_index
from selfdistill.tasks.scorers import contains_word, exact_match, function_call_match, regex_match

__all__ = ["Task", "get_task", "user_task", "task_names", "mc_correct", "mc_predicted_index", "USER_SCORERS",
           "load_training_examples", "parse_task_spec", "task_from_spec", "check_scorer_fields",
           "with_token_budget"]


_TASKS: dict[str, Callable[..., Task]] = {
    "tooluse": tooluse.load_task,
    "knowledge": knowledge.load_task,
    "battery": battery.load_task,
    "battery_control": functools.partial(battery.load_task, control=True),
    "retention": retention.load_task,
    "retention_if": retention.load_if_task,
}
_PATH_TASKS: dict[str, Callable[..., Task]] = {
    "paper_tooluse": paper.load_tooluse_task,
    "paper_science": paper.load_science_task,
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

USER_SCORERS = ("exact", "contains_word", "regex", "function_call", "multiple_choice")


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


def _score_contains_word(out: str, ex: Any) -> bool:
    ref = _reference(ex)
    refs = ref if isinstance(ref, list) else [ref]
    return any(contains_word(out, str(r)) for r in refs)


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


_USER_SCORER_FNS = {"exact": _score_exact, "contains_word": _score_contains_word, "regex": _score_regex,
                    "function_call": _score_function_call, "multiple_choice": _score_mc_text}


FILE_BUDGET_MIN, FILE_BUDGET_MAX = 64, 1024


def generation_budget(examples: list) -> int:
    """A file task's default `max_new_tokens`: the longest demonstration's length in UTF-8 bytes (a byte-level
    tokenizer never spends more tokens than bytes on it), at least 64 and at most 1,024. An answer as long as the
    task's own demonstrations always fits, and a rambling reply stops soon after (256 for every file task before
    2026-12-02, which dominated continual runs' evaluation time)."""
    longest = max((len(ex.demonstration.encode("utf-8")) for ex in examples if ex.demonstration), default=0)
    return min(FILE_BUDGET_MAX, max(FILE_BUDGET_MIN, longest))


TOKEN_BUDGET_MIN = 32


def with_token_budget(task: Task, tokenizer) -> Task:
    """`task` with its generation budget tightened for the evaluating model's tokenizer, when the budget was derived
    from its demonstrations (a file task without ``max_new_tokens=``): twice its longest demonstration in tokens,
    at least 32, at most the byte bound of :func:`generation_budget`. A reply as long as any demonstration fits
    twice over; a rambling one stops there (on the README's two user files: 44 and 50 tokens instead of 64 and
    72). Any other task is returned unchanged."""
    if task.info.get("max_new_tokens_from") != "longest demonstration":
        return task
    demos = [ex.demonstration for ex in [*task.train, *task.test] if ex.demonstration]
    if not demos:
        return task
    longest = max(len(ids) for ids in tokenizer(demos, add_special_tokens=False)["input_ids"])
    budget = min(task.max_new_tokens, max(TOKEN_BUDGET_MIN, 2 * longest))
    return dataclasses.replace(task, max_new_tokens=budget, info={
        **task.info, "max_new_tokens_from": f"twice the longest demonstration ({longest} tokens)"})


def user_task(data_path: str | Path, scorer: str = "exact", *, test_path: str | Path | None = None,
              n_test: int | None = None, test_fraction: float = 0.2, seed: int = 0, name: str | None = None,
              max_new_tokens: int | None = None, description: str = "") -> Task:
    """A task from the user's demonstration file(s) (anything :func:`selfdistill.data.load_examples` reads).

    `scorer`:
      * ``"exact"``: :func:`exact_match` against ``extra["reference"]`` or ``extra["answer"]`` (a string, or a list
        of acceptable strings), falling back to the demonstration itself;
      * ``"contains_word"``: :func:`contains_word` (the reference appears in the reply as whole words after
        normalisation) against ``extra["answer"]`` or ``extra["reference"]`` (required; a list = any of them);
      * ``"regex"``: :func:`regex_match` with ``extra["pattern"]`` (or ``reference``/``answer``);
      * ``"function_call"``: :func:`function_call_match` with ``extra["ground_truth"]`` (BFCL possible-answer
        format) and optional ``extra["required"]``;
      * ``"multiple_choice"``: log-likelihood multiple choice; records need ``choices`` and ``answer_index``.
    Split: `test_path` gives the test set (all of `data_path` trains); otherwise the records are shuffled with
    `seed` and ``n_test`` (or ``round(test_fraction * N)``, at least 1 when N > 1) go to test.
    `max_new_tokens`: the generation budget when evaluating; None derives it from the demonstrations
    (:func:`generation_budget`, tightened per tokenizer by :func:`with_token_budget` when evaluating).
    """
    if scorer not in _USER_SCORER_FNS:
        close = difflib.get_close_matches(str(scorer), USER_SCORERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown scorer {scorer!r}.{hint} Known: {', '.join(USER_SCORERS)}")
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
    check_scorer_fields([*train, *test], scorer)
    return Task(
        name=name or Path(str(data_path)).stem,
        description=description or f"user data from {data_path}, scored with {scorer!r}",
        train=train, test=test, scorer=_USER_SCORER_FNS[scorer], kind=kind,
        source_and_license=f"user data: {data_path}" + (f" (test: {test_path})" if test_path else ""),
        max_new_tokens=max_new_tokens or generation_budget([*train, *test]),
        info={"n_train": len(train), "n_test": len(test), "seed": seed, "scorer": scorer,
              "max_new_tokens_from": "option" if max_new_tokens else "longest demonstration"},
    )


# The answer field each scorer needs (any one of the keys); exact falls back to the demonstration.
_SCORER_FIELDS = {"contains_word": ("answer", "reference"), "regex": ("pattern", "reference", "answer"),
                  "function_call": ("ground_truth", "reference", "answer")}


def check_scorer_fields(examples: list, scorer: str) -> None:
    """ValueError naming the file and line of the first record that lacks the field `scorer` needs."""
    if scorer == "multiple_choice":
        for ex in examples:
            try:
                check_mc_example(ex)
            except ValueError as e:
                raise DataError(str(e)) from None
        return
    keys = _SCORER_FIELDS.get(scorer, ())
    for ex in examples if keys else ():
        if all(ex.extra.get(k) in (None, "", []) for k in keys):
            raise DataError(f"{ex.origin or 'record'}: scorer {scorer!r} needs a "
                            f"{' or '.join(repr(k) for k in keys)} field in every record")


# ----------------------------------------------------------------------------------------------------------------
# task specs: NAME_OR_FILE[@key=value,...]
# ----------------------------------------------------------------------------------------------------------------

FILE_OPTIONS = ("scorer", "test", "split", "name", "seed", "max_new_tokens")


def _coerce(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"a.jsonl@scorer=contains_word,test=b.jsonl"`` -> ``("a.jsonl", {"scorer": ..., "test": ...})``.

    A spec that is an existing path is taken whole (so a file name may contain ``@``); otherwise the options
    follow the last ``@`` as comma-separated ``key=value`` pairs."""
    spec = spec.strip()
    if not spec:
        raise DataError("empty task spec")
    if "@" not in spec or Path(spec).exists():
        return spec, {}
    head, _, tail = spec.rpartition("@")
    opts: dict[str, str] = {}
    for kv in filter(None, (x.strip() for x in tail.split(","))):
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise DataError(f"task spec {spec!r}: option {kv!r} is not key=value")
        opts[k.strip()] = v.strip()
    return head, opts


def _is_file_spec(name: str) -> bool:
    return name not in _TASKS and name.partition(":")[0] not in _PATH_TASKS and (
        Path(name).exists() or any(name.endswith(x) for x in (".jsonl", ".json", ".csv", ".parquet")) or "/" in name)


def task_from_spec(spec: str) -> Task:
    """A task from ``NAME[@kwarg=value,...]`` (a built-in task, kwargs to its loader, e.g. ``knowledge@n_train=32``)
    or ``FILE[@scorer=...,test=FILE,split=0.2|N,name=...,seed=...]`` (the user's demonstrations, named after the
    file). A file with neither ``test`` nor ``split`` is used whole: trained on whole and evaluated whole.
    Errors are one-line DataErrors naming the spec, file and record."""
    name, opts = parse_task_spec(spec)
    if not _is_file_spec(name):
        try:
            return get_task(name, **{k: _coerce(v) for k, v in opts.items()})
        except DataError:
            raise
        except (TypeError, ValueError) as e:
            raise DataError(f"task spec {spec!r}: {e}") from None
    unknown = sorted(set(opts) - set(FILE_OPTIONS))
    if unknown:
        raise DataError(f"task spec {spec!r}: unknown option(s) {', '.join(unknown)}; a file task takes "
                        f"{', '.join(FILE_OPTIONS)}")
    if not Path(name).exists():
        raise DataError(f"{name}: no such file (task spec {spec!r})")
    scorer = opts.get("scorer", "exact")
    if scorer not in _USER_SCORER_FNS:
        close = difflib.get_close_matches(scorer, USER_SCORERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{name}: unknown scorer {scorer!r} (task spec {spec!r}).{hint} "
                        f"Known: {', '.join(USER_SCORERS)}")
    kw: dict[str, Any] = {"scorer": scorer, "name": opts.get("name") or Path(name).stem,
                          "seed": int(_coerce(opts.get("seed", "0")))}
    if "max_new_tokens" in opts:
        kw["max_new_tokens"] = int(_coerce(opts["max_new_tokens"]))
    if "test" in opts:
        kw["test_path"] = opts["test"]
    elif "split" in opts:
        v = _coerce(opts["split"])
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            kw["n_test"] = v
        elif isinstance(v, float) and 0 < v < 1:
            kw["test_fraction"] = v
        else:
            raise DataError(f"task spec {spec!r}: split must be a fraction in (0, 1) or a count >= 1, got "
                            f"{opts['split']!r}")
    try:
        if "test_path" in kw or "n_test" in kw or "test_fraction" in kw:
            return user_task(name, **kw)
        task = user_task(name, n_test=0, **kw)
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"{name}: {e}") from None
    task.test = list(task.train)  # no split asked: the whole file is the test set too
    task.info.update(n_test=len(task.test), whole_file=True)
    task.description += " (no test file or split given: evaluated on the whole file)"
    return task


def load_training_examples(spec: str) -> list:
    """`task:<name>` -> the built-in task's train split; anything else -> selfdistill.data.load_examples(spec).

    An unknown task name is a DataError (so the CLI prints it as one line) with a suggestion.
    """
    if spec.startswith("task:"):
        try:
            task = task_from_spec(spec[len("task:"):])
        except ValueError as e:
            raise DataError(str(e)) from None
        if not task.train:
            raise DataError(f"task {task.name!r} has no training split")
        return task.train
    name, opts = parse_task_spec(spec)
    if opts:  # FILE@scorer=...,split=...: train on the training part
        return task_from_spec(spec).train
    return load_examples(spec)
