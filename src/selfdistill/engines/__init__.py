"""Generation engines: the one place that turns prompt token ids into completions, for every caller.

* :mod:`.base`: the interface (`SamplingSpec`, `Completion`, the `Engine` protocol, stop and seed helpers).
* :mod:`.hf`: `HFEngine`, a lean decoding loop around the live module's forward (the default; always available).
* :mod:`.vllm_engine`: `VLLMEngine`, vLLM's offline engine in this process (optional extra), weights pushed from
  the trainer after every step.

:func:`make_engine` picks one by name (`rollout.engine`, `eval --engine`).
"""

from __future__ import annotations

from .base import (Completion, Engine, GenerationAborted, SamplingSpec, cut_at_stop, derive_seed, eval_mode,
                   greedy_spec, hf_module, ignored_generation_settings, pad_id, prompt_seeds, rollout_spec,
                   stop_ids_for)
from .hf import HFEngine, cache_key, common_prefix_len, inference_model, left_pad, packed_copy, prefill, weights_copy

__all__ = ["Completion", "Engine", "GenerationAborted", "HFEngine", "SamplingSpec", "cache_key", "common_prefix_len", "cut_at_stop", "derive_seed",
           "eval_mode", "greedy_completions", "greedy_spec", "hf_module", "ignored_generation_settings",
           "inference_model", "left_pad", "make_engine", "packed_copy", "pad_id", "prefill", "prompt_seeds", "rollout_spec", "stop_ids_for", "weights_copy"]


def make_engine(kind: str, model, tokenizer, cfg=None, *, batch_size: int | None = None) -> Engine:
    """The engine named by `rollout.engine` / `--engine`: `hf` (default) or `vllm` (optional extra)."""
    pad = pad_id(tokenizer)
    if kind == "hf":
        return HFEngine(model, pad, batch_size, dtype=cfg.rollout.dtype if cfg is not None else None)
    if kind == "vllm":
        try:  # the optional extra: imported only when asked for (vLLM is heavy, and may be absent)
            from .vllm_engine import VLLMEngine
        except ImportError as e:
            raise RuntimeError(f"engine vllm: {e}. Install the extra: see docs/vllm.md") from None
        return VLLMEngine.for_model(model, tokenizer, cfg)
    raise ValueError(f"unknown generation engine {kind!r} (hf | vllm)")


def greedy_completions(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
                       batch_size: int = 16, engine: Engine | None = None,
                       progress: str | None = None) -> list[list[int]]:
    """Greedy completion ids for tokenised prompts (input order), cut after the first end-of-turn id.
    `progress`: a label for a progress bar of items done (hf engine)."""
    engine = engine or HFEngine(model, pad_id(tokenizer), batch_size, progress)
    spec = greedy_spec(max_new_tokens, stop_ids_for(tokenizer, model))
    return [c.ids for c in engine.generate(prompt_ids, spec)]
