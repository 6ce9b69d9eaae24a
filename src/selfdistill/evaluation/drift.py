"""Drift from the base model: the paper's distance from the base policy, and the token-mean KL it is built on.

:func:`drift_kl` = mean per-token KL(base ‖ tuned) over the full vocabulary, on the base model's own greedy
completions of held-out general prompts (:data:`DRIFT_PROMPTS`), teacher-forced through both models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..contexts import render_prompt_ids
from ..engines import eval_mode, inference_model, pad_id
from ..engines import greedy_completions as greedy_ids
from ..losses import divergence_from_logprobs
from ..training.batches import completion_logits, pack
from .loglik import completion_logprobs
from .replies import model_device



# Held-out general chat prompts for drift_kl: everyday requests unrelated to any training task here.
DRIFT_PROMPTS: list[str] = [
    "Give me three tips for staying focused while studying.",
    "Write a short poem about the sea.",
    "Explain what photosynthesis is in simple terms.",
    "What are some healthy breakfast ideas?",
    "How do I politely decline a meeting invitation?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly orange cat.",
    "How does a rainbow form?",
    "Write a haiku about autumn leaves.",
    "Why is regular exercise good for you?",
    "Explain what a prime number is.",
    "Give me a simple recipe for pancakes.",
    "What should I pack for a weekend camping trip?",
    "Describe the water cycle briefly.",
    "How can I improve my handwriting?",
    "Tell me a fun fact about octopuses.",
    "What is the purpose of a thesis statement in an essay?",
    "Write a two-sentence story about a lost key.",
    "How do vaccines help the immune system?",
    "What are the primary colors?",
    "Explain gravity to a ten-year-old.",
    "List three ways to save energy at home.",
    "What makes a good friend?",
]


@torch.no_grad()
def mean_token_kl(p_model, p_prompts: list[list[int]], q_model, q_prompts: list[list[int]],
                   completions: list[list[int]], pad_id: int, batch_size: int) -> tuple[float, int]:
    """Token-mean of KL(P ‖ Q) over the completions, where P = p_model(. | p_prompt, y_<t) and
    Q = q_model(. | q_prompt, y_<t), full vocabulary. Returns (mean, number of tokens)."""
    total, count = 0.0, 0
    order = sorted(range(len(completions)), key=lambda i: -len(completions[i]))
    bs = max(1, int(batch_size))
    with eval_mode(p_model, q_model):
        for s in range(0, len(order), bs):
            idx = [i for i in order[s:s + bs] if completions[i]]
            if not idx:
                continue
            comps = [completions[i] for i in idx]
            bp = pack([p_prompts[i] for i in idx], comps, pad_id, model_device(p_model))
            bq = pack([q_prompts[i] for i in idx], comps, pad_id, model_device(q_model))
            lp = completion_logits(p_model, bp).float().log_softmax(-1)
            lq = completion_logits(q_model, bq).float().log_softmax(-1).to(lp.device)
            # divergence_from_logprobs(student, teacher, "forward_kl") = KL(teacher ‖ student): P is the "teacher".
            kl = divergence_from_logprobs(lq, lp, "forward_kl").clamp(min=0.0)
            mask = bp.completion_mask_BT.to(kl.device)
            total += float((kl * mask).sum())
            count += int(mask.sum())
    return (total / count if count else float("nan")), count


def drift_kl(base_model, tuned_model, tokenizer, prompts: Sequence[str | list[dict]] | None = None,
             max_new_tokens: int = 32, batch_size: int = 32) -> float:
    """Mean per-token KL(base ‖ tuned) over the full vocabulary on the base model's greedy completions.

    `prompts` are strings (one user turn) or chat message lists; default :data:`DRIFT_PROMPTS`. The completions
    (up to `max_new_tokens`, EOS included when produced) are teacher-forced through both models with the same
    chat-templated prompt; the KL is averaged over all completion tokens of all prompts.
    """
    return drift_from_reference(drift_reference(base_model, tokenizer, prompts, max_new_tokens, batch_size),
                                tuned_model, batch_size)


@dataclass
class DriftReference:
    """The base model's side of drift_kl, computed once: prompt ids, the base's greedy completions, and its
    log-probabilities on every completion token (per prompt ``[L, V]``, float32, on CPU)."""
    prompt_ids: list[list[int]]
    completions: list[list[int]]
    base_logprobs: list[torch.Tensor]
    pad_id: int


@torch.no_grad()
def drift_reference(base_model, tokenizer, prompts: Sequence[str | list[dict]] | None = None,
                    max_new_tokens: int = 32, batch_size: int = 32) -> DriftReference:
    prompts = DRIFT_PROMPTS if prompts is None else prompts
    msgs = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    ids = [render_prompt_ids(tokenizer, m) for m in msgs]
    pad = pad_id(tokenizer)
    with inference_model(base_model) as base:
        comps = greedy_ids(base, tokenizer, ids, max_new_tokens, batch_size)
        out = _batched_logprobs(base, ids, comps, pad, batch_size)
    return DriftReference(ids, comps, out, pad)


@torch.no_grad()
def drift_from_reference(ref: DriftReference, tuned_model, batch_size: int = 32) -> float:
    """drift_kl(base, tuned) with the base's side taken from `ref`: mean per-token KL(base ‖ tuned)."""
    with inference_model(tuned_model) as tuned_model:
        tuned = _batched_logprobs(tuned_model, ref.prompt_ids, ref.completions, ref.pad_id, batch_size)
    total, count = 0.0, 0
    for i, lq_TV in enumerate(tuned):
        if ref.completions[i]:
            kl = divergence_from_logprobs(lq_TV, ref.base_logprobs[i], "forward_kl").clamp(min=0.0)
            total += float(kl.sum())
            count += len(ref.completions[i])
    return total / count if count else float("nan")


def _batched_logprobs(model, prompt_ids: list[list[int]], completions: list[list[int]], pad: int,
                      batch_size: int) -> list[torch.Tensor]:
    """`completion_logprobs` in batches of `batch_size`, longest completions first; an empty completion gets an
    empty tensor."""
    out = [torch.empty(0) for _ in completions]
    order = sorted((i for i in range(len(completions)) if completions[i]), key=lambda i: -len(completions[i]))
    bs = max(1, int(batch_size))
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        for i, logp_TV in zip(idx, completion_logprobs(model, [prompt_ids[i] for i in idx],
                                                        [completions[i] for i in idx], pad)):
            out[i] = logp_TV
    return out
