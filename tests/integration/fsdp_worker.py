"""Worker for tests/integration/test_fsdp.py: the FSDP2 pieces of selfdistill.training.distributed on the tiny
Llama, under torchrun.

`--mode pieces` (2 processes): shard student and EMA teacher, compare against an unsharded reference that every
rank computes locally (same seed), step, checkpoint, resume, consolidate. Each rank writes `D/pieces-rank<r>.json`.
`--mode reload` (any number of processes): load the checkpoint written by `pieces` (resharded by DCP when the
number of processes differs) and write `D/reload-world<N>.pt` with the full student and teacher state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # helpers: the tiny tokenizer / model builders
sys.path.insert(0, str(TESTS.parent / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from helpers import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from selfdistill.training import distributed as D  # noqa: E402
from selfdistill.training.teacher import Teacher  # noqa: E402

RATE = 0.25
PROMPTS = ["What is 12 + 7?", "What is the capital of Peru?", "Call get_weather for Paris.",
           "You are a helpful assistant. What is the ISO 4217 code of the Malagasy Ariary?"]


def build(tok, bf16: bool, cpu_offload: bool = False):
    """Student, teacher, optimizer, scheduler as training sets them up: the EMA teacher (training.teacher.Teacher:
    a float32 copy made before sharding) and the student sharded alike by distributed.wrap_for_training. The
    teacher module carries its Teacher as `.ema`: train_step updates it the way the training loop does."""
    from transformers import get_cosine_schedule_with_warmup

    student = build_tiny_model(tok, seed=0)
    ema = Teacher(student, "ema", RATE)
    D.wrap_for_training(student, ema.copy, torch.device("cpu"), bf16=bf16, cpu_offload=cpu_offload)
    teacher = ema.copy
    teacher.ema = ema
    opt = torch.optim.AdamW(list(student.parameters()), lr=1e-2)
    return student, teacher, opt, get_cosine_schedule_with_warmup(opt, 0, 10)


def batch(tok, rank: int) -> torch.Tensor:
    ids = [tok.encode(p) for p in PROMPTS[2 * rank:2 * rank + 2]]
    n = min(len(x) for x in ids)
    return torch.tensor([x[:n] for x in ids])


def train_step(student, teacher, opt, sched, ids) -> float:
    student(input_ids=ids, labels=ids).loss.backward()
    norm = D.clip_grad_norm(list(student.parameters()), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    teacher.ema.update()  # the training loop's EMA update (Teacher.update, on the local shards)
    return float(norm)


def reference_grad_norm(tok, world: int) -> float:
    """The same first step's gradient norm, unsharded, all ranks' batches in one process (mean of rank losses)."""
    ref = build_tiny_model(tok, seed=0)
    loss = sum(ref(input_ids=batch(tok, r), labels=batch(tok, r)).loss for r in range(world)) / world
    loss.backward()
    return float(torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()]))


def generation_checks(student, tok, rank: int) -> dict:
    """Rollouts with the weights gathered once: equal to the unsharded model's, ranks stop at different lengths."""
    import time

    ref = build_tiny_model(tok, seed=0).eval()
    ids = batch(tok, rank)
    gen = dict(do_sample=False, max_new_tokens=8 + 8 * rank, pad_token_id=tok.pad_token_id)  # unequal on purpose
    student.eval()
    with torch.no_grad(), D.gathered_for_generation(student):
        t0 = time.perf_counter()
        got = student.generate(input_ids=ids, synced_gpus=False, **gen)
        dt = time.perf_counter() - t0
    student.train()
    with torch.no_grad():
        want = ref.generate(input_ids=ids, **gen)
    still_sharded = all(p.to_local().numel() < p.numel() for p in student.parameters())
    return {"gen_equal": bool(torch.equal(got, want)), "gen_len": got.shape[1], "gen_s": dt,
            "resharded_after_generate": still_sharded}


def pieces(args, tok) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {"rank": rank, "world": world}
    student, teacher, opt, sched = build(tok, bf16=False)
    res["param_is_dtensor"] = all(type(p).__name__ == "DTensor" for p in student.parameters())
    res["local_fraction"] = sum(p.to_local().numel() for p in student.parameters()) / sum(
        p.numel() for p in student.parameters())
    res["teacher_dtype"] = str({p.dtype for p in teacher.parameters()})
    res.update(generation_checks(student, tok, rank))

    # teacher forward, sharded, under inference_mode: equals the unsharded model's logits
    ids = batch(tok, rank)
    with torch.inference_mode():
        t_logits = teacher(input_ids=ids).logits
        r_logits = build_tiny_model(tok, seed=0)(input_ids=ids).logits
    res["teacher_logits_maxdiff"] = float((t_logits - r_logits).abs().max())

    # one step: global grad norm vs the unsharded reference; EMA on local shards vs its definition on full tensors
    teacher_before = D.full_state_dict(teacher)
    res["grad_norm"] = train_step(student, teacher, opt, sched, ids)
    res["grad_norm_reference"] = reference_grad_norm(tok, world)
    student_full, teacher_full = D.full_state_dict(student), D.full_state_dict(teacher)
    if rank == 0:
        res["ema_maxdiff"] = max(float((teacher_full[k] - torch.lerp(teacher_before[k], student_full[k], RATE))
                                       .abs().max()) for k in student_full)
        res["ema_moved"] = max(float((teacher_full[k] - teacher_before[k]).abs().max()) for k in student_full)
    res["nonfinite_agreed"] = D.any_rank(rank == world - 1, torch.device("cpu"))
    res["finite_agreed"] = D.any_rank(False, torch.device("cpu"))

    # checkpoint after step 1, continue to step 3; a fresh setup resumed from step 1 must reach the same weights
    root = Path(args.out) / "checkpoints"
    D.save_sharded_checkpoint(root, 1, model=student, optimizer=opt, teacher=teacher, scheduler=sched,
                              trainer_state={"step": 1, "data_position": 4})
    for _ in range(2):
        train_step(student, teacher, opt, sched, ids)
    want_s, want_t = D.full_state_dict(student), D.full_state_dict(teacher)
    s2, t2, o2, sc2 = build(tok, bf16=False)
    state = D.load_sharded_checkpoint(root / "step-000001", model=s2, optimizer=o2, teacher=t2, scheduler=sc2)
    for _ in range(2):
        train_step(s2, t2, o2, sc2, ids)
    got_s, got_t = D.full_state_dict(s2), D.full_state_dict(t2)
    if rank == 0:
        res["resume_state"] = state
        res["resume_student_bitwise"] = all(torch.equal(want_s[k], got_s[k]) for k in want_s)
        res["resume_teacher_bitwise"] = all(torch.equal(want_t[k], got_t[k]) for k in want_t)
        torch.save({"student": want_s, "teacher": want_t}, Path(args.out) / "step3.pt")
        torch.save({"student": student_full, "teacher": teacher_full}, Path(args.out) / "step1.pt")
    D.save_consolidated(s2, tok, Path(args.out) / "final")
    res["failed_save"] = failing_save(s2, t2, o2, sc2, root)
    return res


def failing_save(student, teacher, opt, sched, root: Path) -> str:
    """Disk full on the last rank while it writes its RNG file: every rank raises, no step-2 folder appears."""
    from selfdistill.training.checkpoint import CheckpointError, latest_checkpoint

    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if dist.get_rank() == dist.get_world_size() - 1 and "rng-rank" in str(f):
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    torch.save = full_disk
    try:
        D.save_sharded_checkpoint(root, 2, model=student, optimizer=opt, teacher=teacher, scheduler=sched,
                                  trainer_state={"step": 2})
        return "no error"
    except CheckpointError as e:
        dist.barrier()
        left = sorted(p.name for p in root.iterdir())
        return f"{e} | latest={latest_checkpoint(root).name} | folders={left}"
    finally:
        torch.save = real_save


def mixed_precision_checks(tok) -> dict:
    """bf16 compute through MixedPrecisionPolicy: parameters (and so optimizer states) stay float32."""
    student, teacher, opt, sched = build(tok, bf16=True)
    ids = batch(tok, dist.get_rank())
    logits = student(input_ids=ids).logits
    train_step(student, teacher, opt, sched, ids)
    return {"bf16_logits_dtype": str(logits.dtype),
            "bf16_param_dtypes": sorted({str(p.dtype) for p in student.parameters()}),
            "bf16_teacher_dtypes": sorted({str(p.dtype) for p in teacher.parameters()}),
            "bf16_grad_free": all(p.grad is None for p in student.parameters())}


def offload_checks(tok) -> dict:
    """CPUOffloadPolicy (on CPU it exercises the policy's code path, not a device transfer): 2 steps with and
    without offload reach the same student and teacher."""
    ids = batch(tok, dist.get_rank())
    states = []
    for offload in (False, True):
        student, teacher, opt, sched = build(tok, bf16=False, cpu_offload=offload)
        for _ in range(2):
            train_step(student, teacher, opt, sched, ids)
        states.append((D.full_state_dict(student), D.full_state_dict(teacher)))
    (s0, t0), (s1, t1) = states
    return {"offload_same": all(torch.equal(s0[k], s1[k]) for k in s0) and all(torch.equal(t0[k], t1[k]) for k in t0)}


def reload(args, tok) -> None:
    """Load the step-1 checkpoint on this number of processes; save the full student and teacher (rank 0)."""
    student, teacher, opt, sched = build(tok, bf16=False)
    state = D.load_sharded_checkpoint(Path(args.out) / "checkpoints" / "step-000001", model=student,
                                      optimizer=opt, teacher=teacher, scheduler=sched)
    s, t = D.full_state_dict(student), D.full_state_dict(teacher)
    if dist.get_rank() == 0:
        torch.save({"student": s, "teacher": t, "state": state, "lr": sched.get_last_lr()},
                   Path(args.out) / f"reload-world{dist.get_world_size()}.pt")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["pieces", "reload"], default="pieces")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    tok = build_tiny_tokenizer()
    try:
        if args.mode == "reload":
            reload(args, tok)
        else:
            res = pieces(args, tok)
            res.update(mixed_precision_checks(tok))
            res.update(offload_checks(tok))
            (Path(args.out) / f"pieces-rank{dist.get_rank()}.json").write_text(json.dumps(res, indent=1))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
