"""The one generation module: plain sampling from our settings, stop ids, log-probs, abort and progress hooks."""

from __future__ import annotations

import pytest
import torch

from helpers import build_tiny_model
from selfdistill.contexts import render_prompt_ids
from selfdistill.engines import (GenerationAborted, HFEngine, SamplingSpec, cut_at_stop, greedy_spec,
                                    ignored_generation_settings, prompt_seeds)
from selfdistill.engines.hf import InPlaceLayer, RowSampler, cache_key, prefill
from selfdistill.training.batches import completion_logits, pack


def prompts(tok, n=4):
    return [render_prompt_ids(tok, [{"role": "user", "content": f"What is {i} + 7?" + " Hi" * i}]) for i in range(n)]


def sample(model, tok, spec, seed=0, **kw):
    return HFEngine(model, tok.pad_token_id).generate(prompts(tok), spec, seeds=prompt_seeds(seed, 4), **kw)


def test_checkpoint_generation_config_is_ignored_and_named(tiny_tok, capsys):
    """A shipped repetition_penalty / top_k / min_p changes nothing: the same samples as a plain config."""
    spec = SamplingSpec(max_new_tokens=12, stop_ids=(tiny_tok.eos_token_id,))
    plain = build_tiny_model(tiny_tok)
    shipped = build_tiny_model(tiny_tok)
    shipped.generation_config.repetition_penalty = 5.0
    shipped.generation_config.top_k = 2
    shipped.generation_config.min_p = 0.5
    shipped.generation_config.do_sample = False
    assert ignored_generation_settings(shipped) == {"repetition_penalty": 5.0, "top_k": 2, "min_p": 0.5,
                                                    "do_sample": False}
    a, b = sample(plain, tiny_tok, spec), sample(shipped, tiny_tok, spec)
    assert [c.ids for c in a] == [c.ids for c in b]
    assert "ignoring the checkpoint's generation_config (do_sample=False, top_k=2, min_p=0.5, " \
           "repetition_penalty=5.0)" in capsys.readouterr().err
    assert shipped.generation_config.repetition_penalty == 5.0  # restored after the call
    # and the setting would have mattered: transformers applies it when it is passed explicitly
    with torch.no_grad():
        ids = torch.tensor([prompts(tiny_tok)[0]])
        torch.manual_seed(0)
        rp = shipped.generate(ids, max_new_tokens=12, do_sample=True, top_k=2, repetition_penalty=5.0,
                              pad_token_id=tiny_tok.pad_token_id)[0, ids.shape[1]:].tolist()
    assert rp != a[0].ids[:len(rp)]


def test_stops_at_every_stop_id_and_cuts_after_it(tiny_tok):
    model = build_tiny_model(tiny_tok)
    free = sample(model, tiny_tok, greedy_spec(16, (tiny_tok.eos_token_id,)))
    # make the 4th greedy token of row 0 a stop id too: generation stops there for that row, others go on
    extra = free[0].ids[3]
    if extra == tiny_tok.eos_token_id:
        pytest.fail("tiny model emitted EOS at token 4; pick another prompt")
    both = sample(model, tiny_tok, greedy_spec(16, (tiny_tok.eos_token_id, extra)))
    assert both[0].ids == cut_at_stop(free[0].ids, {extra}) and both[0].ids[-1] == extra
    for f, b in zip(free, both):
        assert b.ids == cut_at_stop(f.ids, {tiny_tok.eos_token_id, extra})


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.3, 0.8)])
def test_sampler_logprobs_are_the_sampled_distribution(tiny_tok, temperature, top_p):
    """Log-prob of each sampled token = log_softmax(logits / T) restricted to the top-p set, recomputed by
    teacher forcing on the trainer's packed layout."""
    model = build_tiny_model(tiny_tok)
    spec = SamplingSpec(max_new_tokens=10, stop_ids=(tiny_tok.eos_token_id,), temperature=temperature, top_p=top_p)
    out = sample(model, tiny_tok, spec, want_logprobs=True)
    batch = pack(prompts(tiny_tok), [c.ids for c in out], tiny_tok.pad_token_id, "cpu")
    with torch.no_grad():
        logp_BTV = (completion_logits(model, batch) / temperature).float().log_softmax(-1)
    for b, c in enumerate(out):
        for t, tok in enumerate(c.ids):
            lp = logp_BTV[b, t]
            if top_p < 1.0:  # renormalised over the smallest set reaching top_p (the sampled token is in it)
                p_sorted, idx = lp.exp().sort(descending=True)
                keep = idx[(p_sorted.cumsum(0) - p_sorted) < top_p]
                want = lp[tok] - torch.logsumexp(lp[keep], 0)
            else:
                want = lp[tok]
            assert abs(c.logprobs[t] - float(want)) < 1e-4, (b, t)


def test_should_stop_aborts_within_one_decode_step_and_progress_counts_tokens(tiny_tok):
    model = build_tiny_model(tiny_tok)
    spec = SamplingSpec(max_new_tokens=40, stop_ids=(tiny_tok.eos_token_id,))
    counted = []
    full = sample(model, tiny_tok, spec, on_tokens=counted.append)
    assert sum(counted) == sum(len(c.ids) for c in full)  # tokens of unfinished rows, stop ids included
    calls = []

    def stop_after_5():
        calls.append(1)
        return len(calls) >= 5
    with pytest.raises(GenerationAborted):
        sample(model, tiny_tok, spec, should_stop=stop_after_5)
    assert len(calls) == 5  # polled once per decode step; aborted at the first true


def test_rollouts_are_sampled_in_eval_mode(tiny_tok):
    model = build_tiny_model(tiny_tok)
    model.train()
    modes = []
    model.model.layers[0].register_forward_pre_hook(lambda m, a: modes.append(m.training))
    sample(model, tiny_tok, SamplingSpec(max_new_tokens=3, stop_ids=(tiny_tok.eos_token_id,)))
    assert modes and not any(modes)
    assert model.training  # restored


def test_batched_evaluation_order_matches_one_by_one(tiny_tok):
    model = build_tiny_model(tiny_tok)
    ps = prompts(tiny_tok, 5)
    spec = greedy_spec(9, (tiny_tok.eos_token_id,))
    batched = HFEngine(model, tiny_tok.pad_token_id, batch_size=2).generate(ps, spec)
    single = [HFEngine(model, tiny_tok.pad_token_id).generate([p], spec)[0] for p in ps]
    assert [c.ids for c in batched] == [c.ids for c in single]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.7)])
def test_row_sampler_draws_from_the_tempered_restricted_distribution(temperature, top_k, top_p):
    """4000 rows with the same logits, one seed each: the empirical frequencies match softmax(logits / T) on the
    top-k / top-p set (renormalised), and each row's log-prob is that distribution's log-prob of its token."""
    logits_V = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    n = 4000
    spec = SamplingSpec(max_new_tokens=1, stop_ids=(0,), temperature=temperature, top_k=top_k, top_p=top_p)
    sampler = RowSampler(spec, prompt_seeds(3, n), torch.device("cpu"))
    tok_N, lp_N = sampler.sample(logits_V.repeat(n, 1), list(range(n)))
    want_V = (logits_V / temperature).softmax(-1)
    keep_V = torch.ones_like(want_V, dtype=torch.bool)
    if top_k:
        keep_V &= want_V >= want_V.topk(top_k).values[-1]
    if top_p < 1:
        p_sorted, idx = want_V.sort(descending=True)
        keep_V &= torch.zeros_like(keep_V).scatter(0, idx[(p_sorted.cumsum(0) - p_sorted) < top_p], True)
    want_V = torch.where(keep_V, want_V, 0.0) / want_V[keep_V].sum()
    freq_V = torch.bincount(tok_N, minlength=len(logits_V)).float() / n
    assert (freq_V - want_V).abs().max() < 0.03, (freq_V, want_V)
    assert torch.allclose(lp_N, want_V.log()[tok_N], atol=1e-5)


def test_a_prompts_sample_depends_on_its_seed_not_its_batch(tiny_tok):
    """Per-prompt seeds: sampling 4 prompts in one call or as 2 + 2 (other padding, other batch) gives the same
    completions; the same seeds reproduce them, other seeds do not."""
    model = build_tiny_model(tiny_tok)
    spec = SamplingSpec(max_new_tokens=12, stop_ids=(tiny_tok.eos_token_id,))
    engine, ps = HFEngine(model, tiny_tok.pad_token_id), prompts(tiny_tok)
    whole = engine.generate(ps, spec, seeds=prompt_seeds(7, 4))
    torch.manual_seed(123)  # the global generator plays no part
    halves = engine.generate(ps[:2], spec, seeds=prompt_seeds(7, 2)) + \
        engine.generate(ps[2:], spec, seeds=prompt_seeds(7, 2, start=2))
    assert [c.ids for c in whole] == [c.ids for c in halves]
    assert [c.ids for c in whole] != [c.ids for c in engine.generate(ps, spec, seeds=prompt_seeds(8, 4))]
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate(ps, spec)


def test_rollout_dtype_copy_samples_like_the_model_cast_and_follows_every_sync(tiny_tok):
    """rollout.dtype=bfloat16 on the hf engine: a bf16 copy of the parameters (buffers kept float32) samples
    exactly what the model cast to bf16 samples, with log-probs under that copy; after the live weights change,
    sync_weights refreshes the copy in place; the live module is never cast."""
    from selfdistill.engines import weights_copy
    model = build_tiny_model(tiny_tok)
    spec = SamplingSpec(max_new_tokens=10, stop_ids=(tiny_tok.eos_token_id,))
    engine = HFEngine(model, tiny_tok.pad_token_id, dtype="bfloat16")
    copy = engine.copy
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in copy.buffers() if b.is_floating_point()} <= {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = build_tiny_model(tiny_tok)
    reference.load_state_dict(model.state_dict())
    for p in reference.parameters():
        p.data = p.data.to(torch.bfloat16)
    seeds = prompt_seeds(3, 4)
    got = engine.generate(prompts(tiny_tok), spec, seeds=seeds, want_logprobs=True)
    want = HFEngine(reference, tiny_tok.pad_token_id).generate(prompts(tiny_tok), spec, seeds=seeds,
                                                              want_logprobs=True)
    assert [c.ids for c in got] == [c.ids for c in want]
    assert [c.logprobs for c in got] == [c.logprobs for c in want]
    with torch.no_grad():  # an optimizer step on the live weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights(model)
    assert engine.copy is copy  # refreshed in place, not rebuilt
    for d, s in zip(copy.parameters(), model.parameters()):
        assert torch.equal(d, s.to(torch.bfloat16))
    assert weights_copy(copy, torch.bfloat16) is None  # already in that dtype: the engine uses the live module
    assert HFEngine(model, tiny_tok.pad_token_id, dtype="float32").copy is None


def test_in_place_cache_layer_holds_what_transformers_dynamic_layer_holds():
    """`InPlaceLayer` against transformers' `DynamicLayer` fed the same keys and values: equal contents after
    every update (one token or several at a time, past its room so that it grows) and after rows leave; its
    tensors are views of one buffer that only grows when full."""
    from transformers.cache_utils import DynamicLayer
    g = torch.Generator().manual_seed(0)
    kv = lambda b, t: (torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 3, generator=g))  # noqa: E731
    stock = DynamicLayer()
    stock.update(*kv(5, 6))
    ours = InPlaceLayer(stock, room=3)
    stock.update(*(init := kv(5, 1)))  # the layer copied is not the one updated: feed both from here on
    ours.update(*init)
    bufs = set()
    for b, t in [(5, 1), (5, 2), (5, 1), (3, 1), (3, 4), (3, 1)]:
        if b < stock.keys.shape[0]:
            idx = torch.tensor([0, 2, 4])
            stock.batch_select_indices(idx)
            ours.batch_select_indices(idx)
        new = kv(b, t)
        got, want = ours.update(*new), stock.update(*new)
        assert all(torch.equal(x, y) for x, y in zip(got, want))
        assert torch.equal(ours.keys, stock.keys) and ours.get_seq_length() == stock.get_seq_length()
        assert ours.keys.untyped_storage().data_ptr() == ours.key_buf.untyped_storage().data_ptr()
        bufs.add(ours.key_buf.untyped_storage().data_ptr())
    assert 1 < len(bufs) < 6  # it grew (room 3, 11 tokens more) and rows left, but not at every step


def test_decoding_with_in_place_cache_equals_transformers_dynamic_cache(tiny_tok, monkeypatch):
    """The decoding loop's in-place cache changes nothing: the same sampled ids and log-probs, bit for bit, as with
    transformers' own dynamic cache, with rows that stop early and a budget past the cache's first room."""
    from selfdistill.engines import hf
    model = build_tiny_model(tiny_tok)
    free = [c.ids for c in sample(model, tiny_tok, SamplingSpec(max_new_tokens=300, stop_ids=()), seed=3)]
    stop = next(t for t in free[0][:20] if any(t not in row[:270] for row in free[1:]))  # ends row 0 early only
    spec = SamplingSpec(max_new_tokens=300, stop_ids=(stop,))
    runs = {}
    for name in ("in_place", "stock"):
        if name == "stock":
            monkeypatch.setattr(hf, "grow_in_place", lambda cache, room: None)
        runs[name] = [(c.ids, c.logprobs) for c in sample(model, tiny_tok, spec, seed=3)]
    lengths = [len(ids) for ids, _ in runs["stock"]]
    assert runs["in_place"] == runs["stock"]
    assert max(lengths) > 257 and min(lengths) < 300, lengths  # grown past 256 slots; a row stopped early


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_lm_head_gets_one_contiguous_position_per_row_in_every_decoding_forward(tiny_tok, dtype):
    """The prefill (shared prefix and each prompt's rest) and every decode step hand the LM head one position per
    row as a contiguous tensor: a strided slice of the hidden states makes torch's CPU matmul run bf16 as a batched
    product over a copy of the head's weight per row (480 ms a call for SmolLM2 at 8 rows). The first token's
    logits are the full forward's last-position logits."""
    model = build_tiny_model(tiny_tok).to(dtype)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: seen.append((tuple(args[0].shape[1:2]), args[0].is_contiguous())))
    ps = prompts(tiny_tok)
    sample(model, tiny_tok, SamplingSpec(max_new_tokens=3, stop_ids=()))
    assert len(seen) == 2 + 2 and set(seen) == {((1,), True)}, seen  # prefix, rest, 2 decode steps
    logits_BV, _, _ = prefill(model, ps, tiny_tok.pad_token_id, torch.device("cpu"), cache_key(model))
    for b, p in enumerate(ps):
        with torch.no_grad():
            want_V = model(input_ids=torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(logits_BV[b], want_V, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
