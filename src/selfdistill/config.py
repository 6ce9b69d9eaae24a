"""Typed run configuration: dataclasses, a YAML file, dotted command-line overrides, presets.

Defaults reproduce what the paper's published results used (see docs/method.md): per-token forward
KL(teacher || student) over the full vocabulary, EMA teacher with rate 0.01, the first 3 completion tokens left
out of the loss, one rollout per prompt at temperature 1.0, AdamW with lr 5e-5, cosine schedule with 10 warmup
steps, grad-norm clip 1.0, 32 prompts per optimizer step, the paper's teacher template.

Every key is explicit; an unknown key is an error with a suggestion; a value out of range is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The official code's template (string.Template; leading and trailing newline; ends with a period).
PAPER_TEACHER_TEMPLATE = (
    "\n$prompt\n\nThis is an example for a response to the question:\n$demonstration\n\n"
    "Now answer with a response of your own, including the thinking process.\n"
)


# Named teacher templates (context.teacher_template accepts a name or a template string).
# paper_no_thinking drops ", including the thinking process": at 135M the full sentence makes the teacher open
# with a reasoning preamble, which the student then learns (measured: docs/results.md).
TEACHER_TEMPLATES = {
    "paper": PAPER_TEACHER_TEMPLATE,
    "paper_no_thinking": PAPER_TEACHER_TEMPLATE.replace(", including the thinking process.", "."),
}


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # alias, local transformers dir, local .gguf file, or hub id
    dtype: str = "float32"  # weights dtype: float32 | bfloat16
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"


@dataclass
class DataConfig:
    path: str = ""  # JSONL / JSON / save_to_disk folder / hub dataset, or task:<name> for a built-in task
    max_prompt_tokens: int = 1024  # student prompt budget (tokens after chat templating)
    max_teacher_prompt_tokens: int = 2048  # teacher prompt budget; never truncated silently
    on_overlength: str = "error"  # error | skip  (skip drops the record and reports the count)
    shuffle: bool = True


@dataclass
class ContextConfig:
    teacher_template: str = PAPER_TEACHER_TEMPLATE  # string.Template with $prompt, $demonstration
    source_prefix: str = "$source\n\n"  # prepended to $prompt in the teacher context when a record has `source`


@dataclass
class RolloutConfig:
    num_rollouts: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 2048  # paper: 2048 (skills), 1024 (knowledge)
    greedy: bool = False  # deterministic rollouts (tests, distributed equivalence)
    top_k: int = 0  # 0 = off (the paper samples with no top-k)
    vllm_sleep: str = "auto"  # vllm: sleep between rollouts (KV cache freed, weights offloaded); auto = on with CUDA
    vllm_gpu_memory_utilization: float = 0.3  # vllm on a GPU: its share of the device (weights + KV cache)
    engine: str = "hf"  # hf (a decoding loop on the live weights) | vllm (optional extra; see docs/vllm.md)
    batch_size: int = 0  # sequences per engine call; 0: all of a process's rollouts for the optimizer step in one call
    dtype: str = "model"  # weights rollouts are sampled with: model (the trainer's) | float32 | bfloat16 (hf: a copy)
    steps_per_generation: int = 1  # optimizer steps one sampling round serves (TRL's key); >1: IS-weighted


@dataclass
class LossConfig:
    divergence: str = "forward_kl"  # forward_kl = KL(teacher||student) | reverse_kl = KL(student||teacher) | jsd
    support: str = "full"  # full | top_k
    top_k: int = 20
    topk_from: str = "teacher"  # teacher | student
    jsd_beta: float = 0.5  # JSD mixture weight on the student distribution
    skip_first_tokens: int = 3
    importance_weights: bool = False  # truncated IS weights for rollouts from another engine (on when rollout.engine=vllm, unless set)
    importance_cap: float = 2.0
    chunk_size: int = 256  # >0: memory-lean chunked full-vocab loss, positions per chunk; 0: unchunked; top_k: unused
    mask_reasoning: bool = False  # drop <think>...</think> reasoning tokens from the SDFT loss (thinking models)


@dataclass
class TeacherConfig:
    kind: str = "ema"  # ema | frozen | live
    ema_rate: float = 0.01  # teacher <- (1-a) teacher + a student, after every optimizer step
    bf16: bool = False  # teacher pass under torch.autocast bfloat16 (weights, EMA stay float32); train.bf16 implies it


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 10
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    method: str = "sdft"  # sdft | sft | dft
    max_steps: int = 100  # optimizer steps
    prompts_per_step: int = 32  # prompts per optimizer step (global batch)
    micro_batch_size: int = 4  # prompts per forward/backward; gradient accumulation fills the step
    bf16: bool = False  # torch.autocast bfloat16 (CPU and CUDA)
    seed: int = 0
    on_nonfinite: str = "stop"  # stop | skip  (a NaN/inf loss or gradient)
    malloc_keep_freed: bool = True  # CPU training, glibc: malloc keeps freed blocks for reuse (host_memory.py)


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto (DDP when several processes) | ddp | fsdp (FSDP2: student and EMA teacher sharded)
    cpu_offload: bool = False  # fsdp: sharded parameters, gradients and AdamW states live in CPU memory
    reduce_dtype: str = "float32"  # fsdp: dtype of the gradient reduce-scatter (float32 | bfloat16)


@dataclass
class LogConfig:
    every: int = 1
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    keep_last: int = 2
    rollout_examples: int = 2  # first tokens of this many rollouts logged per interval
    rollout_preview_chars: int = 80
    report_to: str = "none"  # none | tensorboard | trackio
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)
    preset: str = "paper"
    deviations: list[str] = field(default_factory=list)  # where this run departs from the paper, and why


# Presets are override dicts applied on top of the defaults (which are the paper's settings).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # The same method on a 2-core CPU: shorter generations and a smaller global batch.
    "cpu": {
        "rollout.max_new_tokens": 64,
        "train.prompts_per_step": 8,
        "data.max_prompt_tokens": 512,
        "data.max_teacher_prompt_tokens": 1024,
    },
}
PRESET_DEVIATIONS = {
    "cpu": ["rollout.max_new_tokens 2048 -> 64 and train.prompts_per_step 32 -> 8: a 2-core CPU cannot run "
            "the paper's lengths and batch in minutes"],
}

CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.vllm_sleep": ("auto", "on", "off"),
    "rollout.dtype": ("model", "float32", "bfloat16"),
    "data.on_overlength": ("error", "skip"),
    "loss.divergence": ("forward_kl", "reverse_kl", "jsd"),
    "loss.support": ("full", "top_k"),
    "loss.topk_from": ("teacher", "student"),
    "teacher.kind": ("ema", "frozen", "live"),
    "optim.schedule": ("cosine", "constant"),
    "train.method": ("sdft", "sft", "dft"),
    "train.on_nonfinite": ("stop", "skip"),
    "log.report_to": ("none", "tensorboard", "trackio"),
    "dist.strategy": ("auto", "ddp", "fsdp"),
    "dist.reduce_dtype": ("float32", "bfloat16"),
}


def _all_keys(cfg: Config) -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(v)]
        else:
            keys.append(f.name)
    return keys


def _coerce(value: Any, current: Any, key: str) -> Any:
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key}: expected true/false, got {value!r}")
    elif isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
    elif isinstance(current, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ConfigError(f"config key {key}: expected a number, got {value!r}")
    elif isinstance(current, str):
        value = "" if value is None else str(value)
    elif isinstance(current, list):
        if not isinstance(value, list):
            value = [value]
    return value


def set_key(cfg: Config, key: str, value: Any) -> None:
    keys = _all_keys(cfg)
    if key not in keys:
        hint = difflib.get_close_matches(key, keys, n=1)
        raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                         "; known sections: model, data, context, rollout, "
                                                         "loss, teacher, optim, train, dist, log"))
    if "." in key:
        sec, name = key.split(".", 1)
        obj = getattr(cfg, sec)
    else:
        obj, name = cfg, key
    value = _coerce(value, getattr(obj, name), key)
    if key == "context.teacher_template" and value in TEACHER_TEMPLATES:
        value = TEACHER_TEMPLATES[value]
    setattr(obj, name, value)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                preset: str | None = None) -> Config:
    """Defaults (the paper) <- preset <- YAML file <- dotted overrides; then validated."""
    cfg = Config()
    file_vals: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the config file must be a mapping")
        file_vals = flatten(raw)
    overrides = dict(overrides or {})
    preset = preset or overrides.pop("preset", None) or file_vals.pop("preset", None) or "paper"
    overrides.pop("preset", None)
    if preset not in PRESETS:
        hint = difflib.get_close_matches(preset, list(PRESETS), n=1)
        raise ConfigError(f"unknown preset {preset!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    cfg.preset = preset
    cfg.deviations = list(PRESET_DEVIATIONS.get(preset, []))
    deviations = file_vals.pop("deviations", None)
    for src in (PRESETS[preset], file_vals, overrides):
        for k, v in src.items():
            set_key(cfg, k, v)
    if deviations:
        cfg.deviations += list(deviations)
    if "loss.importance_weights" not in {**PRESETS[preset], **file_vals, **overrides}:
        cfg.loss.importance_weights = importance_weights_default(cfg)
    validate(cfg)
    return cfg


def importance_weights_default(cfg: Config) -> bool:
    """loss.importance_weights when not set: on where the rollouts' numerics are not the trainer's (vLLM, or a
    rollout.dtype other than the model's) or their weights are older than the trainer's (steps_per_generation > 1),
    so the trainer corrects for them."""
    return (cfg.rollout.engine == "vllm" or cfg.rollout.dtype not in ("model", cfg.model.dtype)
            or cfg.rollout.steps_per_generation > 1)


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec), name)
        if v not in allowed:
            hint = difflib.get_close_matches(str(v), allowed, n=1)
            raise ConfigError(f"config key {key}: {v!r} is not one of {', '.join(allowed)}"
                              + (f"; did you mean {hint[0]!r}?" if hint else ""))

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}")
    need(0 < cfg.teacher.ema_rate <= 1, f"teacher.ema_rate must be in (0, 1], got {cfg.teacher.ema_rate}")
    need(cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    need(cfg.optim.max_grad_norm > 0, "optim.max_grad_norm must be > 0")
    need(cfg.train.max_steps >= 1, f"train.max_steps must be >= 1, got {cfg.train.max_steps}")
    need(cfg.train.prompts_per_step >= 1, "train.prompts_per_step must be >= 1")
    need(cfg.train.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
    need(cfg.train.prompts_per_step % cfg.train.micro_batch_size == 0,
         f"train.prompts_per_step ({cfg.train.prompts_per_step}) must be a multiple of train.micro_batch_size "
         f"({cfg.train.micro_batch_size})")
    need(cfg.rollout.num_rollouts >= 1, "rollout.num_rollouts must be >= 1")
    need(cfg.rollout.temperature > 0, "rollout.temperature must be > 0 (use rollout.greedy for argmax)")
    need(0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]")
    need(cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    need(cfg.rollout.top_k >= 0, "rollout.top_k must be >= 0 (0 = off)")
    need(0 < cfg.rollout.vllm_gpu_memory_utilization < 1, "rollout.vllm_gpu_memory_utilization must be in (0, 1)")
    need(cfg.rollout.batch_size >= 0, "rollout.batch_size must be >= 0 (0 = all of the step's rollouts in one call)")
    need(cfg.rollout.steps_per_generation >= 1, "rollout.steps_per_generation must be >= 1 (1 = fresh rollouts every "
                                                "optimizer step)")
    need(cfg.rollout.steps_per_generation == 1 or cfg.train.method != "sdft" or cfg.loss.importance_weights,
         f"rollout.steps_per_generation={cfg.rollout.steps_per_generation} samples later steps' rollouts with older "
         f"weights; it needs loss.importance_weights=true to correct for them")
    need(cfg.loss.top_k >= 1, "loss.top_k must be >= 1")
    need(0 < cfg.loss.jsd_beta < 1, "loss.jsd_beta must be in (0, 1)")
    need(cfg.loss.skip_first_tokens >= 0, "loss.skip_first_tokens must be >= 0")
    need(cfg.loss.importance_cap > 0, "loss.importance_cap must be > 0")
    need(cfg.loss.chunk_size >= 0, "loss.chunk_size must be >= 0")
    need(cfg.data.max_prompt_tokens >= 1 and cfg.data.max_teacher_prompt_tokens >= 1,
         "data token budgets must be >= 1")
    need(cfg.log.keep_last >= 1, "log.keep_last must be >= 1")
    need("$prompt" in cfg.context.teacher_template and "$demonstration" in cfg.context.teacher_template,
         "context.teacher_template must contain $prompt and $demonstration")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    d = dict(d)
    cfg = load_config(overrides={k: v for k, v in flatten({k: v for k, v in d.items()
                                                              if k not in ("deviations", "preset")}).items()},
                      preset=d.get("preset", "paper"))
    cfg.deviations = list(d.get("deviations", cfg.deviations))
    return cfg


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, width=120)


def parse_dotted_overrides(argv: list[str]) -> dict[str, Any]:
    """['--loss.divergence', 'reverse_kl', '--train.seed=3'] -> {'loss.divergence': 'reverse_kl', ...}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r} (overrides look like --section.key value)")
        a = a[2:]
        if "=" in a:
            k, v = a.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{a} needs a value")
            k, v = a, argv[i + 1]
            i += 2
        out[k.replace("-", "_") if "." not in k else k] = v
    return out
