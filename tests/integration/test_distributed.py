"""Data parallel on CPU: 2 processes (gloo DDP) train to the same weights as 1 process with the same global batch.

The worker (tests/integration/dist_worker.py) trains the tiny model 3 optimizer steps with greedy rollouts,
prompts_per_step 4, micro_batch_size 1 — 2 micro-batches per rank under DDP, 4 micro-batches of gradient
accumulation in one process — for SDFT and SFT, and every rank saves its final student and EMA-teacher weights.
Here the three steps' rollouts are sampled in one round (rollout.steps_per_generation=3, importance-weighted) and
every step is checkpointed, so the checkpoints carry rollouts sampled ahead, gathered from both ranks (the FSDP2
tests run the same worker with fresh rollouts every step).

Launch note: `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher; only
`--multi_gpu`/torchrun starts several). So the test launches with `--multi_gpu` and hides any GPU
(CUDA_VISIBLE_DEVICES=""), which gives 2 CPU processes on gloo (DistributedType.MULTI_CPU); the worker exits with
an error if it does not see the expected number of processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (ROOT, addition_records, build_tiny_model, check, run_dist_workers, subprocess_env,
                     write_records)

STEPS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run the single-process reference and the 2-process DDP job (concurrently: 3 processes, ~20 s)."""
    base = tmp_path_factory.mktemp("dist")
    extra = ["--steps-per-generation", str(STEPS), "--save-every", "1"]
    run_dist_workers(base, STEPS, plain=[("single", extra, "single-process run")],
                     multi=("multi", extra, "2-process accelerate launch"))
    return base


def _load(base: Path, run: str, method: str, rank: int) -> dict:
    return torch.load(base / run / method / f"rank{rank}.pt", weights_only=False)


def _metrics(base: Path, run: str, method: str) -> list[dict]:
    return [json.loads(line) for line in (base / run / method / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_two_process_ddp_equals_single_process(runs, method, tiny_tok):
    one, r0, r1 = (_load(runs, "single", method, 0), _load(runs, "multi", method, 0), _load(runs, "multi", method, 1))
    assert (one["world"], r0["world"], r1["world"]) == (1, 2, 2)
    # ranks hold bit-identical students (DDP) and EMA teachers (same update from the same student)
    assert r0["student_sha"] == r1["student_sha"]
    assert r0["teacher_sha"] == r1["teacher_sha"]
    init = build_tiny_model(tiny_tok, seed=0).state_dict()
    moved = max((one["student"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3, "training did not change the weights: the comparison would be vacuous"
    for k, v in one["student"].items():
        torch.testing.assert_close(r0["student"][k], v, atol=1e-5, rtol=0, msg=lambda m: f"student {k}: {m}")
    if method == "sdft":
        assert one["teacher"] and set(one["teacher"]) == set(r0["teacher"])
        assert max((one["teacher"][k] - init[k]).abs().max().item() for k in init) > 1e-4  # EMA moved
        for k, v in one["teacher"].items():
            torch.testing.assert_close(r0["teacher"][k], v, atol=1e-5, rtol=0, msg=lambda m: f"teacher {k}: {m}")
    else:
        assert one["teacher"] == {} and r0["teacher"] == {}
    # the final model folder (main process only) holds the same weights
    from safetensors.torch import load_file
    saved = load_file(str(runs / "multi" / method / "model.safetensors"))
    for k, v in saved.items():
        torch.testing.assert_close(v, r0["student"][k], atol=0, rtol=0)


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_only_rank0_logs_and_logged_metrics_match(runs, method):
    m1, m2 = _metrics(runs, "single", method), _metrics(runs, "multi", method)
    assert [r["step"] for r in m2] == list(range(1, STEPS + 1))  # one line per step: rank 1 wrote nothing
    assert [r["step"] for r in m1] == list(range(1, STEPS + 1))
    for a, b in zip(m1, m2):  # metrics reduced over ranks = the single-process values
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-6)
        assert b["completion_len"] == pytest.approx(a["completion_len"], abs=1e-6)
        key = "forward_kl" if method == "sdft" else "sft_nll"
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
    ck = sorted(p.name for p in (runs / "multi" / method / "checkpoints").iterdir())
    assert ck == [f"step-{STEPS - 1:06d}", f"step-{STEPS:06d}"]  # log.keep_last=2


def test_rollouts_sampled_ahead_are_saved_from_every_rank(runs):
    """The checkpoint after step 2 holds step 3's rollouts (sampled at step 1): each rank's 2, together the single
    process's 4 (greedy), in rank order; the last checkpoint holds none."""
    def pending(run, step):
        ck = runs / run / "sdft" / "checkpoints" / f"step-{step:06d}"
        state = json.loads((ck / "trainer_state.json").read_text())
        return state.get("pending_rollouts")
    (one,), (r0, r1) = pending("single", STEPS - 1), pending("multi", STEPS - 1)
    key = str(STEPS - 1)
    assert list(one) == list(r0) == list(r1) == [key] and len(r0[key]) == len(r1[key]) == 2
    assert [ids for ids, _ in r0[key] + r1[key]] == [ids for ids, _ in one[key]]
    assert all(len(lps) == len(ids) for ids, lps in one[key])  # the sampler's log-probs, for the importance weights
    assert pending("single", STEPS) is None and pending("multi", STEPS) is None


def test_cli_num_processes_starts_that_many_processes(tmp_path, tiny_tok, tiny_model):
    """`python -m selfdistill train --num-processes 2` relaunches under accelerate with 2 workers (not 1)."""
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    write_records(data, addition_records(8, "{}."))
    seen = tmp_path / "ranks"
    seen.mkdir()
    hook = tmp_path / "hook"
    hook.mkdir()
    # sitecustomize runs in every Python process: each torchrun worker leaves a file named after its rank
    (hook / "sitecustomize.py").write_text(
        "import os\nif 'LOCAL_RANK' in os.environ and os.environ.get('SD_SEEN'):\n"
        "    open(os.path.join(os.environ['SD_SEEN'], 'rank' + os.environ['LOCAL_RANK']), 'w').close()\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "selfdistill", "train", "--num-processes", "2", "--method", "sft",
                           "--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-steps", "2",
                           "--train.prompts_per_step", "4", "--train.micro_batch_size", "1",
                           "--log.progress", "false"],
                          env=subprocess_env(pythonpath=[str(hook)], SD_SEEN=str(seen)), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    check(proc, "selfdistill train --num-processes 2")
    assert sorted(p.name for p in seen.iterdir()) == ["rank0", "rank1"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "model.safetensors").exists()


def test_a_worker_failure_ends_in_one_line_naming_the_rank(tmp_path):
    """Workers that fail (here: a model folder that does not exist, found only when they load it) leave one line
    for the whole run, naming a rank and the reason: no torchrun traceback or report, the config printed once."""
    data = tmp_path / "d.jsonl"
    write_records(data, addition_records(8, "{}."))
    proc = subprocess.run([sys.executable, "-m", "selfdistill", "train", "--num-processes", "2", "--method", "sft",
                           "--model", str(tmp_path / "no-such-model"), "--data", str(data), "--output",
                           str(tmp_path / "run"), "--max-steps", "1", "--train.prompts_per_step", "4",
                           "--train.micro_batch_size", "1"],
                          env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert err[-1].startswith("selfdistill train: error (rank ") and "no-such-model" in err[-1], err[-5:]
    assert sum("selfdistill train: error" in line for line in err) == 1
    assert proc.stdout.count("# resolved config") == 1
