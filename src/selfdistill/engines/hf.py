"""`HFEngine`: `transformers.generate` on the live module (batched, left padded, KV cache).

Sampling is per row: `RowSampler` draws each row's token from that prompt's own generator (Gumbel-max over the
tempered, top-k / top-p restricted logits, exactly a sample of that distribution) and hands transformers' greedy
step scores that pick it. A prompt's sample thus depends on its seed and its logits only, not on its batch.
`transformers.generate` itself samples the whole batch from the global generator, which ties every row's sample
to the batch it is in.

`dtype` (rollout.dtype): sample from a copy of the module with its parameters in that dtype, refreshed in place by
`sync_weights` after every optimizer step (`weights_copy`). On a CPU with native bf16 a bfloat16 copy decodes about
2.5x faster than float32 weights (docs/performance.md); the trainer's importance weights correct for the numerics.
"""

from __future__ import annotations

import copy
import sys

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList, TopKLogitsWarper, \
    TopPLogitsWarper

from .base import Completion, GenerationAborted, SamplingSpec, cut_at_stop, eval_mode, hf_module, notice_ignored, \
    plain_generation_config


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, every prompt ending at column L."""
    L = max(len(p) for p in prompt_ids)
    ids_BL = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    att_BL = torch.zeros((len(prompt_ids), L), dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        ids_BL[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
        att_BL[b, L - len(p):] = 1
    return ids_BL, att_BL


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


class RowSampler:
    """A logits processor that samples each row with its own generator and returns scores whose argmax is that
    sample (0 there, -inf elsewhere), so transformers' greedy step takes it. `logprobs_BT()`: the sampled tokens'
    log-probs under the distribution sampled from (after temperature, top-k, top-p)."""

    def __init__(self, spec: SamplingSpec, seeds: list[int], device: torch.device):
        self.temperature = spec.temperature
        self.restrict = ([TopKLogitsWarper(spec.top_k)] if spec.top_k > 0 else []) + \
            ([TopPLogitsWarper(spec.top_p)] if spec.top_p < 1.0 else [])
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.lps_B: list[torch.Tensor] = []

    def __call__(self, input_ids_BL: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        logits_BV = scores_BV.float() / self.temperature
        for warp in self.restrict:
            logits_BV = warp(input_ids_BL, logits_BV)
        logp_BV = logits_BV.log_softmax(-1)
        V = logp_BV.shape[-1]
        u_BV = torch.stack([torch.rand(V, generator=g, device=logp_BV.device) for g in self.generators])
        gumbel_BV = -torch.log(-torch.log(u_BV.clamp_(min=1e-20, max=1.0 - 1e-7)))
        tok_B1 = (logp_BV + gumbel_BV).argmax(-1, keepdim=True)
        self.lps_B.append(logp_BV.gather(-1, tok_B1).squeeze(-1))
        return torch.full_like(logits_BV, float("-inf")).scatter_(-1, tok_B1, 0.0)

    def logprobs_BT(self) -> torch.Tensor:
        return torch.stack(self.lps_B, 1)


def weights_copy(model, dtype: torch.dtype, into: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """A frozen eval-mode copy of the model's transformers module (under DDP / peft wrappers; LoRA layers
    included) with its floating-point parameters in `dtype` and its buffers as they are (rotary frequencies stay
    float32), or `into` refreshed in place from the current weights. None when the parameters are in `dtype`
    already (the engine then uses the live module)."""
    src = hf_module(model)
    if into is not None:
        with torch.no_grad():
            for d, s in zip(into.parameters(), src.parameters(), strict=True):
                d.copy_(s)
        return into
    params = list(src.parameters())
    if any(type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor" for p in params):
        raise ValueError("rollout.dtype with the hf engine needs unsharded weights: under FSDP2 use "
                         "rollout.engine=vllm (its own dtype) or rollout.dtype=model")
    if all(p.dtype == dtype for p in params if p.is_floating_point()):
        return None
    out = copy.deepcopy(src).eval().requires_grad_(False)
    for p in out.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return out


class HFEngine:
    """`transformers.generate` on the live module, or on its copy in `dtype` (see the module docstring).
    `batch_size=None`: one batch in input order (rollouts); otherwise prompts are sorted longest first and decoded
    in batches of that size (evaluation)."""

    name = "hf"
    uses_live_model = True

    def __init__(self, model, pad_id: int, batch_size: int | None = None, progress: str | None = None,
                 dtype: str | None = None):
        self.pad_id, self.batch_size = pad_id, batch_size
        self.progress = progress  # a label: a progress bar of items done (evaluation), on stderr
        self.dtype = None if dtype in (None, "model") else getattr(torch, dtype)
        self.copy: torch.nn.Module | None = None
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        """The live module generates as it is; a `dtype` copy is refreshed from it in place."""
        self.model = model
        if self.dtype is not None:
            self.copy = weights_copy(model, self.dtype, self.copy)

    def close(self) -> None:  # frees the copy, if any
        self.model = self.copy = None

    def generate(self, prompt_ids, spec: SamplingSpec, *, seeds=None, want_logprobs=False, should_stop=None,
                 on_tokens=None) -> list[Completion]:
        if not prompt_ids:
            return []
        if spec.max_new_tokens < 1:
            return [Completion([], [] if want_logprobs else None) for _ in prompt_ids]
        if not spec.greedy and (seeds is None or len(seeds) != len(prompt_ids)):
            raise ValueError(f"sampling {len(prompt_ids)} prompts needs one seed per prompt "
                             f"(engines.prompt_seeds), got {None if seeds is None else len(seeds)}")
        if self.batch_size is None:
            order, bs = list(range(len(prompt_ids))), len(prompt_ids)
        else:
            order, bs = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i])), max(1, self.batch_size)
        out: list[Completion | None] = [None] * len(prompt_ids)
        notice_ignored(self.model)
        with tqdm(total=len(order), desc=self.progress, unit="item", file=sys.stderr,
                  disable=self.progress is None) as bar:
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                batch = self._batch([prompt_ids[i] for i in idx], spec, None if spec.greedy else
                                    [seeds[i] for i in idx], want_logprobs, should_stop, on_tokens)
                for i, c in zip(idx, batch):
                    out[i] = c
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _batch(self, prompts, spec, seeds, want_logprobs, should_stop, on_tokens) -> list[Completion]:
        model = self.copy if self.copy is not None else hf_module(self.model)
        device = next(model.parameters()).device
        ids_BL, att_BL = left_pad(prompts, self.pad_id)
        L = ids_BL.shape[1]
        sampler = None if spec.greedy else RowSampler(spec, seeds, device)
        gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=spec.max_new_tokens,
                              eos_token_id=list(spec.stop_ids), pad_token_id=self.pad_id, use_cache=True,
                              return_dict_in_generate=True, output_scores=want_logprobs and spec.greedy)
        watch = StoppingCriteriaList([_Watch(spec.stop_ids, should_stop, on_tokens)])
        with eval_mode(model), plain_generation_config(model):
            out = model.generate(input_ids=ids_BL.to(device), attention_mask=att_BL.to(device),
                                 generation_config=gc, stopping_criteria=watch,
                                 logits_processor=LogitsProcessorList([sampler] if sampler else []))
        new_BT = out.sequences[:, L:]
        if want_logprobs:  # the distribution sampled from (greedy: the model's own, a point mass being taken)
            lp_BT = sampler.logprobs_BT() if sampler else torch.stack(
                [s.float().log_softmax(-1).gather(-1, new_BT[:, i:i + 1]).squeeze(-1)
                 for i, s in enumerate(out.scores)], 1)
        result = []
        for b in range(new_BT.shape[0]):
            ids = cut_at_stop(new_BT[b].tolist(), spec.stop_ids)
            result.append(Completion(ids, lp_BT[b, :len(ids)].tolist() if want_logprobs else None))
        return result
