"""`selfdistill sweep` on a tiny random model saved to disk: the grid of runs, resume after a kill, the report (the
sweep's axes and flags: tests/unit/test_sweep_options.py)."""

from __future__ import annotations

import json

import pytest

import selfdistill.runs.stages as tr
from helpers import write_records
from selfdistill.cli import main

TINY = ["--train.prompts_per_step", "2", "--train.micro_batch_size", "2", "--rollout.max_new_tokens", "4",
        "--optim.warmup_steps", "0", "--log.progress", "false", "--data.max_prompt_tokens", "2048",
        "--data.max_teacher_prompt_tokens", "4096", "--train.max_steps", "2"]


def _facts(path, n=4):
    return write_records(path, [{"prompt": f"What is the code of thing {i}?",
                                 "demonstration": f"The code of thing {i} is c{i}.", "answer": f"c{i}"}
                                for i in range(n)])


def test_sweep_grid_resumes_after_a_kill_and_reports_frontiers(model_dir, tmp_path, monkeypatch, capsys):
    data = _facts(tmp_path / "facts.jsonl")
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", f"{data}@scorer=contains_word", "--methods", "sdft,sft", "--lrs", "1e-3,2e-3",
            "--seeds", "1", "--model", str(model_dir), "--output", str(out), "--eval-every", "1", *TINY]
    orig, calls = tr.train, {"n": 0}

    def killed_at_third_run(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies during the third run
        return orig(*a, **k)
    monkeypatch.setattr(tr, "train", killed_at_third_run)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert not (out / "results.json").exists()
    assert "facts: no test= or split= given, so it is evaluated on its 4 training records" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0  # the stopped sweep: a partial report of the two finished runs
    text = (out / "report.md").read_text()
    assert "PARTIAL" in text and "sdft@lr=2e-3 seed 0: started, 0 of 1 stages finished" in text
    assert "sft@lr=2e-3 seed 0: not started" in text

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)
    calls["n"] = 0
    monkeypatch.setattr(tr, "train", counting)
    assert main(argv) == 0
    assert calls["n"] == 2  # only the two unfinished runs trained
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["sdft@lr=1e-3", "sft@lr=1e-3", "sdft@lr=2e-3", "sft@lr=2e-3"]
    assert res["tasks"] == ["facts"] and res["sweep"]["lrs"] == ["1e-3", "2e-3"]
    for r in res["runs"]:
        assert [c["step"] for c in r["checkpoints"]] == [1, 2]
        assert len(r["retention_items"]["correct"][0]) == r["retention_n"] == 120
    text = (out / "report.md").read_text()
    assert "PARTIAL" not in text and "Pareto frontier" in text and (out / "fig_frontier.png").is_file()
