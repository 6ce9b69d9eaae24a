"""FSDP2 pieces (src/selfdistill/training/distributed.py) on CPU: 2 processes over gloo under torchrun, tiny
random Llama.

tests/integration/fsdp_worker.py shards the student and an EMA teacher, compares them against an unsharded model
that every rank builds locally from the same seed, takes steps, writes a sharded checkpoint, resumes, and writes a
consolidated folder; a second launch with 1 process reloads the 2-process checkpoint (DCP resharding).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (FSDP_WORKER, ROOT, addition_records, build_tiny_model, check, free_port, run_dist_workers,
                     subprocess_env, wait_for, write_records)


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           str(FSDP_WORKER), *args], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    check(_torchrun(2, "--out", str(out)), "2-process FSDP2 worker")
    check(_torchrun(1, "--out", str(out), "--mode", "reload"), "1-process reload of the 2-process checkpoint")
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


def test_the_training_ema_update_on_local_shards_equals_lerp_of_full_weights(run):
    """Teacher.update (what the training loop calls after each step) on FSDP2 shards."""
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


def test_write_error_on_one_rank_fails_the_save_on_every_rank(run):
    """The last rank's disk is full: both ranks raise CheckpointError (none waits forever), the temporary folder is
    removed, and the step-1 checkpoint is still the latest."""
    for r in run[1]:
        assert "No space left on device" in r["failed_save"] or "another process failed" in r["failed_save"]
        assert r["failed_save"].endswith("| latest=step-000001 | folders=['step-000001']"), r["failed_save"]
    assert "No space left on device" in run[1][1]["failed_save"]


def test_incomplete_sharded_checkpoint_is_invisible(run, tmp_path):
    """What a kill between the shard writes and rank 0's rename leaves behind is never picked for resume."""
    from selfdistill.training.checkpoint import MARKER, latest_checkpoint

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


def test_cpu_offload_trains_the_same_weights(run):
    assert run[1][0]["offload_same"]  # rank 0 compares the gathered weights


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="ddp", lora=False, distributed_type="DEEPSPEED"), "DeepSpeed is not supported.*FSDP2"),
    (dict(strategy="fsdp", lora=True, distributed_type="MULTI_CPU"), "model.lora=true with dist.strategy=fsdp"),
])
def test_unsupported_combinations_are_refused(kwargs, match):
    from selfdistill.training.distributed import DistributedConfigError, check_supported

    with pytest.raises(DistributedConfigError, match=match):
        check_supported(**kwargs)
    check_supported("fsdp", lora=False, distributed_type="MULTI_CPU")  # the supported case passes


# ----------------------------------------------------------------------------------------------------------
# train() with dist.strategy=fsdp: 2 processes = 1 process with the same global batch (dist_worker.py)

STEPS = 3


@pytest.fixture(scope="module")
def fsdp_vs_single(tmp_path_factory):
    """3 SDFT and 3 SFT steps: one plain process, and 2 FSDP2 processes under accelerate launch (concurrently)."""
    base = tmp_path_factory.mktemp("fsdp_train")
    run_dist_workers(base, STEPS, plain=[("single", [], "single-process run"),
                                         ("fsdp1", ["--dist", "fsdp"], "1-process FSDP2 run")],
                     multi=("fsdp", ["--dist", "fsdp"], "2-process FSDP2 run"))
    return base


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_two_process_fsdp_equals_single_process(fsdp_vs_single, method, tiny_tok):
    """Same final student and EMA teacher within 1e-5 (measured: ~2.5e-7; FSDP2 reduce-scatters each micro-batch,
    one process accumulates 4: float summation order differs); both ranks gather the same weights."""
    from safetensors.torch import load_file

    def load(run: str, rank: int) -> dict:
        return torch.load(fsdp_vs_single / run / method / f"rank{rank}.pt", weights_only=False)

    one, r0, r1 = load("single", 0), load("fsdp", 0), load("fsdp", 1)
    assert (one["world"], r0["world"], r1["world"]) == (1, 2, 2)
    assert r0["student_sha"] == r1["student_sha"] and r0["teacher_sha"] == r1["teacher_sha"]
    init = build_tiny_model(tiny_tok, seed=0).state_dict()
    assert max((one["student"][k] - init[k]).abs().max().item() for k in init) > 1e-3  # training moved weights
    assert set(r0["student"]) == set(one["student"])
    for k, v in one["student"].items():
        torch.testing.assert_close(r0["student"][k], v, atol=1e-5, rtol=0, msg=lambda m: f"student {k}: {m}")
    if method == "sdft":
        assert max((one["teacher"][k] - init[k]).abs().max().item() for k in init) > 1e-4  # the EMA moved
        assert set(r0["teacher"]) == set(one["teacher"])
        for k, v in one["teacher"].items():
            torch.testing.assert_close(r0["teacher"][k], v, atol=1e-5, rtol=0, msg=lambda m: f"teacher {k}: {m}")
    saved = load_file(str(fsdp_vs_single / "fsdp" / method / "model.safetensors"))  # the consolidated folder
    plain = load_file(str(fsdp_vs_single / "single" / method / "model.safetensors"))
    assert set(saved) == set(plain)  # the same tensors as an unsharded save (the tied lm_head stored once)
    for k, v in saved.items():
        assert torch.equal(v, r0["student"][k]), k
    m1 = [json.loads(x) for x in (fsdp_vs_single / "single" / method / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (fsdp_vs_single / "fsdp" / method / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m2] == list(range(1, STEPS + 1))  # rank 0 alone logs
    for a, b in zip(m1, m2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-6)
        # the evaluation callback ran on rank 0 inside the gather (no hang) and saw the trained weights
        assert b["eval_logit_mean"] == pytest.approx(a["eval_logit_mean"], abs=1e-5)


def test_one_process_fsdp_equals_plain_single_process(fsdp_vs_single):
    """dist.strategy=fsdp in one process (a 1-rank group: what a 1-GPU check runs) trains the same weights."""
    for method in ("sdft", "sft"):
        one = torch.load(fsdp_vs_single / "single" / method / "rank0.pt", weights_only=False)
        sharded = torch.load(fsdp_vs_single / "fsdp1" / method / "rank0.pt", weights_only=False)
        assert sharded["world"] == 1
        for part in ("student", "teacher"):
            assert set(sharded[part]) == set(one[part])
            for k, v in one[part].items():
                torch.testing.assert_close(sharded[part][k], v, atol=1e-5, rtol=0, msg=lambda m: f"{part} {k}: {m}")


# ----------------------------------------------------------------------------------------------------------
# The CLI: `selfdistill train --num-processes 2 --dist fsdp`, killed and resumed; two "machines" on loopback

CLI_STEPS = 4


def _cli_train(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "selfdistill", "train", "--dist", "fsdp", "--method", "sdft", "--model", str(model_dir),
            "--data", str(data), "--output", str(out), "--max-steps", str(CLI_STEPS),
            "--train.prompts_per_step", "4", "--train.micro_batch_size", "1", "--rollout.max_new_tokens", "12",
            "--log.save_every", "1", "--log.progress", "false", *extra]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _final_checkpoint(out: Path) -> dict:
    """The last sharded checkpoint, converted offline (no process group) to one state dict."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ck = out / "checkpoints" / f"step-{CLI_STEPS:06d}"
    dst = out / "final_ck.pt"
    dcp_to_torch_save(str(ck), str(dst))
    return torch.load(dst, weights_only=False)


def _same_run(a: Path, b: Path) -> None:
    """Final model folder, and the last checkpoint's student, EMA teacher and optimizer: bit for bit."""
    from safetensors.torch import load_file

    fa, fb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(fa) == set(fb)
    for k in fa:
        assert torch.equal(fa[k], fb[k]), f"final model {k}"
    ca, cb = _final_checkpoint(a), _final_checkpoint(b)
    for part in ("model", "teacher"):
        assert set(ca[part]) == set(cb[part])
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), f"{part} {k}"
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]), f"optimizer {k}"


@pytest.fixture(scope="module")
def cli_ref(tmp_path_factory, tiny_tok):
    """A tiny model folder, a data file, and one uninterrupted 2-process FSDP2 SDFT run through the CLI."""
    base = tmp_path_factory.mktemp("fsdp_cli")
    build_tiny_model(tiny_tok, seed=0).save_pretrained(base / "tiny")
    tiny_tok.save_pretrained(base / "tiny")
    data = base / "d.jsonl"
    write_records(data, addition_records(8))
    proc = subprocess.run([sys.executable, *_cli_train(base / "tiny", data, base / "ref"), "--num-processes", "2"],
                          env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    check(proc, "selfdistill train --num-processes 2 --dist fsdp")
    return base, data


def test_cli_fsdp_run_writes_one_loadable_folder_and_sharded_checkpoints(cli_ref):
    from transformers import AutoModelForCausalLM

    base, _ = cli_ref
    ref = base / "ref"
    assert [json.loads(x)["step"] for x in (ref / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (ref / "checkpoints").iterdir()) == ["step-000003", "step-000004"]  # keep_last 2
    assert sum(p.suffix == ".distcp" for p in (ref / "checkpoints" / "step-000004").iterdir()) == 2
    model = AutoModelForCausalLM.from_pretrained(ref)
    ck = _final_checkpoint(ref)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck[k]), k


def test_sigkill_mid_training_then_resume_equals_uninterrupted(cli_ref):
    """kill -9 of the launcher and both workers after the step-2 checkpoint; --resume finishes the run."""
    import os
    import signal

    base, data = cli_ref
    out = base / "killed"
    args = [sys.executable, *_cli_train(base / "tiny", data, out), "--num-processes", "2"]
    proc = subprocess.Popen(args, env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(out / "checkpoints" / "step-000002", proc, "the step-2 checkpoint", timeout=150)
    for pid in _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "model.safetensors").exists()  # it really died before the end
    resumed = subprocess.run([*args, "--resume"], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    check(resumed, "--resume after kill -9")
    assert "resumed from" in resumed.stderr
    _same_run(base / "ref", out)


def test_sigint_stops_gracefully_then_resume_equals_uninterrupted(cli_ref):
    """Ctrl-C (SIGINT to the launcher's process group; torchrun forwards it to the workers): the workers agree,
    abandon the unfinished step, save the last finished one and exit; --resume finishes the run."""
    import os
    import signal

    base, data = cli_ref
    out = base / "interrupted"
    args = [sys.executable, *_cli_train(base / "tiny", data, out, "--log.save_every", "0"), "--num-processes", "2"]
    proc = subprocess.Popen(args, env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    wait_for(metrics, proc, "the first metrics line", timeout=150, lines=1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Resume with the same command plus --resume" in err, err[-3000:]
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < CLI_STEPS
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{done:06d}"]  # the last finished step
    resumed = subprocess.run([*args, "--resume"], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    check(resumed, "--resume after SIGINT")
    _same_run(base / "ref", out)


def test_two_machines_on_loopback_train_one_loadable_output(cli_ref):
    """torchrun --nnodes 2, one process each, node ranks 0 and 1, one rendezvous on 127.0.0.1: the same run as
    2 processes on one machine, bit for bit, in one output folder."""
    from transformers import AutoModelForCausalLM

    base, data = cli_ref
    out, port = base / "two_nodes", free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(r), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *_cli_train(base / "tiny", data, out)],
                              env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for r, p in enumerate(nodes):
        o, e = p.communicate(timeout=300)
        check(subprocess.CompletedProcess(p.args, p.returncode, o, e), f"node {r}")
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    AutoModelForCausalLM.from_pretrained(out)
    _same_run(base / "ref", out)


def test_resume_on_a_different_number_of_processes(cli_ref, tmp_path):
    """The 2-process run's step-3 checkpoint resumed by ONE process (DCP reshards student, teacher and AdamW states;
    data order and rollout seeds are global): the final model equals the 2-process run's within float rounding."""
    from safetensors.torch import load_file

    base, data = cli_ref
    out = tmp_path / "one_process"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(base / "ref" / "selfdistill.yaml", out / "selfdistill.yaml")
    shutil.copytree(base / "ref" / "checkpoints" / "step-000003", out / "checkpoints" / "step-000003")
    proc = subprocess.run([sys.executable, *_cli_train(base / "tiny", data, out), "--resume"], env=subprocess_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    check(proc, "1-process --resume of a 2-process checkpoint")
    assert "resumed from" in proc.stderr and "at step 3" in proc.stderr
    want, got = load_file(str(base / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(got) == set(want)
    for k in want:  # measured: max difference ~1e-8 (different reduction order), never bit-exact by design
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")


def test_resume_with_the_other_strategy_is_refused_before_any_work(tmp_path, tiny_tok):
    """A run checkpointed without sharding cannot be resumed with --dist fsdp (nor the reverse): the changed
    dist.strategy is named, and nothing is sharded or loaded."""
    from selfdistill.config import load_config
    from selfdistill.data import Example
    from selfdistill.training import TrainingError, train

    ov = {"train.method": "sft", "train.max_steps": 2, "train.prompts_per_step": 2, "train.micro_batch_size": 1,
          "log.progress": False}
    ex = [Example([{"role": "user", "content": "What is 12 + 7?"}], "19.")] * 2
    train(load_config(overrides=ov), ex, build_tiny_model(tiny_tok), tiny_tok, tmp_path / "o", stop_after=1)
    assert (tmp_path / "o" / "checkpoints" / "step-000001").exists()
    with pytest.raises(TrainingError, match=r"--resume with a different config \(dist.strategy\)"):
        train(load_config(overrides={**ov, "dist.strategy": "fsdp"}), ex, build_tiny_model(tiny_tok), tiny_tok,
              tmp_path / "o", resume=True)
    import torch.distributed as dist
    assert not dist.is_initialized()  # refused before the 1-rank process group was made
