#!/usr/bin/env python
"""The teacher pass in float32 against bf16 autocast (teacher.bf16): its time, and how far its target moves.

Run with `make bench` (after bench_step.py) or `.venv/bin/python benchmarks/bench_teacher.py [--reps 3]`.

On the embedded model and the demo's task (knowledge, its paper_no_thinking teacher template), the student samples
one rollout per training question (temperature 1, --max-new-tokens, seeded, stopping at the end of its turn), as
an SDFT step does. The teacher (the same weights, the demonstration in its context) then scores those completions
`--reps` times each way, alternated: in float32, and under bf16 autocast. Printed, over the completion tokens:
  - the teacher pass's time per call (median) both ways and their ratio;
  - KL(float32 teacher || bf16 teacher) per token, mean and max: how far the bf16 pass moves the target;
  - KL(teacher || student) per token, mean: the SDFT loss's scale at the start of training, the yardstick;
  - the share of tokens whose most likely next token is the same both ways.
The last line is `teacher_bf16_speedup=<x> target_shift_over_loss=<mean KL(fp32||bf16) / mean KL(teacher||student)>`.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def per_token_kl(p_logits_NV: torch.Tensor, q_logits_NV: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from logits, float32."""
    lp, lq = p_logits_NV.float().log_softmax(-1), q_logits_NV.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def timed(fn, reps: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8, help="training questions (one rollout each)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="teacher passes each way, alternated")
    a = ap.parse_args()

    from selfdistill.config import load_config
    from selfdistill.contexts import encode_examples
    from selfdistill.engines import make_engine, prompt_seeds, rollout_spec, stop_ids_for
    from selfdistill.models import load_model
    from selfdistill.runs.presets import DEMO, DEMO_FACTS, DEMO_TASK
    from selfdistill.tasks import get_task
    from selfdistill.training.batches import completion_logits, pack

    torch.manual_seed(0)
    model, tok, _ = load_model()
    model.eval().requires_grad_(False)
    cfg = load_config(preset="cpu", overrides={**DEMO.overrides, "rollout.max_new_tokens": a.max_new_tokens,
                                               "rollout.engine": "hf", "rollout.dtype": "model"})
    task = get_task(DEMO_TASK, n_train=DEMO_FACTS)
    items, _ = encode_examples(tok, task.train[:a.prompts], cfg.data, cfg.context)
    engine = make_engine("hf", model, tok, cfg)
    spec = rollout_spec(cfg.rollout, stop_ids_for(tok, model))
    rollouts = engine.generate([e.student_prompt_ids for e in items], spec, seeds=prompt_seeds(0, len(items)))
    completions = [r.ids for r in rollouts]
    engine.close()
    pad = tok.pad_token_id
    tb = pack([e.teacher_prompt_ids for e in items], completions, pad, "cpu")
    sb = pack([e.student_prompt_ids for e in items], completions, pad, "cpu")
    mask = tb.completion_mask_BT.bool()

    def bf16_pass():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return completion_logits(model, tb).float()

    fp32_times, bf16_times = [], []
    with torch.inference_mode():
        for _ in range(a.reps):  # alternated, so both see the same machine state
            t, fp32_BTV = timed(lambda: completion_logits(model, tb).float(), 1)
            fp32_times += t
            t, bf16_BTV = timed(bf16_pass, 1)
            bf16_times += t
        student_BTV = completion_logits(model, sb).float()
    shift_N = per_token_kl(fp32_BTV[mask], bf16_BTV[mask])
    loss_N = per_token_kl(fp32_BTV[mask], student_BTV[mask])
    agree = float((fp32_BTV[mask].argmax(-1) == bf16_BTV[mask].argmax(-1)).float().mean())
    f, b = statistics.median(fp32_times), statistics.median(bf16_times)

    print(f"# selfdistill bench_teacher  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads); {len(items)} training questions of "
          f"the demo's task, {int(mask.sum())} completion tokens (rollouts up to {a.max_new_tokens} tokens), "
          f"teacher rows of {tb.input_ids_BL.shape[1]} tokens")
    print(f"teacher pass float32      : {f:6.3f} s (calls: {', '.join(f'{x:.3f}' for x in fp32_times)})")
    print(f"teacher pass bf16 autocast: {b:6.3f} s (calls: {', '.join(f'{x:.3f}' for x in bf16_times)})")
    print(f"KL(fp32 teacher || bf16 teacher) per token: mean {float(shift_N.mean()):.5f}  max {float(shift_N.max()):.5f}")
    print(f"KL(teacher || student) per token (the loss's scale): mean {float(loss_N.mean()):.4f}")
    print(f"same most likely token both ways: {agree:.1%} of tokens")
    print(f"teacher_bf16_speedup={f / b:.2f} target_shift_over_loss={float(shift_N.mean()) / float(loss_N.mean()):.4f}")


if __name__ == "__main__":
    main()
