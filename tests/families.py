"""Tiny random-weight models of the families users bring, with their real chat templates (no hub).

Each family is the transformers architecture (LlamaConfig, Gemma2Config, Qwen2Config, Qwen3Config, MistralConfig,
Phi3Config at tiny sizes) plus a BPE tokenizer trained in-process on helpers.CORPUS with the family's special
tokens, EOS/BOS/pad choices and chat template. The templates keep the token structure of the published ones
(what is written around a turn and which token ends it); long system-prompt defaults and tool-call branches are
left out. The EOS / generation-config choices reproduce the cases that break a single-EOS stop:

  llama3   template ends a turn with <|eot_id|>; tokenizer EOS and generation_config EOS are <|end_of_text|>
           (Llama-3-8B-Instruct as first released)
  gemma2   <end_of_turn>; EOS <eos>; generation_config lists only <eos>
  qwen2    <|im_end|> (ChatML with a default system turn); generation_config [<|im_end|>, <|endoftext|>]
  qwen3    ChatML + <think>...</think> reasoning blocks; <|im_end|>
  mistral  [INST] ... [/INST] reply</s>: the end of turn is the EOS itself; no pad token
  phi3     <|user|> ... <|end|> <|assistant|> reply<|end|>; EOS <|endoftext|>; generation_config lists both
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from helpers import CORPUS

LLAMA3 = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen3's structure: the last assistant turn is written with its reasoning block (empty when it has none),
# earlier ones without; `enable_thinking=False` pre-fills an empty block in the generation prompt.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
    "{%- if loop.last %}{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n'"
    " + content.lstrip('\n') }}{%- else %}{{- '<|im_start|>assistant\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # transformers class name
    model_class: str
    template: str
    special: list[str]  # special tokens, in id order after <unk>
    bos: str | None
    eos: str
    end_of_turn: str  # what the template writes after an assistant reply
    pad: str | None = None
    generation_eos: list[str] = field(default_factory=list)  # the checkpoint's generation_config.eos_token_id
    plain_added: list[str] = field(default_factory=list)  # added, not special (Qwen3's <think>, </think>)
    config_kwargs: dict = field(default_factory=dict)


FAMILIES = {f.name: f for f in [
    Family("llama3", "LlamaConfig", "LlamaForCausalLM", LLAMA3,
           ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
           bos="<|begin_of_text|>", eos="<|end_of_text|>", end_of_turn="<|eot_id|>",
           generation_eos=["<|end_of_text|>"]),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", GEMMA,
           ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
           bos="<bos>", eos="<eos>", end_of_turn="<end_of_turn>", pad="<pad>", generation_eos=["<eos>"],
           config_kwargs=dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64)),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", QWEN2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
           bos=None, eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>",
           generation_eos=["<|im_end|>", "<|endoftext|>"]),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", QWEN3, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
           bos=None, eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>",
           generation_eos=["<|im_end|>", "<|endoftext|>"], plain_added=["<think>", "</think>"],
           config_kwargs=dict(head_dim=16)),
    Family("mistral", "MistralConfig", "MistralForCausalLM", MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"],
           bos="<s>", eos="</s>", end_of_turn="</s>", generation_eos=["</s>"],
           config_kwargs=dict(sliding_window=64)),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", PHI3,
           ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
           bos="<s>", eos="<|endoftext|>", end_of_turn="<|end|>", pad="<|endoftext|>",
           generation_eos=["<|endoftext|>", "<|end|>"]),
]}


def build_family_tokenizer(name: str):
    """A BPE tokenizer trained on helpers.CORPUS with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[name]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *fam.special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad,
                                  unk_token="<unk>", additional_special_tokens=[
                                      t for t in fam.special if t not in (fam.bos, fam.eos, fam.pad)])
    if fam.plain_added:
        tok.add_tokens(fam.plain_added)  # added as whole tokens, not special: decode keeps them as text
    tok.chat_template = fam.template
    tok.name_or_path = f"tiny-{name}"
    return tok


def build_family_model(name: str, tok, seed: int = 0, end_of_turn_bias: float = 0.0):
    """A tiny random model of the family's architecture. `end_of_turn_bias` > 0 adds that constant to the
    end-of-turn token's logit (a forward hook on lm_head, kept by deepcopy), so rollouts end at it."""
    import transformers

    fam = FAMILIES[name]
    torch.manual_seed(seed)
    ids = tok.convert_tokens_to_ids
    cfg = getattr(transformers, fam.config_class)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **fam.config_kwargs)
    model = getattr(transformers, fam.model_class)(cfg)
    gen_eos = [ids(t) for t in fam.generation_eos]
    model.generation_config.eos_token_id = gen_eos[0] if len(gen_eos) == 1 else gen_eos
    model.generation_config.pad_token_id = tok.pad_token_id
    if end_of_turn_bias:
        bias_V = torch.zeros(len(tok))
        bias_V[ids(fam.end_of_turn)] = end_of_turn_bias
        model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias_V.to(out.device, out.dtype))
    return model


def build_family(name: str, seed: int = 0, end_of_turn_bias: float = 0.0):
    """(tokenizer, model) set up as selfdistill.models.load_model would (set_chat_special_tokens)."""
    from selfdistill.models import set_chat_special_tokens

    tok = build_family_tokenizer(name)
    model = build_family_model(name, tok, seed, end_of_turn_bias)
    set_chat_special_tokens(tok, model)
    return tok, model


def script_replies(model, tok, prompt_last_token: int, reply: list[int]):
    """Make `model` answer every prompt ending in `prompt_last_token` with exactly `reply` (a list of distinct
    ids), sampled or greedy: a forward hook adds +50 to the logit of the scripted successor of each input token
    (a bigram table prompt_last -> reply[0] -> reply[1] -> ...). It acts at every position, in training forwards
    and in KV-cached decoding alike (the logits kept are aligned with the last input ids)."""
    chain = [prompt_last_token, *reply]
    if len(set(chain)) != len(chain):
        raise ValueError("scripted tokens must be distinct")
    table = dict(zip(chain[:-1], chain[1:]))

    def hook(module, args, kwargs, out):
        ids_BL = kwargs.get("input_ids", args[0] if args else None)
        logits_BKV = out.logits
        K = logits_BKV.shape[1]
        ids_BK = ids_BL[:, -K:]
        add_BKV = torch.zeros_like(logits_BKV)
        for src, dst in table.items():
            add_BKV[..., dst] += 50.0 * (ids_BK == src).to(logits_BKV.dtype)
        out.logits = logits_BKV + add_BKV
        return out

    model.register_forward_hook(hook, with_kwargs=True)
    return model


def scripted_qwen3():
    """The tiny Qwen3 model scripted to answer every chat prompt with `<think>ok</think>Paris<|im_end|>`:
    (tokenizer, model, the reply's ids)."""
    from selfdistill.contexts import reasoning_token_ids, render_prompt_ids

    tok, model = build_family("qwen3")
    think = reasoning_token_ids(tok)
    answer = tok("Paris", add_special_tokens=False)["input_ids"]
    probe_ids = render_prompt_ids(tok, [{"role": "user", "content": "x"}])
    reply = [think[0], *tok("ok", add_special_tokens=False)["input_ids"], think[1], *answer,
             tok.convert_tokens_to_ids("<|im_end|>")]
    return tok, script_replies(model, tok, probe_ids[-1], reply), reply
