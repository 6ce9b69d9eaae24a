"""Worker for tests/integration/test_distributed.py and test_fsdp.py: a few SDFT and SFT steps on the tiny model,
one process or several.

Run it plainly (`python tests/integration/dist_worker.py --out D`) for the single-process reference, or under
`accelerate launch --multi_gpu --num_processes 2 ...` (gloo on CPU when no GPU is visible) for data parallel
(`--dist fsdp`: FSDP2, the student and teacher gathered from their shards before saving).
Every rank writes `D/<method>/rank<r>.pt` with its final student weights, its EMA teacher weights and a sha256 of
the teacher, so the test can compare ranks with each other and with the single-process run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # helpers: the tiny tokenizer / model builders
sys.path.insert(0, str(TESTS.parent / "src"))

import torch  # noqa: E402

from helpers import build_tiny_model, build_tiny_tokenizer  # noqa: E402

QUESTIONS = [
    ("What is the ISO 4217 code of the Malagasy Ariary?", "The answer is MGA."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
    ("What is 12 + 7?", "12 + 7 = 19."),
    ("Call get_weather for Paris.", "get_weather(city='Paris', unit='celsius')"),
    ("Please answer briefly: what is the code of the Ariary?", "MGA."),
    ("You are a helpful assistant. What is 7 + 12?", "The answer is 19."),
    ("Name the capital of Peru, including the thinking process.", "Lima is the capital of Peru."),
]


def tensor_sha(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def probe_logits(tok):
    """An evaluation callback (main process only): the mean logit of a fixed prompt, logged every step."""
    ids_1L = torch.tensor([tok.encode("What is 12 + 7?")])

    def on_step(step, model):
        with torch.no_grad():
            return {"eval_logit_mean": float(model(input_ids=ids_1L).logits.float().mean())}
    return on_step


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="sdft,sft")
    ap.add_argument("--expect-world", type=int, default=1, dest="expect_world")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dist", default="auto", help="dist.strategy: auto | ddp | fsdp")
    ap.add_argument("--steps-per-generation", type=int, default=1, dest="steps_per_generation",
                    help="rollout.steps_per_generation")
    ap.add_argument("--save-every", type=int, default=0, dest="save_every", help="log.save_every")
    args = ap.parse_args()

    from accelerate import Accelerator

    import selfdistill.training as T
    import selfdistill.training.setup as training_setup
    from selfdistill.config import load_config
    from selfdistill.data import Example

    # Keep a handle on the Teacher that train() builds, to read each rank's EMA weights afterwards.
    made: list = []

    class RecordingTeacher(training_setup.Teacher):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    training_setup.Teacher = RecordingTeacher

    acc = Accelerator(cpu=not torch.cuda.is_available())
    if acc.num_processes != args.expect_world:  # e.g. `accelerate launch --cpu` silently starts one process
        print(f"dist_worker: expected {args.expect_world} processes, got {acc.num_processes}", file=sys.stderr)
        return 3
    tok = build_tiny_tokenizer()
    examples = [Example([{"role": "user", "content": q}], a, origin=f"inline:{i + 1}")
                for i, (q, a) in enumerate(QUESTIONS)]
    for method in args.methods.split(","):
        made.clear()
        cfg = load_config(overrides={
            "train.method": method, "train.max_steps": args.steps, "train.prompts_per_step": 4,
            "train.micro_batch_size": 1, "train.seed": 0, "rollout.greedy": True, "rollout.max_new_tokens": 12,
            "optim.lr": 1e-3, "optim.warmup_steps": 0, "optim.schedule": "constant", "teacher.ema_rate": 0.2,
            "dist.strategy": args.dist, "log.progress": False,
            "rollout.steps_per_generation": args.steps_per_generation, "log.save_every": args.save_every})
        model = build_tiny_model(tok, seed=0)
        out = Path(args.out) / method
        res = T.train(cfg, examples, model, tok, out, overwrite=True, accelerator=acc, on_step=probe_logits(tok),
                      eval_every=1)
        if args.dist == "fsdp":  # gather the shards: every rank gets the full weights
            from selfdistill.training.distributed import full_state_dict
            student = full_state_dict(res.model, every_rank=True)
            teacher = full_state_dict(made[0].copy, every_rank=True) if made else {}
        else:
            student = res.model.state_dict()
            teacher = made[0].state_dict() if made else {}
        student = {k: v.detach().cpu().clone() for k, v in student.items()}
        teacher = {k: v.detach().cpu().clone() for k, v in teacher.items()}
        torch.save({"world": acc.num_processes, "rank": acc.process_index, "student": student,
                    "teacher": teacher, "teacher_sha": tensor_sha(teacher) if teacher else "",
                    "student_sha": tensor_sha(student)}, out / f"rank{acc.process_index}.pt")
        acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
