"""Packed batches: prompts and completions in one tensor layout, shared by training and evaluation.

Layout of a packed batch (rollouts and scoring share it, so positions line up exactly):
    [left padding | prompt ids | completion ids | right padding]
All prompts end at the same column P, so completion token t sits at column P + t for every row and is predicted
by the logits at column P + t - 1. Position ids come from the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    position_ids_BL: torch.Tensor
    completion_ids_BT: torch.Tensor
    completion_mask_BT: torch.Tensor  # 1 on real completion tokens (up to and including EOS)


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device) -> Packed:
    P = max(len(p) for p in prompts)
    T = max(1, max(len(c) for c in completions))
    B = len(prompts)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + T), dtype=torch.long)
    cmask = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        ids[b, P - len(p):P] = torch.tensor(p)
        att[b, P - len(p):P] = 1
        if c:
            ids[b, P:P + len(c)] = torch.tensor(c)
            att[b, P:P + len(c)] = 1
            cmask[b, :len(c)] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    return Packed(ids.to(device), att.to(device), pos.to(device), ids[:, P:].to(device), cmask.to(device))


def completion_logits(model, batch: Packed) -> torch.Tensor:
    """Logits predicting each completion token: [B, T, V], contiguous (only those positions go through lm_head:
    transformers' `logits_to_keep` as indices; slicing T + 1 kept positions left a view that the loss copied)."""
    L, T = batch.input_ids_BL.shape[1], batch.completion_ids_BT.shape[1]
    keep_T = torch.arange(L - T - 1, L - 1, device=batch.input_ids_BL.device)
    out = model(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL,
                position_ids=batch.position_ids_BL, use_cache=False, logits_to_keep=keep_T)
    return out.logits
