"""`selfdistill demo`: the main job, on the embedded SmolLM2-135M-Instruct, on a 2-core CPU in about 11 minutes.

  1. probe     does the teacher (demonstration + source fact in context) beat the student on the task?
  2. train     SDFT, and SFT at two learning rates (a tuned baseline, as the paper swept both), same data,
               steps, schedule and logging; new-task accuracy and retention evaluated every `eval_every` steps
  3. evaluate  new-task accuracy (reworded questions), retention suite, drift KL(base || tuned)
  4. report    results.json / CSV / report.md / report.html in --output

Task: `knowledge` — ISO 4217 currency codes the base model does not know (pycountry data). The student is asked
"What is the ISO 4217 currency code of the <name>?"; the teacher additionally sees the fact and the demonstration.
Test questions are reworded (the paper's out-of-distribution check). The settings are the named preset
:data:`.presets.DEMO`; why each was chosen: its `why`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TEACHER_TEMPLATES, load_config
from ..evaluation import format_probe, probe
from ..methods import MethodSpec
from ..metrics import wilson_interval
from ..models import load_model
from ..tasks import get_task
from .options import SequenceOptions
from .presets import DEMO, RunPreset
from .sequence import run_sequence


@dataclass
class DemoOptions:
    output: Path = Path("runs/demo")
    model_name: str = "smollm2-135m"
    quick: bool = False  # a few steps only (smoke run)
    methods: list[MethodSpec] | None = None  # default: the preset's
    seeds: list[int] = field(default_factory=lambda: [0])
    keep_checkpoints: bool = False
    overrides: dict = field(default_factory=dict)  # dotted config keys from the command line, applied last
    preset: RunPreset = DEMO


def demo_config(opts: DemoOptions):
    """The preset's config (the `cpu` preset + its overrides, bf16 where fast), --quick's cuts, then the user's."""
    overrides = opts.preset.config_overrides()
    if opts.quick:
        overrides.update({"train.max_steps": 2, "rollout.max_new_tokens": 16})
    overrides.update(opts.overrides)
    cfg = load_config(overrides=overrides, preset="cpu")
    cfg.deviations += list(opts.preset.why)
    return cfg


def run_probe_once(model, tok, task, cfg, out: Path) -> dict:
    """The probe on the task's training questions (kept in probe.json: a rerun reuses it); its summary."""
    probe_path = out / "probe.json"
    if probe_path.exists():
        pr = json.loads(probe_path.read_text())
    else:
        print(f"[selfdistill demo] probe: student vs teacher on {len(task.train)} training questions ...",
              file=sys.stderr)
        pr = probe(model, tok, task, cfg.context, limit=len(task.train), batch_size=32)
        probe_path.write_text(json.dumps(pr, indent=1, default=str))
    print(format_probe(pr))
    return {"student_acc": pr["student"]["accuracy"], "teacher_acc": pr["teacher"]["accuracy"],
            "n": pr["n"], "kl_teacher_student": pr["kl_teacher_student"], "verdict": pr["verdict"]}


def run_demo(opts: DemoOptions) -> dict:
    t0 = time.perf_counter()
    out, preset = Path(opts.output), opts.preset
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(opts)
    print("[selfdistill demo] settings (every deviation from the paper, and why):", file=sys.stderr)
    for d in cfg.deviations:
        print(f"  - {d}", file=sys.stderr)
    print(f"[selfdistill demo] loading {opts.model_name} ...", file=sys.stderr)
    model, tok, info = load_model(opts.model_name)
    task = get_task(preset.task, n_train=8 if opts.quick else preset.n_facts)
    probe_summary = run_probe_once(model, tok, task, cfg, out)
    name = next((k for k, v in TEACHER_TEMPLATES.items() if v == cfg.context.teacher_template), None)
    notes = [f"Teacher template: {name or repr(cfg.context.teacher_template)}; bf16 autocast: {cfg.train.bf16}",
             *preset.why]
    seq = SequenceOptions(out, cfg, seeds=opts.seeds, model_name=opts.model_name, eval_every=1 if opts.quick else 10,
                          keep_checkpoints=opts.keep_checkpoints, notes=notes, probe=probe_summary,
                          title="selfdistill demo: SDFT vs SFT on ISO 4217 codes (SmolLM2-135M-Instruct)")
    results = run_sequence([task], opts.methods or preset.method_specs(), seq, model=model, tokenizer=tok)
    print_summary(results)
    print_findings()
    print(f"\n[selfdistill demo] finished in {(time.perf_counter() - t0) / 60:.1f} min. Report: "
          f"{out / 'report.html'} (and {out / 'report.md'})")
    return results


# What the generalisation-distance battery measured (docs/results.md#the-generalisation-distance-battery-2026-12-01):
# the demo states it after its own table, whichever way it went. SDFT won at no distance, so the demo's test set
# stays the reworded questions.
BATTERY_FINDING = (
    "SFT at its best rate answered the trained facts better than SDFT at its best rate at every distance from the "
    "training question that either reached: the question itself, a rewording, another sentence structure, the "
    "entity named differently, the code used in a task.",
    "SDFT won at no distance. Neither method answered the reverse questions (which entity has this code), and "
    "neither answered never-trained facts of the same kind (the control): what was learned was the facts.",
    "Over 3 seeds SFT's lead is measurable on the training question, the entity named differently and the code "
    "used in a task; SDFT also lost more retention than SFT at a rate where SFT learned as much or more (SFT at "
    "3e-5 kept retention within about a point of the base model).",
    "Limits: 135M parameters, 16 packaged facts, 20 steps of 8 prompts, 3 rates per method, 3 seeds. The paper "
    "reports SDFT's advantage at 7B and up; at this size and budget, use SFT at a moderate rate.",
)


def print_findings() -> None:
    print("\nWhat the generalisation-distance battery showed (docs/results.md, 'The generalisation-distance "
          "battery'):")
    for line in BATTERY_FINDING:
        print(f"  - {line}")


def _fmt_acc(acc, n) -> str:
    if acc is None or not n:
        return f"{'n/a':<25}"
    lo, hi = wilson_interval(round(acc * n), n)
    return f"{f'{acc:6.1%} [{lo:5.1%}, {hi:6.1%}]':<25}"


def _fmt_also(r: dict, i: int) -> str:
    rec = next(iter((r.get("also") or {}).values()), None)
    return _fmt_acc(rec["accuracy"][i], rec["n"]) if rec else _fmt_acc(None, 0)


def print_summary(results: dict) -> None:
    """A console table: base and every run's last stage, with Wilson intervals."""
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
    print(f"{'base':<{w}}| {_fmt_acc(base['matrix'][0][0], n_t)}| {_fmt_also(base, 0)}| "
          f"{_fmt_acc(base['retention'][0], n_r)}| {0:8.4f} |")
    for r in results["runs"]:
        print(f"{label(r):<{w}}| {_fmt_acc(r['matrix'][-1][0], n_t)}| {_fmt_also(r, -1)}| "
              f"{_fmt_acc(r['retention'][-1], n_r)}| {r['drift'][-1]:8.4f} | {sum(r.get('train_seconds', [0])):6.0f}")
