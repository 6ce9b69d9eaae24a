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

from .config import PAPER_TEACHER_TEMPLATE, load_config, parse_dotted_overrides

DEMO_TASK = "knowledge"
DEMO_FACTS = 32
DEMO_OVERRIDES = {
    "rollout.max_new_tokens": 32,
    "train.prompts_per_step": 8,
    "train.micro_batch_size": 8,
    "train.max_steps": 40,
    "optim.lr": 1e-4,
    "optim.warmup_steps": 4,
    "data.max_prompt_tokens": 512,
    "data.max_teacher_prompt_tokens": 1024,
}
DEMO_METHODS = ["sdft", "sft", "sft@lr=2e-5"]
DEMO_SETTINGS_WHY = [
    "Task: ISO 4217 codes. At 135M the teacher only beats the student clearly when the answer is in its context "
    "(knowledge acquisition); for BFCL tool calls the gap is small (see the README's probe table).",
    f"{DEMO_FACTS} facts, 8 prompts per step, 32 new tokens, lr 1e-4 with cosine decay: the budget that fits "
    "20 minutes on 2 CPU cores. The paper's lr grid (5e-6..5e-5) moves a 135M model too little in 40 steps; an "
    "earlier TRL trial at these settings reached 20% on 64 codes in 60 steps.",
    "SFT is run at the same lr (1e-4) and at 2e-5, because a fair comparison is against a tuned SFT.",
    "Teacher template: the paper's, unchanged, with the source fact before the question. Measured on 2026-11-28: "
    "this 135M teacher then opens with a reasoning preamble that the student learns within 10 steps, so SDFT does "
    "not learn the codes here (README). Try --context.teacher_template paper_no_thinking (not yet measured).",
    "Checkpoints are evaluated along training so retention can be compared at equal new-task accuracy.",
]


def run_demo(args, extra: list[str]) -> int:
    from .evaluate import format_probe, probe
    from .models import load_model
    from .sequence import run_sequence
    from .tasks import get_task

    t0 = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(DEMO_OVERRIDES)
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
                     "n": pr["n"], "mean_kl": pr["kl_teacher_student"], "verdict": pr["verdict"]}
    same = cfg.context.teacher_template == PAPER_TEACHER_TEMPLATE
    notes = [f"Teacher template: {'paper (unchanged)' if same else repr(cfg.context.teacher_template)}",
             *DEMO_SETTINGS_WHY]
    results = run_sequence([DEMO_TASK], DEMO_METHODS, [0], out, model_name=args.model, cfg=cfg,
                           eval_every=eval_every, task_kwargs={DEMO_TASK: {"n_train": n_facts}},
                           probe=probe_summary, notes=notes, model=model, tokenizer=tok,
                           title="selfdistill demo: SDFT vs SFT on ISO 4217 codes (SmolLM2-135M-Instruct)")
    print_summary(results)
    el = time.perf_counter() - t0
    print(f"\n[selfdistill demo] finished in {el / 60:.1f} min. Report: {out / 'report.html'} "
          f"(and {out / 'report.md'})")
    return 0


def print_summary(results: dict) -> None:
    from .metrics import wilson_interval
    print("\nmethod        | new-task acc (reworded)   | retention                 | drift KL | train s")
    print("--------------|---------------------------|---------------------------|----------|--------")
    base = results["runs"][0]
    n_t, n_r = base["matrix_n"][0][0], base["retention_n"]

    def fmt(acc, n):
        lo, hi = wilson_interval(round(acc * n), n)
        return f"{acc:6.1%} [{lo:5.1%}, {hi:5.1%}]   "
    print(f"{'base':<14}| {fmt(base['matrix'][0][0], n_t)}| {fmt(base['retention'][0], n_r)}| {0:8.4f} |")
    for r in results["runs"]:
        print(f"{r['method']:<14}| {fmt(r['matrix'][-1][0], n_t)}| {fmt(r['retention'][-1], n_r)}| "
              f"{r['drift'][-1]:8.4f} | {sum(r.get('train_seconds', [0])):6.0f}")
