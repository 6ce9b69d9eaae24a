"""Generation: the one module that turns prompt token ids into completions, for every caller.

Training rollouts, `eval`, `probe`, drift and the continual runner all call an :class:`Engine`:

    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg)
    completions = engine.generate(prompt_ids, spec, seed=s, want_logprobs=True, should_stop=flag, on_tokens=bar)

* :class:`SamplingSpec` is built from selfdistill's own settings only. The checkpoint's `generation_config`
  (a shipped `repetition_penalty`, `top_k`, `min_p`, ...) is never merged in: on-policy distillation assumes
  rollouts are plain samples from the student. :func:`ignored_generation_settings` names what was ignored.
* Generation stops at every end-of-turn id of the model (`models.end_of_turn_ids`), and completions are cut
  after the first one (kept).
* `want_logprobs` returns each sampled token's log-probability under the distribution actually sampled from
  (after temperature and top-p), for the truncated importance-sampling correction.
* `should_stop()` is polled once per decoded token; when it turns true the call raises
  :class:`GenerationAborted` within one decode step (a stop signal does not wait for a 2048-token rollout).
* `on_tokens(n)` reports progress: n new tokens of unfinished sequences since the last call.

`HFEngine` runs `transformers.generate` on the live module (batched, left padded, KV cache). The vLLM engine
(`engines_vllm.VLLMEngine`) implements the same protocol; its weights are refreshed by `sync_weights`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


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

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec, *, seed: int | None = None,
                 want_logprobs: bool = False, should_stop: Callable[[], bool] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[Completion]: ...

    def sync_weights(self, model) -> None: ...


def derive_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


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


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, every prompt ending at column L."""
    L = max(len(p) for p in prompt_ids)
    ids_BL = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    att_BL = torch.zeros((len(prompt_ids), L), dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        ids_BL[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
        att_BL[b, L - len(p):] = 1
    return ids_BL, att_BL


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
    from transformers import GenerationConfig

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


@contextlib.contextmanager
def plain_generation_config(model):
    """Inside: the module's generation_config is transformers' default, so nothing of the checkpoint's merges."""
    from transformers import GenerationConfig

    m = hf_module(model)
    saved = m.generation_config
    m.generation_config = GenerationConfig()
    try:
        yield
    finally:
        m.generation_config = saved


# ----------------------------------------------------------------------------------------------------------
# transformers.generate


class _Watch:
    """A StoppingCriteria that never stops a sequence: it reports progress and aborts on request."""

    def __init__(self, stop_ids, should_stop, on_tokens):
        self.stop_ids = torch.tensor(sorted(stop_ids), dtype=torch.long)
        self.should_stop, self.on_tokens = should_stop, on_tokens
        self.done_B = None

    def __call__(self, input_ids_BL, scores, **kwargs) -> torch.BoolTensor:
        last_B = input_ids_BL[:, -1].cpu()
        if self.done_B is None:
            self.done_B = torch.zeros_like(last_B, dtype=torch.bool)
        if self.on_tokens is not None:
            self.on_tokens(int((~self.done_B).sum()))
        self.done_B |= torch.isin(last_B, self.stop_ids)
        if self.should_stop is not None and self.should_stop():
            raise GenerationAborted()
        return torch.zeros(input_ids_BL.shape[0], dtype=torch.bool, device=input_ids_BL.device)


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


class HFEngine:
    """`transformers.generate` on the live module. `batch_size=None`: one batch in input order (rollouts);
    otherwise prompts are sorted longest first and decoded in batches of that size (evaluation)."""

    name = "hf"

    def __init__(self, model, pad_id: int, batch_size: int | None = None):
        self.model, self.pad_id, self.batch_size = model, pad_id, batch_size

    def sync_weights(self, model) -> None:  # generates on the live weights
        self.model = model

    def generate(self, prompt_ids, spec: SamplingSpec, *, seed=None, want_logprobs=False, should_stop=None,
                 on_tokens=None) -> list[Completion]:
        if not prompt_ids:
            return []
        if spec.max_new_tokens < 1:
            return [Completion([], [] if want_logprobs else None) for _ in prompt_ids]
        if self.batch_size is None:
            order, bs = list(range(len(prompt_ids))), len(prompt_ids)
        else:
            order, bs = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i])), max(1, self.batch_size)
        out: list[Completion | None] = [None] * len(prompt_ids)
        if seed is not None:
            torch.manual_seed(seed)
        notice_ignored(self.model)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            batch = self._batch([prompt_ids[i] for i in idx], spec, want_logprobs, should_stop, on_tokens)
            for i, c in zip(idx, batch):
                out[i] = c
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _batch(self, prompts, spec, want_logprobs, should_stop, on_tokens) -> list[Completion]:
        from transformers import GenerationConfig, StoppingCriteriaList

        model = hf_module(self.model)
        device = next(model.parameters()).device
        ids_BL, att_BL = left_pad(prompts, self.pad_id)
        L = ids_BL.shape[1]
        sampling = {} if spec.greedy else dict(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k)
        gc = GenerationConfig(do_sample=not spec.greedy, num_beams=1, max_new_tokens=spec.max_new_tokens,
                              eos_token_id=list(spec.stop_ids), pad_token_id=self.pad_id, use_cache=True,
                              return_dict_in_generate=True, output_scores=want_logprobs, **sampling)
        watch = StoppingCriteriaList([_Watch(spec.stop_ids, should_stop, on_tokens)])
        with _ModeGuard(self.model), plain_generation_config(model):
            out = model.generate(input_ids=ids_BL.to(device), attention_mask=att_BL.to(device),
                                 generation_config=gc, stopping_criteria=watch)
        new_BT = out.sequences[:, L:]
        if want_logprobs:  # processed scores = the distribution sampled from
            lp_BT = torch.stack([s.float().log_softmax(-1).gather(-1, new_BT[:, i:i + 1]).squeeze(-1)
                                 for i, s in enumerate(out.scores)], 1)
        result = []
        for b in range(new_BT.shape[0]):
            ids = cut_at_stop(new_BT[b].tolist(), spec.stop_ids)
            result.append(Completion(ids, lp_BT[b, :len(ids)].tolist() if want_logprobs else None))
        return result


def make_engine(kind: str, model, tokenizer, cfg=None, *, batch_size: int | None = None) -> Engine:
    """The engine named by `rollout.engine` / `--engine`: `hf` (default) or `vllm` (optional extra)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if kind == "hf":
        return HFEngine(model, pad, batch_size)
    if kind == "vllm":
        try:
            from .engines_vllm import VLLMEngine
        except ImportError as e:
            raise RuntimeError(f"engine vllm: {e}. Install the extra: see README, 'vLLM engine'") from None
        return VLLMEngine.for_model(model, tokenizer, cfg)
    raise ValueError(f"unknown generation engine {kind!r} (hf | vllm)")


def stop_ids_for(tokenizer, model=None) -> tuple[int, ...]:
    from .models import end_of_turn_ids

    return tuple(end_of_turn_ids(tokenizer, model))


def greedy_completions(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
                       batch_size: int = 16, engine: Engine | None = None) -> list[list[int]]:
    """Greedy completion ids for tokenised prompts (input order), cut after the first end-of-turn id."""
    engine = engine or HFEngine(model, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id, batch_size)
    spec = greedy_spec(max_new_tokens, stop_ids_for(tokenizer, model))
    return [c.ids for c in engine.generate(prompt_ids, spec)]
