"""The continual-learning runner on a tiny random model: results schema, and resume between stages."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

import selfdistill.runs.sequence as seq_mod
import selfdistill.runs.stages as tr
from helpers import build_tiny_model
from selfdistill.config import load_config
from selfdistill.evaluation import DRIFT_PROMPTS, drift_kl, evaluate_task
from selfdistill.methods import MethodSpec
from selfdistill.models import load_model
from selfdistill.runs import SequenceOptions, run_sequence
from selfdistill.runs.sequence import time_split
from selfdistill.runs.store import RUN_LOCK, collect_results
from selfdistill.tasks import get_task

TASKS = ["knowledge", "tooluse"]
KW = {"knowledge": {"n_train": 4}, "tooluse": {"n_train": 4, "n_test": 4}}


def _cfg():
    return load_config(preset="cpu", overrides={"train.max_steps": 2, "train.prompts_per_step": 2,
                                                "train.micro_batch_size": 2, "rollout.max_new_tokens": 6,
                                                "optim.warmup_steps": 0, "optim.lr": 1e-3, "log.progress": False,
                                                "data.max_prompt_tokens": 2048,
                                                "data.max_teacher_prompt_tokens": 4096})


def _seq(tasks, methods, out, tok, retention_ids, **opts):
    """run_sequence on the tiny model: built-in tasks (KW sizes), 4 evaluation items, retention on a few items."""
    return run_sequence([get_task(n, **KW[n]) for n in tasks], [MethodSpec.parse(m) for m in methods],
                        SequenceOptions(out, _cfg(), eval_limit=4, write_report=False, batch_size=8,
                                        retention=get_task("retention", filter_ids=retention_ids), **opts),
                        model=build_tiny_model(tok), tokenizer=tok)


def _run(out, tok, **kw):
    return _seq(TASKS, ["sdft", "sft@lr=2e-3"], out, tok, ["capital-FR", "capital-DE", "capital-IT"], drift_prompts=4,
                **kw)


def test_two_stage_sequence_resumes_between_stages(tiny_tok, tmp_path, monkeypatch):
    full = _run(tmp_path / "full", tiny_tok, eval_every=1)
    r = full["runs"][0]
    assert len(r["matrix"]) == 3 and len(r["matrix"][0]) == 2  # base + 2 stages, 2 tasks
    assert r["drift"][0] == 0.0 and r["drift"][2] > 0
    assert {c["stage"] for c in r["checkpoints"]} == {1, 2}
    assert sorted((c["stage"], c["step"]) for c in r["checkpoints"]) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for c in r["checkpoints"]:  # the last checkpoint of a stage is that stage's evaluation, not run twice
        if c["step"] == 2:
            stage = c["stage"]
            assert c["new_task_acc"] == r["matrix"][stage][stage - 1]
            assert c["retention"] == r["retention"][stage]
    assert (tmp_path / "full" / "results.json").exists() and (tmp_path / "full" / "summary.csv").exists()
    # where the time went: base evaluation + one per stage (with its checkpoints'), training without them
    for run in full["runs"]:
        assert len(run["eval_seconds"]) == 3 and all(s > 0 for s in run["eval_seconds"])
        assert len(run["train_seconds"]) == 2 and all(s > 0 for s in run["train_seconds"])
    assert full["runs"][0]["eval_seconds"][0] == full["runs"][1]["eval_seconds"][0]  # the base's, evaluated once
    train_s, eval_s = time_split(full["runs"])
    assert train_s == pytest.approx(sum(sum(r["train_seconds"]) for r in full["runs"]))
    assert eval_s == pytest.approx(sum(sum(r["eval_seconds"]) for r in full["runs"]) - full["runs"][0]["eval_seconds"][0])
    stages = sorted((tmp_path / "full").glob("*/seed0/stage*"))
    assert len(stages) == 4 and all((d / "model.safetensors").is_file() for d in stages)
    assert not any((d / "checkpoints").exists() for d in stages)  # resume state is dropped once a stage is done

    orig = tr.train
    calls = {"n": 0}

    def stop_at_stage_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # first method, second stage: the process "dies" between stages
            raise KeyboardInterrupt
        return orig(*a, **k)
    monkeypatch.setattr(tr, "train", stop_at_stage_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", tiny_tok, eval_every=1)
    prog = json.loads((tmp_path / "b" / "sdft" / "seed0" / "progress.json").read_text())
    assert len(prog["stages"]) == 1
    monkeypatch.setattr(tr, "train", orig)
    resumed = _run(tmp_path / "b", tiny_tok, eval_every=1, keep_checkpoints=True)
    kept = {str(d.relative_to(tmp_path / "b")) for d in (tmp_path / "b").glob("*/seed0/stage*/checkpoints")}
    assert kept == {"sdft/seed0/stage2/checkpoints", "sft_at_lr-2e-3/seed0/stage1/checkpoints",
                    "sft_at_lr-2e-3/seed0/stage2/checkpoints"}  # stage 1 of sdft finished without the flag
    for a, b in zip(full["runs"], resumed["runs"]):
        assert a["method"] == b["method"]
        assert a["matrix"] == b["matrix"] and a["retention"] == b["retention"]
        assert a["drift"] == pytest.approx(b["drift"], abs=1e-6)


def test_also_eval_is_recorded_per_stage_and_equals_a_direct_evaluation(tiny_tok, tmp_path):
    # multiple choice by log-likelihood: a random tiny model gets some items right, so the equality below is
    # between non-trivial numbers (checked: neither 0 nor 1)
    ids = ["capital-FR", "capital-IE", "capital-NO", "add-1-5", "add-2-3", "add-2-9", "fact-sky-color",
           "fact-first-month", "fact-three-sides", "fact-jungle-king"]
    also = get_task("retention", filter_ids=ids)
    res = _seq(["knowledge"], ["sft@lr=2e-3"], tmp_path, tiny_tok, ["capital-FR"], drift=False,
               also_eval={"ten retention items": also})
    rec = res["runs"][0]["also"]["ten retention items"]
    assert rec["n"] == 4 and len(rec["accuracy"]) == 2  # eval_limit 4; base + one stage
    final, _, _ = load_model(str(tmp_path / "sft_at_lr-2e-3" / "seed0" / "stage1"))
    direct = evaluate_task(final, tiny_tok, also, "test", 4, 8)["accuracy"]
    assert 0.0 < direct < 1.0 and rec["accuracy"][1] == direct


def test_runs_held_by_a_live_process_are_skipped_and_a_dead_holder_is_taken_over(tiny_tok, tmp_path, capsys):
    """The same command started twice on one folder: each (method, seed) run is trained by one process only."""
    out = tmp_path / "s"
    methods = ["sft@lr=2e-3", "sft@lr=1e-3"]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for name, pid in (("sft_at_lr-2e-3", sleeper.pid), ("sft_at_lr-1e-3", dead.pid)):
            (out / name / "seed0").mkdir(parents=True)
            (out / name / "seed0" / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        res = _seq(["knowledge"], methods, out, tiny_tok, ["capital-FR", "capital-DE"], drift=False)
        err = capsys.readouterr().err
        assert f"run 1/2: sft@lr=2e-3 seed 0: skipped, pid {sleeper.pid} on {socket.gethostname()}" in err
        assert f"pid {dead.pid} is gone; taking its run over" in err
        assert [r["method"] for r in res["runs"]] == ["sft@lr=1e-3"]
        assert not (out / "sft_at_lr-2e-3" / "seed0" / "progress.json").exists()
        assert (out / "sft_at_lr-2e-3" / "seed0" / RUN_LOCK).exists()  # not ours: left alone
        assert not (out / "sft_at_lr-1e-3" / "seed0" / RUN_LOCK).exists()  # ours: released when the run ended
        assert collect_results(out)["partial"]["missing"] == [
            f"sft@lr=2e-3 seed 0: started, 0 of 1 stages finished, running now: pid {sleeper.pid} on "
            f"{socket.gethostname()} (since ?)"]
    finally:
        sleeper.kill()
        sleeper.wait()
    res = _seq(["knowledge"], methods, out, tiny_tok, ["capital-FR", "capital-DE"], drift=False)
    assert [r["method"] for r in res["runs"]] == methods


def test_battery_items_are_recorded_with_their_distance_at_every_stage(tiny_tok, tmp_path):
    task = get_task("battery", n_per_set=1, n_control=1)
    res = run_sequence([task], [MethodSpec.parse("sft@lr=2e-3")],
                       SequenceOptions(tmp_path, _cfg(), batch_size=8, drift=False,
                                       retention=get_task("retention", filter_ids=["capital-FR"])),
                       model=build_tiny_model(tiny_tok), tokenizer=tiny_tok)
    tabs = res["runs"][0]["item_tables"]
    assert set(tabs) == {"battery", "battery, control (never trained)"}
    t = tabs["battery"]
    assert t["ids"] == [ex.extra["id"] for ex in task.test]
    assert t["fields"]["distance"] == [ex.extra["distance"] for ex in task.test]
    assert len(t["outcomes"]["correct"]) == 2  # base + one stage
    final, _, _ = load_model(str(tmp_path / "sft_at_lr-2e-3" / "seed0" / "stage1"))
    direct = evaluate_task(final, tiny_tok, task, "test", 0, 8)["items"]
    assert t["outcomes"]["correct"][1] == [int(r["correct"]) for r in direct]
    assert t["outcomes"]["attempted"][1] == [int(r["attempted"]) for r in direct]
    assert "## Accuracy by distance from the training question" in (tmp_path / "report.md").read_text()


def test_stages_never_run_the_base_model_and_their_drift_equals_drift_kl(tiny_tok, tmp_path, monkeypatch):
    """The base's side of drift is measured once at the start; afterwards the base model is only copied from
    (it can stay on CPU), and each stage's drift still equals drift_kl(base, that stage's model)."""
    measure = seq_mod._measure_base

    def measure_then_forbid(ctx, saved):
        out = measure(ctx, saved)

        base = ctx.base_model

        def forbidden(module, args):  # deep copies (each run's first stage) carry the hook: they may run
            if module is base:
                raise AssertionError("the base model ran after the start of the sequence")
        base.register_forward_pre_hook(forbidden)
        return out
    monkeypatch.setattr(seq_mod, "_measure_base", measure_then_forbid)
    reference = build_tiny_model(tiny_tok)  # the same weights as _seq's base model
    res = _seq(["knowledge"], ["sft@lr=2e-3"], tmp_path, tiny_tok, ["capital-FR"], drift_prompts=3)
    final, _, _ = load_model(str(tmp_path / "sft_at_lr-2e-3" / "seed0" / "stage1"))
    want = drift_kl(reference, final, tiny_tok, DRIFT_PROMPTS[:3])
    assert res["runs"][0]["drift"][1] == pytest.approx(want, rel=1e-5) and want > 0
