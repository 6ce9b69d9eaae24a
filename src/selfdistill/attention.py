"""Attention without repeated key/value heads, for inference on CPU.

transformers' `sdpa` attention repeats the key and value heads of a grouped-query model (SmolLM2: 3 key/value
heads for 9 query heads) into a new tensor, in every layer of every forward, whenever an attention mask is given,
because CUDA's fast kernels take no mask with grouped heads. While decoding that copies the whole KV cache, three
times over, in every layer at every token: about a fifth of an hf rollout on the 2-core CPU (docs/performance.md).
torch's CPU kernel takes the grouped heads as they are (`enable_gqa=True`) with any mask, and gives the same
output bit for bit (tested on every family in tests/integration/test_families.py).

`use_grouped_query_sdpa(model)` switches a model that uses `sdpa` to `selfdistill_sdpa`, registered with
transformers' attention and mask interfaces. It takes the grouped path only on CPU without autograd (rollouts,
the teacher's pass, evaluation); a forward that records gradients, any other device, and any call with an extra
bias or a paged cache run transformers' own `sdpa_attention_forward` unchanged, so training's numbers do not move
(the key/value gradients of the grouped kernel differ in rounding). The name is not saved with a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations import sdpa_attention as hf_sdpa
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "selfdistill_sdpa"


def sdpa_grouped_on_cpu(module: torch.nn.Module, query_BHQD: torch.Tensor, key_BKSD: torch.Tensor,
                        value_BKSD: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' sdpa attention (B batch, H query heads, K key/value heads, Q queries, S keys, D head size),
    without `repeat_kv` where that is safe: CPU, no autograd, no position bias, no paged cache."""
    if (getattr(module, "num_key_value_groups", 1) == 1 or query_BHQD.device.type != "cpu"
            or torch.is_grad_enabled() or kwargs.get("position_bias") is not None
            or isinstance(kwargs.get("cache"), getattr(hf_sdpa, "PagedAttentionCache", ()))):
        return hf_sdpa.sdpa_attention_forward(module, query_BHQD, key_BKSD, value_BKSD, attention_mask,
                                              dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    Q = query_BHQD.shape[2]
    # as transformers decides it: the causal kernel only for a prefill without a mask, keys cut to the queries
    causal = Q > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                    else getattr(module, "is_causal", True))
    if causal and key_BKSD.shape[2] > Q:
        key_BKSD, value_BKSD = key_BKSD[:, :, :Q], value_BKSD[:, :, :Q]
    out_BHQD = F.scaled_dot_product_attention(query_BHQD, key_BKSD, value_BKSD, attn_mask=attention_mask,
                                              dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=True)
    return out_BHQD.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_grouped_on_cpu)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_grouped_query_sdpa(model) -> bool:
    """Switch a transformers model from `sdpa` to `selfdistill_sdpa` (in place); whether it was switched. Models
    on another attention (eager, flash-attention) are left as they are."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
