"""Shared test helpers (no tests, no fixtures): the tiny ChatML tokenizer and tiny random Llama builders, the
training data the tests share, and the launchers of the worker scripts in tests/integration/.

Importable as `helpers` from every test folder (pyproject: [tool.pytest.ini_options] pythonpath = ["tests"]) and
from the worker scripts, which put tests/ on sys.path themselves (they run as plain python or under torchrun).
The fixtures built from these (tiny_tok, tiny_model, model_dir) are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"
DIST_WORKER = TESTS / "integration" / "dist_worker.py"
FSDP_WORKER = TESTS / "integration" / "fsdp_worker.py"
VLLM_DIST_WORKER = TESTS / "integration" / "vllm_dist_worker.py"
TRAIN_WORKER = TESTS / "integration" / "train_worker.py"

# ----------------------------------------------------------------------------------------------------------
# Tiny tokenizer and models

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "What is the ISO 4217 code of the Malagasy Ariary? The answer is MGA.",
    "This is an example for a response to the question: Now answer with a response of your own.",
    "The capital of France is Paris. The capital of Peru is Lima. 12 + 7 = 19.",
    "def get_weather(city='Paris', unit='celsius'): return call(name, arguments)",
    "You are a helpful assistant. Please answer briefly, including the thinking process.",
] * 20


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<unk>")
    tok.chat_template = CHATML
    tok.padding_side = "left"
    return tok


def build_tiny_model(tok, seed: int = 0, layers: int = 2, hidden: int = 64, tied: bool = True,
                     init_std: float | None = None):
    """A tiny random Llama (4 heads, 2 KV heads). `tied=False` unties the output embedding; `init_std` sets the
    weights' init std (transformers' default: 0.02)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    extra = {} if init_std is None else {"initializer_range": init_std}
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=tied,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **extra)
    m = LlamaForCausalLM(cfg)
    m.generation_config.eos_token_id = tok.eos_token_id
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


def peaked_tiny_model(tok, seed: int = 0):
    """The tiny Llama at hidden 128 (vLLM's CPU attention needs a head size of 32 or more) with extra weight noise,
    so that its logits are peaked: greedy comparisons between engines are then meaningful (no near-ties)."""
    m = build_tiny_model(tok, seed=seed, hidden=128)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


# ----------------------------------------------------------------------------------------------------------
# Data


def examples(n: int = 8, source: str = "t"):
    """`n` addition questions with a demonstration; origins `source:0`, `source:1`, ..."""
    from selfdistill.data import Example

    return [Example([{"role": "user", "content": f"What is {i} + 7?"}], f"The answer is {i + 7}.",
                    origin=f"{source}:{i}") for i in range(n)]


def addition_records(n: int, demonstration: str = "The answer is {}."):
    """The same questions as `examples` as data-file records; `demonstration` is formatted with the sum."""
    return [{"prompt": f"What is {i} + 7?", "demonstration": demonstration.format(i + 7)} for i in range(n)]


def write_records(path: Path, records) -> Path:
    """A JSONL data file, one record a line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fixed_batch_kl(student, teacher_model, tok, items, completions) -> float:
    """The SDFT loss (forward KL) of `student` against `teacher_model` on fixed completions of encoded items."""
    from selfdistill import losses
    from selfdistill.training.batches import completion_logits, pack

    with torch.no_grad():
        t = completion_logits(teacher_model, pack([e.teacher_prompt_ids for e in items], completions,
                                                  tok.pad_token_id, "cpu"))
        sb = pack([e.student_prompt_ids for e in items], completions, tok.pad_token_id, "cpu")
        s = completion_logits(student, sb)
        return losses.distillation_loss(s, t, sb.completion_mask_BT, skip_first_tokens=0)[0].item()


def final_weights(out) -> dict:
    """The state dict of a run's final model folder."""
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "model.safetensors"))


# ----------------------------------------------------------------------------------------------------------
# Processes

# Overrides of the kill/resume runs of train_worker.py: 6 steps, a checkpoint every step, the last 2 kept.
WORKER_OV = {"train.max_steps": 6, "train.prompts_per_step": 4, "train.micro_batch_size": 2,
             "rollout.max_new_tokens": 8, "optim.warmup_steps": 1, "optim.lr": 1e-3, "log.save_every": 1,
             "log.keep_last": 2, "log.progress": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra) -> dict:
    """The environment of a launched test process: one thread, no GPU, offline, src/ first on PYTHONPATH
    (`pythonpath=[...]` puts more folders after it); other keywords are set as variables."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *extra.pop("pythonpath", []),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("LOCAL_RANK", None)
    env.update(extra)
    return env


def accelerate_launch(n: int) -> list[str]:
    """The command prefix that starts `n` CPU processes under accelerate (gloo; see test_distributed.py)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def run_dist_workers(base: Path, steps: int, plain: list[tuple[str, list[str], str]],
                     multi: tuple[str, list[str], str]) -> None:
    """dist_worker.py runs into base/NAME: each (NAME, extra args, what) of `plain` as one plain process in the
    background while `multi` runs as 2 processes under accelerate launch; then every run is checked."""
    procs = [(subprocess.Popen([sys.executable, str(DIST_WORKER), "--out", str(base / name), "--expect-world", "1",
                                "--steps", str(steps), *extra], env=subprocess_env(), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), what)
             for name, extra, what in plain]
    name, extra, what_multi = multi
    done = subprocess.run([*accelerate_launch(2), str(DIST_WORKER), "--out", str(base / name), "--expect-world", "2",
                           "--steps", str(steps), *extra], env=subprocess_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    for proc, what in procs:
        out, err = proc.communicate(timeout=300)
        check(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), what)
    check(done, what_multi)


def train_worker(args: dict, **kw) -> subprocess.Popen:
    """tests/integration/train_worker.py started in the background with `args` (its JSON argument)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(TRAIN_WORKER), json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, proc: subprocess.Popen, what: str | None = None, timeout: float = 60,
             lines: int = 0) -> None:
    """Until `path` exists (and holds at least `lines` lines); fails when `proc` ends first or after `timeout` s."""
    what = what or str(path)
    t0 = time.time()
    while not (path.exists() and (not lines or len(path.read_text().splitlines()) >= lines)):
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
