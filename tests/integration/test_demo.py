"""`selfdistill demo --quick` end to end on a tiny random model saved to disk: probe, three methods, the
training-phrasing evaluation, results and report files."""

from __future__ import annotations

import json

import pytest

from selfdistill.cli import main
from selfdistill.runs.presets import DEMO_METHODS


def test_demo_quick_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--output", str(out), "--quick", "--train.bf16", "false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == DEMO_METHODS
    for r in res["runs"]:
        assert len(r["matrix"]) == 2 and r["retention_n"] > 0
        also = r["also"]["knowledge, training phrasing"]
        assert also["n"] == 8 and len(also["accuracy"]) == 2
        assert [c["step"] for c in r["checkpoints"]] == [1, 2]
    assert "probe" in res and res["probe"]["n"] == 8
    assert any("paper_no_thinking" in n for n in res["notes"])
    text = (out / "report.md").read_text()
    assert "Also evaluated (never trained on)" in text and (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "training phrasing" in printed and str(out / "report.html") in printed
    assert "generalisation-distance battery showed" in printed and "SDFT won at no distance" in printed


def test_demo_seeds_train_one_run_per_seed_and_label_rows(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--output", str(out), "--quick", "--methods", "sft",
                 "--seeds", "0,1", "--train.bf16", "false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("sft", 0), ("sft", 1)]
    assert (out / "sft" / "seed1").is_dir()
    printed = capsys.readouterr().out
    assert "sft seed 0" in printed and "sft seed 1" in printed


def test_demo_stopped_after_two_of_three_methods_reports_what_finished(model_dir, tmp_path, monkeypatch):
    import selfdistill.runs.stages as tr
    out = tmp_path / "demo"
    orig, calls = tr.train, {"n": 0}

    def stopped_in_third_method(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # e.g. `make demo` hit its timeout
        return orig(*a, **k)
    monkeypatch.setattr(tr, "train", stopped_in_third_method)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--model", str(model_dir), "--output", str(out), "--quick", "--train.bf16", "false"])
    assert not (out / "results.json").exists()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "PARTIAL REPORT" in text and f"{DEMO_METHODS[2]} seed 0: started, 0 of 1 stages finished" in text
    assert "2 of 3 planned runs" in text and "Probe" in text  # the finished part, probe included
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == DEMO_METHODS[:2]
