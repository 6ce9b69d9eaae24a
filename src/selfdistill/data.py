"""The data contract: demonstration records from JSONL, JSON, a `datasets.save_to_disk` folder or a hub dataset.

A record has
  - `prompt`: a string (one user turn) or a list of chat messages ({"role", "content"}; an optional system turn
    first, then alternating user/assistant turns, ending with a user turn), and
  - `demonstration`: the expert response (a non-empty string).
Also accepted for the demonstration: TRL-style `privileged_context` or `completion`; and conversational records
with only `messages`, whose last assistant turn is the demonstration and the turns before it the prompt.
An optional `source` field is privileged text that the SDFT teacher sees as well (e.g. the document a fact comes
from). Every other field (reference answers, ids) is carried through in `Example.extra` for scoring.

Every error names the file, the record number (1-based line for JSONL, 1-based index otherwise) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROLES = ("system", "user", "assistant")
DEMO_FIELDS = ("demonstration", "privileged_context", "completion")


class DataError(ValueError):
    """A bad input record or file; the message names the file, the record and the field."""


@dataclass
class Example:
    prompt: list[dict[str, str]]  # chat messages; optional system turn first; ends with a user turn
    demonstration: str  # the expert response (SFT target; shown to the SDFT teacher)
    source: str | None = None  # optional privileged text the teacher sees too
    extra: dict = field(default_factory=dict)  # reference answers, ids, scorer data; carried through
    origin: str = ""  # where it came from, e.g. "data.jsonl:7"


def _where(path: str, idx: int, fld: str | None = None) -> str:
    return f"{path}: record {idx}" + (f", field '{fld}'" if fld else "")


def validate_messages(msgs: Any, where: str, *, allow_final_assistant: bool = False) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: expected a non-empty list of chat messages, got {type(msgs).__name__}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise DataError(f"{where}: message {i} is a system turn; only the first message may be a system turn")
        out.append({"role": role, "content": content})
    turns = [m["role"] for m in out if m["role"] != "system"]
    for i, r in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if r != want:
            raise DataError(f"{where}: chat turns out of order: turn {i} is {r!r}, expected {want!r} "
                            "(user and assistant turns must alternate, starting with user)")
    if not turns:
        raise DataError(f"{where}: no user turn")
    if turns[-1] != "user" and not allow_final_assistant:
        raise DataError(f"{where}: the prompt must end with a user turn, it ends with {turns[-1]!r}")
    return out


def record_to_example(rec: Any, path: str, idx: int) -> Example:
    """Normalise one raw record into an Example, or raise DataError naming file, record and field."""
    if not isinstance(rec, dict):
        raise DataError(f"{_where(path, idx)}: expected a JSON object, got {type(rec).__name__}")
    rec = dict(rec)
    demo_key = next((k for k in DEMO_FIELDS if k in rec), None)
    if "prompt" not in rec and "messages" in rec and demo_key is None:
        msgs = validate_messages(rec.pop("messages"), _where(path, idx, "messages"), allow_final_assistant=True)
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{_where(path, idx, 'messages')}: a conversational record must end with the "
                            "assistant turn that is the demonstration")
        prompt, demo = msgs[:-1], msgs[-1]["content"]
        demo_key = "messages"
    else:
        if "prompt" not in rec:
            raise DataError(f"{_where(path, idx, 'prompt')}: missing (a record needs 'prompt' and "
                            f"'demonstration', or 'messages' ending with an assistant turn)")
        if demo_key is None:
            raise DataError(f"{_where(path, idx, 'demonstration')}: missing (also accepted: "
                            f"'privileged_context', 'completion')")
        raw_prompt = rec.pop("prompt")
        demo = rec.pop(demo_key)
        if isinstance(raw_prompt, str):
            if not raw_prompt.strip():
                raise DataError(f"{_where(path, idx, 'prompt')}: empty")
            prompt = [{"role": "user", "content": raw_prompt}]
        elif isinstance(raw_prompt, list):
            prompt = validate_messages(raw_prompt, _where(path, idx, "prompt"))
        else:
            raise DataError(f"{_where(path, idx, 'prompt')}: must be a string or a list of chat messages, "
                            f"got {type(raw_prompt).__name__}")
    if isinstance(demo, list) and all(isinstance(d, dict) for d in demo) and demo:
        # TRL allows messages as privileged context: take the assistant content.
        demo = "\n".join(d.get("content", "") for d in demo)
    if not isinstance(demo, str):
        raise DataError(f"{_where(path, idx, demo_key)}: must be a string, got {type(demo).__name__}")
    if not demo.strip():
        raise DataError(f"{_where(path, idx, demo_key)}: empty demonstration")
    source = rec.pop("source", None)
    if source is not None and not isinstance(source, str):
        raise DataError(f"{_where(path, idx, 'source')}: must be a string, got {type(source).__name__}")
    for k in DEMO_FIELDS:
        rec.pop(k, None)
    return Example(prompt=prompt, demonstration=demo, source=source, extra=rec, origin=f"{path}:{idx}")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None


def iter_raw_records(path: str | Path) -> Iterable[tuple[int, Any]]:
    """Yield (record number, raw record) from a JSONL/JSON file or a save_to_disk folder."""
    p = Path(path)
    if p.is_dir():
        try:
            import datasets  # imported on use: ~2 s, only for save_to_disk folders and hub datasets
            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - report the cause with the path
            raise DataError(f"{p}: not a readable datasets.save_to_disk folder ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        for i, rec in enumerate(ds, start=1):
            yield i, rec
        return
    if not p.exists():
        raise DataError(f"{p}: file not found")
    text = _read_text(p)
    if not text.strip():
        raise DataError(f"{p}: empty file (no records)")
    if p.suffix == ".json" or (p.suffix != ".jsonl" and text.lstrip()[:1] == "["):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], list):
            obj = obj["data"]
        if not isinstance(obj, list):
            raise DataError(f"{p}: a .json file must hold a list of records")
        if not obj:
            raise DataError(f"{p}: empty file (no records)")
        yield from enumerate(obj, start=1)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def load_examples(path: str | Path, *, split: str = "train") -> list[Example]:
    """Load and validate demonstration records. `path` is a file, a save_to_disk folder or a hub dataset id."""
    p = Path(path)
    if not p.exists() and _looks_like_hub_id(str(path)):
        return _load_hub(str(path), split)
    out = [record_to_example(rec, str(p), idx) for idx, rec in iter_raw_records(p)]
    if not out:
        raise DataError(f"{p}: empty file (no records)")
    return out


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/")) and "." not in parts[1][-6:]


def _load_hub(name: str, split: str) -> list[Example]:
    try:
        import datasets  # imported on use (see above)
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: not a local path, and loading it as a hub dataset failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Offline? Pass a local file.") from None
    return [record_to_example(rec, name, i) for i, rec in enumerate(ds, start=1)]


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            rec = {"prompt": ex.prompt, "demonstration": ex.demonstration, **ex.extra}
            if ex.source is not None:
                rec["source"] = ex.source
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
