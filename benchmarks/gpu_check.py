"""GPU smoke benchmark: a few SDFT and SFT steps of a ~0.5B Qwen2-shaped model through selfdistill.training.train.

Made for a lent GPU machine with torch, transformers, accelerate (and peft) but no internet and no way to install
this package's dependencies: run it from the repository checkout with PYTHONPATH=src (benchmarks/gpu_check.sh).
Nothing is downloaded: the model is built from a config with random weights (Qwen2.5-0.5B's shape: hidden 896,
24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936, tied embeddings), and the tokenizer is a
byte-level BPE with no merges built in code (259 tokens; the model's vocabulary can be larger than the tokenizer's).
Random weights almost never emit EOS, so every rollout is the full --new-tokens long: step times are worst-case
lengths, which is what a timing check wants.

SDFT runs once per rollout engine (--engines hf,vllm; vllm = the optional extra, colocated: weights pushed after
every step). Prints, per method and engine: steps/s over the timed steps (after warm-up), rollout-generation tokens/s (SDFT), peak GPU
memory (torch.cuda.max_memory_allocated), and the SDFT/SFT step-time ratio; and a final JSON line.

    bash benchmarks/gpu_check.sh                 # GPU: 3 warm + 5 timed steps, 8 prompts, 128 new tokens, bf16
    PYTHONPATH=src python benchmarks/gpu_check.py --tiny   # CPU smoke test of the same path in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the answer is code capital city river number value function call weather paris lima ariary "
         "currency question response thinking process example because therefore first second").split()


def build_byte_tokenizer():
    """Byte-level BPE without merges: every byte is one token; ChatML specials; needs no download or training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<unk>")
    tok.chat_template = CHATML
    tok.padding_side = "left"
    return tok


def build_model(tok, *, tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = (dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,  # head 32:
                  intermediate_size=256, vocab_size=1024) if tiny else  # vLLM's CPU attention has no head size 16
             dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936))
    cfg = Qwen2Config(**shape, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def make_examples(n: int, demo_tokens: int, seed: int = 0):
    """Prompts of ~64 bytes and demonstrations of demo_tokens - 1 bytes (+ EOS = demo_tokens SFT targets)."""
    from selfdistill.data import Example

    rng = random.Random(seed)

    def text(nbytes: int) -> str:
        s = ""
        while len(s) < nbytes:
            s += rng.choice(WORDS) + " "
        return s[:nbytes]

    return [Example([{"role": "user", "content": text(64).strip() + "?"}], text(demo_tokens - 1),
                    origin=f"synthetic:{i + 1}") for i in range(n)]


def run_method(method: str, args, tok, device, dtype, out_root: str, engine: str = "hf") -> dict:
    from selfdistill.config import load_config
    from selfdistill.training import train

    steps = args.warm + args.timed
    cfg = load_config(overrides={
        "train.method": method, "train.max_steps": steps, "train.prompts_per_step": args.batch,
        "train.micro_batch_size": args.micro_batch or args.batch, "train.bf16": not args.fp32,
        "model.dtype": "float32" if args.fp32 else "bfloat16", "rollout.max_new_tokens": args.new_tokens,
        "optim.warmup_steps": 0, "log.progress": False, "log.rollout_examples": 0,
        "model.gradient_checkpointing": args.gradient_checkpointing, "dist.strategy": args.dist,
        "rollout.engine": engine, "data.max_prompt_tokens": 256, "rollout.batch_size": args.rollout_batch})
    model = build_model(tok, tiny=args.tiny, device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    examples = make_examples(steps * args.batch, args.new_tokens)
    stamps: list[float] = []

    def on_step(step, _model):  # called after every optimizer step (main process): precise wall-clock stamps
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = train(cfg, examples, model, tok, os.path.join(out_root, f"{method}-{engine}"), overwrite=True, on_step=on_step,
                eval_every=1)
    total = time.perf_counter() - t0
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    recs = res.metrics[args.warm:]
    timed_wall = stamps[-1] - stamps[args.warm - 1] if args.warm else stamps[-1] - t0
    n_micro = cfg.train.prompts_per_step // cfg.train.micro_batch_size
    gen_tokens = sum(r.get("completion_tokens", 0.0) * n_micro for r in recs)
    gen_time = sum(r.get("time_generate_s", 0.0) for r in recs)
    out = {
        "method": method, "engine": engine, "params_M": round(n_params / 1e6, 1), "timed_steps": len(recs),
        "step_time_s": round(timed_wall / len(recs), 4), "steps_per_s": round(len(recs) / timed_wall, 4),
        "gen_tokens_per_s": round(gen_tokens / gen_time, 1) if method == "sdft" and gen_time > 0 else None,
        "completion_len": round(sum(r.get("completion_len", 0.0) for r in recs) / len(recs), 1),
        "time_generate_s": round(gen_time / len(recs), 4),
        "time_teacher_s": round(sum(r.get("time_teacher_s", 0.0) for r in recs) / len(recs), 4),
        "peak_gpu_mem_GiB": peak, "loss_last": recs[-1].get("loss"),
        "total_s_incl_build_and_save": round(total, 1),
    }
    del res, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model, short steps: a CPU smoke test")
    ap.add_argument("--warm", type=int, default=None, help="warm-up steps, not timed (default 3; --tiny 1; with 0 the timing includes train() set-up)")
    ap.add_argument("--timed", type=int, default=None, help="timed steps (default 5; --tiny 2)")
    ap.add_argument("--batch", type=int, default=None, help="prompts per step (default 8; --tiny 4)")
    ap.add_argument("--micro-batch", type=int, default=0, dest="micro_batch", help="default: = --batch")
    ap.add_argument("--rollout-batch", type=int, default=0, dest="rollout_batch",
                    help="rollout.batch_size: sequences per engine call (0: the whole step in one call; = "
                         "--micro-batch: one call per micro-batch, the old sampling)")
    ap.add_argument("--new-tokens", type=int, default=None, dest="new_tokens",
                    help="rollout length; also the demonstration length for SFT (default 128; --tiny 16)")
    ap.add_argument("--methods", default="sdft,sft")
    ap.add_argument("--engines", default="hf,vllm",
                    help="rollout engines for the SDFT runs (vllm: the optional extra, colocated in this process)")
    ap.add_argument("--fp32", action="store_true", help="float32 weights, no autocast (default: bf16)")
    ap.add_argument("--gradient-checkpointing", action="store_true", dest="gradient_checkpointing")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    ap.add_argument("--dist", default="auto", choices=["auto", "fsdp"],
                    help="fsdp: dist.strategy=fsdp in one process (FSDP2 wrapping over a 1-rank group)")
    args = ap.parse_args(argv)
    d = dict(warm=1, timed=2, batch=4, new_tokens=16) if args.tiny else dict(warm=3, timed=5, batch=8, new_tokens=128)
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.timed < 1:
        ap.error("--timed must be >= 1")

    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# gpu_check: torch {torch.__version__}, transformers {transformers.__version__}, device {device} "
          f"({dev_name}), threads {torch.get_num_threads()}")
    print(f"# model {'tiny' if args.tiny else 'Qwen2-0.5B-shaped'} random weights, {dtype}, "
          f"{args.warm} warm + {args.timed} timed steps, {args.batch} prompts/step, {args.new_tokens} new tokens")
    if device.type == "cpu" and not args.tiny:
        print("# warning: the full-size check on CPU takes a long time; use --tiny", file=sys.stderr)
    tok = build_byte_tokenizer()
    results = {}
    with tempfile.TemporaryDirectory(prefix="selfdistill-gpu-check-") as tmp:
        runs = [(m, e) for m in args.methods.split(",") for e in (args.engines.split(",") if m == "sdft" else ["hf"])]
        for method, engine in runs:
            key = method if engine == "hf" else f"{method}_{engine}"
            try:
                r = run_method(method, args, tok, device, dtype, tmp, engine)
            except Exception as e:  # noqa: BLE001 - e.g. vLLM not installed: say so, run the rest
                print(f"{key:>10}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:300]})", flush=True)
                results[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                continue
            results[key] = r
            gen = f", generation {r['gen_tokens_per_s']:.0f} tok/s" if r["gen_tokens_per_s"] else ""
            print(f"{key:>10}: {r['params_M']}M params, {r['step_time_s']:.3f} s/step = {r['steps_per_s']:.2f} "
                  f"steps/s{gen}, completion len {r['completion_len']}, peak GPU memory "
                  f"{r['peak_gpu_mem_GiB'] if r['peak_gpu_mem_GiB'] is not None else 'n/a (CPU)'} GiB (total incl. build + final save {r['total_s_incl_build_and_save']} s)",
                  flush=True)
    if "step_time_s" in results.get("sdft_vllm", {}) and "step_time_s" in results.get("sdft", {}):
        results["vllm_over_hf_sdft_step_time"] = round(results["sdft_vllm"]["step_time_s"]
                                                      / results["sdft"]["step_time_s"], 2)
        print(f"SDFT step time vllm/hf: {results['vllm_over_hf_sdft_step_time']:.2f}")
    if "step_time_s" in results.get("sdft", {}) and "step_time_s" in results.get("sft", {}):
        ratio = results["sdft"]["step_time_s"] / results["sft"]["step_time_s"]
        results["sdft_over_sft_step_time"] = round(ratio, 2)
        print(f"SDFT/SFT step-time ratio: {ratio:.2f}")
    print("RESULT " + json.dumps({"device": dev_name, "args": vars(args), **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
