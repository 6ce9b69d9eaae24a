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
