"""Task loaders on the real data (bfcl-eval wheel, pycountry, shipped retention files, the paper's eval sets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import ROOT, write_records
from selfdistill.tasks import (Task, get_task, mc_correct, task_from_spec, task_names, user_task,
                              with_token_budget)
from selfdistill.tasks import knowledge, paper, retention, tooluse

def find_paper_data() -> Path | None:
    """The paper's eval sets: $SELFDISTILL_PAPER_DATA, else shared/data/paper in the clone or in any folder above
    it (CI puts a copy of shared/ beside the clone; a git worktree may sit deeper)."""
    env = os.environ.get("SELFDISTILL_PAPER_DATA")
    candidates = [Path(env)] if env else [d / "shared" / "data" / "paper" for d in (ROOT, *ROOT.parents)]
    return next((c for c in candidates if (c / "tooluse_data" / "eval_data").is_dir()), None)


@pytest.fixture(scope="module")
def paper_data() -> Path:
    found = find_paper_data()
    if found is None:  # a failure, not a skip: these tests are part of the suite
        pytest.fail("the paper's eval sets were not found: put shared/data/paper beside the clone (or in a folder "
                    "above it), or set SELFDISTILL_PAPER_DATA to that folder")
    return found


def _check_examples(task: Task) -> None:
    for ex in [*task.train, *task.test]:
        assert ex.prompt and ex.prompt[-1]["role"] == "user"
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in ex.prompt)
        assert isinstance(ex.demonstration, str)
        assert ex.origin


# ----------------------------------------------------------------------------------------------------------------
# tooluse (BFCL simple_python)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_task() -> Task:
    return get_task("tooluse")


def test_bfcl_files_found_without_import():
    import sys

    d = tooluse.bfcl_data_dir()
    assert (d / "BFCL_v4_simple_python.json").is_file()
    assert (d / "possible_answer" / "BFCL_v4_simple_python.json").is_file()
    assert "bfcl_eval" not in sys.modules  # located by file, never imported


def test_tooluse_counts_and_shape(tool_task):
    assert len(tool_task.test) == 100
    assert len(tool_task.train) == 300
    assert tool_task.kind == "generate" and "Apache-2.0" in tool_task.source_and_license
    _check_examples(tool_task)
    ids = [e.extra["id"] for e in tool_task.train + tool_task.test]
    assert len(set(ids)) == len(ids) == 400
    ex = tool_task.test[0]
    assert len(ex.prompt) == 1
    content = ex.prompt[0]["content"]
    assert json.dumps(ex.extra["function"], ensure_ascii=False, separators=(", ", ": ")) in content
    assert "Request: " in content and ex.origin.startswith("bfcl:simple_python_")


def test_tooluse_split_is_deterministic_and_parametrised(tool_task):
    again = get_task("tooluse")
    assert [e.extra["id"] for e in again.test] == [e.extra["id"] for e in tool_task.test]
    assert [e.extra["id"] for e in again.train] == [e.extra["id"] for e in tool_task.train]
    small = get_task("tooluse", n_train=20, n_test=30)
    assert len(small.train) == 20 and len(small.test) == 30
    assert [e.extra["id"] for e in small.test] == [e.extra["id"] for e in tool_task.test[:30]]
    other = get_task("tooluse", seed=1)
    assert [e.extra["id"] for e in other.test] != [e.extra["id"] for e in tool_task.test]
    with pytest.raises(ValueError):
        get_task("tooluse", n_test=10_000)


def test_tooluse_reference_demonstrations_score_correct(tool_task):
    bad = [e.origin for e in tool_task.train + tool_task.test if not tool_task.score(e.demonstration, e)]
    assert bad == []


def test_tooluse_scorer_rejects_wrong_calls(tool_task):
    ex = next(e for e in tool_task.test if "(" in e.demonstration and "=" in e.demonstration)
    name = ex.demonstration.split("(", 1)[0]
    assert not tool_task.score(ex.demonstration.replace(name + "(", name + "_v2(", 1), ex)
    assert not tool_task.score(ex.demonstration[:-1] + ", not_a_param=1)", ex)
    assert tool_task.score("```python\n" + ex.demonstration + "\n```", ex)
    assert not tool_task.score("", ex)
    assert not tool_task.score("I don't know", ex)


def test_tooluse_demo_skips_empty_optional():
    rec = {"id": "simple_python_x1", "question": "q",
           "function": {"name": "f", "parameters": {"type": "dict", "properties": {}, "required": ["a"]}},
           "ground_truth": [{"f": {"a": [1], "b": ["", 2], "c": [3, ""]}}]}
    assert tooluse.record_to_example(rec).demonstration == "f(a=1, c=3)"


# ----------------------------------------------------------------------------------------------------------------
# knowledge (ISO 4217)
# ----------------------------------------------------------------------------------------------------------------


def test_knowledge_task():
    t = get_task("knowledge")
    assert len(t.train) == len(t.test) == 64 and t.max_new_tokens == 32
    _check_examples(t)
    codes = [e.extra["code"] for e in t.train]
    assert codes == [e.extra["code"] for e in t.test]  # same facts
    assert len(set(codes)) == 64
    assert not set(codes) & knowledge.WELL_KNOWN
    assert not any(c.startswith("X") or c in knowledge.NON_CURRENCY for c in codes)
    for tr, te in zip(t.train, t.test):
        assert tr.prompt[-1]["content"] != te.prompt[-1]["content"]  # reworded for every item
        assert tr.extra["currency"] in te.prompt[-1]["content"]
        assert tr.demonstration == f"The ISO 4217 code of the {tr.extra['currency']} is {tr.extra['code']}."
        assert tr.source == tr.demonstration
        assert t.score(tr.demonstration, tr) and t.score(te.demonstration, te)
    assert [e.extra["code"] for e in get_task("knowledge").train] == codes  # deterministic


def test_knowledge_phrasing_option_and_near_miss():
    t = get_task("knowledge", test_phrasing="train", n_train=10)
    assert len(t.test) == 10
    assert all(a.prompt == b.prompt for a, b in zip(t.train, t.test))
    with pytest.raises(ValueError):
        get_task("knowledge", test_phrasing="other")
    ex = t.test[0]
    code = ex.extra["code"]
    valid = knowledge.all_currency_codes()
    # a similar-looking wrong code: same first letter
    wrong = next(c for c in sorted(valid) if c != code and c[0] == code[0])
    assert not t.score(f"The ISO 4217 code of the {ex.extra['currency']} is {wrong}.", ex)
    assert not t.score(f"{wrong} or {code}", ex)
    assert not t.score(code.lower(), ex)
    assert t.score(f"It is {code}.", ex)


# ----------------------------------------------------------------------------------------------------------------
# retention
# ----------------------------------------------------------------------------------------------------------------


def test_retention_files_regenerate_identically(tmp_path):
    written = retention.write_retention_files(tmp_path)
    for p in written:
        shipped = retention.DATA_DIR / p.name
        assert shipped.read_bytes() == p.read_bytes(), f"{shipped} is stale: run python -m selfdistill.tasks.retention"


def test_retention_mc_task():
    t = get_task("retention")
    assert t.kind == "multiple_choice" and t.train == []
    assert len(t.test) == 120
    assert t.info["by_category"] == {"capital": 50, "arithmetic": 45, "fact": 25}
    _check_examples(t)
    ids = [e.extra["id"] for e in t.test]
    assert len(set(ids)) == len(ids)
    for ex in t.test:
        choices, k = ex.extra["choices"], ex.extra["answer_index"]
        assert choices[k] == ex.demonstration and len(set(choices)) == len(choices)
        assert t.score(ex.demonstration, ex)
    answer_positions = {e.extra["answer_index"] for e in t.test}
    assert answer_positions == {0, 1, 2, 3}  # shuffled choices
    add = next(e for e in t.test if e.extra["id"] == "add-3-4")
    assert add.demonstration == "7" and all(c.isdigit() for c in add.extra["choices"])


def test_retention_filter_ids():
    t = get_task("retention", filter_ids=["capital-FR", "add-1-1", "fact-week-days"])
    assert [e.extra["id"] for e in t.test] == ["capital-FR", "add-1-1", "fact-week-days"]
    with pytest.raises(ValueError, match="nope"):
        get_task("retention", filter_ids=["capital-FR", "nope"])
    assert len(get_task("retention", categories=["arithmetic"]).test) == 45


def test_mc_correct():
    ex = get_task("retention", filter_ids=["capital-FR"]).test[0]
    k = ex.extra["answer_index"]
    ll = [-5.0] * 4
    ll[k] = -1.0
    assert mc_correct(ll, ex)
    ll[(k + 1) % 4] = -0.5
    assert not mc_correct(ll, ex)
    assert not mc_correct([-1.0] * 4, ex)  # ties are wrong
    assert not mc_correct([float("nan")] * 4, ex)
    with pytest.raises(ValueError):
        mc_correct([-1.0, -2.0], ex)


def test_retention_if_task():
    t = get_task("retention_if")
    assert t.kind == "generate" and len(t.test) == 21
    _check_examples(t)
    for ex in t.test:
        assert t.score(ex.demonstration, ex), ex.extra["id"]
        assert not t.score("", ex)
    by_id = {e.extra["id"]: e for e in t.test}
    assert not t.score("The Ocean Is Big.", by_id["if-lowercase-ocean"])
    assert not t.score("Dogs are loyal, playful and kind.", by_id["if-no-comma-dogs"])
    assert not t.score("In autumn the trees change color.", by_id["if-keyword-leaves"])
    assert not t.score("word " * 25, by_id["if-fewer-words-computer"])
    assert len(get_task("retention_if", filter_ids=["if-json-person"]).test) == 1


# ----------------------------------------------------------------------------------------------------------------
# registry and user tasks
# ----------------------------------------------------------------------------------------------------------------


def test_get_task_unknown_name_suggests():
    with pytest.raises(ValueError, match="Did you mean 'tooluse'") as e:
        get_task("toolsue")
    for n in task_names():
        assert n in str(e.value)
    with pytest.raises(ValueError, match="Known tasks"):
        get_task("zzz")
    with pytest.raises(ValueError, match="folder"):
        get_task("paper_science:")


def test_user_task_exact_and_split(tmp_path):
    recs = [{"prompt": f"What is {i} + 1?", "demonstration": f"It is {i + 1}.", "answer": str(i + 1)}
            for i in range(10)]
    t = user_task(write_records(tmp_path / "add.jsonl", recs), scorer="exact", n_test=3)
    assert len(t.train) == 7 and len(t.test) == 3 and t.name == "add"
    for ex in t.test:
        assert t.score(ex.extra["answer"], ex)
        assert not t.score("It is " + ex.extra["answer"] + ".", ex)  # exact match: the answer must come first
    again = user_task(tmp_path / "add.jsonl", scorer="exact", n_test=3)
    assert [e.origin for e in again.test] == [e.origin for e in t.test]
    with pytest.raises(ValueError, match="Did you mean 'exact'"):
        user_task(tmp_path / "add.jsonl", scorer="exakt")


def test_a_file_tasks_generation_budget_comes_from_its_demonstrations(tmp_path):
    short = [{"prompt": f"Code of {i}?", "demonstration": f"It is C{i}.", "answer": f"C{i}"} for i in range(4)]
    assert user_task(write_records(tmp_path / "s.jsonl", short), scorer="contains_word").max_new_tokens == 64
    long = short + [{"prompt": "Explain.", "demonstration": "é" * 150 + " done", "answer": "done"}]  # 2 bytes each
    t = user_task(write_records(tmp_path / "l.jsonl", long), scorer="contains_word", n_test=1)
    assert t.max_new_tokens == 305 and t.info["max_new_tokens_from"] == "longest demonstration"
    huge = short + [{"prompt": "All of it.", "demonstration": "word " * 400, "answer": "word"}]
    assert user_task(write_records(tmp_path / "h.jsonl", huge), scorer="contains_word").max_new_tokens == 1024
    assert task_from_spec(f"{tmp_path / 'l.jsonl'}@scorer=contains_word,max_new_tokens=40").max_new_tokens == 40
    assert task_from_spec(f"{tmp_path / 'l.jsonl'}@scorer=contains_word").max_new_tokens == 305


def test_a_file_tasks_budget_is_tightened_to_twice_its_longest_demonstration_in_tokens(tmp_path, tiny_tok):
    recs = [{"prompt": f"Code of {i}?", "demonstration": "It is C" + "x" * i + ".", "answer": "C"} for i in range(16)]
    t = user_task(write_records(tmp_path / "s.jsonl", recs), scorer="contains_word", n_test=5)
    longest = max(len(tiny_tok(ex.demonstration, add_special_tokens=False)["input_ids"]) for ex in t.train + t.test)
    got = with_token_budget(t, tiny_tok)
    assert 16 < longest and got.max_new_tokens == 2 * longest < t.max_new_tokens == 64  # 64: the bytes bound
    assert got.test == t.test and got.info["max_new_tokens_from"] == f"twice the longest demonstration ({longest} tokens)"
    tiny = user_task(write_records(tmp_path / "t.jsonl", recs[:2]), scorer="contains_word")
    assert with_token_budget(tiny, tiny_tok).max_new_tokens == 32  # at least 32
    chosen = task_from_spec(f"{tmp_path / 's.jsonl'}@scorer=contains_word,max_new_tokens=40")
    assert with_token_budget(chosen, tiny_tok) is chosen  # the user's budget stands
    builtin = get_task("knowledge", n_train=4)
    assert with_token_budget(builtin, tiny_tok) is builtin


def test_user_task_other_scorers(tmp_path):
    gt = [{"f": {"a": [1]}}]
    fc = user_task(write_records(tmp_path / "fc.jsonl", [{"prompt": "call f", "demonstration": "f(a=1)",
                                                   "ground_truth": gt}] * 2),
                   scorer="function_call", test_path=tmp_path / "fc.jsonl")
    assert fc.score("f(a=1)", fc.test[0]) and not fc.score("f(a=2)", fc.test[0])
    rx = user_task(write_records(tmp_path / "rx.jsonl", [{"prompt": "date?", "demonstration": "2024-01-01",
                                                   "pattern": r"^\d{4}-\d{2}-\d{2}$"}] * 2), scorer="regex")
    assert rx.score("2025-12-31", rx.test[0]) and not rx.score("Dec 31", rx.test[0])
    mc = user_task(write_records(tmp_path / "mc.jsonl", [{"prompt": "2+2?", "demonstration": "4", "choices": ["3", "4"],
                                                   "answer_index": 1}] * 3), scorer="multiple_choice")
    assert mc.kind == "multiple_choice" and mc_correct([-3.0, -1.0], mc.test[0])
    with pytest.raises(ValueError):
        user_task(write_records(tmp_path / "bad.jsonl", [{"prompt": "x", "demonstration": "y"}] * 2),
                  scorer="multiple_choice")


# ----------------------------------------------------------------------------------------------------------------
# the paper's eval sets (shared/data/paper; missing is a failure)
# ----------------------------------------------------------------------------------------------------------------


def test_paper_tooluse_loader(paper_data):
    t = get_task(f"paper_tooluse:{paper_data / 'tooluse_data'}")
    assert len(t.test) == 97 and t.train == [] and t.max_new_tokens == 1024
    _check_examples(t)
    ex = t.test[0]
    assert len(ex.prompt) == 1 and ex.prompt[0]["role"] == "user" and ex.demonstration == ""
    assert ex.prompt[0]["content"].startswith("Your task is to answer the user's question using available tools.")
    assert ex.extra["golden_answer"][0]["Action"] == "getRandomAxolotlImage"
    # gold calls re-serialised in the prompt's format: 95/97 reachable (rows 26 and 33 can never score)
    ok = []
    for i, e in enumerate(t.test):
        out = "\n".join(f"Thought: ok\nAction: {g['Action']}\nAction Input: {g['Action_Input']}\nObservation: -"
                        for g in e.extra["golden_answer"])
        if t.score(out, e):
            ok.append(i)
    assert len(ok) == 95 and 26 not in ok and 33 not in ok
    assert len(get_task(f"paper_tooluse:{paper_data / 'tooluse_data'}", limit=68).test) == 68


def test_paper_science_loader(paper_data):
    t = get_task(f"paper_science:{paper_data / 'science_data' / 'eval_data'}")
    assert len(t.test) == 507 and t.train == [] and t.max_new_tokens == 2048
    _check_examples(t)
    sys0 = t.test[0].prompt[0]
    assert [m["role"] for m in t.test[0].prompt] == ["system", "user"]
    assert all(e.prompt[0] == sys0 for e in t.test)  # one shared system message
    letters = [e.extra["answer"] for e in t.test]
    assert {ch: letters.count(ch) for ch in "ABCD"} == {"A": 123, "B": 127, "C": 127, "D": 130}
    ex = t.test[0]
    assert t.score(f"<reasoning>\n...\n</reasoning>\n<answer>\n{ex.extra['answer']}\n</answer>", ex)
    assert not t.score(f"<answer>{ex.extra['answer']}.</answer>", ex)


def test_paper_train_records(tmp_path):
    """Training-split records (golden_response / messages + output_text) become demonstrations."""
    import datasets
    tool = datasets.Dataset.from_list([{
        "prompt": "Use tools.\nQuestion: hi", "name": "X", "description": "d", "nl_documentation": "n",
        "instruction": "hi", "golden_answer": [{"Action": "a", "Action_Input": "{}"}],
        "golden_response": ["Thought: t", "Action: a", "Action Input: {}", "Final Answer: done"]}])
    tool.save_to_disk(str(tmp_path / "tooluse_data" / "train_data"))
    tool.remove_columns(["golden_response"]).save_to_disk(str(tmp_path / "tooluse_data" / "eval_data"))
    t = paper.load_tooluse_task(tmp_path / "tooluse_data")
    assert len(t.train) == 1 and len(t.test) == 1
    assert t.train[0].demonstration == "Thought: t\nAction: a\nAction Input: {}\nFinal Answer: done"
    assert t.score(t.train[0].demonstration, t.train[0]) and t.test[0].demonstration == ""
    sci = datasets.Dataset.from_list([{
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "output_text": "<reasoning>r</reasoning>\n<answer>\nC\n</answer>"}])
    sci.save_to_disk(str(tmp_path / "sci_train"))
    s = paper.load_science_task(tmp_path / "sci_train")  # a single folder with demonstrations -> train
    assert len(s.train) == 1 and s.test == [] and s.train[0].extra["answer"] == "C"
    assert s.score(s.train[0].demonstration, s.train[0])


def test_knowledge_all_phrasings_same_facts_and_scoring():
    t = get_task("knowledge", test_phrasing="all", n_train=8)
    assert [e.extra["phrasing"] for e in t.test] == [p for p in knowledge.TEST_PHRASINGS for _ in range(8)]
    by = {p: [e for e in t.test if e.extra["phrasing"] == p] for p in knowledge.TEST_PHRASINGS}
    for p, items in by.items():  # every phrasing asks the training facts, in the same order
        assert [e.extra["code"] for e in items] == [e.extra["code"] for e in t.train]
    assert len({e.extra["id"] for e in t.test}) == len(t.test)
    mga = knowledge.make_item("MGA", "Malagasy Ariary", "other_name")
    assert "Madagascar" in mga.prompt[0]["content"] and "Ariary" not in mga.prompt[0]["content"]
    assert t.score("It is MGA.", mga) and not t.score("It is MUR.", mga)
    rev = knowledge.make_item("MGA", "Malagasy Ariary", "reverse")
    assert "MGA" in rev.prompt[0]["content"] and "Ariary" not in rev.prompt[0]["content"]
    assert t.score("MGA is the code of the malagasy ariary.", rev)
    assert not t.score("MGA is the Ariary.", rev) and not t.score("It is MGA.", rev)
    cd = knowledge.make_item("CDF", "Congolese Franc", "other_name")
    assert "issued by the Democratic Republic of the Congo?" in cd.prompt[0]["content"]


def test_every_eligible_currency_has_an_issuing_country():
    for code, _ in knowledge.candidate_currencies():
        assert knowledge.issuing_country(code)
    assert knowledge.issuing_country("MGA") == "Madagascar" and knowledge.issuing_country("BSD") == "the Bahamas"
    with pytest.raises(ValueError, match="no ISO 3166 country for currency code QQX"):
        knowledge.issuing_country("QQX")
