"""Student and teacher contexts, rendered through the model's chat template.

  student:  the record's prompt messages (system turn kept)                      -> Ctx_S(x)
  teacher:  the same messages, the last user turn replaced by the teacher template
            filled with that turn ($prompt) and the demonstration ($demonstration) -> Ctx_T(x, c)

The default template is the official code's string (see config.PAPER_TEACHER_TEMPLATE). When a record has a
`source` (privileged text such as the document a fact comes from), it is put before $prompt through
`context.source_prefix`, so the teacher sees the source as well as the answer (the paper's knowledge setting).

Prompts are tokenised on their own and completions are appended as token ids, never re-tokenised as text, so the
completion tokens scored under both contexts are the same ids at aligned positions. Each prompt has its own
token budget; a prompt over budget is an error naming the record (or, with on_overlength=skip, dropped and
counted) — never silently truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from .config import ContextConfig, DataConfig
from .data import DataError, Example
from .models import template_end_of_turn_id


@dataclass
class Encoded:
    student_prompt_ids: list[int]
    teacher_prompt_ids: list[int]
    demonstration_ids: list[int]  # demonstration + end-of-turn token (the SFT/DFT target)
    example: Example


def fill_teacher_template(template: str, prompt_text: str, demonstration: str) -> str:
    return Template(template).safe_substitute(prompt=prompt_text, demonstration=demonstration)


def teacher_messages(ex: Example, ctx: ContextConfig) -> list[dict[str, str]]:
    """The teacher's chat: system turn and earlier turns kept, last user turn rewritten with the template."""
    msgs = [dict(m) for m in ex.prompt]
    last = msgs[-1]
    if last["role"] != "user":
        raise DataError(f"{ex.origin}: the prompt must end with a user turn")
    prompt_text = last["content"]
    if ex.source:
        prompt_text = Template(ctx.source_prefix).safe_substitute(source=ex.source) + prompt_text
    last["content"] = fill_teacher_template(ctx.teacher_template, prompt_text, ex.demonstration)
    return msgs


def render_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Chat-template the messages with the assistant generation prompt and tokenise them."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def demonstration_ids(tokenizer, demonstration: str, end_id: int | None = None) -> list[int]:
    """The SFT/DFT target: the demonstration's tokens + the token the chat template writes after an assistant
    reply (`end_id`; default models.template_end_of_turn_id, e.g. Gemma's <end_of_turn>, not its <eos>)."""
    if end_id is None:
        end_id = template_end_of_turn_id(tokenizer)
    return tokenizer(demonstration, add_special_tokens=False)["input_ids"] + [end_id]


def encode_example(tokenizer, ex: Example, data: DataConfig, ctx: ContextConfig,
                   end_id: int | None = None) -> Encoded:
    s = render_prompt_ids(tokenizer, ex.prompt)
    t = render_prompt_ids(tokenizer, teacher_messages(ex, ctx))
    if len(s) > data.max_prompt_tokens:
        raise DataError(f"{ex.origin}, field 'prompt': student prompt is {len(s)} tokens, over "
                        f"data.max_prompt_tokens={data.max_prompt_tokens} (raise it, or set "
                        f"data.on_overlength=skip)")
    if len(t) > data.max_teacher_prompt_tokens:
        raise DataError(f"{ex.origin}, field 'demonstration': teacher prompt (prompt + demonstration in the "
                        f"template) is {len(t)} tokens, over data.max_teacher_prompt_tokens="
                        f"{data.max_teacher_prompt_tokens}; teacher prompts are never truncated (raise the "
                        f"budget, or set data.on_overlength=skip)")
    return Encoded(s, t, demonstration_ids(tokenizer, ex.demonstration, end_id), ex)


# Reasoning blocks of thinking models (Qwen3, DeepSeek-R1 distills, ...): <think> ... </think>.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def reasoning_token_ids(tokenizer) -> tuple[int, int] | None:
    """(open id, close id) when the vocabulary has <think> and </think> as single tokens, else None."""
    vocab = tokenizer.get_vocab()
    if THINK_OPEN in vocab and THINK_CLOSE in vocab:
        return vocab[THINK_OPEN], vocab[THINK_CLOSE]
    return None


def template_has_reasoning(tokenizer) -> bool:
    """True when the chat template writes reasoning blocks (it mentions <think>)."""
    return THINK_OPEN in (getattr(tokenizer, "chat_template", None) or "")


def prompt_opens_reasoning(prompt_ids: list[int], open_id: int, close_id: int) -> bool:
    """True when the prompt ends inside a reasoning block (a template that pre-fills <think>)."""
    last_open = max((i for i, t in enumerate(prompt_ids) if t == open_id), default=-1)
    last_close = max((i for i, t in enumerate(prompt_ids) if t == close_id), default=-1)
    return last_open > last_close


def encode_examples(tokenizer, examples: list[Example], data: DataConfig,
                    ctx: ContextConfig) -> tuple[list[Encoded], int]:
    """Encode all records; returns (encoded, number skipped for length when data.on_overlength=skip)."""
    if not examples:
        raise DataError("no training records (the data file or task split is empty)")
    out, skipped = [], 0
    end_id = template_end_of_turn_id(tokenizer)
    for ex in examples:
        try:
            out.append(encode_example(tokenizer, ex, data, ctx, end_id))
        except DataError:
            if data.on_overlength != "skip":
                raise
            skipped += 1
    if not out:
        raise DataError(f"no usable records: all {skipped} were over their token budget")
    return out, skipped
