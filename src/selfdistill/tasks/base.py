"""The `Task` record shared by every task loader, and the multiple-choice helper.

A task bundles a train split (demonstrations to learn from), a test split (held-out items), a scorer and the
generation settings the evaluator should use. Tasks are plain data: nothing here loads a model.

Two kinds:

* ``"generate"``: the evaluator generates up to ``max_new_tokens`` tokens for each test prompt and calls
  ``task.scorer(output_text, example) -> bool``.
* ``"multiple_choice"``: each example's ``extra`` holds ``choices: list[str]`` and ``answer_index: int``.
  The evaluator computes the log-likelihood of every choice as the assistant's reply to the prompt and calls
  :func:`mc_correct`. ``task.scorer`` still works on generated text (it exact-matches the correct choice),
  which is handy for a quick look, but the log-likelihood score is the robust one for small models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import pycountry

from selfdistill.data import Example

TaskKind = Literal["generate", "multiple_choice"]
KINDS = ("generate", "multiple_choice")


@dataclass
class Task:
    name: str
    description: str
    train: list["Example"]
    test: list["Example"]
    scorer: Callable[[str, "Example"], bool]
    kind: TaskKind = "generate"
    source_and_license: str = ""
    max_new_tokens: int = 256
    info: dict[str, Any] = field(default_factory=dict)  # loader parameters, counts; free-form, for reports
    # generate tasks: more per-item facts for the results (e.g. {"attempted": bool}: did the reply answer in the
    # right form at all), and the `extra` keys every item's record carries (e.g. its phrasing's distance)
    annotate: Callable[[str, "Example"], dict[str, Any]] | None = None
    item_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "multiple_choice":
            for ex in [*self.train, *self.test]:
                check_mc_example(ex)

    def score(self, output: str, example: "Example") -> bool:
        """Score one generated output (never raises on malformed output: it is just wrong)."""
        return bool(self.scorer(output, example))

    def accuracy(self, outputs: Sequence[str], examples: Sequence["Example"] | None = None) -> float:
        """Mean 0/1 score of `outputs` against `examples` (default: the test split)."""
        examples = self.test if examples is None else examples
        if len(outputs) != len(examples):
            raise ValueError(f"task {self.name!r}: {len(outputs)} outputs for {len(examples)} examples")
        if not examples:
            return 0.0
        return sum(self.score(o, e) for o, e in zip(outputs, examples)) / len(examples)


def check_mc_example(ex: "Example") -> None:
    """Raise ValueError unless `ex.extra` holds a valid `choices` list and `answer_index`."""
    choices = ex.extra.get("choices")
    idx = ex.extra.get("answer_index")
    where = ex.origin or "example"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: a multiple-choice example needs extra['choices'] = a list of >= 2 non-empty strings")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}: duplicate choices {choices}")
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(choices):
        raise ValueError(f"{where}: extra['answer_index'] must be an int in [0, {len(choices)}), got {idx!r}")


def mc_correct(choice_logliks: Sequence[float], ex: "Example") -> bool:
    """True iff the correct choice has the strictly highest log-likelihood.

    `choice_logliks[i]` is the (summed or length-normalised: the evaluator decides) log-likelihood of
    `ex.extra["choices"][i]`. A tie for the top counts as wrong, so a model that assigns every choice the
    same score (or a NaN) never scores.
    """
    choices = ex.extra["choices"]
    if len(choice_logliks) != len(choices):
        raise ValueError(f"{ex.origin or 'example'}: {len(choice_logliks)} log-likelihoods for {len(choices)} choices")
    k = ex.extra["answer_index"]
    best = choice_logliks[k]
    if best != best:  # NaN
        return False
    return all(best > s for i, s in enumerate(choice_logliks) if i != k)


def mc_predicted_index(choice_logliks: Sequence[float]) -> int:
    """Index of the highest log-likelihood (first one on ties)."""
    return max(range(len(choice_logliks)), key=lambda i: choice_logliks[i])


def make_example(**kw: Any) -> "Example":
    """Build a `selfdistill.data.Example`."""
    return Example(**kw)


def country_name(alpha_2: str, overrides: dict[str, str]) -> str:
    """The everyday name of ISO 3166 country `alpha_2`: `overrides` where pycountry's name reads badly in a
    sentence, else pycountry's common name or official name. ValueError for an unknown code."""
    if alpha_2 in overrides:
        return overrides[alpha_2]
    c = pycountry.countries.get(alpha_2=alpha_2)
    if c is None:
        raise ValueError(f"unknown ISO 3166 country code {alpha_2!r}")
    return getattr(c, "common_name", None) or c.name
