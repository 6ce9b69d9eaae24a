"""The data contract: every accepted format loads; every malformed record class gets a clear error."""

from __future__ import annotations

import json

import pytest

from selfdistill.data import DataError, Example, load_examples, write_jsonl


def _jsonl(tmp_path, recs, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    return p


def test_jsonl_string_prompt_and_extra_fields(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "Q1?", "demonstration": "A1", "answer": "x", "id": 7}])
    [ex] = load_examples(p)
    assert ex.prompt == [{"role": "user", "content": "Q1?"}]
    assert ex.demonstration == "A1"
    assert ex.extra == {"answer": "x", "id": 7}
    assert ex.origin == f"{p}:1"


def test_chat_prompt_with_system_and_trl_fields(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    p = _jsonl(tmp_path, [{"prompt": msgs, "privileged_context": "A"}, {"prompt": "Q2", "completion": "B"}])
    a, b = load_examples(p)
    assert a.prompt == msgs and a.demonstration == "A"
    assert b.demonstration == "B"


def test_conversational_messages(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Demo"}]
    [ex] = load_examples(_jsonl(tmp_path, [{"messages": msgs, "ref": 1}]))
    assert ex.prompt == msgs[:-1] and ex.demonstration == "Demo" and ex.extra == {"ref": 1}


def test_json_list_and_source(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"prompt": "Q", "demonstration": "A", "source": "Fact."}]))
    [ex] = load_examples(p)
    assert ex.source == "Fact."


def test_save_to_disk_folder(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list([{"prompt": "Q1", "demonstration": "A1", "answer": "a"},
                                     {"prompt": "Q2", "demonstration": "A2", "answer": "b"}])
    ds.save_to_disk(str(tmp_path / "ds"))
    exs = load_examples(tmp_path / "ds")
    assert [e.demonstration for e in exs] == ["A1", "A2"] and exs[1].extra["answer"] == "b"


def test_roundtrip_write_jsonl(tmp_path):
    exs = [Example([{"role": "user", "content": "Q"}], "A", source="S", extra={"k": 1})]
    write_jsonl(tmp_path / "o.jsonl", exs)
    [back] = load_examples(tmp_path / "o.jsonl")
    assert (back.prompt, back.demonstration, back.source, back.extra) == (exs[0].prompt, "A", "S", {"k": 1})


def test_hub_id_offline_error_names_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub dataset failed"):
        load_examples("nonexistent-org/nonexistent-dataset")


BAD = [
    # (file content as bytes, expected message fragments)
    (b"", ["empty file"]),
    (b'{"prompt": "Q", "demonstration": "A"}\n{"prompt": "Q2", "demonstration": \n', ["line 2", "invalid JSON"]),
    (b'{"demonstration": "A"}\n', ["record 1", "'prompt'", "missing"]),
    (b'{"prompt": "Q"}\n', ["record 1", "'demonstration'", "missing"]),
    (b'{"prompt": 3, "demonstration": "A"}\n', ["'prompt'", "string or a list"]),
    (b'{"prompt": "Q", "demonstration": ["x"]}\n', ["'demonstration'", "must be a string"]),
    (b'{"prompt": "Q", "demonstration": "  "}\n', ["'demonstration'", "empty demonstration"]),
    (b'{"prompt": [{"role": "wizard", "content": "x"}], "demonstration": "A"}\n', ["unknown role 'wizard'"]),
    (b'{"prompt": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], "demonstration": "A"}\n',
     ["out of order"]),
    (b'{"prompt": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "demonstration": "A"}\n',
     ["only the first message may be a system"]),
    (b'{"prompt": "Q", "demonstration": "A"}\n{"prompt": "caf\xe9", "demonstration": "A"}\n', ["line 2", "UTF-8"]),
    (b'[1, 2]', ["record 1", "JSON object"]),
    (b'{"messages": [{"role": "user", "content": "x"}]}\n', ["'messages'", "assistant"]),
]


@pytest.mark.parametrize("content,frags", BAD)
def test_bad_records_name_file_record_field(tmp_path, content, frags):
    p = tmp_path / ("bad.json" if content.startswith(b"[") else "bad.jsonl")
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_examples(p)
    msg = str(e.value)
    assert str(p) in msg
    for f in frags:
        assert f in msg, msg
    assert "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "nope.jsonl")
