"""Shared fixtures: a tiny ChatML tokenizer trained in-process and tiny random Llama models built from a config."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def build_tiny_model(tok, seed: int = 0, layers: int = 2, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = LlamaForCausalLM(cfg)
    m.generation_config.eos_token_id = tok.eos_token_id
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


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
