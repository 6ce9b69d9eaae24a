"""`HFEngine`: a lean decoding loop around the transformers module's own forward (batched, left padded, KV cache).

`decode` runs the prompts through the model once (their common prefix, a chat template's system prompt, once for
the batch: `prefill`), then one forward per new token for the rows still decoding: a
row that emits a stop id or reaches its budget leaves the batch (its cache rows, mask and position are dropped),
so a batch costs the sum of its rows' lengths, not its longest row times the batch. The KV cache grows in place
(`InPlaceLayer`), where transformers' `DynamicLayer` copies it whole at every token. Greedy rows take the argmax;
sampled rows draw from their own generator (`RowSampler`: Gumbel-max over the tempered, top-k / top-p restricted
logits, exactly a sample of that distribution), so a prompt's sample depends on its seed and its logits only, not
on its batch. transformers' `generate` (used before 2026-12-02) keeps finished rows in the batch to the end and
samples the whole batch from one global generator.

`dtype` (rollout.dtype): sample from a copy of the module with its parameters in that dtype, refreshed in place by
`sync_weights` after every optimizer step (`weights_copy`). On a CPU with native bf16 a bfloat16 copy decodes about
2.5x faster than float32 weights (docs/performance.md); the trainer's importance weights correct for the numerics.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import sys
import time

import torch
import torch.utils.mkldnn
from tqdm import tqdm
from transformers import TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from .base import Completion, GenerationAborted, SamplingSpec, eval_mode, hf_module, notice_ignored


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, every prompt ending at column L."""
    L = max(len(p) for p in prompt_ids)
    ids_BL = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    att_BL = torch.zeros((len(prompt_ids), L), dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        ids_BL[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
        att_BL[b, L - len(p):] = 1
    return ids_BL, att_BL


class RowSampler:
    """Each row sampled with its own generator: Gumbel-max over the tempered, top-k / top-p restricted logits.
    `sample(logits_AV, rows)`: one token per row of `rows` (indices into `seeds`) and its log-prob under the
    distribution sampled from (after temperature, top-k, top-p)."""

    def __init__(self, spec: SamplingSpec, seeds: list[int], device: torch.device):
        self.temperature = spec.temperature
        self.restrict = ([TopKLogitsWarper(spec.top_k)] if spec.top_k > 0 else []) + \
            ([TopPLogitsWarper(spec.top_p)] if spec.top_p < 1.0 else [])
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def sample(self, logits_AV: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logits_AV = logits_AV.float() / self.temperature
        for warp in self.restrict:
            logits_AV = warp(None, logits_AV)
        logp_AV = logits_AV.log_softmax(-1)
        V = logp_AV.shape[-1]
        u_AV = torch.stack([torch.rand(V, generator=self.generators[r], device=logp_AV.device) for r in rows])
        gumbel_AV = -torch.log(-torch.log(u_AV.clamp_(min=1e-20, max=1.0 - 1e-7)))
        tok_A = (logp_AV + gumbel_AV).argmax(-1)
        return tok_A, logp_AV.gather(-1, tok_A[:, None]).squeeze(-1)


def cache_key(model) -> str:
    """The KV-cache argument/output name of the module's forward: `cache` from transformers 5.20 on,
    `past_key_values` before (the vLLM extra pins transformers 5.19)."""
    return "cache" if "cache" in inspect.signature(type(hf_module(model)).forward).parameters else "past_key_values"


def common_prefix_len(seqs: list[list[int]]) -> int:
    """The length of the longest prefix every sequence starts with."""
    n = min(len(x) for x in seqs)
    for k in range(n):
        if any(x[k] != seqs[0][k] for x in seqs):
            return k
    return n


def last_position(length: int, device) -> torch.Tensor:
    """transformers' `logits_to_keep` for the last of `length` positions, as an index tensor: the LM head then
    gets a contiguous [B, 1, H] copy of the hidden states. `logits_to_keep=1` hands it a strided slice, which
    torch's CPU `matmul` runs in bfloat16 as a batched product over B copies of the head's weight: 480 ms against
    3 ms for SmolLM2's [8, 1, 576] x [576, 49152] (float32: 17.7 against 7.4 ms; docs/performance.md)."""
    return torch.tensor([length - 1], device=device)


def prefill(model, prompts: list[list[int]], pad: int, device, key: str):
    """The prompts through the model with a KV cache: their common prefix (a chat template's system prompt and
    the words every prompt starts with) once at batch 1, its cache repeated per prompt, then each prompt's rest,
    left-padded after the prefix (the attention mask hides the padding, the positions skip it). A lone prompt or
    prompts with nothing in common take one left-padded pass. Returns (each prompt's next-token logits [B, V],
    the cache, the [B, L] attention mask it was built with); a row's next position is its mask's sum. The LM head
    gets only the last position, as an index (`last_position`)."""
    P = max(0, min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1)) if len(prompts) > 1 else 0
    cache_kw = {}
    if P > 0:  # every prompt keeps at least one token of its own
        pre = model(input_ids=torch.tensor([prompts[0][:P]], device=device), use_cache=True,
                    logits_to_keep=last_position(P, device))
        cache = getattr(pre, key)
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
        cache_kw = {key: cache}
    rest_BS, rest_att_BS = left_pad([p[P:] for p in prompts], pad)
    att_BL = torch.cat([torch.ones((len(prompts), P), dtype=rest_att_BS.dtype), rest_att_BS], 1).to(device)
    pos_BS = P + (rest_att_BS.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=rest_BS.to(device), attention_mask=att_BL, position_ids=pos_BS.to(device), use_cache=True,
                logits_to_keep=last_position(rest_BS.shape[1], device), **cache_kw)
    return out.logits[:, -1], getattr(out, key), att_BL


class InPlaceLayer(DynamicLayer):
    """transformers' `DynamicLayer` that grows in place: its keys and values sit in buffers with `room` free token
    slots, a decode step writes its token into them, and `keys` / `values` are views of the filled part (masks and
    lengths read them as before). `DynamicLayer.update` `torch.cat`s the layer's whole cache into a new tensor at
    every token: 4% of an 8-row rollout call of 64 tokens, 6% at 24 rows (docs/performance.md). A full buffer grows
    by `room` slots. Made by `decode` for its own cache, which calls only `update` and `batch_select_indices`."""

    def __init__(self, layer: DynamicLayer, room: int):
        super().__init__()
        self.is_initialized, self.dtype, self.device = True, layer.keys.dtype, layer.keys.device
        self.room, self.filled = room, layer.keys.shape[-2]
        self.key_buf, self.value_buf = self._with_room(layer.keys), self._with_room(layer.values)
        self._views()

    def _with_room(self, x: torch.Tensor) -> torch.Tensor:
        buf = x.new_empty((*x.shape[:-2], self.filled + self.room, x.shape[-1]))
        buf[..., :self.filled, :] = x
        return buf

    def _views(self) -> None:
        self.keys, self.values = self.key_buf[..., :self.filled, :], self.value_buf[..., :self.filled, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, q = self.filled, key_states.shape[-2]
        if n + q > self.key_buf.shape[-2]:
            self.room = max(self.room, q)
            self.key_buf, self.value_buf = self._with_room(self.keys), self._with_room(self.values)
        self.key_buf[..., n:n + q, :] = key_states
        self.value_buf[..., n:n + q, :] = value_states
        self.filled = n + q
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buf, self.value_buf = self.key_buf[indices, ...], self.value_buf[indices, ...]
        self._views()


def grow_in_place(cache, room: int) -> None:
    """Each of the cache's plain `DynamicLayer`s (not sliding-window or other kinds) made an `InPlaceLayer`."""
    layers = getattr(cache, "layers", [])
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layers[i] = InPlaceLayer(layer, room)


@torch.no_grad()
def decode(model, prompts: list[list[int]], pad: int, spec: SamplingSpec, sampler: RowSampler | None,
           should_stop=None, on_tokens=None, want_logprobs: bool = True) -> tuple[list[list[int]], list[list[float]]]:
    """New token ids per row (cut after the first stop id, kept) and each token's log-prob (greedy: under the
    model's own distribution; left empty for greedy rows without `want_logprobs`). The prompts go through
    `prefill` (their common prefix once); rows leave the batch when they stop; `should_stop()` is polled and
    `on_tokens(n)` told the rows still decoding once per step."""
    device = next(model.parameters()).device
    key, stop = cache_key(model), torch.tensor(sorted(spec.stop_ids), dtype=torch.long, device=device)
    logits_AV, cache, att_AL = prefill(model, prompts, pad, device, key)
    if spec.max_new_tokens > 1:  # room for the decode steps below, at most 256 at a time
        grow_in_place(cache, room=min(spec.max_new_tokens - 1, 256))
    pos_A1 = att_AL.sum(-1, keepdim=True) - 1
    rows = list(range(len(prompts)))  # the batch rows still decoding, in order
    tokens: list[list[int]] = [[] for _ in rows]
    lps: list[list[float]] = [[] for _ in rows]
    for step in range(spec.max_new_tokens):
        if sampler is None:
            tok_A = logits_AV.argmax(-1)
            lp_A = logits_AV.float().log_softmax(-1).gather(-1, tok_A[:, None]).squeeze(-1) if want_logprobs \
                else None
        else:
            tok_A, lp_A = sampler.sample(logits_AV, rows)
        for r, t in zip(rows, tok_A.tolist()):
            tokens[r].append(t)
        if lp_A is not None:
            for r, lp in zip(rows, lp_A.tolist()):
                lps[r].append(lp)
        if on_tokens is not None:
            on_tokens(len(rows))
        if should_stop is not None and should_stop():
            raise GenerationAborted()
        keep_A = ~torch.isin(tok_A, stop)
        if step == spec.max_new_tokens - 1 or not bool(keep_A.any()):
            break
        if not bool(keep_A.all()):  # finished rows leave the batch and its cache
            idx = keep_A.nonzero().squeeze(-1)
            cache.batch_select_indices(idx)
            rows = [rows[i] for i in idx.tolist()]
            tok_A, att_AL, pos_A1 = tok_A[idx], att_AL[idx], pos_A1[idx]
        att_AL = torch.cat([att_AL, att_AL.new_ones((len(rows), 1))], 1)
        pos_A1 = pos_A1 + 1
        out = model(input_ids=tok_A[:, None], attention_mask=att_AL, position_ids=pos_A1, use_cache=True,
                    **{key: cache})
        logits_AV, cache = out.logits[:, -1], getattr(out, key)
    return tokens, lps


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


def packed_copy(model, only_if_faster: bool = False) -> torch.nn.Module | None:
    """A frozen eval-mode copy of the model's transformers module whose `nn.Linear` layers are torch's
    `MkldnnLinear` (weights in oneDNN's blocked layout), for evaluation on CPU, with the same greedy tokens
    (tested; the sums differ only in rounding). Whether oneDNN beats the BLAS call behind `F.linear` on the skinny
    float32 matrix multiplies of decoding depends on the CPU: 20-35% faster on an AMD EPYC, 15-20% slower on an
    Intel Xeon with AMX (docs/performance.md); `only_if_faster` times both on the model's layer shapes first
    (`onednn_linear_faster`, once per process and shape set). None where it does not apply: not float32 on CPU, no
    oneDNN, LoRA / sharded weights, not enough free memory for a second copy of the weights, or (asked) slower."""
    src = hf_module(model)
    params = list(src.parameters())
    if (not torch.backends.mkldnn.is_available() or hasattr(src, "peft_config") or not params
            or any(p.device.type != "cpu" or p.dtype != torch.float32 or type(p.data).__name__ == "DTensor"
                   for p in params)):
        return None
    if sum(p.numel() * 4 for p in params) > _available_bytes() // 2:
        return None
    if only_if_faster and not onednn_linear_faster(linear_shapes(src)):
        return None
    out = copy.deepcopy(src).eval().requires_grad_(False)
    for mod in list(out.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(mod, name, torch.utils.mkldnn.MkldnnLinear(child, torch.float32))
    out.selfdistill_packed = True
    return out


def linear_shapes(module: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """The distinct (in, out) feature counts of the module's `nn.Linear` layers, the largest (the LM head) left
    out: the layers whose speed decides a decoding step besides it."""
    shapes = sorted({(m.in_features, m.out_features) for m in module.modules() if type(m) is torch.nn.Linear},
                    key=lambda s: (s[0] * s[1], s))
    return tuple(shapes[:-1] if len(shapes) > 1 else shapes)


@functools.cache
def onednn_linear_faster(shapes: tuple[tuple[int, int], ...], rows: int = 16) -> bool:
    """Whether torch's `MkldnnLinear` runs a `rows`-row float32 input through layers of these shapes faster than
    `F.linear` on this CPU: the best of 5 timings of each, on random weights from a private generator (the global
    random state is left alone); tens of milliseconds, once per process and shape set."""
    g = torch.Generator().manual_seed(0)
    dense, packed = [], []
    for i, o in shapes:
        lin = torch.nn.utils.skip_init(torch.nn.Linear, i, o, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, i, generator=g))
        dense.append((lin, torch.randn(rows, i, generator=g)))
        packed.append((torch.utils.mkldnn.MkldnnLinear(lin, torch.float32), dense[-1][1]))

    def best_seconds(layers) -> float:
        best = float("inf")
        with torch.no_grad():
            for _ in range(5):
                t0 = time.perf_counter()
                for layer, x in layers:
                    layer(x)
                best = min(best, time.perf_counter() - t0)
        return best
    best_seconds(dense), best_seconds(packed)  # warm-up: first calls allocate and pack
    return best_seconds(packed) < best_seconds(dense)


def _available_bytes() -> int:
    """Memory available to a new allocation: Linux's MemAvailable (free + reclaimable cache), else free pages;
    0 when unknown (then no copy is made)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@contextlib.contextmanager
def inference_model(model):
    """The model to evaluate with inside the block: its `packed_copy` where oneDNN is the faster on this CPU, or
    the model itself where there is none or it is a packed copy already. The copy is held by nothing else, so it
    goes once the caller lets go of it."""
    packed = None if getattr(model, "selfdistill_packed", False) else packed_copy(model, only_if_faster=True)
    yield packed if packed is not None else model


class HFEngine:
    """`decode` on the live module, or on its copy in `dtype` (see the module docstring).
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

    def _batch(self, prompts, spec, seeds, want_logprobs, should_stop, on_tokens) -> list[Completion]:
        model = self.copy if self.copy is not None else hf_module(self.model)
        sampler = None if spec.greedy else RowSampler(spec, seeds, next(model.parameters()).device)
        with eval_mode(model):
            tokens, lps = decode(model, prompts, self.pad_id, spec, sampler, should_stop, on_tokens, want_logprobs)
        return [Completion(t, lp if want_logprobs else None) for t, lp in zip(tokens, lps)]
