"""Thinking models (<think>...</think>): the reasoning mask, the loss without reasoning tokens, and stripping
reasoning before scoring, on the tiny Qwen3-style family (training with loss.mask_reasoning:
tests/integration/test_thinking_training.py)."""

from __future__ import annotations

import random

import pytest
import torch

from families import build_family, scripted_qwen3
import selfdistill.evaluation as ev
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


def test_evaluation_scores_the_answer_without_the_reasoning_block():
    tok, model, reply = scripted_qwen3()
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
