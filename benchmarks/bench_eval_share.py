#!/usr/bin/env python
"""Where a small continual run's time goes: training against evaluation.

Run with `make bench` (last) or `.venv/bin/python benchmarks/bench_eval_share.py [--max-steps 4]`.
The README's two-file user sequence (examples/user_tasks: 12 ISO 639-3 language codes, then 12 ISO 3166-1
alpha-3 territory codes, each with its reworded test file), one SDFT run on the embedded model, shortened: the cpu
preset with --max-steps steps of 4 prompts and 32 new tokens. Evaluation is everything the sequence measures: the
base model once, then after each stage both test files (greedy, each file's default budget) and the 120-item
retention suite. Prints the split the sequence records (`eval_seconds`, `train_seconds` in results.json) and the
wall time.

Last line: `eval_share=<evaluation seconds / (evaluation + training seconds)> wall_s=<x>`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("languages", "territories")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-steps", type=int, default=4)
    a = ap.parse_args()

    import torch

    from selfdistill.config import load_config
    from selfdistill.methods import MethodSpec
    from selfdistill.runs import SequenceOptions, run_sequence
    from selfdistill.runs.sequence import time_split

    ex = ROOT / "examples" / "user_tasks"
    specs = [f"{ex / t}.jsonl@scorer=contains_word,test={ex / t}_test.jsonl" for t in TASKS]
    cfg = load_config(preset="cpu", overrides={"train.max_steps": a.max_steps, "train.prompts_per_step": 4,
                                               "train.micro_batch_size": 4, "rollout.max_new_tokens": 32,
                                               "optim.lr": 3e-4, "optim.warmup_steps": 1, "log.progress": False})
    print(f"# selfdistill bench_eval_share  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average at start {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"# {' -> '.join(TASKS)}, SDFT, {a.max_steps} steps of 4 prompts x 32 tokens per stage", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as out:
        t = time.perf_counter()
        res = run_sequence(specs, [MethodSpec.parse("sdft")], SequenceOptions(Path(out), cfg, write_report=False))
        wall = time.perf_counter() - t
    run = res["runs"][0]
    train_s, eval_s = time_split(res["runs"])
    print(f"training s per stage: {[round(x, 1) for x in run['train_seconds']]}")
    print(f"evaluation s (base, then each stage): {[round(x, 1) for x in run['eval_seconds']]}")
    print(f"eval_share={eval_s / (eval_s + train_s):.2f} wall_s={wall:.0f}")


if __name__ == "__main__":
    sys.exit(main())
