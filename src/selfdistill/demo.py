"""`selfdistill demo`: the main job, on the embedded SmolLM2-135M-Instruct, on a 2-core CPU in about 20 minutes.

  1. probe     does the teacher (demonstration + source fact in context) beat the student on the task?
  2. train     SDFT, and SFT at two learning rates (a tuned baseline, as the paper swept both), same data,
               steps, schedule and logging; new-task accuracy and retention evaluated every `eval_every` steps
  3. evaluate  new-task accuracy (reworded questions), retention suite, drift KL(base || tuned)
  4. report    results.json / CSV / report.md / report.html in --output

Task: `knowledge` — ISO 4217 currency codes the base model does not know (pycountry data). The student is asked
"What is the ISO 4217 currency code of the <name>?"; the teacher additionally sees the fact and the demonstration.
Test questions are reworded (the paper's out-of-distribution check). Why these settings: see DEMO_SETTINGS_WHY.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .config import TEACHER_TEMPLATES, ConfigError, load_config, parse_dotted_overrides
from .sequence import parse_seeds  # noqa: F401  (the one --seeds syntax; re-exported for callers)

DEMO_TASK = "knowledge"
DEMO_FACTS = 32
DEMO_OVERRIDES = {
    "rollout.max_new_tokens": 32,
    "train.prompts_per_step": 8,
    "train.micro_batch_size": 8,
    "train.max_steps": 40,
    "optim.lr": 3e-4,
    "optim.warmup_steps": 4,
    "context.teacher_template": "paper_no_thinking",
    "data.max_prompt_tokens": 512,
    "data.max_teacher_prompt_tokens": 1024,
}
DEMO_METHODS = ["sdft", "sft@lr=1e-4", "sft@lr=2e-5"]
DEMO_SETTINGS_WHY = [
    "Task: ISO 4217 codes. At 135M the teacher only beats the student clearly when the answer is in its context "
    "(knowledge acquisition); for BFCL tool calls the gap is small (see the README's probe table).",
    f"{DEMO_FACTS} facts, 40 steps of 8 prompts, 32 new tokens, cosine decay after 4 warm-up steps: the budget that "
    "fits 20 minutes on 2 CPU cores. The paper's lr grid (5e-6..5e-5) moves a 135M model too little in 40 steps.",
    "SDFT lr 3e-4: measured on 2026-11-28 (this template, bf16, same budget) 1e-4 reached 3% on reworded questions "
    "(47% in the training phrasing), 3e-4 reached 53% (53%) in that run; three seeds on another machine gave 9%, "
    "19% and 41%. SFT is run at 1e-4 and 2e-5, because a fair comparison is against a tuned SFT (the paper swept "
    "both): 1e-4 learns everything, 2e-5 barely learns.",
    "Teacher template paper_no_thinking: the paper's, without ', including the thinking process'. With the full "
    "sentence this 135M teacher opens with a reasoning preamble that the student learns within 10 steps, and SDFT "
    "learned nothing (0% on reworded questions at lr 1e-4, README). The source fact comes before the question.",
    "bf16 autocast when the CPU has native bf16 (avx512_bf16 / amx) or on CUDA: ~25% faster steps here; "
    "fp32 otherwise. Same for every method. Override with --train.bf16 false.",
    "Checkpoints are evaluated along training so retention can be compared at equal new-task accuracy; the "
    "same facts are also asked in the training phrasing, naming the currency by its country, and in reverse "
    "(code -> name), never trained on as test sets. Retention is measured on all 120 items.",
]


def fast_bf16() -> bool:
    """True when bf16 autocast is natively fast here: CUDA with bf16, or an x86 CPU with avx512_bf16 / amx_bf16."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def run_demo(args, extra: list[str]) -> int:
    from .evaluate import format_probe, probe
    from .models import load_model
    from .sequence import run_sequence
    from .tasks import get_task

    t0 = time.perf_counter()
    seeds = parse_seeds(args.seeds)  # bad flags fail here, before the model loads
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else DEMO_METHODS
    from .sequence import parse_method
    for m in methods:
        try:
            parse_method(m)
        except ValueError as e:
            raise ConfigError(f"--methods: {e}") from None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {**DEMO_OVERRIDES, "train.bf16": fast_bf16()}
    eval_every = 10
    if args.quick:
        overrides.update({"train.max_steps": 2, "rollout.max_new_tokens": 16})
        eval_every = 1
    overrides.update(parse_dotted_overrides(extra))
    cfg = load_config(overrides=overrides, preset="cpu")
    cfg.deviations += DEMO_SETTINGS_WHY
    print("[selfdistill demo] settings (every deviation from the paper, and why):", file=sys.stderr)
    for d in cfg.deviations:
        print(f"  - {d}", file=sys.stderr)
    print(f"[selfdistill demo] loading {args.model} ...", file=sys.stderr)
    model, tok, info = load_model(args.model)
    n_facts = 8 if args.quick else DEMO_FACTS
    task = get_task(DEMO_TASK, n_train=n_facts)
    probe_path = out / "probe.json"
    if probe_path.exists():
        pr = json.loads(probe_path.read_text())
    else:
        print(f"[selfdistill demo] probe: student vs teacher on {len(task.train)} training questions ...",
              file=sys.stderr)
        pr = probe(model, tok, task, cfg.context, limit=len(task.train), batch_size=16)
        probe_path.write_text(json.dumps(pr, indent=1, default=str))
    print(format_probe(pr))
    probe_summary = {"student_acc": pr["student"]["accuracy"], "teacher_acc": pr["teacher"]["accuracy"],
                     "n": pr["n"], "kl_teacher_student": pr["kl_teacher_student"], "verdict": pr["verdict"]}
    name = next((k for k, v in TEACHER_TEMPLATES.items() if v == cfg.context.teacher_template), None)
    notes = [f"Teacher template: {name or repr(cfg.context.teacher_template)}; bf16 autocast: {cfg.train.bf16}",
             *DEMO_SETTINGS_WHY]
    results = run_sequence([DEMO_TASK], methods, seeds, out, model_name=args.model, cfg=cfg,
                           eval_every=eval_every, task_kwargs={DEMO_TASK: {"n_train": n_facts}},
                           probe=probe_summary, notes=notes, model=model, tokenizer=tok,
                           keep_checkpoints=args.keep_checkpoints,
                           title="selfdistill demo: SDFT vs SFT on ISO 4217 codes (SmolLM2-135M-Instruct)")
    print_summary(results)
    el = time.perf_counter() - t0
    print(f"\n[selfdistill demo] finished in {el / 60:.1f} min. Report: {out / 'report.html'} "
          f"(and {out / 'report.md'})")
    return 0


def print_summary(results: dict) -> None:
    from .metrics import wilson_interval
    several = len({r.get("seed") for r in results["runs"]}) > 1

    def label(r):
        return f"{r['method']} seed {r.get('seed')}" if several else r["method"]
    w = max([14] + [len(label(r)) + 1 for r in results["runs"]])
    print(f"\n{'method':<{w}}| new-task acc (reworded)  | training phrasing        | retention                "
          "| drift KL | train s")
    print(f"{'-' * w}|--------------------------|--------------------------|--------------------------"
          "|----------|--------")
    base = results["runs"][0]
    n_t, n_r = base["matrix_n"][0][0], base["retention_n"]

    def fmt(acc, n):
        if acc is None or not n:
            return f"{'n/a':<25}"
        lo, hi = wilson_interval(round(acc * n), n)
        return f"{f'{acc:6.1%} [{lo:5.1%}, {hi:6.1%}]':<25}"

    def also(r, i):
        rec = next(iter((r.get("also") or {}).values()), None)
        return fmt(rec["accuracy"][i], rec["n"]) if rec else fmt(None, 0)
    print(f"{'base':<{w}}| {fmt(base['matrix'][0][0], n_t)}| {also(base, 0)}| {fmt(base['retention'][0], n_r)}"
          f"| {0:8.4f} |")
    for r in results["runs"]:
        print(f"{label(r):<{w}}| {fmt(r['matrix'][-1][0], n_t)}| {also(r, -1)}| {fmt(r['retention'][-1], n_r)}"
              f"| {r['drift'][-1]:8.4f} | {sum(r.get('train_seconds', [0])):6.0f}")
