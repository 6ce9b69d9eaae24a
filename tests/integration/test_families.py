"""The families users bring (tests/families.py): end-of-turn token from the chat template, SFT targets, rollouts
and evaluation that stop there, and 2 SDFT + 2 SFT training steps on each architecture."""

from __future__ import annotations

import math

import pytest
import torch

from families import FAMILIES, build_family, build_family_model, build_family_tokenizer
from helpers import examples
import selfdistill.evaluation as ev
from selfdistill.contexts import render_prompt_ids
from selfdistill.engines import greedy_completions, inference_model, left_pad, pad_id
from selfdistill.config import ContextConfig, DataConfig, load_config
from selfdistill.contexts import encode_examples
from selfdistill.models import ModelError, end_of_turn_ids, set_chat_special_tokens
from selfdistill.training.batches import completion_logits, pack

NAMES = sorted(FAMILIES)


def eot_id(tok, name):
    return tok.convert_tokens_to_ids(FAMILIES[name].end_of_turn)


@pytest.mark.parametrize("name", NAMES)
def test_end_of_turn_ids_reads_the_template_and_keeps_every_stop_id(name):
    fam = FAMILIES[name]
    tok = build_family_tokenizer(name)
    raw = build_family_model(name, tok)
    eot = eot_id(tok, name)
    assert end_of_turn_ids(tok)[0] == eot  # from the template alone, no model
    want = {eot, tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in fam.generation_eos}
    got = end_of_turn_ids(tok, raw)
    assert got[0] == eot and set(got) == want and len(got) == len(want)
    eos_before = tok.eos_token
    set_chat_special_tokens(tok, raw)  # what load_model does: nothing narrowed to one id
    gc_eos = raw.generation_config.eos_token_id
    assert set(gc_eos if isinstance(gc_eos, list) else [gc_eos]) == want
    assert tok.eos_token == eos_before and tok.pad_token is not None and tok.padding_side == "left"


def test_the_families_cover_a_turn_end_that_is_not_the_eos():
    for name in ("llama3", "gemma2", "phi3"):  # the cases a tokenizer.eos_token_id stop gets wrong
        tok = build_family_tokenizer(name)
        assert eot_id(tok, name) != tok.eos_token_id


@pytest.mark.parametrize("name", NAMES)
def test_sft_target_ends_with_what_the_template_writes_after_a_reply(name):
    tok, _ = build_family(name)
    exs = examples(2)
    enc, _ = encode_examples(tok, exs, DataConfig(), ContextConfig())
    for e, ex in zip(enc, exs):
        assert e.demonstration_ids[-1] == eot_id(tok, name)
        target = tok.decode(e.demonstration_ids)
        rendered = tok.apply_chat_template([*ex.prompt, {"role": "assistant", "content": ex.demonstration}],
                                           tokenize=False)
        assert target == ex.demonstration + FAMILIES[name].end_of_turn and target in rendered


def _train(name, tmp_path, method, monkeypatch, bias):
    import selfdistill.training.loop as tr

    tok, model = build_family(name, end_of_turn_bias=bias)
    seen = []
    real = tr.sdft_micro_step

    def spy(*a, **k):
        loss, m, comps = real(*a, **k)
        seen.extend(comps)
        return loss, m, comps
    monkeypatch.setattr(tr, "sdft_micro_step", spy)
    c = load_config(overrides={"train.method": method, "train.max_steps": 2, "train.prompts_per_step": 4,
                               "train.micro_batch_size": 2, "rollout.num_rollouts": 2, "rollout.max_new_tokens": 8,
                               "optim.warmup_steps": 0, "optim.lr": 1e-3, "log.progress": False})
    res = tr.train(c, examples(4), model, tok, tmp_path / f"{name}-{method}")
    return tok, res, seen


@pytest.mark.parametrize("name", NAMES)
def test_two_sdft_steps_with_rollouts_that_stop_at_the_end_of_turn(name, tmp_path, monkeypatch):
    # bias 4: the end-of-turn token has ~10% of the mass per step, so rollouts end at it after a few tokens
    tok, res, comps = _train(name, tmp_path, "sdft", monkeypatch, bias=4.0)
    eot, limit = eot_id(tok, name), 8
    stops = {eot, tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in FAMILIES[name].generation_eos}
    assert len(res.metrics) == 2 and all(math.isfinite(m["loss"]) and m["forward_kl"] > 0 for m in res.metrics)
    assert len(comps) == 16
    for c in comps:  # cut exactly at the first stop id (the end of turn, or EOS), or ran to the limit without one
        at = [i for i, t in enumerate(c) if t in stops]
        assert at == [len(c) - 1] or (not at and len(c) == limit), c
    ended = [c for c in comps if c and c[-1] == eot]
    assert ended and any(len(c) > 1 for c in ended)


@pytest.mark.parametrize("name", NAMES)
def test_two_sft_steps(name, tmp_path, monkeypatch):
    _, res, _ = _train(name, tmp_path, "sft", monkeypatch, bias=0.0)
    assert len(res.metrics) == 2 and all(math.isfinite(m["loss"]) and m["sft_nll"] > 0 for m in res.metrics)


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_stops_at_the_same_end_of_turn(name):
    tok, model = build_family(name, end_of_turn_bias=12.0)  # greedy: the end of turn is always the argmax
    prompts = [ex.prompt for ex in examples(3)]
    ids = greedy_completions(model, tok, [render_prompt_ids(tok, p) for p in prompts], max_new_tokens=6)
    assert ids == [[eot_id(tok, name)]] * 3
    assert ev.generate_greedy(model, tok, prompts, 6) == [""] * 3


@pytest.mark.parametrize("name", NAMES)
def test_multiple_choice_logliks_with_a_shared_prefix_and_cache_equal_full_sequences(name):
    """The retention suite's scoring on each architecture's cache: the common prefix run once, the cache repeated
    per prompt and per choice, equals one full forward pass per (prompt, choice)."""
    tok, model = build_family(name)
    prompts = [render_prompt_ids(tok, ex.prompt) for ex in examples(3)]
    choices = [[[5], [7, 8]], [[42, 43, 44]], [[3], [4], [9, 10]]]
    got = ev.shared_prompt_logliks(model, tok, prompts, choices, batch_size=3)
    flat_p = [p for p, cs in zip(prompts, choices) for _ in cs]
    want = ev.sequence_logliks(model, tok, flat_p, [c for cs in choices for c in cs], batch_size=8)
    assert [v for r in got for v in r] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_completion_logprobs_on_a_shared_prefix_and_cache_equal_full_sequences(name):
    """Drift's scoring on each architecture's cache: prompts' common prefix once, completions of uneven lengths
    right-padded on top of the cache, equal to one packed full forward pass."""
    tok, model = build_family(name)
    prompts = [render_prompt_ids(tok, ex.prompt) for ex in examples(3)]
    comps = [[5, 6, 7, 8], [42], [3, 9]]
    got = ev.completion_logprobs(model, prompts, comps, pad_id(tok))
    with torch.no_grad():
        want = completion_logits(model, pack(prompts, comps, pad_id(tok), "cpu")).float().log_softmax(-1)
    assert [g.shape[0] for g in got] == [4, 1, 2]
    for b, g in enumerate(got):
        torch.testing.assert_close(g, want[b, :len(comps[b])], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_the_packed_evaluation_copy_gives_the_same_logits_and_greedy_tokens(name, monkeypatch):
    """Evaluation on CPU runs a copy whose linear layers are oneDNN's (engines.packed_copy) where oneDNN is the
    faster (here: told so): the same numbers up to float32 rounding and the same greedy tokens on every
    architecture; bf16 weights get no copy."""
    from selfdistill.engines import hf
    monkeypatch.setattr(hf, "onednn_linear_faster", lambda shapes, rows=16: True)
    tok, model = build_family(name)
    prompts = [render_prompt_ids(tok, ex.prompt) for ex in examples(3)]
    with inference_model(model) as packed:
        assert packed is not model and any(isinstance(m, torch.utils.mkldnn.MkldnnLinear) for m in packed.modules())
        ids_BL, att_BL = left_pad(prompts, pad_id(tok))
        with torch.no_grad():
            want, got = model(input_ids=ids_BL, attention_mask=att_BL).logits, packed(
                input_ids=ids_BL, attention_mask=att_BL).logits
        torch.testing.assert_close(got[att_BL.bool()], want[att_BL.bool()], atol=1e-5, rtol=1e-5)
        assert greedy_completions(packed, tok, prompts, 8) == greedy_completions(model, tok, prompts, 8)
        with inference_model(packed) as again:
            assert again is packed  # packed once
    with inference_model(model.to(torch.bfloat16)) as same:
        assert same is model


@pytest.mark.parametrize("name", NAMES)
def test_grouped_query_attention_without_repeated_heads_is_bitwise_the_same(name, monkeypatch):
    """`selfdistill_sdpa` (attention.py) skips transformers' `repeat_kv` copy on CPU without autograd and gives
    the same logits bit for bit, the same greedy tokens and the same sampled tokens and log-probs; a forward that
    records gradients runs transformers' own code (same logits and gradients, heads repeated)."""
    import copy
    from transformers.integrations import sdpa_attention
    from selfdistill.attention import use_grouped_query_sdpa
    from selfdistill.engines import HFEngine, SamplingSpec, greedy_spec, prompt_seeds
    repeats = []
    real_repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda x, n: repeats.append(n) or real_repeat(x, n))
    tok, stock = build_family(name)
    grouped = copy.deepcopy(stock)
    assert use_grouped_query_sdpa(grouped) and grouped.config._attn_implementation == "selfdistill_sdpa"
    assert not use_grouped_query_sdpa(grouped)  # only a model on transformers' sdpa is switched
    prompts = [render_prompt_ids(tok, ex.prompt) for ex in examples(3)]
    ids_BL, att_BL = left_pad(prompts, pad_id(tok))
    with torch.no_grad():
        want = stock(input_ids=ids_BL, attention_mask=att_BL).logits
        assert repeats
        repeats.clear()
        got = grouped(input_ids=ids_BL, attention_mask=att_BL).logits
        assert not repeats
    assert torch.equal(got[att_BL.bool()], want[att_BL.bool()])
    stop = tuple(end_of_turn_ids(tok, stock))
    sampled = SamplingSpec(max_new_tokens=10, stop_ids=stop, temperature=1.0, top_p=1.0)
    runs = {}
    for key, model in (("stock", stock), ("grouped", grouped)):
        engine = HFEngine(model, pad_id(tok))
        runs[key] = ([c.ids for c in engine.generate(prompts, greedy_spec(10, stop))],
                     [(c.ids, c.logprobs) for c in engine.generate(prompts, sampled, seeds=prompt_seeds(0, 3),
                                                                   want_logprobs=True)])
    assert runs["grouped"] == runs["stock"]
    losses = {}
    for key, model in (("stock", stock), ("grouped", grouped)):
        repeats.clear()
        logits = model(input_ids=ids_BL, attention_mask=att_BL).logits
        logits[att_BL.bool()].logsumexp(-1).sum().backward()
        losses[key] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
        assert repeats, key  # with autograd the heads are repeated, as transformers does it
    assert torch.equal(losses["grouped"][0], losses["stock"][0])
    assert all(torch.equal(a, b) for a, b in zip(losses["grouped"][1], losses["stock"][1]))


@pytest.mark.parametrize("name", NAMES)
def test_the_decode_loop_equals_transformers_generate_and_drops_finished_rows(name):
    """Greedy ids of the hf engine's own loop = transformers' `generate` on each architecture (left padding, the
    family's cache), with the prompts' common prefix run once (`prefill`), while rows that reached a stop id leave
    the batch (fewer rows per forward)."""
    import torch
    from selfdistill.engines import HFEngine, common_prefix_len, greedy_spec, left_pad, pad_id
    tok, model = build_family(name)
    prompts = [render_prompt_ids(tok, ex.prompt) for ex in examples(4)]
    engine = HFEngine(model, pad_id(tok))
    free = [c.ids for c in engine.generate(prompts, greedy_spec(12, ()))]
    stop = (*end_of_turn_ids(tok, model), free[0][3])  # row 0 stops at its 4th token; the others may go on
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        got = [c.ids for c in engine.generate(prompts, greedy_spec(12, stop))]
    finally:
        hook.remove()
    ids_BL, att_BL = left_pad(prompts, pad_id(tok))
    with torch.no_grad():
        out = model.generate(input_ids=ids_BL, attention_mask=att_BL, do_sample=False, max_new_tokens=12,
                             eos_token_id=list(stop), pad_token_id=pad_id(tok))
    want = [row[:next((i + 1 for i, t in enumerate(row) if t in stop), len(row))]
            for row in out[:, ids_BL.shape[1]:].tolist()]
    assert got == want
    assert len(got[0]) <= 4 and len({len(c) for c in got}) > 1, got  # rows finish at different steps
    assert common_prefix_len(prompts) > 0 and rows[:2] == [1, 4]  # the template's common prefix once, the rests
    assert sum(rows[2:]) == sum(len(c) - 1 for c in got)  # then each row only while it decodes


def test_no_chat_template_is_a_clear_error():
    tok = build_family_tokenizer("llama3")
    tok.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        end_of_turn_ids(tok)


def test_template_without_a_special_turn_end_is_a_clear_error():
    tok = build_family_tokenizer("llama3")
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(ModelError, match="ends an assistant reply with .*not a special token"):
        end_of_turn_ids(tok)


def test_cli_names_the_model_folder_when_its_template_has_no_turn_end(tmp_path, capsys):
    from selfdistill.cli import main

    tok = build_family_tokenizer("llama3")
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    build_family_model("llama3", tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "What is 2 + 7?", "demonstration": "9"}\n' * 2)
    capsys.readouterr()  # the save's progress bars
    assert main(["train", "--model", str(tmp_path / "m"), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--max-steps", "1"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # not transformers' loading bars
    assert len(err) == 1 and str(tmp_path / "m") in err[0] and "not a special token" in err[0]
