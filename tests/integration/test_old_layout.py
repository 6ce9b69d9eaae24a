"""Run folders written before the package restructure (issue 23) still resume and still report unchanged.

tests/data/old_layout was written by the flat-module code (commit before the restructure) with
tests/data/old_layout/make_fixture.py: a `train` stopped after step 1 of 3 (SDFT, EMA teacher: a full resume
checkpoint), and a finished two-run `sweep` (its trained stage models removed; reporting does not read them).
"""

from __future__ import annotations

import json
import re
import shutil

import torch

from helpers import DATA, build_tiny_model
from selfdistill.config import load_config
from selfdistill.data import Example
from selfdistill.runs import report_folder
from selfdistill.training import train

OLD = DATA / "old_layout"


def _cfg():  # the settings make_fixture.py trained with
    return load_config(preset="cpu", overrides={
        "train.max_steps": 3, "train.prompts_per_step": 2, "train.micro_batch_size": 2, "rollout.max_new_tokens": 6,
        "optim.warmup_steps": 0, "optim.lr": 1e-3, "log.progress": False, "train.seed": 0,
        "data.max_prompt_tokens": 2048, "data.max_teacher_prompt_tokens": 4096})


def _examples():
    return [Example([{"role": "user", "content": f"What is the code of thing {i}?"}], f"The code of thing {i} is c{i}.",
                    origin=f"inline:{i + 1}") for i in range(4)]


def test_an_old_checkpoint_loads_exactly(tiny_tok):
    """Every piece of the old code's checkpoint is read back as stored: weights, EMA teacher, optimizer moments,
    scheduler position, trainer state (its pickles name no module that moved)."""
    from safetensors.torch import load_file

    from selfdistill.training.checkpoint import load_checkpoint

    ck = OLD / "stopped_train" / "checkpoints" / "step-000001"
    model = build_tiny_model(tiny_tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    teacher, state = load_checkpoint(ck, model=model, optimizer=opt, scheduler=sched)
    stored = load_file(str(ck / "model.safetensors"))
    assert stored and all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert not torch.equal(stored["model.embed_tokens.weight"],
                           build_tiny_model(tiny_tok, seed=0).state_dict()["model.embed_tokens.weight"])  # trained
    assert teacher.keys() == load_file(str(ck / "teacher.safetensors")).keys() and teacher
    assert all(float(s["step"]) == 1 for s in opt.state.values()) and len(opt.state) == len(stored)
    assert sched.last_epoch == 1 and state == {"step": 1, "data_position": 2, "skipped_steps": 0}


def test_a_train_stopped_by_the_old_layout_resumes_like_a_new_run_holding_the_same_checkpoint(tiny_tok, tmp_path):
    """Resuming the old folder (its selfdistill.yaml, metrics.jsonl and checkpoint) trains steps 2 and 3 exactly as
    resuming a folder written by today's code whose step-1 checkpoint holds the old files. (Not compared with an
    uninterrupted run of today's code: step 1 was computed by the old code on another machine, and rollouts have
    been sampled differently since; resume == uninterrupted is tested on today's checkpoints in test_train.py.)"""
    run = tmp_path / "stopped_train"
    shutil.copytree(OLD / "stopped_train", run)
    resumed = train(_cfg(), _examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, run, resume=True)
    assert [m["step"] for m in resumed.metrics] == [2, 3]  # steps 2 and 3 only: step 1 came from the checkpoint
    new = tmp_path / "new"
    assert train(_cfg(), _examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, new, stop_after=1).stopped_early
    ck = new / "checkpoints" / "step-000001"
    for f in (OLD / "stopped_train" / "checkpoints" / "step-000001").iterdir():
        shutil.copy(f, ck / f.name)
    ref = train(_cfg(), _examples(), build_tiny_model(tiny_tok, seed=0), tiny_tok, new, resume=True)
    a, b = resumed.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in ref.metrics]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]  # the old code's step 1 kept, today's 2 and 3 appended


def _without_date(text: str) -> str:
    return re.sub(r"\| date \| \d{4}-\d\d-\d\d \|", "| date | - |", text)


def _split_lead(text: str) -> tuple[str, str]:
    """(the report without its opening section, that section): the opening came after the old layout."""
    start, end = text.index("## What this run shows"), text.index("| field | value |")
    return text[:start] + text[end:], text[start:end]


def test_a_sweep_finished_by_the_old_layout_reports_unchanged(tmp_path):
    """Everything the old code's report said is said again; new is only the opening section (what the run shows,
    and its figure, which is then not repeated under Figures)."""
    out = tmp_path / "sweep"
    shutil.copytree(OLD / "sweep", out)
    old_md, old_results = (out / "report.md").read_text(), json.loads((out / "results.json").read_text())
    md, html = report_folder(out)
    rest, lead = _split_lead(md.read_text())
    moved = re.findall(r"\]\((fig_\w+\.png)\)", lead)
    assert moved == ["fig_tradeoff.png"] and "sdft@lr=2e-3 (1 seed): new-task accuracy" in lead
    old_rest = re.sub(rf"!\[[^\]]*\]\({moved[0]}\)\n\n", "", old_md)
    assert _without_date(rest) == _without_date(old_rest)
    new_results = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in new_results.items() if k != "date"} == \
        {k: v for k, v in old_results.items() if k != "date"}
    assert html.is_file() and (out / "fig_frontier.png").is_file()
