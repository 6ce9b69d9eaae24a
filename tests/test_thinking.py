"""Thinking models (<think>...</think>): the reasoning mask, stripping reasoning before scoring, and
loss.mask_reasoning in SDFT training, on the tiny Qwen3-style family."""

from __future__ import annotations

import random

import pytest
import torch

from families import build_family, script_replies
from selfdistill import evaluate as ev
from selfdistill import losses
from selfdistill.contexts import prompt_opens_reasoning, reasoning_token_ids, render_prompt_ids
from selfdistill.data import Example
from selfdistill.tasks import Task
from selfdistill.tasks.scorers import strip_thinking

OPEN, CLOSE = 7, 8


def reasoning_by_loop(ids: list[int], inside: bool) -> list[bool]:
    """The definition, token by token: markers belong to their block; no nesting; stray closes are outside."""
    out = []
    for t in ids:
        if t == OPEN:
            inside = True
            out.append(True)
        elif t == CLOSE:
            out.append(inside)
            inside = False
        else:
            out.append(inside)
    return out


def test_reasoning_mask_equals_the_token_by_token_definition():
    rng = random.Random(0)
    rows = [[rng.choice([OPEN, CLOSE, 1, 2, 3, 4, 5]) for _ in range(12)] for _ in range(200)]
    inside = [rng.random() < 0.3 for _ in rows]
    got = losses.reasoning_mask_BT(torch.tensor(rows), OPEN, CLOSE, torch.tensor(inside))
    want = [reasoning_by_loop(r, s) for r, s in zip(rows, inside)]
    assert got.tolist() == want
    assert losses.reasoning_mask_BT(torch.tensor([[OPEN, 1, CLOSE, 2, 3]]), OPEN, CLOSE).tolist() == \
        [[True, True, True, False, False]]


def test_loss_without_reasoning_tokens_is_the_mean_over_the_answer_tokens():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 11, dtype=torch.float64), torch.randn(2, 6, 11, dtype=torch.float64)
    ids = torch.tensor([[OPEN, 1, CLOSE, 2, 3, 4], [1, 2, 3, 4, 5, 6]])
    keep = ~losses.reasoning_mask_BT(ids, OPEN, CLOSE)
    loss, m = losses.distillation_loss(s, t, torch.ones(2, 6), skip_first_tokens=1, keep_mask_BT=keep)
    per_tok = losses.per_token_divergence_BT(s, t)[0]
    want = (per_tok[0, 3:].mean() + per_tok[1, 1:].mean()) / 2  # row 0: tokens 3-5; row 1: skip 1 only
    assert loss.item() == pytest.approx(want.item(), rel=1e-12) and m["num_loss_tokens"] == 3 + 5


@pytest.mark.parametrize("text, want", [
    ("<think>\nlet me see\n</think>\n\nParis", "Paris"),
    ("reasoning the prompt opened</think>Paris", "Paris"),
    ("<think>a</think>Par<think>b</think>is", "Paris"),
    ("<think>ran out of tokens", ""),
    ("Paris", "Paris"),
])
def test_strip_thinking(text, want):
    assert strip_thinking(text) == want


def _scripted_qwen3():
    tok, model = build_family("qwen3")
    think = reasoning_token_ids(tok)
    answer = tok("Paris", add_special_tokens=False)["input_ids"]
    probe_ids = render_prompt_ids(tok, [{"role": "user", "content": "x"}])
    reply = [think[0], *tok("ok", add_special_tokens=False)["input_ids"], think[1], *answer,
             tok.convert_tokens_to_ids("<|im_end|>")]
    return tok, script_replies(model, tok, probe_ids[-1], reply), reply


def test_evaluation_scores_the_answer_without_the_reasoning_block():
    tok, model, reply = _scripted_qwen3()
    task = Task("capital", "", [], [Example([{"role": "user", "content": "Capital of France?"}], "Paris",
                                            origin="c:0")], scorer=lambda o, ex: o == "Paris", max_new_tokens=12)
    auto = ev.evaluate_task(model, tok, task)  # the Qwen3 template has <think>: stripped by default
    assert auto["correct"] == 1 and auto["items"][0]["output"] == "Paris"
    assert auto["items"][0]["raw_output"] == tok.decode(reply, skip_special_tokens=True).strip()
    assert "<think>" in auto["items"][0]["raw_output"]
    off = ev.evaluate_task(model, tok, task, strip_thinking="no")
    assert off["correct"] == 0 and off["items"][0]["output"].startswith("<think>")
    llama, _ = build_family("llama3")
    assert ev.resolve_strip_thinking(tok, None) and not ev.resolve_strip_thinking(llama, "auto")


def test_prompt_that_prefills_think_starts_inside_the_block():
    tok, _ = build_family("qwen3")
    o, c = reasoning_token_ids(tok)
    p = render_prompt_ids(tok, [{"role": "user", "content": "x"}])
    assert not prompt_opens_reasoning(p, o, c) and prompt_opens_reasoning(p + [o], o, c)
    assert ev.answer_ids(tok, p + [o], [5, 6, c, 9, 10]) == [9, 10]


def _sdft_on_scripted_qwen3(tmp_path, mask_reasoning: bool):
    from selfdistill.config import load_config
    from selfdistill.train import train

    tok, model, reply = _scripted_qwen3()
    c = load_config(overrides={"train.max_steps": 1, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
                               "rollout.max_new_tokens": 12, "loss.skip_first_tokens": 0, "optim.warmup_steps": 0,
                               "loss.mask_reasoning": mask_reasoning, "log.progress": False})
    exs = [Example([{"role": "user", "content": f"Capital {i}?"}], "Paris", origin=f"c:{i}") for i in range(2)]
    return train(c, exs, model, tok, tmp_path / str(mask_reasoning)), reply


def test_mask_reasoning_drops_the_think_block_from_the_sdft_loss(tmp_path):
    kept, reply = _sdft_on_scripted_qwen3(tmp_path, False)
    dropped, _ = _sdft_on_scripted_qwen3(tmp_path, True)
    tok, _ = build_family("qwen3")
    o, c = reasoning_token_ids(tok)
    n_answer = len(reply) - (reply.index(c) + 1)  # tokens after </think>, end of turn included
    assert kept.metrics[0]["num_loss_tokens"] == 2 * len(reply)  # 2 rollouts, every scripted token
    assert dropped.metrics[0]["num_loss_tokens"] == 2 * n_answer
    assert torch.isfinite(torch.tensor(dropped.metrics[0]["loss"]))


def test_mask_reasoning_without_think_tokens_is_a_clear_error(tmp_path):
    from selfdistill.config import load_config
    from selfdistill.train import TrainingError, train

    tok, model = build_family("llama3")
    c = load_config(overrides={"train.max_steps": 1, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
                               "loss.mask_reasoning": True, "log.progress": False})
    exs = [Example([{"role": "user", "content": "x"}], "y", origin="c:0")] * 2
    with pytest.raises(TrainingError, match="no <think> and </think> tokens"):
        train(c, exs, model, tok, tmp_path / "o")
