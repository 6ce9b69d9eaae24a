"""FSDP2 pieces (src/selfdistill/distributed.py) on CPU: 2 processes over gloo under torchrun, tiny random Llama.

tests/fsdp_worker.py shards the student and an EMA teacher, compares them against an unsharded model that every
rank builds locally from the same seed, takes steps, writes a sharded checkpoint, resumes, and writes a
consolidated folder; a second launch with 1 process reloads the 2-process checkpoint (DCP resharding).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import ROOT, _check, _env

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           str(WORKER), *args], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _check(_torchrun(2, "--out", str(out)), "2-process FSDP2 worker")
    _check(_torchrun(1, "--out", str(out), "--mode", "reload"), "1-process reload of the 2-process checkpoint")
    ranks = [json.loads((out / f"pieces-rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def test_student_and_teacher_sharded_alike(run):
    _, ranks = run
    for r in ranks:
        assert r["world"] == 2 and r["param_is_dtensor"]
        assert r["local_fraction"] == pytest.approx(0.5)  # each rank holds half of every parameter
        assert r["teacher_dtype"] == "{torch.float32}"


def test_sharded_teacher_forward_equals_unsharded(run):
    for r in run[1]:
        assert r["teacher_logits_maxdiff"] < 1e-5


def test_global_grad_norm_equals_unsharded_and_ranks_agree(run):
    r0, r1 = run[1]
    assert r0["grad_norm"] == r1["grad_norm"]  # bitwise: one all-reduced number
    assert r0["grad_norm"] == pytest.approx(r0["grad_norm_reference"], rel=1e-5)
    assert r0["grad_norm"] > 1.0  # so clipping to 1.0 was exercised


def test_ema_on_local_shards_equals_lerp_of_full_weights(run):
    r0 = run[1][0]
    assert r0["ema_moved"] > 1e-4  # the teacher really moved
    assert r0["ema_maxdiff"] == 0.0  # shard-local lerp == lerp of the gathered weights, bit for bit


def test_any_rank_agreement(run):
    for r in run[1]:  # only the last rank raised the flag; every rank sees it
        assert r["nonfinite_agreed"] is True and r["finite_agreed"] is False


def test_rollouts_gathered_once_equal_unsharded_and_ranks_stop_independently(run):
    r0, r1 = run[1]
    assert r0["gen_equal"] and r1["gen_equal"]
    assert r0["gen_len"] != r1["gen_len"]  # no per-step collective: unequal lengths did not hang
    assert r0["resharded_after_generate"] and r1["resharded_after_generate"]


def test_sharded_checkpoint_resume_is_bitwise(run):
    out, (r0, _) = run
    assert r0["resume_student_bitwise"] and r0["resume_teacher_bitwise"]
    assert r0["resume_state"] == {"step": 1, "data_position": 4, "world_size": 2, "format": "dcp"}
    ck = out / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["step-000001"]  # no temporary folder left behind
    names = {p.name for p in (ck / "step-000001").iterdir()}
    assert {"COMPLETE", ".metadata", "rng-rank0.pt", "rng-rank1.pt", "scheduler.pt", "trainer_state.json"} <= names
    assert sum(n.endswith(".distcp") for n in names) == 2  # one shard file per rank


def test_incomplete_sharded_checkpoint_is_invisible(run, tmp_path):
    """What a kill between the shard writes and rank 0's rename leaves behind is never picked for resume."""
    from selfdistill.checkpoint import MARKER, latest_checkpoint

    out, _ = run
    root = tmp_path / "checkpoints"
    shutil.copytree(out / "checkpoints", root)
    shutil.copytree(root / "step-000001", root / "step-000002.tmp")
    (root / "step-000002.tmp" / MARKER).unlink()
    assert latest_checkpoint(root) == root / "step-000001"


def test_checkpoint_reshards_onto_one_process(run):
    out, _ = run
    want = torch.load(out / "step1.pt", weights_only=False)
    got = torch.load(out / "reload-world1.pt", weights_only=False)
    for part in ("student", "teacher"):
        assert set(got[part]) == set(want[part])
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), f"{part} {k}"
    assert got["state"]["world_size"] == 2


def test_consolidated_folder_loads_in_transformers(run):
    from transformers import AutoModelForCausalLM

    out, _ = run
    want = torch.load(out / "step3.pt", weights_only=False)["student"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    sd = model.state_dict()
    assert set(sd) == set(want)
    for k, v in want.items():
        assert torch.equal(sd[k], v), k
    assert (out / "final" / "tokenizer.json").exists()


def test_bf16_mixed_precision_keeps_float32_parameters(run):
    for r in run[1]:
        assert r["bf16_logits_dtype"] == "torch.bfloat16"  # compute in bf16
        assert r["bf16_param_dtypes"] == ["torch.float32"]  # sharded parameters (and AdamW states) float32
        assert r["bf16_teacher_dtypes"] == ["torch.float32"]
        assert r["bf16_grad_free"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="ddp", lora=False, distributed_type="DEEPSPEED"), "DeepSpeed is not supported.*FSDP2"),
    (dict(strategy="fsdp", lora=True, distributed_type="MULTI_CPU"), "model.lora=true with dist.strategy=fsdp"),
])
def test_unsupported_combinations_are_refused(kwargs, match):
    from selfdistill.distributed import DistributedConfigError, check_supported

    with pytest.raises(DistributedConfigError, match=match):
        check_supported(**kwargs)
    check_supported("fsdp", lora=False, distributed_type="MULTI_CPU")  # the supported case passes
