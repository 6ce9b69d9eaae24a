"""The generalisation-distance battery: four sets of packaged facts, each asked at five graded distances.

Source: ISO 4217 (currencies), ISO 639-3 (languages), ISO 3166-1 alpha-3 (countries) and ISO 15924 (scripts) as
shipped in the ``pycountry`` package (pinned in requirements.txt; data from Debian ``iso-codes``). Licence:
pycountry LGPL-2.1-only; iso-codes data LGPL-2.1-or-later. Nothing is downloaded.

A fact is ``"The <standard> code of <entity> is <CODE>."``; it is the demonstration (and the teacher's source).
Training asks every fact with the set's ``train`` question only. The test split asks the SAME facts with every
phrasing below, and a second split of never-trained facts of the same kind (the control: ``load_task(control=
True)``) measures what answering in the right form earns without the fact (guessing, a code's first letters
following the name). Phrasings, fixed on 2026-12-01 before any method was evaluated on them:

1. ``train``: the training question.
2. ``reworded``: a light rewording: synonyms, the same structure ("Which three-letter code does ISO 4217 assign
   to ...? Reply in one sentence.").
3. ``restructured``: a different sentence structure that shares no two-word phrase with the training question
   outside the entity's name (tested), and does not name the standard.
4. ``other_name``: the entity named differently: a currency by the country that issues it (the code's first two
   letters follow that country: the control set measures how much that gives away), a language by its
   catalogue (inverted) name from ISO 639-3 ("Arabic, Tajiki"), a country by its official name ("Republic of
   Angola"), a script by its alternative ISO 15924 name or, lacking one, its inverted name.
5. ``used``: the fact used, not recited (the code written into a label, a price, a tag) and ``reverse``: the fact
   asked backwards (which entity has this code; correct iff one of the entity's ISO names appears in the reply
   as whole words).

Scoring. A code question is correct iff the first code-shaped token of the reply that is a valid code of the set
and is not a word of the question (nor "ISO") equals the answer: three capitals for currencies, languages
(ISO 639-3 codes are lowercase; facts write them in capitals so a code is told from an English word) and
countries; a capital and three lowercase letters for scripts ("Bali"). Listing several codes counts only the
first. ``attempted`` (recorded apart from correctness, :func:`annotate`) is whether the reply gave an answer of
the right form at all: a valid code of the set for code questions, any ISO name of the set's entities for
reverse questions. "Knows the wrong fact" (attempted, wrong) and "stopped answering" (not attempted) are told
apart that way.

Which facts: per set, the eligible entries (below) sorted by code, shuffled with ``random.Random(seed)``; the
first ``n_per_set`` are trained, the next ``n_control`` are the control. Eligible: lesser-known currencies (the
knowledge task's list); living individual languages without a two-letter code whose catalogue name differs from
their name; countries with an official name whose code is not the first three letters of their name; scripts
without parentheses in their name whose code is not the first four letters of their name and that have a second
name (an alternative or an inverted one).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable

import pycountry

from selfdistill.tasks.base import Task, make_example
from selfdistill.tasks.knowledge import candidate_currencies, issuing_country
from selfdistill.tasks.scorers import contains_word

SOURCE_AND_LICENSE = ("ISO 4217, 639-3, 3166-1 and 15924 data from the pycountry package (LGPL-2.1-only), data from "
                      "Debian iso-codes (LGPL-2.1-or-later)")
MAX_NEW_TOKENS = 32
PHRASINGS = ("train", "reworded", "restructured", "other_name", "used", "reverse")
DISTANCE = {"train": 1, "reworded": 2, "restructured": 3, "other_name": 4, "used": 5, "reverse": 5}
SET_NAMES = ("currency", "language", "country", "script")
ITEM_FIELDS = ("fact_set", "phrasing", "distance")
NOT_CODES = frozenset({"ISO"})


@dataclass(frozen=True)
class Fact:
    code: str
    name: str
    other: str              # the entity's other name (phrasing 4)
    names: tuple[str, ...]  # every name a reverse answer may give


@dataclass(frozen=True)
class FactSet:
    name: str
    fact: str                   # the demonstration, with {name} and {code}
    questions: dict[str, str]   # phrasing -> question, with {name}, {code}, {other}
    code_shape: re.Pattern
    eligible: Callable[[], list[Fact]]
    all_codes: Callable[[], frozenset[str]]
    all_names: Callable[[], tuple[str, ...]]


def _currencies() -> list[Fact]:
    out = []
    for code, name in candidate_currencies():
        try:
            country = issuing_country(code)
        except ValueError:
            continue
        out.append(Fact(code, name, country, (name,)))
    return out


def _languages() -> list[Fact]:
    out = []
    for lang in pycountry.languages:
        inverted = getattr(lang, "inverted_name", "")
        if (getattr(lang, "type", "") != "L" or getattr(lang, "scope", "") != "I" or hasattr(lang, "alpha_2")
                or not inverted or inverted == lang.name or "(" in lang.name
                or lang.alpha_3.upper() == lang.name[:3].upper()):
            continue
        out.append(Fact(lang.alpha_3.upper(), lang.name, inverted, (lang.name, inverted)))
    return sorted(out, key=lambda f: f.code)


def _countries() -> list[Fact]:
    out = []
    for c in pycountry.countries:
        name = getattr(c, "common_name", None) or c.name
        official = getattr(c, "official_name", "")
        if not official or official == name or "," in name or c.alpha_3 == name[:3].upper():
            continue
        out.append(Fact(c.alpha_3, name, official, tuple(dict.fromkeys((name, c.name, official)))))
    return sorted(out, key=lambda f: f.code)


def _inverted(name: str) -> str:
    """'Caucasian Albanian' -> 'Albanian, Caucasian' (ISO 639's catalogue style); '' for a one-word name."""
    words = name.split()
    return f"{words[-1]}, {' '.join(words[:-1])}" if len(words) > 1 else ""


def _scripts() -> list[Fact]:
    out = []
    for s in pycountry.scripts:
        if "(" in s.name:
            continue
        names = [n.strip() for n in s.name.split(", ")]
        name, other = names[0], (names[1] if len(names) > 1 else _inverted(names[0]))
        if not other or s.alpha_4.lower() == name[:4].lower():
            continue
        out.append(Fact(s.alpha_4, name, other, tuple(names)))
    return sorted(out, key=lambda f: f.code)


@cache
def _codes(set_name: str) -> frozenset[str]:
    if set_name == "currency":
        return frozenset(c.alpha_3 for c in pycountry.currencies)
    if set_name == "language":
        return frozenset(lang.alpha_3.upper() for lang in pycountry.languages)
    if set_name == "country":
        return frozenset(c.alpha_3 for c in pycountry.countries)
    return frozenset(s.alpha_4 for s in pycountry.scripts)


@cache
def _names(set_name: str) -> tuple[str, ...]:
    """Every ISO name of the set's entities (for `attempted` on reverse questions)."""
    if set_name == "currency":
        return tuple(c.name for c in pycountry.currencies)
    if set_name == "language":
        return tuple(n for lang in pycountry.languages for n in (lang.name, getattr(lang, "inverted_name", "")) if n)
    if set_name == "country":
        return tuple(n for c in pycountry.countries
                     for n in (c.name, getattr(c, "common_name", ""), getattr(c, "official_name", "")) if n)
    return tuple(n.strip() for s in pycountry.scripts for n in s.name.split(", "))


_CAPS3 = re.compile(r"(?<![A-Za-z0-9])[A-Z]{3}(?![A-Za-z0-9])")
_TITLE4 = re.compile(r"(?<![A-Za-z0-9])[A-Z][a-z]{3}(?![A-Za-z0-9])")

FACT_SETS: dict[str, FactSet] = {
    "currency": FactSet(
        "currency", "The ISO 4217 code of the {name} is {code}.",
        {"train": "What is the ISO 4217 currency code of the {name}?",
         "reworded": "Which three-letter code does ISO 4217 assign to the {name}? Reply in one sentence.",
         "restructured": "Banks abbreviate the {name} with three capital letters. Which letters?",
         "other_name": "What is the ISO 4217 code of the currency issued by {other}? Reply in one sentence.",
         "used": "Write a price of 250 in the {name} as it appears on an invoice, with its three-letter code.",
         "reverse": "Which currency has the ISO 4217 code {code}? Reply in one sentence."},
        _CAPS3, _currencies, lambda: _codes("currency"), lambda: _names("currency")),
    "language": FactSet(
        "language", "The ISO 639-3 code of the {name} language is {code}.",
        {"train": "What is the ISO 639-3 code of the {name} language?",
         "reworded": "Which three-letter code does ISO 639-3 assign to the {name} language? Reply in one sentence.",
         "restructured": "Linguists tag texts written in {name} with three capital letters. Which letters?",
         "other_name": "What is the ISO 639-3 code of the language catalogued as \"{other}\"? Reply in one "
                       "sentence.",
         "used": "Label a recording made in {name} with its three-letter language code, as an archive would.",
         "reverse": "Which language has the ISO 639-3 code {code}? Reply in one sentence."},
        _CAPS3, _languages, lambda: _codes("language"), lambda: _names("language")),
    "country": FactSet(
        "country", "The ISO 3166-1 alpha-3 code of {name} is {code}.",
        {"train": "What is the ISO 3166-1 alpha-3 code of {name}?",
         "reworded": "Which three-letter code does ISO 3166-1 assign to {name}? Reply in one sentence.",
         "restructured": "International databases abbreviate {name} with three capital letters. Which letters?",
         "other_name": "What is the ISO 3166-1 alpha-3 code of the country officially named {other}? Reply in "
                       "one sentence.",
         "used": "Write the country field of a shipping label for a parcel to {name}, as its three-letter code.",
         "reverse": "Which country has the ISO 3166-1 alpha-3 code {code}? Reply in one sentence."},
        _CAPS3, _countries, lambda: _codes("country"), lambda: _names("country")),
    "script": FactSet(
        "script", "The ISO 15924 code of the {name} script is {code}.",
        {"train": "What is the ISO 15924 code of the {name} script?",
         "reworded": "Which four-letter code does ISO 15924 assign to the {name} script? Reply in one sentence.",
         "restructured": "Unicode data files tag {name} writing with four letters. Which letters?",
         "other_name": "What is the ISO 15924 code of the script also called \"{other}\"? Reply in one sentence.",
         "used": "A font lists every script it covers by its four-letter tag. Write the tag it lists for {name}.",
         "reverse": "Which script has the ISO 15924 code {code}? Reply in one sentence."},
        _TITLE4, _scripts, lambda: _codes("script"), lambda: _names("script")),
}


def select_facts(fs: FactSet, n_per_set: int, n_control: int, seed: int) -> tuple[list[Fact], list[Fact]]:
    """(trained facts, control facts) of one set: the eligible facts shuffled with `seed`, then split."""
    facts = list(fs.eligible())
    if not 0 < n_per_set or n_control < 0 or n_per_set + n_control > len(facts):
        raise ValueError(f"battery set {fs.name!r}: n_per_set + n_control must be in [1, {len(facts)}] "
                         f"(eligible facts), got {n_per_set} + {n_control}")
    random.Random(seed).shuffle(facts)
    return facts[:n_per_set], facts[n_per_set:n_per_set + n_control]


def question(fs: FactSet, f: Fact, phrasing: str) -> str:
    return fs.questions[phrasing].format(name=f.name, code=f.code, other=f.other)


def make_item(fs: FactSet, f: Fact, phrasing: str, control: bool = False) -> Any:
    if phrasing not in DISTANCE:
        raise ValueError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    demo = fs.fact.format(name=f.name, code=f.code)
    return make_example(
        prompt=[{"role": "user", "content": question(fs, f, phrasing)}],
        demonstration=demo, source=demo,
        extra={"id": f"battery:{fs.name}:{f.code}:{phrasing}", "fact_set": fs.name, "phrasing": phrasing,
               "distance": DISTANCE[phrasing], "code": f.code, "entity": f.name, "names": list(f.names),
               "reference": f.name if phrasing == "reverse" else f.code, "control": control},
        origin=f"pycountry:{fs.name}:{f.code}:{phrasing}")


def answer_code(output: str, ex: Any) -> str | None:
    """The reply's answer to a code question: its first code-shaped token that is a valid code of the set and
    not a word of the question (nor "ISO"); None when there is none."""
    fs = FACT_SETS[ex.extra["fact_set"]]
    asked = set(re.findall(r"[A-Za-z]+", ex.prompt[-1]["content"]))
    valid = fs.all_codes()
    for m in fs.code_shape.finditer(output if isinstance(output, str) else ""):
        tok = m.group(0)
        if tok in valid and tok not in asked and tok not in NOT_CODES:
            return tok
    return None


@cache
def _name_pattern(set_name: str) -> re.Pattern:
    names = sorted({n for n in FACT_SETS[set_name].all_names() if len(n) >= 3}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, names)) + r")(?!\w)")


def score(output: str, ex: Any) -> bool:
    if ex.extra["phrasing"] == "reverse":
        return any(contains_word(output, n) for n in ex.extra["names"])
    return answer_code(output, ex) == ex.extra["code"]


def annotate(output: str, ex: Any) -> dict:
    """{"attempted": whether the reply answered in the right form}: a valid code of the set for code questions,
    an ISO name of any of the set's entities for reverse questions (see the module doc)."""
    if ex.extra["phrasing"] == "reverse":
        return {"attempted": bool(_name_pattern(ex.extra["fact_set"]).search(output or ""))}
    return {"attempted": answer_code(output, ex) is not None}


def _parse_sets(sets: str | list[str]) -> list[str]:
    names = [s.strip() for s in (sets.split("+") if isinstance(sets, str) else sets) if s.strip()]
    bad = [s for s in names if s not in FACT_SETS]
    if bad or not names:
        raise ValueError(f"battery sets must be among {'+'.join(SET_NAMES)}, got {sets!r}")
    return names


def load_task(n_per_set: int = 8, n_control: int = 4, seed: int = 0, sets: str = "+".join(SET_NAMES),
              control: bool = False) -> Task:
    """The battery: `n_per_set` trained facts from each set in `sets` ('+'-separated), tested with every
    phrasing. ``control=True``: the task named ``battery_control``, whose test split asks the `n_control`
    never-trained facts per set with every phrasing (its train split is those facts' demonstrations; never
    trained on)."""
    chosen = {s: select_facts(FACT_SETS[s], n_per_set, n_control, seed) for s in _parse_sets(sets)}
    facts = {s: (pair[1] if control else pair[0]) for s, pair in chosen.items()}
    test = [make_item(FACT_SETS[s], f, p, control) for s, fs in facts.items() for p in PHRASINGS for f in fs]
    return Task(
        name="battery_control" if control else "battery",
        description=(("Never-trained control facts of " if control else "New facts: the codes of ")
                     + ", ".join(facts) + " entries from ISO standards, trained with one question and tested at five "
                     "distances (training question, light rewording, other structure, entity named differently, "
                     "the code used / asked in reverse)."),
        train=[make_item(FACT_SETS[s], f, "train", control) for s, fs in facts.items() for f in fs],
        test=test, scorer=score, annotate=annotate, item_fields=ITEM_FIELDS, kind="generate",
        source_and_license=SOURCE_AND_LICENSE, max_new_tokens=MAX_NEW_TOKENS,
        info={"n_per_set": n_per_set, "n_control": n_control, "seed": seed, "sets": list(facts), "control": control,
              "n_train": sum(map(len, facts.values())), "n_test": len(test)})
