"""Atomic checkpoints and resume.

A checkpoint folder `checkpoints/step-000010/` holds the student weights (safetensors), the EMA teacher
(safetensors), the optimizer and scheduler states, the RNG states (python, numpy, torch) and
`trainer_state.json` (step, data position, counters). It is written to a temporary sibling folder, every file is
fsynced, a `COMPLETE` marker is written last, and only then is the folder renamed into place. A kill during a save
leaves a `*.tmp*` folder that is never loaded; `latest_checkpoint` picks the newest folder with the marker.
Old checkpoints are rotated (`keep_last`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


class CheckpointError(RuntimeError):
    pass


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def _write_bytes(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All weights for full fine-tuning; only the trainable (adapter) weights for LoRA."""
    if hasattr(model, "peft_config"):
        return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    sd = model.state_dict()
    seen, out = {}, {}
    for k, v in sd.items():  # tied weights: store once, reload through load_state_dict(strict=False)
        if v.data_ptr() in seen:
            continue
        seen[v.data_ptr()] = k
        out[k] = v.detach().contiguous()
    return out


def publish(tmp: Path, final: Path) -> None:
    """Put the complete, synced folder `tmp` in place of `final` (one rename) and make the rename durable by syncing
    the parent folder. Until the rename, a crash leaves the previous `final` (or none) and a `.tmp` folder that is
    never loaded."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def save_checkpoint(root: Path, step: int, *, model, teacher_state: dict, optimizer, scheduler,
                    trainer_state: dict, keep_last: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(trainable_state_dict(model), str(tmp / "model.safetensors"))
        if teacher_state:
            save_file({k: v.contiguous() for k, v in teacher_state.items()}, str(tmp / "teacher.safetensors"))
        _write_bytes(tmp / "optimizer.pt", lambda f: torch.save(optimizer.state_dict(), f))
        _write_bytes(tmp / "scheduler.pt", lambda f: torch.save(scheduler.state_dict(), f))
        _write_bytes(tmp / "rng.pt", lambda f: torch.save(rng_state(), f))
        _write_bytes(tmp / "trainer_state.json", lambda f: f.write(json.dumps(trainer_state, indent=1).encode()))
        for p in tmp.iterdir():  # safetensors files were written by save_file: sync them too
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _write_bytes(tmp / MARKER, lambda f: f.write(b"ok\n"))
        fsync_dir(tmp)
        publish(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{final}: saving the checkpoint failed ({e.strerror or e}); "
                              f"the previous checkpoint is kept") from None
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and ".tmp" not in p.name and (p / MARKER).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    c = list_checkpoints(root)
    return c[-1] if c else None


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG; return (teacher_state, trainer_state)."""
    sd = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise CheckpointError(f"{path}: checkpoint has weights the model lacks: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    teacher = load_file(str(path / "teacher.safetensors")) if (path / "teacher.safetensors").exists() else {}
    state = json.loads((path / "trainer_state.json").read_text())
    return teacher, state
