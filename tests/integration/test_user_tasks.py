"""The user's own files as tasks from the command line: a two-file sequence end to end with a report, `eval` of
exactly the file given (whole), one-line errors for a bad scorer / a missing answer field, partial reports."""

from __future__ import annotations

import json

from helpers import write_records
from selfdistill.cli import main
from selfdistill.tasks import task_from_spec

TINY = ["--train.prompts_per_step", "2", "--train.micro_batch_size", "2", "--rollout.max_new_tokens", "4",
        "--optim.warmup_steps", "0", "--log.progress", "false", "--data.max_prompt_tokens", "2048",
        "--data.max_teacher_prompt_tokens", "4096"]


def _write(path, n, start=0, answer=True):
    return write_records(path, [{"prompt": f"What is the code of language {i}?",
                                 "demonstration": f"The code of language {i} is l{i}.",
                                 **({"answer": f"l{i}"} if answer else {})} for i in range(start, start + n)])


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def test_two_user_files_sequence_end_to_end_with_report(model_dir, tmp_path):
    a = _write(tmp_path / "langs_a.jsonl", 6)
    b, b_test = _write(tmp_path / "langs_b.jsonl", 4, 10), _write(tmp_path / "langs_b_test.jsonl", 3, 20)
    out = tmp_path / "seq"
    assert main(["sequence", "--task", f"{a}@scorer=contains_word,split=2", "--task",
                 f"{b}@scorer=contains_word,test={b_test}", "--methods", "sft", "--seeds", "1", "--max-steps", "1",
                 "--model", str(model_dir), "--output", str(out), *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == ["langs_a", "langs_b"]
    run = res["runs"][0]
    assert len(run["matrix"]) == 3 and run["matrix_n"][0] == [2, 3]  # split=2 held out; b's own test file
    html = (out / "report.html").read_text()
    assert "langs_a" in html and "Pareto frontiers" in html and "Forgetting on the retention suite" in html
    stage1 = json.loads((out / "sft" / "seed0" / "progress.json").read_text())["stages"][0]["config"]
    assert stage1["data"]["path"] == f"task:{a}@scorer=contains_word,split=2"


def test_a_file_is_evaluated_whole_and_only_it(model_dir, tmp_path):
    f = _write(tmp_path / "mine.jsonl", 7)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(model_dir), "--data", str(f), "--scorer", "contains_word",
                 "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["tasks"]) == ["mine"] and res["tasks"]["mine"]["n"] == 7
    t = task_from_spec(f"{f}@split=0.3")
    assert len(t.test) == 2 and len(t.train) == 5 and not {e.origin for e in t.test} & {e.origin for e in t.train}


def test_eval_reports_each_knowledge_phrasing(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "k.json"
    assert main(["eval", "--model", str(model_dir), "--task", "knowledge@n_train=2,test_phrasing=all",
                 "--output", str(out), "--limit", "0"]) == 0
    groups = json.loads(out.read_text())["tasks"]["knowledge"]["groups"]
    assert list(groups) == ["reworded", "train", "other_name", "reverse"] and all(g["n"] == 2 for g in groups.values())
    printed = capsys.readouterr().out
    assert all(f"[{g}]" in printed for g in groups), printed


def test_bad_file_tasks_are_one_line_errors_naming_file_and_record(model_dir, tmp_path, capsys):
    f = _write(tmp_path / "f.jsonl", 3)
    line = _one_line_error(capsys, ["eval", "--model", str(model_dir), "--task", f"{f}@scorer=contains_wrd"])
    assert str(f) in line and "unknown scorer 'contains_wrd'" in line and "contains_word" in line
    g = _write(tmp_path / "g.jsonl", 3, answer=False)
    line = _one_line_error(capsys, ["sequence", "--task", f"{g}@scorer=contains_word", "--model", str(model_dir),
                                    "--output", str(tmp_path / "o")])
    assert f"{g}:1" in line and "'answer'" in line
    line = _one_line_error(capsys, ["eval", "--model", str(model_dir), "--task", f"{f}@split=1.5"])
    assert "split" in line and str(f) in line
    line = _one_line_error(capsys, ["eval", "--model", str(model_dir), "--task", f"{f}@colour=red"])
    assert "colour" in line


def test_report_on_a_run_that_stopped_early_never_tracebacks(tmp_path, capsys):
    line = _one_line_error(capsys, ["report", str(tmp_path)])  # nothing at all
    assert "results.json" in line
    (tmp_path / "plan.json").write_text(json.dumps({"title": "t", "model": "m", "tasks": ["a"], "task_specs": ["a"],
                                                    "methods": ["sdft", "sft"], "seeds": [0],
                                                    "run_dirs": {"sdft": "sdft", "sft": "sft"}}))
    (tmp_path / "base_eval.json").write_text(json.dumps({"tasks": {"a": {"accuracy": 0.1, "n": 10}},
                                                         "retention": {"accuracy": 0.5, "n": 4}}))
    (tmp_path / "sft" / "seed0" / "stage1").mkdir(parents=True)  # stopped during its first stage
    assert main(["report", str(tmp_path)]) == 0  # stopped before any stage finished
    text = (tmp_path / "report.md").read_text()
    assert "PARTIAL" in text and "sdft seed 0: not started" in text
    assert "sft seed 0: started, 0 of 1 stages finished" in text


def test_train_data_with_a_split_trains_on_the_rest(tmp_path):
    from selfdistill.tasks import load_training_examples
    f = _write(tmp_path / "f.jsonl", 10)
    whole = load_training_examples(str(f))
    part = load_training_examples(f"{f}@split=0.2")
    held_out = task_from_spec(f"{f}@split=0.2").test
    assert len(whole) == 10 and len(part) == 8 and len(held_out) == 2
    assert sorted(e.origin for e in [*part, *held_out]) == sorted(e.origin for e in whole)
