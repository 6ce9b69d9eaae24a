"""Which distributed wrapping a launch gets, and train()'s refusals at start (fake accelerators, no processes):
DDP / FSDP2 / single from the launch and dist.strategy, accelerate's FSDP plugin read and FSDP1 refused, FSDP2
combinations that are not supported, and a launch without a DDP wrapper (DeepSpeed)."""

from __future__ import annotations

import pytest
import torch


class FakeAccelerator:
    """What train() reads from accelerate: process count, distributed type and (FSDP configs) the plugin."""

    device = torch.device("cpu")
    process_index, is_main_process = 0, True

    def __init__(self, kind: str, n: int, fsdp_version: int | None = None, offload: bool = False):
        from types import SimpleNamespace

        self.num_processes = n
        self.distributed_type = SimpleNamespace(name=kind)
        plugin = None
        if fsdp_version is not None:
            from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
            plugin = SimpleNamespace(fsdp_version=fsdp_version, cpu_offload=CPUOffloadPolicy() if offload
                                     else OffloadPolicy())
        self.state = SimpleNamespace(fsdp_plugin=plugin)

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("requested, acc, want", [
    ("auto", FakeAccelerator("NO", 1), "single"),
    ("auto", FakeAccelerator("MULTI_CPU", 2), "ddp"),
    ("ddp", FakeAccelerator("MULTI_GPU", 8), "ddp"),
    ("fsdp", FakeAccelerator("MULTI_CPU", 2), "fsdp"),
    ("fsdp", FakeAccelerator("NO", 1), "fsdp"),  # one process, a 1-rank group: e.g. a 1-GPU check
    ("auto", FakeAccelerator("FSDP", 8, fsdp_version=2), "fsdp"),  # accelerate launch --config_file fsdp.yaml
])
def test_strategy_for_each_launch(requested, acc, want):
    from selfdistill.training.distributed import resolve_strategy

    assert resolve_strategy(requested, acc, lora=False) == want


def test_accelerate_fsdp_config_is_read_and_fsdp1_refused():
    from selfdistill.training.distributed import DistributedConfigError, plugin_cpu_offload, resolve_strategy

    assert plugin_cpu_offload(FakeAccelerator("FSDP", 8, fsdp_version=2, offload=True))
    assert not plugin_cpu_offload(FakeAccelerator("FSDP", 8, fsdp_version=2))
    assert not plugin_cpu_offload(FakeAccelerator("MULTI_GPU", 8))
    with pytest.raises(DistributedConfigError, match="fsdp_version 1: only FSDP2"):
        resolve_strategy("auto", FakeAccelerator("FSDP", 8, fsdp_version=1), lora=False)
    with pytest.raises(DistributedConfigError, match="dist.strategy=ddp but accelerate was launched with an FSDP"):
        resolve_strategy("ddp", FakeAccelerator("FSDP", 8, fsdp_version=2), lora=False)


@pytest.mark.parametrize("overrides, match", [
    ({"model.lora": True}, "model.lora=true with dist.strategy=fsdp is not supported"),
    ({"teacher.kind": "live"}, "teacher.kind=live with dist.strategy=fsdp is not supported"),
])
def test_train_refuses_unsupported_fsdp_combinations_at_start(overrides, match, tmp_path, tiny_tok, tiny_model):
    from selfdistill.config import load_config
    from selfdistill.data import Example
    from selfdistill.training import TrainingError, train

    cfg = load_config(overrides={"train.max_steps": 1, "train.prompts_per_step": 2, "train.micro_batch_size": 1,
                                 "dist.strategy": "fsdp", "log.progress": False, **overrides})
    ex = [Example([{"role": "user", "content": "What is 12 + 7?"}], "19.")] * 2
    with pytest.raises(TrainingError, match=match):
        train(cfg, ex, tiny_model, tiny_tok, tmp_path / "o", accelerator=FakeAccelerator("MULTI_CPU", 2))
    assert not (tmp_path / "o").exists()  # refused before writing anything


def test_non_ddp_wrapping_is_refused(tmp_path, tiny_tok, tiny_model):
    """Under DeepSpeed, prepare_model returns the bare model (no gradient sync): train() must refuse, not diverge."""
    from selfdistill.config import load_config
    from selfdistill.data import Example
    from selfdistill.training import TrainingError, train

    class NotDDPAccelerator:  # what train() sees under DeepSpeed: several processes, no DDP wrapper
        num_processes, process_index, is_main_process = 2, 0, True
        device = torch.device("cpu")
        distributed_type = type("T", (), {"name": "DEEPSPEED"})()

        def wait_for_everyone(self):
            pass

        def prepare_model(self, model):
            return model

    cfg = load_config(overrides={"train.method": "sft", "train.max_steps": 1, "train.prompts_per_step": 2,
                                 "train.micro_batch_size": 1, "log.progress": False})
    ex = [Example([{"role": "user", "content": "What is 12 + 7?"}], "19.")] * 2
    with pytest.raises(TrainingError, match="DeepSpeed is not supported.*FSDP2"):
        train(cfg, ex, tiny_model, tiny_tok, tmp_path / "o", accelerator=NotDDPAccelerator())
