"""Shared fixtures: a tiny ChatML tokenizer trained in-process and tiny random Llama models (builders in helpers.py)."""

from __future__ import annotations

import pytest

from helpers import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tok():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tok):
    return build_tiny_model(tiny_tok)


@pytest.fixture
def model_dir(tiny_tok, tmp_path):
    """The tiny model and tokenizer saved as a local folder, for commands that take --model."""
    d = tmp_path / "tiny"
    build_tiny_model(tiny_tok).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write to the user's cache, except the real-model tests, which share one session cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
