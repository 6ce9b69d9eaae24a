"""The teacher's weights: `ema` (default), `frozen` or `live`.

Full fine-tuning:
  ema     a separate copy of the model, initialised to the student; after every optimizer step
          teacher <- (1 - a) * teacher + a * student   (a = teacher.ema_rate, 0.01 by default), in float32.
          Under FSDP2 (dist.strategy=fsdp) the copy is sharded exactly like the student and each rank updates
          its own float32 shards (no communication)
  frozen  a separate copy of the initial weights, never updated
  live    the current student itself (no copy; the paper's ablation shows this one diverges)
LoRA (peft):
  frozen  the base model with the adapter disabled (no copy)
  ema     a second adapter "teacher" on the same base model, updated by EMA from the student's adapter —
          no second copy of the base model
  live    the student with its adapter
"""

from __future__ import annotations

import contextlib
import copy

import torch

TEACHER_ADAPTER = "teacher"


def _local(p: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter's local shard; the tensor itself otherwise."""
    return p.to_local() if hasattr(p, "to_local") else p


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


class Teacher:
    def __init__(self, student: torch.nn.Module, kind: str = "ema", ema_rate: float = 0.01):
        self.kind, self.ema_rate = kind, ema_rate
        self.student = student
        self.copy: torch.nn.Module | None = None
        self.lora = is_peft(student)
        if self.lora:
            if kind == "ema":
                student.add_adapter(TEACHER_ADAPTER, student.peft_config["default"])
                self._lora_pairs = self._adapter_pairs()
                with torch.no_grad():
                    for t, s in self._lora_pairs:
                        t.copy_(s)
                        t.requires_grad_(False)
        elif kind in ("ema", "frozen"):
            self.copy = copy.deepcopy(student).float().eval()
            self.copy.requires_grad_(False)

    def _adapter_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = dict(self.student.named_parameters())
        pairs = []
        for name, p in params.items():
            if f".{TEACHER_ADAPTER}." in name:
                pairs.append((p, params[name.replace(f".{TEACHER_ADAPTER}.", ".default.")]))
        if not pairs:
            raise RuntimeError("LoRA EMA teacher: found no teacher adapter weights")
        return pairs

    @contextlib.contextmanager
    def scoring(self):
        """Context in which `self.model` computes the teacher's logits (no gradient)."""
        if self.copy is not None:
            yield self.copy
            return
        if not self.lora or self.kind == "live":
            yield self.student
            return
        flags = {n: p.requires_grad for n, p in self.student.named_parameters()}
        try:
            if self.kind == "frozen":
                with self.student.disable_adapter():
                    yield self.student
            else:
                self.student.set_adapter(TEACHER_ADAPTER)
                yield self.student
        finally:
            if self.kind == "ema":
                self.student.set_adapter("default")
            for n, p in self.student.named_parameters():  # set_adapter toggles requires_grad; restore
                p.requires_grad_(flags[n])

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: teacher <- (1 - a) teacher + a student (ema only)."""
        if self.kind != "ema":
            return
        a = self.ema_rate
        if self.lora:
            t, s = zip(*self._lora_pairs)
            torch._foreach_lerp_(list(t), [x.detach().to(y.dtype) for x, y in zip(s, t)], a)
            return
        for t, s in zip(self.copy.parameters(), self.student.parameters()):  # FSDP2: this rank's shards only
            _local(t).lerp_(_local(s).detach().to(t.dtype), a)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.copy is not None:
            return {k: v.detach().clone() for k, v in self.copy.state_dict().items()}
        if self.lora and self.kind == "ema":
            names = {id(p): n for n, p in self.student.named_parameters()}
            return {names[id(t)]: t.detach().clone() for t, _ in self._lora_pairs}
        return {}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if self.copy is not None:
            self.copy.load_state_dict(sd)
        elif self.lora and self.kind == "ema":
            params = dict(self.student.named_parameters())
            with torch.no_grad():
                for n, v in sd.items():
                    params[n].copy_(v)
