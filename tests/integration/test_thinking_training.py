"""Thinking models in training: loss.mask_reasoning drops the <think> block from the SDFT loss (tiny Qwen3-style
family scripted to reason then answer), and is a clear error for a template without think tokens."""

from __future__ import annotations

import pytest
import torch

from families import build_family, scripted_qwen3
from selfdistill.contexts import reasoning_token_ids
from selfdistill.data import Example


def _sdft_on_scripted_qwen3(tmp_path, mask_reasoning: bool):
    from selfdistill.config import load_config
    from selfdistill.training import train

    tok, model, reply = scripted_qwen3()
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
    from selfdistill.training import TrainingError, train

    tok, model = build_family("llama3")
    c = load_config(overrides={"train.max_steps": 1, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
                               "loss.mask_reasoning": True, "log.progress": False})
    exs = [Example([{"role": "user", "content": "x"}], "y", origin="c:0")] * 2
    with pytest.raises(TrainingError, match="no <think> and </think> tokens"):
        train(c, exs, model, tok, tmp_path / "o")
