"""Named run presets: the demo's settings, which `selfdistill demo` runs and `selfdistill sweep --demo-settings`
starts from (its learning rate swept)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..methods import MethodSpec

DEMO_TASK = "knowledge"
DEMO_FACTS = 32
DEMO_OVERRIDES = {
    "rollout.max_new_tokens": 32,
    "train.prompts_per_step": 8,
    "train.micro_batch_size": 8,
    "train.max_steps": 40,
    "optim.lr": 3e-4,
    "optim.warmup_steps": 4,
    "context.teacher_template": "paper_no_thinking",
    "data.max_prompt_tokens": 512,
    "data.max_teacher_prompt_tokens": 1024,
}
DEMO_METHODS = ["sdft", "sft@lr=1e-4", "sft@lr=2e-5"]
DEMO_SETTINGS_WHY = [
    "Task: ISO 4217 codes. At 135M the teacher only beats the student clearly when the answer is in its context "
    "(knowledge acquisition); for BFCL tool calls the gap is small (see the probe table in docs/tasks.md).",
    f"{DEMO_FACTS} facts, 40 steps of 8 prompts, 32 new tokens, cosine decay after 4 warm-up steps: the budget that "
    "fits 20 minutes on 2 CPU cores. The paper's lr grid (5e-6..5e-5) moves a 135M model too little in 40 steps.",
    "SDFT lr 3e-4: measured on 2026-11-28 (this template, bf16, same budget) 1e-4 reached 3% on reworded questions "
    "(47% in the training phrasing), 3e-4 reached 53% (53%) in that run; three seeds on another machine gave 9%, "
    "19% and 41%. SFT is run at 1e-4 and 2e-5, because a fair comparison is against a tuned SFT (the paper swept "
    "both): 1e-4 learns everything, 2e-5 barely learns.",
    "Teacher template paper_no_thinking: the paper's, without ', including the thinking process'. With the full "
    "sentence this 135M teacher opens with a reasoning preamble that the student learns within 10 steps, and SDFT "
    "learned nothing (0% on reworded questions at lr 1e-4, docs/results.md). The source fact comes before the question.",
    "bf16 autocast when the CPU has native bf16 (avx512_bf16 / amx) or on CUDA: ~25% faster steps here; "
    "fp32 otherwise. Same for every method. Override with --train.bf16 false.",
    "Rollouts from a bf16 copy of the weights where bf16 is native (rollout.dtype=bfloat16, corrected by the "
    "importance weights): 1.5x faster sampling here; over seeds 0-2 it reached 31%, 44%, 47% on reworded "
    "questions against 28%, 38%, 53% with float32 rollouts, retention within the same spread (docs/results.md). "
    "Override with --rollout.dtype model.",
    "Checkpoints are evaluated along training so retention can be compared at equal new-task accuracy; the "
    "same facts are also asked in the training phrasing, naming the currency by its country, and in reverse "
    "(code -> name), never trained on as test sets. Retention is measured on all 120 items.",
]


def fast_bf16() -> bool:
    """True when bf16 autocast is natively fast here: CUDA with bf16, or an x86 CPU with avx512_bf16 / amx_bf16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass(frozen=True)
class RunPreset:
    """A named set of run settings: config overrides on top of the `cpu` preset, the methods it compares, the task
    and its size, and why each setting was chosen (printed and written into the report)."""
    name: str
    task: str
    n_facts: int
    overrides: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    why: tuple[str, ...] = ()

    def config_overrides(self) -> dict:
        """The overrides with bf16 autocast and rollouts from a bf16 copy where bf16 is natively fast here."""
        fast = fast_bf16()
        return {**self.overrides, "train.bf16": fast, "rollout.dtype": "bfloat16" if fast else "model"}

    def method_specs(self) -> list[MethodSpec]:
        return [MethodSpec.parse(m) for m in self.methods]


DEMO = RunPreset("demo", DEMO_TASK, DEMO_FACTS, DEMO_OVERRIDES, tuple(DEMO_METHODS), tuple(DEMO_SETTINGS_WHY))
