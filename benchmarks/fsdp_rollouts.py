"""Rollouts under FSDP2: generate on the sharded model (one all-gather per layer per decode step, `synced_gpus`)
vs gather every layer once and generate locally (selfdistill.training.distributed.gathered_for_generation).

    PYTHONPATH=src python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/fsdp_rollouts.py

Random Llama built from a config (no download), random prompts, greedy, EOS disabled so every rollout is
--new-tokens long. Prints one JSON line per repetition from rank 0 (seconds per rollout batch, both ways) and the
median ratio. On a GPU pass --device cuda (NCCL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from selfdistill.training import distributed as D  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32, dest="prompt_len")
    ap.add_argument("--new-tokens", type=int, default=64, dest="new_tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    device = torch.device(args.device, dist.get_rank() % max(torch.cuda.device_count(), 1)) \
        if args.device == "cuda" else torch.device("cpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(device)
    D.shard_model(model, D.device_mesh(device), bf16=False)
    model.eval()
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    gen = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, eos_token_id=None,
               pad_token_id=0)
    rows = []
    for rep in range(args.reps + 1):  # the first repetition warms up
        dist.barrier()
        t0 = time.perf_counter()
        with torch.no_grad():
            a = model.generate(input_ids=ids, synced_gpus=True, **gen)
        dist.barrier()
        t1 = time.perf_counter()
        with torch.no_grad(), D.gathered_for_generation(model):
            b = model.generate(input_ids=ids, synced_gpus=False, **gen)
        dist.barrier()
        t2 = time.perf_counter()
        row = {"rep": rep, "per_layer_s": round(t1 - t0, 3), "gather_once_s": round(t2 - t1, 3),
               "same_tokens": bool(torch.equal(a, b))}
        if rep:
            rows.append(row)
        if dist.get_rank() == 0:
            print(json.dumps(row), flush=True)
    if dist.get_rank() == 0:
        ratio = statistics.median(r["per_layer_s"] / r["gather_once_s"] for r in rows)
        params = sum(p.numel() for p in model.parameters())
        print(json.dumps({"world": dist.get_world_size(), "params": params, "layers": args.layers,
                          "batch_per_rank": args.batch, "new_tokens": args.new_tokens,
                          "median_per_layer_over_gather_once": round(ratio, 2)}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
