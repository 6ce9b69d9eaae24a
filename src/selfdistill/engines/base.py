"""The engine interface: what every generation engine takes and returns, and the helpers all engines share.

Training rollouts, `eval`, `probe`, drift and the continual runner all call an :class:`Engine`
(:func:`selfdistill.engines.make_engine` builds one):

    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg)
    completions = engine.generate(prompt_ids, spec, seeds=prompt_seeds(s, len(prompt_ids)), want_logprobs=True,
                                  should_stop=flag, on_tokens=bar)

* :class:`SamplingSpec` is built from selfdistill's own settings only. The checkpoint's `generation_config`
  (a shipped `repetition_penalty`, `top_k`, `min_p`, ...) is never merged in: on-policy distillation assumes
  rollouts are plain samples from the student. :func:`ignored_generation_settings` names what was ignored.
* Generation stops at every end-of-turn id of the model (`models.end_of_turn_ids`), and completions are cut
  after the first one (kept).
* `seeds`: one per prompt. Each prompt is sampled from its own generator seeded with its seed, so its sample
  does not depend on the other prompts of the call or on how the caller batched them (up to the kernels'
  batch invariance: a different batch or padding can change a logit in its last bits, which flips a sample only
  when two candidates tie that closely). Training derives a prompt's seed from the run's seed, the step and the
  prompt's place in the step's global batch (`prompt_seeds`), so micro-batch size, rollout.batch_size and the
  number of processes leave the rollouts unchanged.
* `want_logprobs` returns each sampled token's log-probability under the distribution actually sampled from
  (after temperature and top-p), for the truncated importance-sampling correction.
* `should_stop()` is polled once per decoded token; when it turns true the call raises
  :class:`GenerationAborted` within one decode step (a stop signal does not wait for a 2048-token rollout).
* `on_tokens(n)` reports progress: n new tokens of unfinished sequences since the last call.

The engines (`hf.HFEngine`, `vllm_engine.VLLMEngine`) import this module; it imports neither of them.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from transformers import GenerationConfig

from ..models import end_of_turn_ids


class GenerationAborted(Exception):
    """`should_stop()` turned true during generation; nothing was returned."""


@dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


@dataclass
class Completion:
    ids: list[int]  # cut after the first stop id (kept)
    logprobs: list[float] | None  # per id, under the sampled distribution; None when not asked for


class Engine(Protocol):
    name: str
    uses_live_model: bool  # generates with the trainer's own module (hf: under its autocast) or a copy (vLLM)

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec, *, seeds: Sequence[int] | None = None,
                 want_logprobs: bool = False, should_stop: Callable[[], bool] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[Completion]: ...

    def sync_weights(self, model) -> None: ...

    def close(self) -> None:
        """Free what the engine holds (vLLM: its weights and KV cache); the engine is not used afterwards."""


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def derive_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def prompt_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """The seeds of prompts start .. start + n - 1 of a batch sampled with `seed`: prompt k gets
    derive_seed(seed, k), whoever samples it and in whatever call."""
    return [derive_seed(seed, k) for k in range(start, start + n)]


def rollout_spec(rollout_cfg, stop_ids) -> SamplingSpec:
    """The training rollouts' sampling, from `cfg.rollout` only."""
    return SamplingSpec(max_new_tokens=rollout_cfg.max_new_tokens, stop_ids=tuple(stop_ids),
                        greedy=rollout_cfg.greedy, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                        top_k=getattr(rollout_cfg, "top_k", 0))


def greedy_spec(max_new_tokens: int, stop_ids) -> SamplingSpec:
    return SamplingSpec(max_new_tokens=int(max_new_tokens), stop_ids=tuple(stop_ids), greedy=True)


def cut_at_stop(ids: list[int], stop_ids) -> list[int]:
    stop = set(stop_ids)
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i + 1]
    return ids


# ----------------------------------------------------------------------------------------------------------
# The checkpoint's own generation settings are ignored


_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff",
                  "eta_cutoff", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                  "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                  "min_new_tokens", "min_length", "max_new_tokens", "max_length", "num_beams")


def hf_module(model):
    """The transformers model under DDP (`.module`) and peft (`get_base_model`) wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ignored_generation_settings(model) -> dict:
    """Sampling settings in the checkpoint's generation_config that differ from transformers' defaults."""
    gc = getattr(hf_module(model), "generation_config", None)
    if gc is None:
        return {}
    default = GenerationConfig().to_dict()
    own = gc.to_dict()
    return {k: own[k] for k in _SAMPLING_KEYS if k in own and own[k] != default.get(k)}


_NOTICED: set[int] = set()


def notice_ignored(model, file=None) -> None:
    """One line, once per model object, naming the checkpoint's generation settings selfdistill ignores."""
    ignored = ignored_generation_settings(model)
    if ignored and id(hf_module(model)) not in _NOTICED:
        _NOTICED.add(id(hf_module(model)))
        shown = ", ".join(f"{k}={v}" for k, v in ignored.items())
        print(f"[selfdistill] ignoring the checkpoint's generation_config ({shown}): rollouts and evaluation "
              f"use only selfdistill's settings (rollout.*)", file=file or sys.stderr)


class _ModeGuard:
    """model.eval() inside (no dropout while sampling), the previous train/eval state restored after."""

    def __init__(self, *models):
        self.models, self.was = models, []

    def __enter__(self):
        self.was = [m.training for m in self.models]
        for m in self.models:
            m.eval()

    def __exit__(self, *exc):
        for m, w in zip(self.models, self.was):
            m.train(w)
        return False


eval_mode = _ModeGuard


def stop_ids_for(tokenizer, model=None) -> tuple[int, ...]:
    return tuple(end_of_turn_ids(tokenizer, model))
