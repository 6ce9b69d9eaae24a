#!/usr/bin/env python
"""Benchmark one SDFT optimizer step: selfdistill vs TRL's SDFTTrainer, vs our SFT step, and the loss's memory.

Run with `make bench` (installs benchmarks/requirements-bench.txt, i.e. trl, then runs this file), or
`.venv/bin/python benchmarks/bench_step.py [--runs 3 --steps 5 --warmup 2 --max-new-tokens 64]`.

Every measurement runs in its own fresh subprocess (`--child ...`), so each one's peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss, read in the child right after its last measured step) is its own.
Runs are alternated (ours SDFT, TRL SDFT, ours SFT, ours SDFT, TRL SDFT, ours SFT, ...).

Settings, identical on both sides (see docs/performance.md):
  model SmolLM2-135M-Instruct (selfdistill's embedded default, fp32, no gradient checkpointing, no autocast),
  8 built-in ISO-4217 prompts with short demonstrations, 8 prompts per optimizer step in ONE micro-batch,
  one rollout per prompt at temperature 1.0 (top_p 1, top_k 0), full-vocabulary forward KL(teacher || student),
  first 3 completion tokens out of the loss, EMA teacher with rate 0.01 synced every step, the paper's teacher
  prompt template, AdamW lr 5e-5, grad clip 1.0, no importance-sampling correction (with --steps-per-generation K
  > 1: the rollouts of K steps in one call on both sides, truncated/clipped importance weights at 2.0 on both).
  Completion length is FIXED by default: exactly max_new_tokens on both sides (ours: no stop id, on either
  engine; TRL: min_new_tokens in its generation_kwargs), so every step does the same work; --free-length turns
  it off.
  Both use a fused AdamW (TRL's default adamw_torch_fused; ours torch.optim.AdamW(fused=True)).
Engine column (--engines hf,hf-bf16,vllm,vllm-bf16,vllm-bf16+teacher-bf16): our SDFT step with rollout.engine=vllm
  (vLLM's in-process CPU engine, enforce_eager; its start-up is in the process time, not in the step times) and,
  `-bf16`, with rollout.dtype=bfloat16 (hf: rollouts from a bf16 copy; vllm: the engine's weights in bf16; student,
  teacher and loss unchanged); `+teacher-bf16` adds teacher.bf16=true (the teacher pass under bf16 autocast, its
  weights float32; student and loss in float32); one run each at the same settings.

Step time = time between consecutive step-end callbacks (our train()'s on_step, TRL's on_step_end), so it
includes everything each framework does per step; the first --warmup steps of every run (default 2: lazy
optimizer state, first-touch memory, the allocator's heap settling) are excluded on every side.

The last line is:
  ratio_vs_trl=<ours/TRL steps per s> mem_vs_trl=<ours/TRL peak RSS> loss_mem_vs_naive=<x> sdft_over_sft=<x>
(medians over the paired runs, 2 decimals), then for each engine of the engine column
  ratio_vs_trl_<engine>=<TRL / its step time> sdft_over_sft_<engine>=<its step / SFT step> (its one run against the
  paired runs' TRL and SFT medians; e.g. ratio_vs_trl_hf_bf16, ratio_vs_trl_vllm_bf16_teacher_bf16).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# A small built-in data set: ISO 4217 questions with short demonstrations.
CURRENCIES = [
    ("Malagasy Ariary", "MGA"), ("Peruvian Sol", "PEN"), ("Icelandic Krona", "ISK"), ("Thai Baht", "THB"),
    ("Kenyan Shilling", "KES"), ("Polish Zloty", "PLN"), ("Vietnamese Dong", "VND"), ("Chilean Peso", "CLP"),
]
FILLER = (" The code has three letters: the first two are usually the ISO 3166 country code and the third one "
          "is the first letter of the currency's name. Codes are used by banks, exchanges and payment systems "
          "all over the world, and they never change when the currency symbol changes.")


def records(n: int) -> list[dict]:
    return [{"prompt": f"What is the ISO 4217 code of the {name}?",
             "demonstration": f"The ISO 4217 code of the {name} is {code}."}
            for name, code in (CURRENCIES * (n // len(CURRENCIES) + 1))[:n]]


def fixed_length_demo(tok, text: str, n_tokens: int) -> str:
    """A demonstration whose token ids (before the end-of-turn token) are exactly n_tokens long."""
    ids = tok(text + FILLER * 8, add_special_tokens=False)["input_ids"]
    for cut in range(n_tokens, n_tokens + 8):
        s = tok.decode(ids[:cut]).rstrip()
        if len(tok(s, add_special_tokens=False)["input_ids"]) == n_tokens:
            return s
    raise RuntimeError("could not build a demonstration of the requested token length")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _env_setup() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))


# ----------------------------------------------------------------------------------------------------------
# Children (each runs in a fresh process and writes one JSON file)


def measured(ends: list[float], warmup: int) -> list[float]:
    """Step times from consecutive step-end times, the first `warmup` steps left out (ends[0] ends step 1)."""
    return [e - s for s, e in zip(ends[warmup - 1:], ends[warmup:])]


def child_ours(a) -> dict:
    """selfdistill's train() for a.steps optimizer steps (method sdft or sft); stops right after the last one."""
    import torch
    from selfdistill.config import load_config
    from selfdistill.data import Example
    from selfdistill.models import load_model
    from selfdistill.training import train

    model, tok, _ = load_model("smollm2-135m")
    recs = records(a.prompts)
    if a.child == "sft":  # demonstrations as long as the rollouts: max_new_tokens ids including end-of-turn
        recs = [dict(r, demonstration=fixed_length_demo(tok, r["demonstration"], a.max_new_tokens - 1))
                for r in recs]
    examples = [Example([{"role": "user", "content": r["prompt"]}], r["demonstration"], origin=f"bench:{i}")
                for i, r in enumerate(recs)]
    if not a.free_length:  # no stop id can be sampled: every rollout is max_new_tokens long, on either engine
        import selfdistill.training.setup as training_setup  # where the rollout spec's stop ids are read
        training_setup.stop_ids_for = lambda tokenizer, model=None: ()
    engine, rollout_dtype, teacher_bf16 = engine_settings(a.engine)
    cfg = load_config(preset="cpu", overrides={
        "train.method": a.child, "train.max_steps": 1000, "train.prompts_per_step": a.prompts,
        "train.micro_batch_size": a.prompts, "rollout.max_new_tokens": a.max_new_tokens,
        "rollout.num_rollouts": 1, "rollout.temperature": 1.0, "loss.divergence": "forward_kl",
        "loss.support": "full", "loss.skip_first_tokens": 3, "loss.chunk_size": a.chunk_size,
        "teacher.kind": "ema", "teacher.ema_rate": 0.01, "teacher.bf16": teacher_bf16, "train.bf16": a.bf16,
        "log.progress": False,
        "log.rollout_examples": 0, "rollout.engine": engine, "rollout.dtype": rollout_dtype,
        "rollout.steps_per_generation": a.steps_per_generation,
        "loss.importance_weights": a.steps_per_generation > 1})
    ends: list[float] = []
    peak: list[float] = []

    def on_step(step, _model):
        ends.append(time.perf_counter())
        peak.append(rss_mb())
        return {}

    out = Path(a.workdir) / f"out-{a.child}-{a.engine}"  # stop_after: every step's metrics record is written
    train(cfg, examples, model, tok, out, overwrite=True, on_step=on_step, eval_every=1, stop_after=a.steps)
    recs_m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs_m if r["step"] > a.warmup]  # the warm-up steps are left out
    phases = {k: [r[f"time_{k}_s"] for r in steps] for k in ("generate", "teacher", "student", "optimizer")}
    phases["step_record"] = [r["step_time_s"] for r in steps]
    return {"step_times": measured(ends, a.warmup), "peak_rss_mb": peak[-1],
            "tokens_per_step": [r["completion_tokens"] for r in steps], "phases": phases,
            "threads": torch.get_num_threads()}


def child_trl(a) -> dict:
    """TRL's experimental SDFTTrainer at the same settings, a.steps optimizer steps."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from selfdistill.config import PAPER_TEACHER_TEMPLATE
    from selfdistill.models import load_model

    model, tok, _ = load_model("smollm2-135m")
    model.set_attn_implementation("sdpa")  # transformers' own attention, as TRL's users run it (ours: attention.py)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "privileged_context": r["demonstration"]}
                            for r in records(a.prompts) * a.steps_per_generation])  # TRL: a sampling round's worth
    template = PAPER_TEACHER_TEMPLATE.replace("$prompt", "{prompt}").replace("$demonstration",
                                                                             "{privileged_context}")
    args = SDFTConfig(
        output_dir=str(Path(a.workdir) / "trl"), use_cpu=True, report_to=[], bf16=a.bf16,
        gradient_checkpointing=False, per_device_train_batch_size=a.prompts, gradient_accumulation_steps=1,
        num_generations=1, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=5e-5, max_grad_norm=1.0, max_steps=a.steps, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, distillation_mode="full_logits", distillation_alpha=0.0,
        steps_per_generation=a.steps_per_generation,  # > 1: TRL recomputes the old log-probs, IS-clipped at 2.0
        distillation_is_clip=2.0 if a.steps_per_generation > 1 else None,
        teacher_model_kind="ema", teacher_update_rate=0.01, teacher_sync_steps=1, num_loss_tokens_to_skip=3,
        teacher_prompt_template=template, dataloader_num_workers=0, seed=0,
        generation_kwargs=None if a.free_length else {"min_new_tokens": a.max_new_tokens})
    trainer = SDFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    ends: list[float] = []
    peak: list[float] = []
    lens: list[float] = []
    # Per-phase time of TRL's step, by wrapping its own methods: `_generate` (rollouts) and `_forward_logits`
    # when called under no_grad (the teacher forward); the rest of the step is student fwd + loss + bwd,
    # optimizer, EMA sync and the Trainer's bookkeeping.
    cur = {"generate": 0.0, "teacher": 0.0}
    per_step: dict[str, list[float]] = {"generate": [], "teacher": []}

    def timed(fn, key, only_no_grad=False):
        def wrapper(*args, **kw):
            if only_no_grad and torch.is_grad_enabled():
                return fn(*args, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                cur[key] += time.perf_counter() - t0
        return wrapper
    trainer._generate = timed(trainer._generate, "generate")
    trainer._forward_logits = timed(trainer._forward_logits, "teacher", only_no_grad=True)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            peak.append(rss_mb())
            lens.append(trainer._metrics["train"]["completions/mean_length"][-1] * a.prompts)
            for k in cur:
                per_step[k].append(cur[k])
                cur[k] = 0.0

    trainer.add_callback(Clock())  # last in the list: after the EMA teacher sync
    trainer.train()
    return {"step_times": measured(ends, a.warmup), "peak_rss_mb": peak[-1],
            "tokens_per_step": lens[a.warmup:], "threads": torch.get_num_threads(), "optim": str(args.optim),
            "phases": {k: v[a.warmup:] for k, v in per_step.items()}}


def child_loss(a) -> dict:
    """Peak memory of distillation_loss fwd+bwd at [B, T, V] = [8, 256, 49152] (naive or chunked)."""
    import torch
    from selfdistill import losses

    B, T, V = 8, a.loss_tokens, 49152
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, V, generator=g).mul_(3.0).requires_grad_(True)
    teacher = torch.randn(B, T, V, generator=g).mul_(3.0)
    mask = torch.ones(B, T)
    before = rss_mb()  # high-water mark with both [B, T, V] inputs in place
    saved: dict[int, int] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = losses.distillation_loss(student, teacher, mask, losses.DivergenceSpec("forward_kl", support="full"),
                                           skip_first_tokens=3, chunk_size=a.chunk_size or None)
    # The chunked Function holds its [N, V] gradient buffer as a ctx attribute (backward reuses it in place as
    # the input gradient); saved_tensors_hooks does not see it, so count it by walking the graph.
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        held = getattr(node, "dvalue_NV", None)
        if isinstance(held, torch.Tensor):
            saved[held.untyped_storage().data_ptr()] = held.untyped_storage().nbytes()
        stack += [n for n, _ in node.next_functions]
    loss.backward()
    dt = time.perf_counter() - t0
    return {"rss_delta_mb": rss_mb() - before, "saved_mb": sum(saved.values()) / 2**20, "time_s": dt,
            "input_mb": 2 * student.numel() * 4 / 2**20, "loss": float(loss.detach())}


# ----------------------------------------------------------------------------------------------------------
# Parent


def engine_settings(name: str) -> tuple[str, str, bool]:
    """An --engines name, `hf`, `vllm` or either with `-bf16`, optionally followed by `+teacher-bf16`, as
    (rollout.engine, rollout.dtype, teacher.bf16)."""
    rollouts, plus, teacher = name.partition("+")
    engine, _, dtype = rollouts.partition("-")
    if engine not in ("hf", "vllm") or dtype not in ("", "bf16") or (plus and teacher != "teacher-bf16"):
        raise SystemExit(f"unknown engine {name!r}: hf, hf-bf16, vllm or vllm-bf16, each optionally with "
                         "+teacher-bf16")
    return engine, "bfloat16" if dtype else "model", bool(plus)


def figure_key(name: str) -> str:
    """An --engines name as it appears in the figure line's keys: vllm-bf16+teacher-bf16 -> vllm_bf16_teacher_bf16."""
    return name.replace("-", "_").replace("+", "_")


def run_child(kind: str, a, workdir: str, engine: str = "hf", **extra) -> dict:
    out = Path(workdir) / f"{kind}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--json", str(out), "--workdir", workdir, "--engine", engine,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--max-new-tokens", str(a.max_new_tokens),
           "--prompts", str(a.prompts), "--loss-tokens", str(a.loss_tokens),
           "--steps-per-generation", str(a.steps_per_generation)]
    chunk = extra.get("chunk_size", a.chunk_size)
    cmd += ["--chunk-size", str(chunk)]
    if a.free_length:
        cmd.append("--free-length")
    if a.bf16:
        cmd.append("--bf16")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if p.returncode != 0 or not out.exists():
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-8000:])
        raise SystemExit(f"child {kind} failed (rc {p.returncode})")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def print_engine_table(runs_by_engine: dict[str, list[dict]], note: str, spg: int) -> None:
    print(f"\n== our SDFT step by rollout engine ({note}) ==")
    what = "median" if spg == 1 else "mean"
    print(f"(step: {what} time between step ends; phases: {what} of the metrics records)")
    print(f"{'engine':9s} {'step s':>8s} {'generate s':>11s} {'gen tok/s':>10s} {'teacher s':>10s} "
          f"{'student s':>10s} {'peak RSS MB':>12s} {'process s':>10s}")
    for name, runs in runs_by_engine.items():
        ph = {k: central([x for r in runs for x in r["phases"][k]], spg) for k in runs[0]["phases"]}
        tok = central([x for r in runs for x in r["tokens_per_step"]], spg)
        step = central([x for r in runs for x in r["step_times"]], spg)
        print(f"{name:9s} {step:8.2f} {ph['generate']:11.2f} {tok / ph['generate']:10.1f} "
              f"{ph['teacher']:10.2f} {ph['student']:10.2f} {statistics.median(r['peak_rss_mb'] for r in runs):12.0f} "
              f"{statistics.median(r['wall_s'] for r in runs):10.0f}")


def engines_only(a) -> None:
    """--engines-only: our SDFT step per engine, runs alternated (hf, vllm, hf, vllm, ...), nothing else."""
    engines = [e for e in a.engines.split(",") if e]
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory(prefix="selfdistill-bench-") as wd:
        for i in range(a.runs):
            for e in engines:
                r = run_child("sdft", a, wd, engine=e)
                runs[e].append(r)
                print(f"run {i + 1} sdft engine={e}: step {statistics.median(r['step_times']):6.2f} s  peak RSS "
                      f"{r['peak_rss_mb']:7.0f} MB  (process {r['wall_s']:.0f} s)", flush=True)
    print_engine_table(runs, f"{a.runs} alternated run(s) each", a.steps_per_generation)
    if "hf" in runs and "vllm" in runs:
        step = {e: statistics.median(x for r in runs[e] for x in r["step_times"]) for e in ("hf", "vllm")}
        print(f"vllm_over_hf_step={step['vllm'] / step['hf']:.2f}")


def central(xs: list[float], steps_per_round: int) -> float:
    """The median of per-step figures; their mean when a sampling round spans several steps
    (--steps-per-generation: the median of alternating long and short steps would be one of them)."""
    return statistics.median(xs) if steps_per_round == 1 else statistics.mean(xs)


def stats(xs: list[float]) -> str:
    return f"min {min(xs):.3f}  median {statistics.median(xs):.3f}  max {max(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each of ours / TRL / SFT (alternated)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per run, the warm-up steps included")
    ap.add_argument("--warmup", type=int, default=2, help="steps at the start of every run left out of the times")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step (one micro-batch)")
    ap.add_argument("--chunk-size", type=int, default=256,
                    help="loss.chunk_size for our SDFT runs (256 = the config default; 0 = unchunked)")
    ap.add_argument("--loss-chunk-size", type=int, default=256, help="loss.chunk_size in the loss-memory part")
    ap.add_argument("--loss-tokens", type=int, default=256, help="completion tokens in the loss-memory part")
    ap.add_argument("--free-length", action="store_true", help="let completions stop at EOS (unequal work)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default fp32)")
    ap.add_argument("--steps-per-generation", type=int, default=1, dest="steps_per_generation",
                    help="rollouts of K optimizer steps sampled in one call, on both sides (ours: "
                         "rollout.steps_per_generation with importance weights; TRL: steps_per_generation, IS clip "
                         "2.0); K must divide --warmup and --steps - --warmup")
    ap.add_argument("--engines", default="hf,hf-bf16,vllm,vllm-bf16,vllm-bf16+teacher-bf16",
                    help="rollout engines for our SDFT step: hf (in the paired runs) and, one run each, the others "
                         "(-bf16: with rollout.dtype=bfloat16)")
    ap.add_argument("--engines-only", action="store_true", dest="engines_only",
                    help="only our SDFT step per engine (--engines), --runs alternated runs; no TRL/SFT/loss parts")
    ap.add_argument("--engine", default="hf", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=["sdft", "sft", "trl", "loss"], help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not 1 <= a.warmup < a.steps:
        ap.error(f"--warmup must be at least 1 and below --steps ({a.steps}), got {a.warmup}")
    k = a.steps_per_generation
    if k < 1 or (a.steps - a.warmup) % k or a.warmup % k:
        ap.error("--steps-per-generation must be >= 1 and divide both --warmup and --steps - --warmup (whole sampling "
                 "rounds measured)")
    _env_setup()

    if a.child:
        fn = {"sdft": child_ours, "sft": child_ours, "trl": child_trl, "loss": child_loss}[a.child]
        Path(a.json).write_text(json.dumps(fn(a)))
        return

    import torch
    import transformers

    try:
        import trl
    except ImportError:
        raise SystemExit("trl is not installed: pip install -r benchmarks/requirements-bench.txt (make bench)")
    t_all = time.perf_counter()
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    print(f"# selfdistill bench_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, trl {trl.__version__}")
    print(f"# settings: SmolLM2-135M-Instruct fp32{' + bf16 autocast' if a.bf16 else ''}, {a.prompts} prompts/step "
          f"(1 micro-batch), 1 rollout, max_new_tokens {a.max_new_tokens}"
          f"{'' if a.free_length else ' (fixed length: no stop id; TRL min_new_tokens)'}, T=1.0, full-vocab forward KL, "
          f"skip 3, EMA 0.01, paper teacher template; our loss.chunk_size={a.chunk_size}"
          + (f"; rollouts of {a.steps_per_generation} steps per call on both sides, importance-weighted"
             if a.steps_per_generation > 1 else ""))
    print(f"# {a.runs} runs each, alternated; {a.steps} steps per run, the first {a.warmup} excluded (warm-up)\n",
          flush=True)
    if a.engines_only:
        engines_only(a)
        print(f"# total bench time {time.perf_counter() - t_all:.0f} s; load average at start {load0}, at end "
              f"{tuple(round(x, 2) for x in os.getloadavg())}")
        return

    ours, trls, sfts = [], [], []
    with tempfile.TemporaryDirectory(prefix="selfdistill-bench-") as wd:
        for i in range(a.runs):
            for kind, acc in (("sdft", ours), ("trl", trls), ("sft", sfts)):
                r = run_child(kind, a, wd)
                acc.append(r)
                st = statistics.median(r["step_times"])
                tps = statistics.mean(r["tokens_per_step"]) / statistics.mean(r["step_times"])
                print(f"run {i + 1} {kind:4s}: step {st:6.2f} s (median of {len(r['step_times'])})  "
                      f"{1 / st:.3f} steps/s  {tps:6.1f} completion tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"(process {r['wall_s']:.0f} s)", flush=True)
        others = {}  # engine column: one run of our SDFT step per other engine, same settings
        for engine in [e for e in a.engines.split(",") if e and e != "hf"]:
            others[engine] = run_child("sdft", a, wd, engine=engine)
            r = others[engine]
            print(f"run 1 sdft engine={engine}: step {statistics.median(r['step_times']):6.2f} s  peak RSS "
                  f"{r['peak_rss_mb']:7.0f} MB  (process {r['wall_s']:.0f} s)", flush=True)
        loss_naive = run_child("loss", a, wd, chunk_size=0)
        loss_chunk = run_child("loss", a, wd, chunk_size=a.loss_chunk_size)
        loss_chunk_big = run_child("loss", a, wd, chunk_size=4 * a.loss_chunk_size)

    def sps(r):  # steps per second over the measured steps of one run
        return len(r["step_times"]) / sum(r["step_times"])

    def tokps(r):  # completion tokens per second (mean tokens per step / mean step time)
        return statistics.mean(r["tokens_per_step"]) / statistics.mean(r["step_times"])

    r_speed = [sps(o) / sps(t) for o, t in zip(ours, trls)]
    r_tok = [tokps(o) / tokps(t) for o, t in zip(ours, trls)]
    r_mem = [o["peak_rss_mb"] / t["peak_rss_mb"] for o, t in zip(ours, trls)]
    r_sft = [sps(f) / sps(o) for o, f in zip(ours, sfts)]  # SDFT step time / SFT step time
    loss_ratio = loss_chunk["rss_delta_mb"] / loss_naive["rss_delta_mb"]

    print("\n== ours SDFT vs TRL SDFTTrainer (paired runs) ==")
    print(f"ours steps/s          : {stats([sps(r) for r in ours])}")
    print(f"TRL  steps/s          : {stats([sps(r) for r in trls])}")
    print(f"ours completion tok/s : {stats([tokps(r) for r in ours])}")
    print(f"TRL  completion tok/s : {stats([tokps(r) for r in trls])}")
    print(f"ours peak RSS MB      : {stats([r['peak_rss_mb'] for r in ours])}")
    print(f"TRL  peak RSS MB      : {stats([r['peak_rss_mb'] for r in trls])}")
    print(f"ratio steps/s ours/TRL: {stats(r_speed)}   (target >= 1.50)")
    print(f"ratio tok/s   ours/TRL: {stats(r_tok)}")
    print(f"ratio peak RSS ours/TRL: {stats(r_mem)}   (target <= 1.00)")
    print(f"(TRL optimizer: {trls[0].get('optim')}; completion tokens/step ours "
          f"{statistics.median(x for r in ours for x in r['tokens_per_step']):.0f}, TRL "
          f"{statistics.median(x for r in trls for x in r['tokens_per_step']):.0f})")

    spg = a.steps_per_generation
    what = "median" if spg == 1 else "mean"
    print(f"\n== per-phase time of our SDFT step (s, {what} over measured steps of all runs) ==")
    ph = {k: [x for r in ours for x in r["phases"][k]] for k in ours[0]["phases"]}
    med = {k: central(v, spg) for k, v in ph.items()}
    rest = med["step_record"] - med["generate"] - med["teacher"] - med["student"] - med["optimizer"]
    total = med["step_record"]
    for k, label in (("generate", "generate (rollouts)"), ("teacher", "teacher forward"),
                     ("student", "student fwd + loss + bwd"), ("optimizer", "clip+AdamW+EMA")):
        print(f"{label:36s}: {med[k]:6.2f}  ({100 * med[k] / total:4.1f} %)")
    print(f"{'other (step - the above)':36s}: {rest:6.2f}  ({100 * rest / total:4.1f} %)")
    print(f"{'step (time_step_s)':36s}: {total:6.2f}")

    print(f"\n== per-phase time of TRL's step (s, {what} over measured steps of all runs; wrapped methods) ==")
    tg = central([x for r in trls for x in r["phases"]["generate"]], spg)
    tt = central([x for r in trls for x in r["phases"]["teacher"]], spg)
    tstep = central([x for r in trls for x in r["step_times"]], spg)
    for label, v, o in (("generate (_generate)", tg, med["generate"]),
                        ("teacher forward (no-grad _forward_logits)", tt, med["teacher"]),
                        ("rest: student, loss, optimizer, EMA, other", tstep - tg - tt,
                         total - med["generate"] - med["teacher"]),
                        ("step", tstep, total)):
        print(f"{label:44s}: TRL {v:6.2f}   ours {o:6.2f}   ours/TRL {o / v:5.2f}")

    if others:
        print_engine_table({"hf": ours, **{k: [v] for k, v in others.items()}},
                           "same settings; hf = the paired runs above, others one run", spg)

    print("\n== ours SDFT vs ours SFT (same prompts, demos of max_new_tokens tokens) ==")
    print(f"SFT steps/s           : {stats([sps(r) for r in sfts])}")
    print(f"SFT peak RSS MB       : {stats([r['peak_rss_mb'] for r in sfts])}")
    print(f"SDFT/SFT step time    : {stats(r_sft)}   (target <= 2.00)")

    print(f"\n== loss peak memory, [8, {a.loss_tokens}, 49152] fp32, forward KL fwd+bwd ==")
    print("(peak-RSS delta in a fresh subprocess over the RSS with both logits tensors allocated "
          f"({loss_naive['input_mb']:.0f} MB); it includes the 1x [B,T,V] input gradient both need; "
          "'saved' = bytes of distinct storages saved for backward, via saved_tensors_hooks)")
    for name, r in (("naive (chunk_size=0)", loss_naive), (f"chunked (chunk_size={a.loss_chunk_size})", loss_chunk),
                    (f"chunked (chunk_size={4 * a.loss_chunk_size})", loss_chunk_big)):
        print(f"{name:28s}: peak delta {r['rss_delta_mb']:7.0f} MB  saved {r['saved_mb']:7.0f} MB  "
              f"time {r['time_s']:5.2f} s  loss {r['loss']:.4f}")
    print(f"chunked/naive peak    : {loss_ratio:.2f}   (target <= 0.50)")
    print(f"\n# total bench time {time.perf_counter() - t_all:.0f} s; load average at start {load0}, at end "
          f"{tuple(round(x, 2) for x in os.getloadavg())} (other processes on this machine inflate times)")
    trl_step = central([x for r in trls for x in r["step_times"]], spg)
    sft_step = central([x for r in sfts for x in r["step_times"]], spg)
    by_engine = "".join(  # the engine column's single runs against the paired runs' TRL and SFT medians
        f" ratio_vs_trl_{figure_key(k)}={trl_step / central(v['step_times'], spg):.2f}"
        f" sdft_over_sft_{figure_key(k)}={central(v['step_times'], spg) / sft_step:.2f}"
        for k, v in others.items())
    print(f"ratio_vs_trl={statistics.median(r_speed):.2f} mem_vs_trl={statistics.median(r_mem):.2f} "
          f"loss_mem_vs_naive={loss_ratio:.2f} sdft_over_sft={statistics.median(r_sft):.2f}{by_engine}")


if __name__ == "__main__":
    main()
