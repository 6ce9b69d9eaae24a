"""runs/ pieces without a run: a method spec parsed once (its folder and family names), and the run lock."""

from __future__ import annotations

import json
import os
import socket

import pytest

from selfdistill.methods import MethodSpec
from selfdistill.runs.store import RUN_LOCK, claim_run, release_run


def test_method_spec_parses_once_and_names_its_folder_and_family():
    spec = MethodSpec.parse("sft@lr=2e-5")
    assert spec.overrides == {"train.method": "sft", "optim.lr": "2e-5"}
    assert str(spec) == "sft@lr=2e-5" and spec.dir_name == "sft_at_lr-2e-5" and spec.family == "sft"
    grid = MethodSpec.parse("sdft@lr=1e-4,model.lora=true,template=paper")
    assert grid.overrides == {"train.method": "sdft", "optim.lr": "1e-4", "model.lora": "true",
                              "context.teacher_template": "paper"}
    assert grid.family == "sdft@model.lora=true,template=paper"
    assert grid.dir_name == "sdft_at_lr-1e-4_model.lora-true_template-paper"
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        MethodSpec.parse("ppo")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        MethodSpec.parse("sft@lr")


def test_claim_run_is_exclusive_until_released(tmp_path):
    assert claim_run(tmp_path) is None
    held = json.loads((tmp_path / RUN_LOCK).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert claim_run(tmp_path).startswith(f"pid {os.getpid()} on {socket.gethostname()}")  # a second claimant
    release_run(tmp_path)
    assert claim_run(tmp_path) is None


def test_a_method_spec_that_changes_the_rollout_numerics_gets_its_importance_weights():
    """A sweep or sequence method `sdft@rollout.dtype=bfloat16` (or `@rollout.engine=vllm`) trains with the
    correction on, as `train` with the same keys does; a value the spec or the run set explicitly is kept."""
    import types

    from selfdistill.config import load_config
    from selfdistill.runs.stages import stage_config

    def stage(run_overrides, spec):
        task = types.SimpleNamespace(name="t")
        ctx = types.SimpleNamespace(cfg=load_config(overrides=run_overrides), tasks=[task], task_specs=["knowledge"])
        return stage_config(ctx, MethodSpec.parse(spec), 0, 1).loss.importance_weights

    assert stage({}, "sdft") is False
    assert stage({}, "sdft@rollout.dtype=bfloat16") is True
    assert stage({}, "sdft@rollout.engine=vllm") is True
    assert stage({}, "sdft@rollout.dtype=bfloat16,loss.importance_weights=false") is False
    assert stage({"loss.importance_weights": True}, "sdft") is True  # the run's explicit choice
    assert stage({"rollout.dtype": "bfloat16"}, "sdft") is True


def test_the_demo_samples_from_a_bf16_copy_with_its_correction_where_bf16_is_native(monkeypatch):
    from selfdistill.runs import presets
    from selfdistill.runs.demo import DemoOptions, demo_config

    for native in (True, False):
        monkeypatch.setattr(presets, "fast_bf16", lambda: native)
        cfg = demo_config(DemoOptions())
        assert (cfg.train.bf16, cfg.rollout.dtype, cfg.loss.importance_weights) == \
            ((True, "bfloat16", True) if native else (False, "model", False))
    monkeypatch.setattr(presets, "fast_bf16", lambda: True)
    assert demo_config(DemoOptions(overrides={"rollout.dtype": "model"})).loss.importance_weights is False
