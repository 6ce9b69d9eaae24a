"""Greedy replies as text: every greedy decode goes through selfdistill.engines (one engine interface for all
callers); replies are decoded without special tokens and, for scoring, without their reasoning blocks."""

from __future__ import annotations

import torch

from ..contexts import prompt_opens_reasoning, reasoning_token_ids, render_prompt_ids, template_has_reasoning
from ..engines import greedy_completions as greedy_ids
from ..losses import reasoning_mask_BT
from ..tasks.scorers import strip_thinking as strip_text


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def decode_completion(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def answer_ids(tokenizer, prompt_ids: list[int], ids: list[int]) -> list[int]:
    """Completion ids without reasoning blocks (<think> ... </think>, losses.reasoning_mask_BT, the same rule as
    loss.mask_reasoning); unchanged when the vocabulary has no such tokens."""
    think = reasoning_token_ids(tokenizer)
    if think is None or not ids:
        return list(ids)
    inside_B = torch.tensor([prompt_opens_reasoning(prompt_ids, *think)])
    reasoning_T = reasoning_mask_BT(torch.tensor([ids]), *think, inside_B)[0].tolist()
    return [t for t, r in zip(ids, reasoning_T) if not r]


def scored_text(tokenizer, prompt_ids: list[int], ids: list[int], strip_thinking: bool) -> str:
    """The text a scorer reads: the decoded reply, its reasoning blocks removed when `strip_thinking`."""
    if not strip_thinking:
        return decode_completion(tokenizer, ids)
    return strip_text(decode_completion(tokenizer, answer_ids(tokenizer, prompt_ids, ids)))


def resolve_strip_thinking(tokenizer, strip_thinking: bool | str | None) -> bool:
    """None / "auto": on when the chat template writes <think> blocks; "yes"/"no" or a bool force it."""
    if strip_thinking in (None, "auto"):
        return template_has_reasoning(tokenizer)
    return strip_thinking in (True, "yes")


def generate_greedy(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                    batch_size: int = 16, engine=None) -> list[str]:
    """Greedy replies to chat prompts (lists of messages), in input order, decoded without special tokens."""
    ids = [render_prompt_ids(tokenizer, p) for p in prompts]
    comps = greedy_ids(model, tokenizer, ids, max_new_tokens, batch_size, engine=engine)
    return [decode_completion(tokenizer, c) for c in comps]
