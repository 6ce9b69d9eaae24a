"""Subprocess worker for kill/resume tests: trains a seeded tiny model. Usage: train_worker.py JSON_ARGS."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers
import torch  # noqa: E402

from helpers import build_tiny_model, build_tiny_tokenizer, examples  # noqa: E402
from selfdistill.config import load_config  # noqa: E402
from selfdistill.training import train  # noqa: E402


def run(args):
    torch.set_num_threads(1)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=0, **args.get("model", {}))  # e.g. {"hidden": 128} for vLLM's CPU kernels
    if args.get("long_rollouts"):  # the end of turn becomes (almost) impossible: every rollout runs to the limit
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 200)
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] = 0
    cfg = load_config(overrides=args["overrides"])
    if args.get("die_in_save_after"):  # simulate a kill in the middle of writing a checkpoint
        import selfdistill.training.checkpoint as ck
        orig = ck._write_bytes
        count = {"n": 0}

        def dying_write(path, write):
            if path.name == "optimizer.pt":
                count["n"] += 1
                if count["n"] == args["die_in_save_after"]:
                    os.kill(os.getpid(), 9)
            return orig(path, write)
        ck._write_bytes = dying_write
    res = train(cfg, examples(source="w"), model, tok, args["output"], resume=args.get("resume", False),
                overwrite=args.get("overwrite", False))
    print(json.dumps({"steps": len(res.metrics), "stopped_early": res.stopped_early}), flush=True)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
