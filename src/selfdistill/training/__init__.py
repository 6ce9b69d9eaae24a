"""Training: SDFT and the SFT / DFT baselines in one loop.

* :mod:`.batches`: the packed prompt + completion layout (shared with evaluation).
* :mod:`.steps`: one micro-step of each method (SDFT: rollout, teacher pass, student pass, loss).
* :mod:`.loop`: `optimizer_step` and `train`, the readable recipe.
* :mod:`.setup`: model, master weights, teacher, optimizer, wrapping, engine, resume -> `Run`.
* :mod:`.runtime`: stop flag, progress, metrics log, saving.
* :mod:`.teacher`, :mod:`.checkpoint`, :mod:`.distributed`: the EMA teacher, atomic checkpoints, FSDP2.
"""

from __future__ import annotations

from .batches import Packed, completion_logits, pack
from .errors import TrainingError
from .loop import TrainResult, optimizer_step, train
from .runtime import StopFlag
from .setup import check_launch, planned_strategy

__all__ = ["Packed", "StopFlag", "TrainResult", "TrainingError", "check_launch", "planned_strategy", "completion_logits", "optimizer_step", "pack",
           "train"]
