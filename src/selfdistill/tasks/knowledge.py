"""Knowledge acquisition: ISO 4217 currency codes (a stand-in for the paper's new-knowledge task).

Source: ISO 4217 currency names and codes as shipped in the ``pycountry`` package (pinned in requirements.txt),
whose data comes from Debian's ``iso-codes``. Licence: pycountry is LGPL-2.1-only; the iso-codes data is
LGPL-2.1-or-later. Nothing is downloaded: the facts are read from pycountry at load time.

The fact for a currency is ``"The ISO 4217 code of the <name> is <CODE>."``. Each example:
  * prompt: one user turn asking for the code, in one of two phrasings (see below);
  * demonstration: the fact sentence itself (short on purpose);
  * source: the fact sentence (privileged text the SDFT teacher may also see; pycountry has no
    currency-to-country mapping, so there is nothing more to add);
  * extra: ``code``, ``currency``, ``phrasing``; the scorer accepts the output iff the FIRST standalone
    all-caps 3-letter token that is a valid ISO 4217 code equals the answer
    (:func:`selfdistill.tasks.scorers.currency_code_match`), so listing many codes does not win.

Phrasings (fixed on 2026-11-30 before any method was evaluated on the new ones; documented):
  * train:      ``What is the ISO 4217 currency code of the <name>?``  (the only phrasing trained on)
  * reworded:   ``Which three-letter code does ISO 4217 assign to the <name>? Reply in one sentence.``
                (the training question reworded lightly; the default test phrasing)
  * other_name: ``What is the ISO 4217 code of the currency issued by <country>? Reply in one sentence.``
                (the entity named differently: by the country that issues it, ISO 3166 name of the code's
                first two letters, e.g. Madagascar for MGA; never seen in training)
  * reverse:    ``Which currency has the ISO 4217 code <CODE>? Reply in one sentence.``  (the fact asked in
                the reverse direction; correct iff the currency's ISO name appears in the reply as whole words,
                :func:`selfdistill.tasks.scorers.contains_word`, so "the malagasy ariary" passes and "Ariary"
                alone for "Malagasy Ariary" fails)
The test split holds the SAME facts as the train split (the point is whether the fact was learned), asked with
the reworded phrasing by default (the paper's out-of-distribution phrasing check); ``test_phrasing`` picks
another one, and ``test_phrasing="all"`` puts every phrasing in the test split (``extra["phrasing"]`` tells
them apart; ``selfdistill eval`` reports each separately).

Which currencies: all ISO 4217 entries in pycountry except precious metals, funds, testing and other
non-currency ``X..`` codes, fund/index units (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), the two currencies
sharing the name "Bolívar Soberano" (VED, VES), and the ~35 best-known currencies (USD, EUR, GBP, ...) that even
a small model may already know. The remaining codes are sorted, shuffled with ``random.Random(seed)`` and the
first ``n_train`` (default 64) become the task's facts.
"""

from __future__ import annotations

import random
from typing import Any

import pycountry

from selfdistill.tasks.base import Task, country_name, make_example
from selfdistill.tasks.scorers import contains_word, currency_code_match

SOURCE_AND_LICENSE = ("ISO 4217 currency names/codes from the pycountry package (LGPL-2.1-only), data from Debian "
                      "iso-codes (LGPL-2.1-or-later)")
MAX_NEW_TOKENS = 32

TRAIN_TEMPLATE = "What is the ISO 4217 currency code of the {name}?"
REWORDED_TEMPLATE = "Which three-letter code does ISO 4217 assign to the {name}? Reply in one sentence."
FACT_TEMPLATE = "The ISO 4217 code of the {name} is {code}."
OTHER_NAME_TEMPLATE = "What is the ISO 4217 code of the currency issued by {country}? Reply in one sentence."
REVERSE_TEMPLATE = "Which currency has the ISO 4217 code {code}? Reply in one sentence."
PHRASINGS = {"train": TRAIN_TEMPLATE, "reworded": REWORDED_TEMPLATE, "other_name": OTHER_NAME_TEMPLATE,
             "reverse": REVERSE_TEMPLATE}
TEST_PHRASINGS = ("reworded", "train", "other_name", "reverse")  # the order in which reports list them
# ISO 3166 names that read badly after "issued by": the short form used instead.
COUNTRY_NAMES = {"CD": "the Democratic Republic of the Congo", "FK": "the Falkland Islands",
                 "BS": "the Bahamas", "GM": "the Gambia", "KY": "the Cayman Islands", "SB": "the Solomon Islands",
                 "DO": "the Dominican Republic", "BN": "Brunei", "SH": "Saint Helena", "MO": "Macao"}

# Currencies a model is likely to know already: excluded.
WELL_KNOWN = frozenset("""
USD EUR GBP JPY CNY INR CHF CAD AUD RUB BRL MXN KRW HKD SGD NZD SEK NOK DKK ZAR TRY PLN THB IDR ILS AED SAR EGP
ARS PHP MYR CZK HUF KPW TWD VND PKR NGN UAH CLP COP
""".split())
# Not ordinary currencies (fund units, indexes, next-day dollars) or ambiguous by name.
NON_CURRENCY = frozenset("BOV CHE CHW CLF COU MXV USN UYI UYW VED VES".split())


def all_currency_codes() -> frozenset[str]:
    """Every ISO 4217 alphabetic code pycountry knows (used to recognise code tokens in outputs)."""
    return frozenset(c.alpha_3 for c in pycountry.currencies)


def candidate_currencies() -> list[tuple[str, str]]:
    """``(code, name)`` of the eligible currencies, sorted by code."""
    out = []
    for c in pycountry.currencies:
        code = c.alpha_3
        if code.startswith("X") or code in NON_CURRENCY or code in WELL_KNOWN:
            continue
        out.append((code, c.name))
    out.sort()
    names = [n for _, n in out]
    dupes = {n for n in names if names.count(n) > 1}
    return [(c, n) for c, n in out if n not in dupes]


def select_currencies(n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    cands = candidate_currencies()
    if not 0 < n <= len(cands):
        raise ValueError(f"n_train must be in [1, {len(cands)}] (eligible currencies), got {n}")
    order = list(cands)
    random.Random(seed).shuffle(order)
    return order[:n]


def fact(code: str, name: str) -> str:
    return FACT_TEMPLATE.format(name=name, code=code)


def issuing_country(code: str) -> str:
    """The country that issues `code`: the ISO 3166 country of its first two letters (ISO 4217's rule)."""
    try:
        return country_name(code[:2], COUNTRY_NAMES)
    except ValueError:
        raise ValueError(f"no ISO 3166 country for currency code {code}") from None


def make_item(code: str, name: str, phrasing: str) -> Any:
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {sorted(PHRASINGS)}, got {phrasing!r}")
    country = issuing_country(code) if phrasing == "other_name" else ""
    item_id = f"iso4217:{code}" if phrasing == "train" else f"iso4217:{code}:{phrasing}"
    return make_example(
        prompt=[{"role": "user", "content": PHRASINGS[phrasing].format(name=name, code=code, country=country)}],
        demonstration=fact(code, name),
        source=fact(code, name),
        extra={"id": item_id, "code": code, "currency": name, "phrasing": phrasing,
               "reference": name if phrasing == "reverse" else code, **({"country": country} if country else {})},
        origin=f"pycountry:iso4217:{code}:{phrasing}",
    )


_VALID: frozenset[str] | None = None


def score(output: str, example: Any) -> bool:
    """Reverse questions: the currency's name as whole words in the reply; all others: the first valid code."""
    global _VALID
    if example.extra.get("phrasing") == "reverse":
        return contains_word(output, example.extra["currency"])
    if _VALID is None:
        _VALID = all_currency_codes()
    return currency_code_match(output, example.extra["code"], _VALID)


def load_task(n_train: int = 64, seed: int = 0, test_phrasing: str = "reworded") -> Task:
    """`n_train` facts; train asks them with the training phrasing, test with `test_phrasing` (one of
    :data:`TEST_PHRASINGS`, or ``"all"``: every phrasing, in that order)."""
    if test_phrasing != "all" and test_phrasing not in PHRASINGS:
        raise ValueError(f"test_phrasing must be one of {', '.join(TEST_PHRASINGS)} or 'all', got {test_phrasing!r}")
    chosen = select_currencies(n_train, seed)
    phrasings = list(TEST_PHRASINGS) if test_phrasing == "all" else [test_phrasing]
    return Task(
        name="knowledge",
        description=("New facts: the ISO 4217 code of lesser-known currencies. Train on one phrasing, test the "
                     f"same facts with the {test_phrasing!r} phrasing(s); correct iff the first valid code in the "
                     "answer is the right one (reverse questions: the currency's name appears in the answer)."),
        train=[make_item(c, n, "train") for c, n in chosen],
        test=[make_item(c, n, p) for p in phrasings for c, n in chosen],
        scorer=score,
        kind="generate",
        source_and_license=SOURCE_AND_LICENSE,
        max_new_tokens=MAX_NEW_TOKENS,
        info={"n_train": len(chosen), "n_test": len(chosen) * len(phrasings), "seed": seed,
              "test_phrasing": test_phrasing, "n_eligible": len(candidate_currencies())},
    )
