"""Log-likelihoods of given replies: choices of multiple-choice items, and any (prompt, completion) pairs.

**Convention used everywhere here, the retention suite included:** the SUMMED log-probability of the choice's
tokens right after the chat-templated prompt (lm-eval's `acc` convention), i.e. ``log p(reply starts with
choice)``, unnormalised. Exception (``include_eos=None``, the default): when one choice of an item is a prefix of
another ("Washington" / "Washington, D.C."), a prefix would always out-score its extension, so for that item every
choice is scored as a complete reply, choice tokens + end-of-turn token (``log p(reply == choice)``). The shipped
retention items have no such prefixes. On the 120 retention items SmolLM2-135M-Instruct gets 77 right with this
rule, 67 when every choice is scored as a complete reply, 60-64 with per-token normalisation. ``normalize=True``
gives the per-token mean, ``include_eos=True/False`` forces either form.

Log-likelihoods reuse :func:`selfdistill.training.batches.pack` / `completion_logits`, so they are computed on
exactly the packed layout used in training. Log-softmax is taken in float32.
"""

from __future__ import annotations

import copy
import sys
from typing import Sequence

import torch
from tqdm import tqdm

from ..contexts import render_prompt_ids
from ..engines import cache_key, eval_mode, pad_id, prefill
from ..models import template_end_of_turn_id
from ..training.batches import completion_logits, pack
from .replies import model_device


def choice_ids(tokenizer, choice: str, include_eos: bool = False) -> list[int]:
    """The choice's tokens, + the chat template's end-of-turn token when scored as a complete reply."""
    ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
    return ids + [template_end_of_turn_id(tokenizer)] if include_eos else ids


@torch.no_grad()
def sequence_logliks(model, tokenizer, prompt_ids: list[list[int]], completions: list[list[int]],
                     batch_size: int = 16, normalize: bool = False) -> list[float]:
    """Sum (or, with normalize, mean) of log p(completion token | prompt, earlier tokens) for each pair."""
    n = len(prompt_ids)
    if n != len(completions):
        raise ValueError(f"{n} prompts for {len(completions)} completions")
    device = model_device(model)
    pad = pad_id(tokenizer)
    order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(completions[i])))
    out = [0.0] * n
    bs = max(1, int(batch_size))
    with eval_mode(model), torch.inference_mode():
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            batch = pack([prompt_ids[i] for i in idx], [completions[i] for i in idx], pad, device)
            logp = completion_logits(model, batch).float().log_softmax(-1)
            tok = logp.gather(-1, batch.completion_ids_BT.unsqueeze(-1)).squeeze(-1)
            mask = batch.completion_mask_BT
            sums = (tok * mask).sum(-1)
            counts = mask.sum(-1)
            for r, i in enumerate(idx):
                v = float(sums[r])
                if normalize:
                    v = v / max(float(counts[r]), 1.0)
                out[i] = v
    return out


def _has_prefix_pair(choices: Sequence[str]) -> bool:
    return any(a != b and b.startswith(a) for a in choices for b in choices)


def choice_logliks(model, tokenizer, prompts: list[list[dict]], choices_list: list[list[str]],
                   batch_size: int = 16, *, normalize: bool = False,
                   include_eos: bool | None = None, progress: str | None = None) -> list[list[float]]:
    """Log-likelihood of each choice as the assistant's reply to its prompt (prompt ids + choice ids).

    Default (used by evaluate_task, so by the retention suite): the summed log-probs of the choice's tokens.
    ``include_eos=None`` appends the end-of-turn token to every choice of an item only when one of its choices is
    a prefix of another (then each choice is scored as the complete reply); True/False force it on/off.
    ``normalize=True``: per-token mean (over the scored tokens, EOS included when appended) instead of the sum.
    ``progress``: a label for a progress bar of items done, on stderr.
    """
    if len(prompts) != len(choices_list):
        raise ValueError(f"{len(prompts)} prompts for {len(choices_list)} choice lists")
    prompt_ids = [render_prompt_ids(tokenizer, msgs) for msgs in prompts]
    choice_tokens = []
    for choices in choices_list:
        eos = _has_prefix_pair(choices) if include_eos is None else bool(include_eos)
        choice_tokens.append([choice_ids(tokenizer, c, eos) for c in choices])
    out = shared_prompt_logliks(model, tokenizer, prompt_ids, choice_tokens, batch_size, progress)
    if normalize:
        out = [[v / max(len(c), 1) for v, c in zip(row, cs)] for row, cs in zip(out, choice_tokens)]
    return out


def shared_prompt_logliks(model, tokenizer, prompt_ids: list[list[int]], choices: list[list[list[int]]],
                          batch_size: int = 16, progress: str | None = None) -> list[list[float]]:
    """Summed log p(choice tokens | prompt) for several choices per prompt, the prompt run once per item.

    Equal to :func:`sequence_logliks` on every (prompt, choice) pair (tested), about #choices times cheaper: the
    prompts of `batch_size` items (longest first) go through the model once (KV cache kept) and the choices'
    later tokens are run on top of their prompt's cache (`_choice_sums`). The prompts' common prefix (a chat
    template's system prompt) is run once per batch (`_prompt_pass`).
    """
    if len(prompt_ids) != len(choices):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(choices)} choice lists")
    if any(len(c) == 0 for cs in choices for c in cs):
        raise ValueError("every choice needs at least one token")
    device = model_device(model)
    pad = pad_id(tokenizer)
    out: list[list[float]] = [[] for _ in prompt_ids]
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # less padding per batch
    bs, key = max(1, int(batch_size)), cache_key(model)
    with eval_mode(model), torch.inference_mode(), tqdm(total=len(prompt_ids), desc=progress, unit="item",
                                                        file=sys.stderr, disable=progress is None) as bar:
        for s in range(0, len(order), bs):
            items = order[s:s + bs]
            first_logp_BV, cache, att_BL = _prompt_pass(model, [prompt_ids[i] for i in items], pad, device, key)
            row_C = [r for r, i in enumerate(items) for _ in choices[i]]
            sums_C = _choice_sums(model, key, first_logp_BV, cache, att_BL, row_C,
                                  [c for i in items for c in choices[i]])
            k = 0
            for i in items:
                out[i] = sums_C[k:k + len(choices[i])]
                k += len(choices[i])
            bar.update(len(items))
    return out


def _choice_sums(model, key: str, first_logp_BV: torch.Tensor, cache, att_BL: torch.Tensor, row_C: list[int],
                 comps: list[list[int]]) -> list[float]:
    """Summed log-probs of each choice (`comps[c]`, the choice of prompt row `row_C[c]`): its first token from the
    prompt pass, its later tokens from one forward pass per choice length over a copy of the prompt cache, rows
    repeated per choice. Grouping by length runs no padding (most choices are one or two tokens long)."""
    device = first_logp_BV.device
    first_C = torch.tensor([c[0] for c in comps], device=device)
    sums = first_logp_BV[torch.tensor(row_C, device=device), first_C].tolist()
    lengths = sorted({len(c) for c in comps if len(c) > 1})
    for n, T in enumerate(lengths):
        group = [k for k, c in enumerate(comps) if len(c) == T]
        idx_G = torch.tensor([row_C[k] for k in group], device=device)
        cache_G = cache if n == len(lengths) - 1 else copy.deepcopy(cache)  # the last group may use it up
        cache_G.batch_select_indices(idx_G)  # one copy of its prompt's cache per choice
        ids_GT = torch.tensor([comps[k] for k in group], device=device)
        logits_GTV = _continue_logits(model, key, cache_G, att_BL[idx_G], ids_GT[:, :-1])
        tok_GT = logits_GTV.gather(-1, ids_GT[:, 1:, None]).squeeze(-1) - logits_GTV.logsumexp(-1)
        for k, v in zip(group, tok_GT.sum(-1).tolist()):
            sums[k] += v
    return sums


@torch.no_grad()
def completion_logprobs(model, prompt_ids: list[list[int]], completions: list[list[int]], pad: int
                        ) -> list[torch.Tensor]:
    """Each pair's full next-token log-softmax at every completion position, ``[len(completion), V]`` float32 on
    CPU: the same numbers as `completion_logits` on the packed pairs (tested), with the prompts' common prefix
    run once (`_prompt_pass`) and the completions run on top of the prompts' cache, right-padded (a padded
    position comes after every real one, so it changes none)."""
    device, key = model_device(model), cache_key(model)
    with eval_mode(model), torch.inference_mode():
        first_logp_BV, cache, att_BL = _prompt_pass(model, prompt_ids, pad, device, key)
        T = max(len(c) for c in completions)
        logp_BTV = first_logp_BV[:, None]
        if T > 1:
            ids_BT = torch.full((len(completions), T - 1), pad, dtype=torch.long)
            for b, c in enumerate(completions):
                ids_BT[b, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            rest_BTV = _continue_logits(model, key, cache, att_BL, ids_BT.to(device))
            logp_BTV = torch.cat([logp_BTV, rest_BTV.log_softmax(-1)], 1)
        logp_BTV = logp_BTV.cpu()
    return [logp_BTV[b, :len(c)].clone() for b, c in enumerate(completions)]


def _continue_logits(model, key: str, cache, att_BL: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    """Float32 logits of `ids_BT` run on top of a prompt cache built with attention mask `att_BL`: every row's
    positions continue from its own prompt length (left padding skipped)."""
    T = ids_BT.shape[1]
    att_BL_T = torch.cat([att_BL, att_BL.new_ones((len(ids_BT), T))], 1)
    pos_BT = att_BL.sum(-1, keepdim=True) + torch.arange(T, device=att_BL.device)
    return model(input_ids=ids_BT, attention_mask=att_BL_T, position_ids=pos_BT, use_cache=True,
                 **{key: cache}).logits.float()


def _prompt_pass(model, prompts: list[list[int]], pad: int, device, key: str):
    """`engines.prefill` (the prompts' common prefix once, then their rests) with each prompt's next-token
    log-softmax in float32: ([B, V], the cache, the [B, L] attention mask it was built with)."""
    logits_BV, cache, att_BL = prefill(model, prompts, pad, device, key)
    return logits_BV.float().log_softmax(-1), cache, att_BL
