"""Small pieces of training/ without a training run: the Teacher (EMA rule, live, frozen LoRA), the StopFlag and
keep_freed_memory (in fresh processes)."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys

import pytest
import torch

from helpers import build_tiny_model, subprocess_env
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


MALLINFO = """
import ctypes, resource, sys, torch
from selfdistill.training.host_memory import heap_rows, keep_freed_memory

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, in bytes
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
"""
HEAP_AND_FAULTS = MALLINFO + """
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
mapped_before = mallinfo2().hblkhd
x = torch.ones(1 << 20)  # a 4 MiB block
mapped_by_it = mallinfo2().hblkhd - mapped_before
del x
heap_free = mallinfo2().fordblks
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(5):  # one phase of a step: 64 blocks of 1 MiB alive together, touched, then all freed
    before = faults()
    blocks = [torch.ones(1 << 18) for _ in range(64)]
    del blocks
    counts.append(faults() - before)
print(applied, mapped_by_it, heap_free, *counts)
"""


@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_memory_serves_blocks_from_the_heap_and_keeps_them_after_free(mode):
    """In a fresh process glibc maps a 4 MiB block on its own (and unmaps it on free); after keep_freed_memory it
    comes from the heap and stays there when freed, and a phase that allocates 64 MiB in 1 MiB blocks and frees
    them no longer faults its pages in again on every repeat (by default it usually does: 16353 faults a repeat
    here, though in some processes glibc's own policy settles too, so only the kept side is asserted on that)."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's (elsewhere keep_freed_memory returns False and changes nothing)")
    out = subprocess.run([sys.executable, "-c", HEAP_AND_FAULTS, mode], env=subprocess_env(), text=True,
                         capture_output=True, check=True).stdout.split()
    applied, mapped_by_it, heap_free, repeats = out[0], int(out[1]), int(out[2]), [int(n) for n in out[3:]]
    if mode == "keep":
        assert applied == "True" and mapped_by_it == 0 and heap_free >= 4 << 20, out
        assert max(repeats[-3:]) < 100, out
    else:
        assert mapped_by_it >= 4 << 20, out


LOSS_CHUNKS = MALLINFO + """
keep_freed_memory()
for rows in (heap_rows(256, 49152 * 4), 256):  # a loss chunk's float32 [rows, V] buffer, SmolLM2's vocabulary
    before = mallinfo2().hblkhd
    x = torch.empty(rows, 49152)
    print(rows, mallinfo2().hblkhd - before)
    del x
"""


def test_loss_chunks_of_heap_rows_come_from_the_kept_heap():
    """`heap_rows` caps a chunk at 4 MiB, an eighth of glibc's mmap threshold: after keep_freed_memory a 21-row
    chunk of a 49,152-token vocabulary comes from the heap (mapped bytes unchanged), a 256-row one (50 MB) is
    mapped on its own and faulted in afresh at every use."""
    from selfdistill.training.host_memory import heap_rows
    assert heap_rows(256, 49152 * 4) == 21 and heap_rows(16, 49152 * 4) == 16 and heap_rows(256, 1 << 30) == 1
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's (elsewhere keep_freed_memory returns False and changes nothing)")
    out = subprocess.run([sys.executable, "-c", LOSS_CHUNKS], env=subprocess_env(), text=True,
                         capture_output=True, check=True).stdout.split()
    assert out == ["21", "0", "256", out[3]] and int(out[3]) >= 256 * 49152 * 4, out
