"""Setup of a training run: model, float32 master weights, teacher, optimizer, wrapping, engine, resume -> `Run`.

Wrapping (dist.strategy): one process as is; DDP replicas; or FSDP2 (distributed.py), where the student and its EMA
teacher are sharded alike over all processes.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import LoraConfig, get_peft_model
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from ..config import Config, to_dict
from ..contexts import Encoded, encode_examples
from ..data import Example
from ..engines import Completion, derive_seed, make_engine, rollout_spec, stop_ids_for
from . import distributed
from .checkpoint import latest_checkpoint, load_checkpoint
from .errors import TrainingError
from .host_memory import keep_freed_memory
from .steps import think_ids
from .teacher import Teacher


def data_order(n: int, seed: int, shuffle: bool, upto: int) -> list[int]:
    """Indices of the first `upto` prompts in training order: epochs of seeded permutations."""
    order: list[int] = []
    epoch = 0
    while len(order) < upto:
        perm = np.random.default_rng(derive_seed(seed, epoch)).permutation(n) if shuffle else np.arange(n)
        order += perm.tolist()
        epoch += 1
    return order[:upto]


def _check_output_dir(out: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    saved = out / "selfdistill.yaml"
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite:
        shutil.rmtree(out)
        return
    if not resume:
        raise TrainingError(f"{out}: output folder already holds files (a different run?); pass --overwrite to "
                            f"replace it or --resume to continue it")
    if saved.exists():
        diff, added = _config_diff(yaml.safe_load(saved.read_text()), to_dict(cfg))
        if diff:
            raise TrainingError(f"{out}: --resume with a different config ({', '.join(diff[:5])}); "
                                f"use the same settings or a new --output")
        if added:
            print(f"[selfdistill] {saved} predates the settings {', '.join(added)}; resuming with their defaults",
                  file=sys.stderr)


def _config_diff(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(settings that differ, settings the saved config lacks). A setting added to selfdistill after the run was
    started is absent from its saved config; it counts as its default value, so a run started by an older
    version resumes when the new setting is left at its default (the default keeps the old behaviour)."""
    defaults = to_dict(Config())
    diff, added = [], []
    for s, section in new.items():
        if not isinstance(section, dict) or s == "log":
            continue
        for k, v in section.items():
            if (s, k) == ("train", "max_steps"):
                continue
            if k not in old.get(s, {}):
                (added if v == defaults[s][k] else diff).append(f"{s}.{k}")
            elif old[s][k] != v:
                diff.append(f"{s}.{k}")
    return diff, added


def build_model_for_training(model, cfg: Config):
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if cfg.model.lora and not hasattr(model, "peft_config"):
        model = get_peft_model(model, LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                                                 lora_dropout=cfg.model.lora_dropout, task_type="CAUSAL_LM",
                                                 target_modules=cfg.model.lora_target_modules))
    return model


def float32_master_weights(model, cfg: Config) -> tuple[object, bool]:
    """bf16 weights train as float32 master weights with bf16 compute (autocast): AdamW on bf16 weights loses
    every update below bf16's resolution (2**-8 relative). Returns (model, autocast on?). LoRA: only the adapter
    (the trained weights) becomes float32; the frozen base stays in its loaded dtype. The final model is saved in
    the loaded dtype again. Memory: 4 bytes per trained weight instead of 2; see docs/multi_gpu.md."""
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if not any(p.dtype == torch.bfloat16 for p in floating):
        return model, cfg.train.bf16
    if hasattr(model, "peft_config"):
        for p in floating:
            if p.requires_grad:
                p.data = p.data.float()
        return model, True
    return model.float(), True


def make_optimizer(params, cfg: Config, device):
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))  # one kernel, not a per-tensor loop
    if cfg.optim.schedule == "cosine":
        return optimizer, get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    return optimizer, get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)


@dataclass
class Run:
    """Everything one training run holds between steps."""
    cfg: Config
    acc: object  # accelerate.Accelerator
    out: Path
    model: torch.nn.Module  # the student (saved, evaluated); under FSDP2 sharded in place (DTensor parameters)
    wrapped: torch.nn.Module  # what forward/backward run on (DDP-wrapped under DDP; the model otherwise)
    tokenizer: object
    teacher: Teacher | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    encoded: list[Encoded]
    skipped_records: int
    order: list[int]
    engine: object
    spec: object  # generation.SamplingSpec of the rollouts
    autocast: bool
    step: int = 0
    skipped_steps: int = 0
    save_dtype: torch.dtype | None = None
    strategy: str = "single"  # single | ddp | fsdp (distributed.resolve_strategy)
    pending: dict[int, list[Completion]] = field(default_factory=dict)  # this rank's rollouts by step, sampled ahead

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def per_rank(self) -> int:
        return self.cfg.train.prompts_per_step // self.world

    @property
    def n_micro(self) -> int:
        return self.per_rank // self.cfg.train.micro_batch_size

    def pending_state(self) -> dict:
        """The rollouts sampled ahead (rollout.steps_per_generation > 1), every rank's, for trainer_state.json; {}
        when there are none. A collective when several processes run: every rank calls it."""
        mine = {str(k): [[c.ids, c.logprobs] for c in v] for k, v in self.pending.items()}
        ranks = gather_object([mine]) if self.world > 1 else [mine]
        return {"pending_rollouts": ranks} if any(ranks) else {}

    def restore_pending(self, state: dict, where: Path) -> None:
        """This rank's rollouts sampled ahead, from a checkpoint's trainer_state (`pending_state`). Each step's
        rollouts are the ranks' lists end to end (the step's global batch in order), cut again for this run's
        processes, so a resume on another number of processes trains on the same rollouts."""
        ranks = state.get("pending_rollouts") or []
        n, rank = self.per_rank * self.cfg.rollout.num_rollouts, self.acc.process_index
        self.pending = {}
        for s in sorted({int(k) for r in ranks for k in r}):
            every = [Completion(ids, lps) for r in ranks for ids, lps in r.get(str(s), [])]
            if len(every) != n * self.world:
                raise TrainingError(f"{where}: holds {len(every)} rollouts sampled ahead for step {s + 1}, where this "
                                    f"run's step takes {n * self.world} (train.prompts_per_step x "
                                    f"rollout.num_rollouts); resume with the settings it was written with")
            self.pending[s] = every[rank * n:(rank + 1) * n]

    def amp(self):
        return torch.autocast(device_type=self.acc.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def teacher_amp(self):
        """The teacher pass's autocast: the student's (train.bf16), or bf16 for the teacher alone (teacher.bf16)."""
        return torch.autocast(device_type=self.acc.device.type, dtype=torch.bfloat16,
                              enabled=self.autocast or self.cfg.teacher.bf16)

    def close(self) -> None:
        """Close the rollout engine `setup` started (vLLM: frees its weights and KV cache)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def setup(cfg: Config, examples: list[Example], model, tokenizer, out: Path, *, resume: bool, overwrite: bool,
          accelerator=None) -> Run:
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    strategy = _strategy(cfg, acc)
    if cfg.train.malloc_keep_freed and acc.device.type == "cpu":
        keep_freed_memory()  # a CPU step reuses the memory the last one freed, without page faults
    if acc.is_main_process:
        _check_output_dir(out, cfg, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.train.seed)
    encoded, skipped = encode_examples(tokenizer, examples, cfg.data, cfg.context)
    if cfg.train.method == "sdft" and cfg.loss.mask_reasoning:
        think_ids(tokenizer)  # fail before any work
    save_dtype = next(model.parameters()).dtype
    model, autocast = float32_master_weights(build_model_for_training(model, cfg), cfg)
    model.to(acc.device)
    teacher = Teacher(model, cfg.teacher.kind, cfg.teacher.ema_rate) if cfg.train.method == "sdft" else None
    if teacher is not None and teacher.copy is not None:
        teacher.copy.to(acc.device)
    if strategy == "fsdp":  # shard student and teacher copy alike, before the optimizer sees the parameters
        distributed.wrap_for_training(model, teacher.copy if teacher is not None else None, acc.device,
                                      bf16=autocast, reduce_dtype=cfg.dist.reduce_dtype,
                                      cpu_offload=cfg.dist.cpu_offload or distributed.plugin_cpu_offload(acc))
        if acc.is_main_process:
            print(f"[selfdistill] FSDP2: student{', EMA teacher' if teacher and teacher.copy else ''} and AdamW "
                  f"states sharded over {acc.num_processes} process(es), compute {'bf16' if autocast else 'fp32'}",
                  file=sys.stderr)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, acc.device)
    wrapped = acc.prepare_model(model) if strategy == "ddp" else model
    if strategy == "ddp" and not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        raise TrainingError(f"distributed type {acc.distributed_type.name}: only DDP data parallel is supported; "
                            f"FSDP/DeepSpeed would need sharding-aware backward, clipping and EMA teacher "
                            f"(docs/multi_gpu.md)")
    P = cfg.train.prompts_per_step
    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg) if cfg.train.method == "sdft" else None
    spec = rollout_spec(cfg.rollout, stop_ids_for(tokenizer, model))
    run = Run(cfg, acc, out, model, wrapped, tokenizer, teacher, optimizer, scheduler, params, encoded, skipped,
              data_order(len(encoded), cfg.train.seed, cfg.data.shuffle, cfg.train.max_steps * P), engine, spec,
              autocast, save_dtype=save_dtype if save_dtype != torch.float32 else None, strategy=strategy)
    if resume:
        try:
            _resume(run)
        except BaseException:
            run.close()
            raise
    return run


def _strategy(cfg: Config, acc) -> str:
    """single | ddp | fsdp for this launch; unsupported combinations stop here with a one-line reason."""
    try:
        strategy = distributed.resolve_strategy(cfg.dist.strategy, acc, lora=cfg.model.lora)
    except distributed.DistributedConfigError as e:
        raise TrainingError(str(e)) from None
    check_launch(cfg, acc.num_processes, strategy)
    return strategy


def planned_strategy(requested: str, world: int) -> str:
    """The strategy a launch of `world` processes will resolve to (without an accelerate FSDP config)."""
    if requested == "fsdp":
        return "fsdp"
    return "ddp" if world > 1 else "single"


def check_launch(cfg: Config, world: int, strategy: str) -> None:
    """The checks of a launch that need no process group: `selfdistill train --num-processes N` runs them before
    any worker starts (one line, once), every worker again in `setup`."""
    try:
        distributed.check_supported(strategy, lora=cfg.model.lora, distributed_type="")
    except distributed.DistributedConfigError as e:
        raise TrainingError(str(e)) from None
    sdft = cfg.train.method == "sdft"
    if sdft and cfg.rollout.engine == "vllm" and cfg.rollout.vllm_sleep == "on" and not torch.cuda.is_available():
        raise TrainingError("rollout.vllm_sleep=on needs a CUDA GPU: vLLM's CPU backend has no sleep mode; use "
                            "rollout.vllm_sleep=auto or off")
    if strategy == "fsdp" and sdft and cfg.rollout.engine == "hf" and cfg.rollout.dtype not in ("model",
                                                                                              cfg.model.dtype):
        raise TrainingError(f"rollout.dtype={cfg.rollout.dtype} with the hf engine needs a whole copy of the weights "
                            f"per process, which dist.strategy=fsdp shards; use rollout.engine=vllm (its own dtype) "
                            f"or rollout.dtype=model")
    if strategy == "fsdp" and sdft and cfg.teacher.kind == "live":
        raise TrainingError("teacher.kind=live with dist.strategy=fsdp is not supported: the teacher pass would "
                            "gather the student's weights as inference tensors; use teacher.kind=ema or frozen")
    P, mb = cfg.train.prompts_per_step, cfg.train.micro_batch_size
    if P % (world * mb):
        raise TrainingError(f"train.prompts_per_step={P} must be a multiple of processes x micro_batch_size "
                            f"= {world} x {mb}")


def _resume(run: Run) -> None:
    ck = latest_checkpoint(run.out / "checkpoints")
    if ck is None:
        return
    sharded = (ck / ".metadata").exists()
    if sharded != (run.strategy == "fsdp"):
        raise TrainingError(f"{ck}: written with dist.strategy={'fsdp' if sharded else 'ddp or one process'}; "
                            f"resume it with the same strategy")
    if sharded:
        state = distributed.load_sharded_checkpoint(ck, model=run.model, optimizer=run.optimizer,
                                                    teacher=run.teacher.copy if run.teacher else None,
                                                    scheduler=run.scheduler)
    else:
        teacher_sd, state = load_checkpoint(ck, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler)
        if run.teacher is not None:
            run.teacher.load_state_dict(teacher_sd)
    run.step, run.skipped_steps = state["step"], state.get("skipped_steps", 0)
    run.restore_pending(state, ck)
    if run.engine is not None:
        run.engine.sync_weights(run.model)
    if run.acc.is_main_process:
        print(f"[selfdistill] resumed from {ck} at step {run.step}", file=sys.stderr)
