"""Student/teacher contexts: the paper's template, system turns, budgets, and token alignment."""

from __future__ import annotations

import pytest

from selfdistill.config import ContextConfig, DataConfig
from selfdistill.contexts import encode_example, encode_examples, render_prompt_ids, teacher_messages
from selfdistill.data import DataError, Example
from selfdistill.training.batches import pack


def ex(prompt="What is the ISO 4217 code of the Malagasy Ariary?", demo="The answer is MGA.", **kw):
    return Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}], demo,
                   origin="d.jsonl:4", **kw)


def test_teacher_context_is_the_paper_template_with_system_kept():
    e = ex()
    msgs = teacher_messages(e, ContextConfig())
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"] == (
        "\nWhat is the ISO 4217 code of the Malagasy Ariary?\n\nThis is an example for a response to the question:\n"
        "The answer is MGA.\n\nNow answer with a response of your own, including the thinking process.\n")
    assert e.prompt[1]["content"].startswith("What is")  # the student's record is not modified


def test_source_is_shown_to_the_teacher_only(tiny_tok):
    e = ex(source="The ISO 4217 code of the Malagasy Ariary is MGA.")
    t = teacher_messages(e, ContextConfig())[1]["content"]
    assert t.startswith("\nThe ISO 4217 code of the Malagasy Ariary is MGA.\n\nWhat is")
    enc = encode_example(tiny_tok, e, DataConfig(), ContextConfig())
    assert "Malagasy Ariary is MGA" not in tiny_tok.decode(enc.student_prompt_ids)
    assert "Malagasy Ariary is MGA" in tiny_tok.decode(enc.teacher_prompt_ids)


def test_custom_template():
    c = ContextConfig(teacher_template="$prompt\n\nExample response: $demonstration")
    assert teacher_messages(ex(), c)[1]["content"].endswith("Example response: The answer is MGA.")


def test_teacher_budget_error_names_record_and_skip_counts(tiny_tok):
    long = ex(demo="word " * 400)
    with pytest.raises(DataError) as e:
        encode_example(tiny_tok, long, DataConfig(max_teacher_prompt_tokens=100), ContextConfig())
    assert "d.jsonl:4" in str(e.value) and "never truncated" in str(e.value)
    with pytest.raises(DataError, match="student prompt is"):
        encode_example(tiny_tok, ex(prompt="x " * 300), DataConfig(max_prompt_tokens=50), ContextConfig())
    enc, skipped = encode_examples(tiny_tok, [ex(), long, ex()],
                                   DataConfig(max_teacher_prompt_tokens=100, on_overlength="skip"), ContextConfig())
    assert len(enc) == 2 and skipped == 1


def _check_alignment(tok, e, completion_text):
    enc = encode_example(tok, e, DataConfig(), ContextConfig())
    comp = tok(completion_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    s = pack([enc.student_prompt_ids], [comp], tok.pad_token_id, "cpu")
    t = pack([enc.teacher_prompt_ids], [comp], tok.pad_token_id, "cpu")
    assert s.completion_ids_BT.tolist() == t.completion_ids_BT.tolist() == [comp]
    # the completion sits right after each prompt, whose last ids are the generation prompt
    P_s, P_t = len(enc.student_prompt_ids), len(enc.teacher_prompt_ids)
    assert s.input_ids_BL[0, P_s:].tolist() == comp and t.input_ids_BL[0, P_t:].tolist() == comp
    gen_prompt = render_prompt_ids(tok, [{"role": "user", "content": "x"}])[-3:]
    assert enc.student_prompt_ids[-3:] == enc.teacher_prompt_ids[-3:] == gen_prompt
    # re-tokenising prompt+completion as text could merge across the boundary; ids never do
    return enc, comp


def test_alignment_tiny_tokenizer(tiny_tok):
    # a completion that starts mid-word: as text, "answer" + "s" could merge differently
    _check_alignment(tiny_tok, ex(), "sThe answer is MGA")


def test_left_padding_aligns_completions(tiny_tok):
    a = encode_example(tiny_tok, ex(prompt="Q?"), DataConfig(), ContextConfig())
    b = encode_example(tiny_tok, ex(), DataConfig(), ContextConfig())
    comps = [[5, 6, 7], [8, 9]]
    s = pack([a.student_prompt_ids, b.student_prompt_ids], comps, tiny_tok.pad_token_id, "cpu")
    assert s.completion_ids_BT[0].tolist() == [5, 6, 7]
    assert s.completion_ids_BT[1, :2].tolist() == [8, 9] and s.completion_mask_BT.tolist() == [[1, 1, 1], [1, 1, 0]]
    # position ids restart at 0 on the first real token of each row
    first = int((s.attention_mask_BL[0] == 1).nonzero()[0])
    assert s.position_ids_BL[0, first] == 0


@pytest.mark.slow
def test_alignment_real_tokenizer():
    from selfdistill.models import load_model
    _, tok, _ = load_model("smollm2-135m")
    e = ex()
    text = tok.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True)
    enc, comp = _check_alignment(tok, e, " MGA is the code.")
    assert tok.decode(enc.student_prompt_ids) == text
    assert tok.decode(enc.teacher_prompt_ids).endswith(
        "including the thinking process.\n<|im_end|>\n<|im_start|>assistant\n")
    # the teacher's user turn is the official template filled in, written out here (paper.md §1.2)
    filled = (f"\n{e.prompt[-1]['content']}\n\nThis is an example for a response to the question:\n"
              f"{e.demonstration}\n\nNow answer with a response of your own, including the thinking process.\n")
    assert f"<|im_start|>user\n{filled}<|im_end|>" in tok.decode(enc.teacher_prompt_ids)
