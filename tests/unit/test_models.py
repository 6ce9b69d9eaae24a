"""Model resolution: default alias cache (sha256-checked, rebuilt when corrupt), local dirs, GGUF files, hub ids."""

from __future__ import annotations

import json

import pytest
import torch

from selfdistill import models
from selfdistill.models import ModelError, load_model


def _fake_convert(calls):
    def convert(gguf, out_dir):
        calls.append(gguf)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.safetensors").write_bytes(b"weights" * 10)
        files = {"model.safetensors": models.sha256_file(out_dir / "model.safetensors")}
        (out_dir / models.MANIFEST).write_text(json.dumps({"files": files}))
    return convert


def test_default_cache_built_once_and_rebuilt_when_corrupt_or_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf bytes")
    calls = []
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(models, "SMOLLM2_GGUF_SHA256", models.sha256_file(gguf))
    monkeypatch.setattr(models, "convert_gguf", _fake_convert(calls))
    d = models.default_model_dir()
    assert len(calls) == 1
    models.default_model_dir()
    assert len(calls) == 1  # valid cache: nothing rebuilt
    w = d / "model.safetensors"
    w.write_bytes(b"X" + w.read_bytes()[1:])  # corrupt one byte
    models.default_model_dir()
    assert len(calls) == 2
    w.unlink()
    models.default_model_dir()
    assert len(calls) == 3


def test_wrong_gguf_hash_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"tampered")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    with pytest.raises(ModelError, match="does not match the pinned"):
        models.default_model_dir(rebuild=True)


def test_local_directory_roundtrip(tmp_path, tiny_tok, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tok.save_pretrained(tmp_path / "m")
    m, tok, info = load_model(str(tmp_path / "m"))
    assert info.kind == "directory" and tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(m(ids).logits, tiny_model(ids).logits)
    # loaded models decode without repeated key/value heads on CPU (attention.py); a checkpoint does not keep it
    assert m.config._attn_implementation == "selfdistill_sdpa"
    m.save_pretrained(tmp_path / "again")
    assert "selfdistill" not in (tmp_path / "again" / "config.json").read_text()


@pytest.mark.parametrize("make,frag", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p / "missing.gguf", "model file not found"),
])
def test_missing_paths(tmp_path, make, frag):
    with pytest.raises(ModelError, match=frag):
        load_model(str(make(tmp_path)))


def test_corrupt_gguf_names_file(tmp_path):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError) as e:
        load_model(str(p))
    assert "broken.gguf" in str(e.value) and "cannot read this GGUF" in str(e.value)


def test_corrupt_safetensors_names_file(tmp_path, tiny_tok, tiny_model):
    d = tmp_path / "m"
    tiny_model.save_pretrained(d)
    tiny_tok.save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError) as e:
        load_model(str(d))
    assert str(d) in str(e.value)


def test_hub_id_offline_names_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub"):
        load_model("nonexistent-org/nonexistent-model")


def test_unknown_alias():
    with pytest.raises(ModelError, match="not a known alias"):
        load_model("smollm3")


@pytest.mark.slow
def test_default_model_gguf_roundtrip_identical_logits():
    """GGUF -> plain safetensors cache -> reload gives identical logits; generation stops at <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, info = load_model("smollm2-135m")
    assert info.kind == "alias" and (models.default_model_dir() / models.MANIFEST).exists()
    gguf = models.smollm2_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt", add_special_tokens=False).input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    out = model.generate(ids, max_new_tokens=30, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    assert tok.eos_token == "<|im_end|>" and new[-1] == tok.eos_token_id and len(new) < 30
    assert "Paris" in tok.decode(new)
