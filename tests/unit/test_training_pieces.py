"""Small pieces of training/ without a training run: the Teacher (EMA rule, live, frozen LoRA) and the StopFlag."""

from __future__ import annotations

import signal

import pytest
import torch

from helpers import build_tiny_model
from selfdistill.training import StopFlag


def test_ema_teacher_math(tiny_tok, tmp_path):
    from selfdistill.training.teacher import Teacher
    m = build_tiny_model(tiny_tok)
    init = {k: v.detach().clone() for k, v in m.state_dict().items()}
    t = Teacher(m, "ema", 0.1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    t.update()
    for (k, v), tp in zip(m.named_parameters(), t.copy.parameters()):
        expect = 0.9 * init[k] + 0.1 * v.detach()
        assert torch.allclose(tp, expect, atol=1e-6), k


def test_live_teacher_is_the_student(tiny_tok):
    from selfdistill.training.teacher import Teacher
    m = build_tiny_model(tiny_tok)
    t = Teacher(m, "live")
    assert t.copy is None
    with t.scoring() as tm:
        assert tm is m


def test_lora_frozen_teacher_disables_adapter(tiny_tok):
    from peft import LoraConfig, get_peft_model
    from selfdistill.training.teacher import Teacher
    base = build_tiny_model(tiny_tok)
    ids = torch.tensor([[1, 5, 9]])
    ref = base(ids).logits.detach()
    m = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    t = Teacher(m, "frozen")
    with torch.no_grad(), t.scoring() as tm:
        assert torch.allclose(tm(ids).logits, ref, atol=1e-6)
    assert not torch.allclose(m(ids).logits, ref, atol=1e-4)  # the student has its adapter back


def test_stop_flag_a_repeat_within_a_second_is_the_same_stop_and_a_later_one_stops_at_once():
    now = [100.0]
    flag = StopFlag(clock=lambda: now[0])
    assert not flag.is_set()
    flag(signal.SIGTERM, None)
    assert flag.is_set() and flag.signal == "SIGTERM"
    now[0] += 0.05
    flag(signal.SIGTERM, None)  # forwarded copy of the same stop: no exception
    now[0] += StopFlag.REPEAT_S
    with pytest.raises(KeyboardInterrupt):
        flag(signal.SIGINT, None)


FAULTS_AFTER_FREE = """
import resource, sys, torch
from selfdistill.training.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # 64 MiB, touched, then freed (the heap settles after the first two)
    x = torch.ones(16 << 20)
    del x
before = faults()
y = torch.ones(16 << 20)  # the same size again
print(applied, faults() - before)
"""


@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_memory_lets_the_next_block_reuse_freed_pages(mode):
    """glibc by default returns a freed 64 MiB block to the system, so the next one faults in all of its 16384
    pages again, every time; after keep_freed_memory a block of a size freed before reuses its pages (a fresh
    process each)."""
    import platform
    import subprocess
    import sys

    from helpers import subprocess_env
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's (elsewhere keep_freed_memory returns False and changes nothing)")
    out = subprocess.run([sys.executable, "-c", FAULTS_AFTER_FREE, mode], env=subprocess_env(), text=True,
                         capture_output=True, check=True).stdout.split()
    pages = (16 << 20) * 4 // 4096
    if mode == "keep":
        assert out[0] == "True" and int(out[1]) < pages // 10, out
    else:
        assert int(out[1]) > pages // 2, out
