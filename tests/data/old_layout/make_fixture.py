"""Writes tests/data/old_layout with the flat-module code from before the package restructure (commit 429c73f).

    git worktree add /tmp/oldtree 429c73f
    cd /tmp && PYTHONPATH=/tmp/oldtree/src .venv/bin/python make_fixture.py /tmp/oldfix/old_layout
(then copy the folder here). Kept as the record of how the fixture was made; it imports the OLD modules."""
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "/tmp/oldtree/tests")
from conftest import build_tiny_model, build_tiny_tokenizer
import selfdistill
assert "/tmp/oldtree" in selfdistill.__file__, selfdistill.__file__
from selfdistill.config import load_config
from selfdistill.train import train
from selfdistill.cli import main
from selfdistill.data import Example

out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
tok = build_tiny_tokenizer()
# 1. a stopped train run (SDFT, EMA teacher): stopped after step 1 of 3, checkpoint written
cfg = load_config(preset="cpu", overrides={"train.max_steps": 3, "train.prompts_per_step": 2, "train.micro_batch_size": 2,
    "rollout.max_new_tokens": 6, "optim.warmup_steps": 0, "optim.lr": 1e-3, "log.progress": False, "train.seed": 0,
    "data.max_prompt_tokens": 2048, "data.max_teacher_prompt_tokens": 4096})
examples = [Example([{"role": "user", "content": f"What is the code of thing {i}?"}], f"The code of thing {i} is c{i}.",
                    origin=f"inline:{i + 1}") for i in range(4)]
res = train(cfg, examples, build_tiny_model(tok, seed=0), tok, out / "stopped_train", stop_after=1)
assert res.stopped_early
# 2. a finished sweep (two methods x one rate, one seed) on a file task
model_dir = Path("/tmp/oldfix/tiny"); shutil.rmtree(model_dir, ignore_errors=True)
build_tiny_model(tok).save_pretrained(model_dir); tok.save_pretrained(model_dir)
data = out / "facts.jsonl"
data.write_text("".join(json.dumps({"prompt": f"What is the code of thing {i}?", "demonstration":
                f"The code of thing {i} is c{i}.", "answer": f"c{i}"}) + "\n" for i in range(4)))
TINY = ["--train.prompts_per_step", "2", "--train.micro_batch_size", "2", "--rollout.max_new_tokens", "4",
        "--optim.warmup_steps", "0", "--log.progress", "false", "--data.max_prompt_tokens", "2048",
        "--data.max_teacher_prompt_tokens", "4096", "--train.max_steps", "2"]
assert main(["sweep", "--task", f"{data}@scorer=contains_word,name=facts", "--methods", "sdft,sft", "--lrs", "2e-3",
             "--seeds", "1", "--model", str(model_dir), "--output", str(out / "sweep"), "--eval-every", "1",
             "--eval-limit", "4", *TINY]) == 0
for d in (out / "sweep").glob("*/seed*/stage*"):  # the trained models: not needed to report, too big to keep
    shutil.rmtree(d)
for f in (out / "sweep").glob("fig_*.png"):
    f.unlink()
(out / "sweep" / "report.html").unlink()
print("ok")
