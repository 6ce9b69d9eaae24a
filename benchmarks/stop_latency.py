"""Time from SIGTERM to exit for `selfdistill train` in the middle of a long rollout, on the embedded model.

Starts `selfdistill train --preset paper` (32 prompts x up to 2048 new tokens per step), waits until the progress
line shows the first step's rollout has produced `--after-tokens` tokens, sends SIGTERM, and prints the seconds
until the process exited, its exit code, and the checkpoint it left. Usage:

    python benchmarks/stop_latency.py [--model smollm2-135m] [--after-tokens 200] [--after-steps 0] [--runs 1]
        [any `selfdistill train` flag, e.g. --train.prompts_per_step 4 --train.micro_batch_size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [("Malagasy Ariary", "MGA"), ("Bhutanese Ngultrum", "BTN"), ("Lesotho Loti", "LSL"),
             ("Tongan Pa'anga", "TOP"), ("Samoan Tala", "WST"), ("Vanuatu Vatu", "VUV"),
             ("Mauritanian Ouguiya", "MRU"), ("Eritrean Nakfa", "ERN")]


def write_data(path: Path) -> None:
    with open(path, "w") as f:
        for name, code in QUESTIONS:
            f.write(json.dumps({"prompt": f"What is the ISO 4217 code of the {name}?",
                                "demonstration": f"The ISO 4217 code of the {name} is {code}."}) + "\n")


def finished_steps(work: Path) -> int:
    m = work / "out" / "metrics.jsonl"
    return len(m.read_text().splitlines()) if m.exists() else 0


def one_run(model: str, after_tokens: int, after_steps: int, extra: list[str], work: Path) -> dict:
    """SIGTERM once `after_steps` steps have finished and the next step's rollout has `after_tokens` tokens."""
    write_data(work / "d.jsonl")
    cmd = [sys.executable, "-m", "selfdistill", "train", "--model", model, "--data", str(work / "d.jsonl"),
           "--output", str(work / "out"), "--preset", "paper", "--max-steps", str(after_steps + 2), *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    os.set_blocking(p.stderr.fileno(), False)
    buf, t_start = b"", time.time()
    while True:
        chunk = p.stderr.read() or b""
        buf += chunk
        counts = [int(n) for n in re.findall(rb"(\d+) rollout tokens", buf[-4000:])]
        if counts and counts[-1] >= after_tokens and finished_steps(work) >= after_steps:
            break
        if p.poll() is not None:
            raise SystemExit(f"train exited early (rc {p.returncode}):\n{buf.decode(errors='replace')[-2000:]}")
        time.sleep(0.1)
    t_signal = time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=600)
    t_exit = time.time()
    ck = sorted((work / "out" / "checkpoints").glob("step-*"))
    return {"finished_steps": finished_steps(work), "tokens_when_signalled": counts[-1], "seconds_to_signal": round(t_signal - t_start, 1),
            "seconds_signal_to_exit": round(t_exit - t_signal, 2), "exit_code": p.returncode,
            "checkpoint": ck[-1].name if ck else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--after-tokens", type=int, default=200)
    ap.add_argument("--after-steps", type=int, default=0, help="finished steps before the signal")
    ap.add_argument("--runs", type=int, default=1)
    a, extra = ap.parse_known_args()  # anything else goes to `selfdistill train` (e.g. --train.prompts_per_step 4)
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one_run(a.model, a.after_tokens, a.after_steps, extra, Path(d))), flush=True)


if __name__ == "__main__":
    main()
