"""The generalisation-distance battery: every phrasing asks the same fact, the scorer finds the right answer, and
the distances hold what they claim (no shared phrase with training where the distance requires it)."""

import re

import pytest

from selfdistill.evaluation import item_table
from selfdistill.tasks import get_task
from selfdistill.tasks import battery as B
from selfdistill.tasks.scorers import contains_word


def _bigrams_outside(text: str, entity: str) -> set[tuple[str, str]]:
    """Word bigrams of `text` within the pieces left when the entity's name is cut out."""
    grams = set()
    for piece in text.split(entity):
        words = re.findall(r"[a-z0-9-]+", piece.lower())
        grams |= set(zip(words, words[1:]))
    return grams


@pytest.fixture(scope="module")
def task():
    return get_task("battery")


def test_shape_four_sets_six_phrasings_five_distances(task):
    assert len(task.train) == 32 and len(task.test) == 32 * 6
    assert {ex.extra["fact_set"] for ex in task.test} == set(B.SET_NAMES)
    assert sorted({ex.extra["distance"] for ex in task.test}) == [1, 2, 3, 4, 5]
    assert all(ex.extra["phrasing"] == "train" for ex in task.train)


def test_every_eligible_fact_has_every_phrasing_and_its_answer():
    for fs in B.FACT_SETS.values():
        facts = fs.eligible()
        assert len(facts) >= 12, fs.name
        for f in facts:
            for p in B.PHRASINGS:
                ex = B.make_item(fs, f, p)
                q = ex.prompt[-1]["content"]
                assert "{" not in q, q
                if p == "reverse":
                    assert f.code in q and not contains_word(q, f.name)
                    assert B.score(f"That is the {f.name}.", ex) and B.annotate(f"That is the {f.name}.", ex)["attempted"]
                else:
                    assert (f.other if p == "other_name" else f.name) in q, q
                    assert B.score(ex.demonstration, ex), (q, ex.demonstration)
            assert f.other != f.name


def test_restructured_shares_no_phrase_with_training_beyond_the_entity():
    for fs in B.FACT_SETS.values():
        for f in fs.eligible():
            train = B.question(fs, f, "train")
            far = B.question(fs, f, "restructured")
            assert not _bigrams_outside(train, f.name) & _bigrams_outside(far, f.name), (train, far)
            assert "ISO" not in far


def test_reworded_keeps_the_structure_with_other_words():
    for fs in B.FACT_SETS.values():
        f = fs.eligible()[0]
        train, near = B.question(fs, f, "train"), B.question(fs, f, "reworded")
        assert near != train and f.name in near
        assert _bigrams_outside(train, f.name) & _bigrams_outside(near, f.name)  # light: some phrase kept


def test_other_name_names_the_entity_differently():
    by_set = {s: B.FACT_SETS[s].eligible() for s in B.SET_NAMES}
    assert ("MGA", "Madagascar") in {(f.code, f.other) for f in by_set["currency"]}
    langs = {f.code: f.other for f in by_set["language"]}
    assert langs["ABH"] == "Arabic, Tajiki"
    assert ("AGO", "Republic of Angola") in {(f.code, f.other) for f in by_set["country"]}
    assert ("Xsux", "Sumero-Akkadian") in {(f.code, f.other) for f in by_set["script"]}


def test_code_scorer_takes_the_first_valid_code_not_from_the_question():
    fs = B.FACT_SETS["currency"]
    f = next(f for f in fs.eligible() if f.code == "MGA")
    ex = B.make_item(fs, f, "reworded")
    assert B.score("The ISO code is MGA.", ex)                  # "ISO" is skipped
    assert not B.score("It is MUR, or maybe MGA.", ex)          # only the first code counts
    assert not B.score("It is mga.", ex)                        # lowercase is not a code token
    assert B.annotate("It is MUR.", ex) == {"attempted": True}  # answered, wrongly
    restated = "Which three-letter code does ISO 4217 assign to the Malagasy Ariary?"
    assert B.annotate(restated, ex) == {"attempted": False}      # restating the question is not an answer
    script = B.FACT_SETS["script"]
    xsux = next(f for f in script.eligible() if f.code == "Xsux")
    ex = B.make_item(script, xsux, "used")
    assert B.score("Font tag: Xsux", ex) and not B.score("Font tag: Latn", ex)
    assert not B.annotate("Tell me more", ex)["attempted"]       # a capitalised word is not a script code


def test_reverse_scorer_accepts_any_iso_name_and_records_attempts():
    fs = B.FACT_SETS["language"]
    f = next(f for f in fs.eligible() if f.code == "ABH")
    ex = B.make_item(fs, f, "reverse")
    assert B.score("It is Tajiki Arabic.", ex) and B.score("Arabic, Tajiki.", ex)
    assert not B.score("It is Arabic.", ex)
    assert B.annotate("It is English.", ex)["attempted"]           # a language, the wrong one
    assert not B.annotate("I do not know that code.", ex)["attempted"]


def test_control_facts_are_never_trained_and_same_kind(task):
    control = get_task("battery_control")
    trained = {(ex.extra["fact_set"], ex.extra["code"]) for ex in task.train}
    held = {(ex.extra["fact_set"], ex.extra["code"]) for ex in control.test}
    assert held and not trained & held
    assert {ex.extra["phrasing"] for ex in control.test} == set(B.PHRASINGS)
    assert all(ex.extra["control"] for ex in control.test)


def test_seed_and_sizes_and_bad_sets():
    a, b = get_task("battery", seed=1), get_task("battery", seed=1)
    assert [e.extra["id"] for e in a.test] == [e.extra["id"] for e in b.test]
    assert [e.extra["id"] for e in a.train] != [e.extra["id"] for e in get_task("battery", seed=2).train]
    small = get_task("battery", n_per_set=2, sets="currency+script")
    assert len(small.train) == 4 and {e.extra["fact_set"] for e in small.test} == {"currency", "script"}
    with pytest.raises(ValueError, match="battery sets"):
        get_task("battery", sets="currency+planets")
    with pytest.raises(ValueError, match="n_per_set"):
        get_task("battery", n_per_set=10_000)


def test_item_table_keeps_fields_and_outcomes_per_item(task):
    items = task.test[:3]
    recs = [{"id": e.extra["id"], "output": "x", "correct": i == 0, "group": e.extra["phrasing"],
             **{k: e.extra[k] for k in B.ITEM_FIELDS}, "attempted": i < 2} for i, e in enumerate(items)]
    tab = item_table(task, {"items": recs})
    assert tab["ids"] == [e.extra["id"] for e in items]
    assert tab["fields"]["distance"] == [e.extra["distance"] for e in items]
    assert tab["outcomes"] == {"correct": [1, 0, 0], "attempted": [1, 1, 0]}
    assert item_table(get_task("knowledge"), {"items": recs}) is None  # no item fields, no annotate
