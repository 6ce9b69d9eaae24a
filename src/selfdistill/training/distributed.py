"""Sharded full fine-tuning with FSDP2 (`torch.distributed.fsdp.fully_shard`), the EMA teacher sharded alongside.

The pieces train() uses when `dist.strategy=fsdp`:
  shard_model          fully_shard each decoder layer, then the root, on a 1-D device mesh over all processes;
                       parameters stay float32 (sharded DTensors); compute in bf16 through MixedPrecisionPolicy
  shard_like           the EMA teacher (a float32 copy made *before* sharding) wrapped exactly like the student,
                       so every teacher shard sits on the same rank, with the same shape, as its student shard
  clip_grad_norm       global gradient norm over DTensor gradients (the same number on every rank), then clip
  any_rank             agreement across ranks (non-finite loss on one rank stops or skips the step everywhere)
  gathered_for_generation
                       rollouts: gather every layer once, generate locally (no collective per decode step), reshard
  save_sharded_checkpoint / load_sharded_checkpoint
                       torch.distributed.checkpoint: each rank writes its shards into one temporary folder; after a
                       barrier rank 0 writes the COMPLETE marker and renames the folder: complete or invisible
  save_consolidated    one save_pretrained folder (full state dict gathered to rank 0 on CPU)
  resolve_strategy     single | ddp | fsdp for a launch (refusing DeepSpeed, FSDP1, LoRA under FSDP2)

We call fully_shard directly rather than through accelerate's FSDP v2 plugin (`Accelerator.prepare`): accelerate
1.15 prepares exactly one model per `prepare()` call ("Only one model is supported when using FSDP2") and swaps the
optimizer's parameters behind the scenes, while SDFT needs two identically sharded modules (student and EMA
teacher) and a teacher that is never given to an optimizer. Calling fully_shard ourselves keeps both wrappings
the same function call and lets the optimizer be built on the sharded parameters. accelerate is still the
launcher (process group, devices, `--num_machines`).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from ..config import ConfigError
from .checkpoint import MARKER, CheckpointError, fsync_dir, list_checkpoints, publish

class DistributedConfigError(ConfigError):
    """A launch/config combination that would not train correctly (the CLI prints it as one line)."""


# ----------------------------------------------------------------------------------------------------------
# What is supported


def check_supported(strategy: str, *, lora: bool, distributed_type: str) -> None:
    """One-line refusals for the combinations that would train wrongly or not at all."""
    if distributed_type == "DEEPSPEED":
        raise DistributedConfigError(
            "DeepSpeed is not supported: its engine would need its own backward/step and the EMA teacher gathered "
            "under ZeRO-3; use FSDP2 instead (--dist fsdp, or configs/accelerate/fsdp.yaml), see docs/multi_gpu.md")
    if strategy == "fsdp" and lora:
        raise DistributedConfigError(
            "model.lora=true with dist.strategy=fsdp is not supported: the adapter EMA teacher (a second peft "
            "adapter in the student's modules, switched with set_adapter) is not shard-aware: sharding replaces the "
            "parameters its EMA pairs point to; LoRA's frozen bf16 base fits one GPU (~15 GB at 7B), so use --dist ddp")


def resolve_strategy(requested: str, accelerator, *, lora: bool) -> str:
    """'single', 'ddp' or 'fsdp' for this launch; refuses what would not train correctly (one-line errors).

    `auto` is DDP for several processes, or FSDP2 when launched with an accelerate FSDP config (fsdp_version 2);
    `fsdp` in one process shards over a 1-rank group (exercises the wrapping, e.g. on one GPU)."""
    kind = accelerator.distributed_type.name
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if kind == "FSDP":
        if getattr(plugin, "fsdp_version", 1) != 2:
            raise DistributedConfigError("accelerate FSDP config with fsdp_version 1: only FSDP2 is supported; set "
                                         "fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
        if requested == "ddp":
            raise DistributedConfigError("dist.strategy=ddp but accelerate was launched with an FSDP config; use "
                                         "--dist fsdp or a DDP config (configs/accelerate/ddp.yaml)")
        requested = "fsdp"
    strategy = requested if requested != "auto" else ("ddp" if accelerator.num_processes > 1 else "single")
    if strategy == "ddp" and accelerator.num_processes == 1:
        strategy = "single"
    check_supported(strategy, lora=lora, distributed_type=kind)
    return strategy


# ----------------------------------------------------------------------------------------------------------
# Wrapping


def plugin_cpu_offload(accelerator) -> bool:
    """`fsdp_offload_params: true` in an accelerate FSDP config (selfdistill reads it as dist.cpu_offload)."""
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    offload = getattr(plugin, "cpu_offload", None)
    return bool(getattr(offload, "offload_params", False)) or type(offload).__name__ == "CPUOffloadPolicy"


def ensure_process_group(device: torch.device) -> None:
    """FSDP2 needs a process group even for one process (e.g. a 1-GPU check of the wrapping): make a 1-rank one."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


def device_mesh(device: torch.device):
    ensure_process_group(device)
    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("fsdp",))


def mixed_precision_policy(bf16: bool, reduce_dtype: str = "float32"):
    """Parameters (and the optimizer) stay in their own dtype (float32); forward/backward run in bf16 when asked;
    gradients are reduce-scattered in `reduce_dtype`."""
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                reduce_dtype=getattr(torch, reduce_dtype), cast_forward_inputs=True)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes transformers names in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise DistributedConfigError(f"{type(model).__name__}: found no decoder layers to shard "
                                     f"(_no_split_modules={sorted(names)})")
    return layers


def shard_model(model: torch.nn.Module, mesh, *, bf16: bool, reduce_dtype: str = "float32",
                cpu_offload: bool = False, reshard_root: bool = False) -> torch.nn.Module:
    """fully_shard each decoder layer, then the root (embeddings, final norm, tied lm_head), in place.

    Layers free their gathered weights after forward; the root keeps them for the backward that follows at once
    (`reshard_root=False`, the student) or frees them too (`reshard_root=True`, the teacher: no backward)."""
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    kwargs = dict(mesh=mesh, mp_policy=mixed_precision_policy(bf16, reduce_dtype), offload_policy=offload)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True, **kwargs)
        layer._sd_reshard_after_forward = True
    fully_shard(model, reshard_after_forward=reshard_root, **kwargs)
    model._sd_reshard_after_forward = reshard_root
    return model


def shard_like(teacher: torch.nn.Module, student: torch.nn.Module, mesh, *, bf16: bool,
               cpu_offload: bool = False) -> torch.nn.Module:
    """Shard the teacher copy exactly as the student (same units, same mesh), then check the shards line up."""
    shard_model(teacher, mesh, bf16=bf16, cpu_offload=cpu_offload, reshard_root=True)
    pairs = list(zip(teacher.named_parameters(), student.named_parameters()))
    for (nt, t), (ns, s) in pairs:
        if nt != ns or t.placements != s.placements or _local(t).shape != _local(s).shape:
            raise DistributedConfigError(f"teacher shard {nt} does not line up with student shard {ns}")
    return teacher


def wrap_for_training(model: torch.nn.Module, teacher_copy: torch.nn.Module | None, device: torch.device, *,
                      bf16: bool, reduce_dtype: str = "float32", cpu_offload: bool = False) -> torch.nn.Module:
    """Shard the student and (when there is one) its teacher copy over all processes; return the student."""
    mesh = device_mesh(device)
    shard_model(model, mesh, bf16=bf16, reduce_dtype=reduce_dtype, cpu_offload=cpu_offload)
    if teacher_copy is not None:
        shard_like(teacher_copy, model, mesh, bf16=bf16, cpu_offload=cpu_offload)
    return model


def compute_device(model: torch.nn.Module) -> torch.device:
    """Where forward runs and batches belong: the parameters' device, except for sharded parameters offloaded to
    CPU (`dist.cpu_offload`), whose mesh says where FSDP2 gathers them (the current CUDA device)."""
    p = next(model.parameters())
    mesh = getattr(p, "device_mesh", None)
    if mesh is not None and mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return p.device


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


# ----------------------------------------------------------------------------------------------------------
# EMA teacher, clipping, agreement


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip by the global L2 norm over all ranks' shards; returns that norm as a plain tensor (same on every rank)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on at least one (all-reduce MAX)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------------------------------------
# Rollouts


def fsdp_modules(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Unshard every layer once (one all-gather per layer), keep the full weights through `generate`, reshard.

    Inside, forwards run without collectives, so ranks may stop generating at different lengths (no
    `synced_gpus`). Memory: one full copy of the weights in the compute dtype (2 bytes/param under bf16), for the
    duration of the rollout only."""
    mods = fsdp_modules(model)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in mods:
            m.unshard()
        yield model
    finally:
        for m in mods:
            m.reshard()
        for m in mods:
            m.set_reshard_after_forward(getattr(m, "_sd_reshard_after_forward", True), recurse=False)


def unsharded(model: torch.nn.Module):
    """`gathered_for_generation` for a sharded model; nothing for an unsharded one (single process, DDP)."""
    return gathered_for_generation(model) if is_sharded(model) else contextlib.nullcontext(model)


def no_grad_for(model: torch.nn.Module):
    """inference_mode for the teacher pass; plain no_grad when sharded: FSDP2's 1-rank unshard copies into its
    gather buffer under `_unsafe_preserve_version_counter`, which fails on inference tensors (torch 2.13)."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


# ----------------------------------------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_tree(d: Path) -> None:

    for p in sorted(d.rglob("*")) + [d]:
        fsync_dir(p)


def _app_state(model, optimizer, teacher) -> dict:
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if teacher is not None:
        state["teacher"] = get_model_state_dict(teacher)
    return state


def save_sharded_checkpoint(root: Path, step: int, *, model, optimizer, teacher, scheduler, trainer_state: dict,
                            keep_last: int = 2) -> Path:
    """Every rank writes its shards (DCP) and its RNG state into `step-N.tmp`; rank 0 renames it when all are done.
    A write error on any rank (disk full, ...) raises CheckpointError on every rank; the previous checkpoint stays."""
    rank = dist.get_rank()
    final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dcp.save(_app_state(model, optimizer, teacher), checkpoint_id=str(tmp))  # DCP agrees on its own errors
    error = None
    try:
        torch.save(_rng_state(), tmp / f"rng-rank{rank}.pt")
        if rank == 0:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {**trainer_state, "world_size": dist.get_world_size(), "format": "dcp"}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    except OSError as e:
        error = e
    _fail_together(error, final, tmp)  # also the barrier: every rank's files are in tmp
    if rank == 0:
        try:
            (tmp / MARKER).write_text("ok\n")
            _fsync_tree(tmp)
            publish(tmp, final)
        except OSError as e:
            error = e
    _fail_together(error, final, tmp)
    if rank == 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _fail_together(error: OSError | None, final: Path, tmp: Path) -> None:
    """All ranks learn whether any rank failed (one all-reduce); then all raise, rank 0 having removed tmp."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    if not any_rank(error is not None, device):
        return
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    why = f"{error.strerror or error}" if error is not None else "another process failed to write its part"
    raise CheckpointError(f"{final}: saving the sharded checkpoint failed ({why}); the previous checkpoint is kept")


def load_sharded_checkpoint(path: Path, *, model, optimizer, teacher, scheduler) -> dict:
    """Restore shards (resharded by DCP when the number of processes differs), scheduler and RNG; return the
    trainer state."""
    if not (path / ".metadata").exists():
        raise CheckpointError(f"{path}: not a sharded (dist.strategy=fsdp) checkpoint; resume it with the strategy "
                              f"that wrote it")
    state = _app_state(model, optimizer, teacher)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if teacher is not None:
        set_model_state_dict(teacher, state["teacher"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-rank{dist.get_rank()}.pt"
    if rng.exists():  # a rank that did not exist in the saving run keeps its seeded RNG
        s = torch.load(rng, weights_only=False)
        random.setstate(s["python"])
        np.random.set_state(s["numpy"])
        torch.set_rng_state(s["torch"])
    return json.loads((path / "trainer_state.json").read_text())


# ----------------------------------------------------------------------------------------------------------
# The final model


def full_state_dict(model: torch.nn.Module, every_rank: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded weights, on rank 0's CPU (other ranks get {}), or on every rank's device with `every_rank`.
    A collective: every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not every_rank))


def tied_duplicates(model: torch.nn.Module) -> list[str]:
    """Names of parameters that are the same object as an earlier one (tied lm_head -> embeddings)."""
    first: dict[int, str] = {}
    dups = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            dups.append(name)
        first.setdefault(id(p), name)
    return dups


def save_consolidated(model: torch.nn.Module, tokenizer, out: Path, dtype: torch.dtype | None = None) -> None:
    """A save_pretrained folder (safetensors + tokenizer) that AutoModelForCausalLM.from_pretrained loads;
    `dtype`: cast on the way out (a bf16 model trained on float32 shards is saved in bf16)."""
    sd = full_state_dict(model)
    if dist.get_rank() == 0:
        for name in tied_duplicates(model):  # gathered separately, so save_pretrained would not see the tie
            sd.pop(name, None)
        if dtype is not None:
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        model.save_pretrained(out, state_dict=sd, safe_serialization=True)
        if dtype is not None:  # save_pretrained records the sharded (float32) parameters' dtype: say what was saved
            cfg_file = out / "config.json"
            cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "dtype": str(dtype).split(".")[1]},
                                           indent=2) + "\n")
        tokenizer.save_pretrained(out)
    _barrier()
