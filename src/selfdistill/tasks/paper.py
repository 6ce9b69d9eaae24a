"""The SDFT paper's own tool-use and science data (arXiv 2601.19897, official repo idanshen/Self-Distillation).

Source: the ``data/tooluse_data`` and ``data/science_data`` folders of the official repository (HF
``datasets.save_to_disk`` folders; the user passes the path: nothing is bundled or downloaded). The tool-use data
derives from ToolAlpaca, the science data from SciKnowEval (Chemistry L-3).
Licence: **none found upstream** (no LICENSE file in the official repo, none stated for ToolAlpaca or SciKnowEval;
a third-party summary calls the repo Apache-2.0, unverified). See the data README (shared/data/paper/README.md)
before redistributing anything.

Prompt construction follows the official evaluation scripts exactly:
  * tool use (``eval_tooluse.py``): the record's ``prompt`` string is the single user turn (no system turn is
    added, so the chat template's default applies); generation limit 1,024 new tokens;
  * science (``eval_science.py``): the record's ``prompt`` message list ([system, user]) as is; limit 2,048.
Scorers: :func:`~selfdistill.tasks.scorers.paper_tooluse_correct` and
:func:`~selfdistill.tasks.scorers.paper_science_correct` (the official rules).

The released **eval** splits have no demonstrations: their examples get ``demonstration=""`` and are eval-only.
Training needs the user's own copy of the **train** splits, whose demonstrations are read from
``golden_response`` (tool use: a list of lines, joined with "\\n") or ``output_text`` (science; its prompt is the
``messages`` field). ``path`` may be a split folder or a parent holding ``eval_data/`` and/or ``train_data/``:
a parent gives test = eval_data and train = train_data (when present); a single folder goes to train if its
records carry demonstrations, else to test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfdistill.tasks.base import Task, make_example
from selfdistill.tasks.scorers import paper_science_correct, paper_science_extract, paper_tooluse_correct

SOURCE_AND_LICENSE = ("SDFT paper data (idanshen/Self-Distillation, upstream commit 19c5732/d775732); tool use "
                      "derived from ToolAlpaca, science from SciKnowEval. No licence found upstream: see "
                      "shared/data/paper/README.md")
TOOLUSE_MAX_NEW_TOKENS = 1024
SCIENCE_MAX_NEW_TOKENS = 2048


def read_split(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``datasets.save_to_disk`` folder as plain dicts (a DatasetDict gives its 'train' or first split)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: not a folder (expected a datasets.save_to_disk folder)")
    import datasets  # imported on use: ~2 s, only for the paper's save_to_disk eval sets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    return ds.to_list()


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ValueError(f"{where}: prompt must be a string or a list of {{role, content}} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def tooluse_example(rec: dict[str, Any], origin: str) -> Any:
    if "prompt" not in rec or "golden_answer" not in rec:
        raise ValueError(f"{origin}: a tool-use record needs 'prompt' and 'golden_answer'")
    demo = rec.get("golden_response")
    if isinstance(demo, list):
        demo = "\n".join(str(x) for x in demo)
    extra = {k: rec[k] for k in ("golden_answer", "name", "instruction") if k in rec}
    return make_example(prompt=_messages(rec["prompt"], origin), demonstration=demo or "", extra=extra,
                        origin=origin)


def science_example(rec: dict[str, Any], origin: str) -> Any:
    raw_prompt = rec.get("prompt", rec.get("messages"))
    if raw_prompt is None:
        raise ValueError(f"{origin}: a science record needs 'prompt' (eval) or 'messages' (train)")
    demo = rec.get("output_text") or ""
    answer = rec.get("answer")
    if answer is None and demo:
        answer = paper_science_extract(demo)  # train records: the letter in the demonstration's <answer> tag
    if answer is None:
        raise ValueError(f"{origin}: no 'answer' field and no 'output_text' to take it from")
    return make_example(prompt=_messages(raw_prompt, origin), demonstration=demo, extra={"answer": answer},
                        origin=origin)


def load_split(path: str | Path, kind: str, limit: int | None = None) -> list[Any]:
    """Examples of one split folder; `kind` is "tooluse" or "science"; `limit` keeps the first rows (e.g. 68 for
    the paper-era tool-use eval set)."""
    make = {"tooluse": tooluse_example, "science": science_example}[kind]
    rows = read_split(path)
    if limit is not None:
        rows = rows[:limit]
    return [make(r, f"{Path(path)}:{i}") for i, r in enumerate(rows, start=1)]


def _resolve(path: str | Path) -> tuple[Path | None, Path | None]:
    """(eval folder, train folder) for a parent folder; (folder, None) for a split folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such folder")
    ev, tr = p / "eval_data", p / "train_data"
    if ev.is_dir() or tr.is_dir():
        return (ev if ev.is_dir() else None), (tr if tr.is_dir() else None)
    return p, None


def _load_task(kind: str, path: str | Path, train_path: str | Path | None, limit: int | None) -> Task:
    ev, tr = _resolve(path)
    if train_path is not None:
        tr = Path(train_path)
    test: list[Any] = []
    train: list[Any] = []
    if ev is not None:
        loaded = load_split(ev, kind, limit)
        if tr is None and train_path is None and loaded and all(e.demonstration for e in loaded):
            train = loaded  # a single folder of training records
        else:
            test = loaded
    if tr is not None:
        train = load_split(tr, kind)
    if kind == "tooluse":
        return Task(
            name="paper_tooluse",
            description=("SDFT paper tool use (ToolAlpaca-derived, ReAct 'Action / Action Input' format); official "
                         "rule: action names as a multiset and merged JSON inputs must equal the gold."),
            train=train, test=test,
            scorer=lambda out, ex: paper_tooluse_correct(out, ex.extra["golden_answer"]),
            kind="generate", source_and_license=SOURCE_AND_LICENSE, max_new_tokens=TOOLUSE_MAX_NEW_TOKENS,
            info={"path": str(path), "n_train": len(train), "n_test": len(test), "limit": limit},
        )
    return Task(
        name="paper_science",
        description=("SDFT paper science Q&A (SciKnowEval Chemistry L-3, 4 options); official rule: the text in the "
                     "last <answer> tag must equal the gold letter exactly."),
        train=train, test=test,
        scorer=lambda out, ex: paper_science_correct(out, ex.extra["answer"]),
        kind="generate", source_and_license=SOURCE_AND_LICENSE, max_new_tokens=SCIENCE_MAX_NEW_TOKENS,
        info={"path": str(path), "n_train": len(train), "n_test": len(test), "limit": limit},
    )


def load_tooluse_task(path: str | Path, train_path: str | Path | None = None, limit: int | None = None) -> Task:
    """Paper tool-use task from `path` (a ``tooluse_data`` folder or one split folder). `limit=68` gives the
    paper-era eval subset (the first 68 rows)."""
    return _load_task("tooluse", path, train_path, limit)


def load_science_task(path: str | Path, train_path: str | Path | None = None, limit: int | None = None) -> Task:
    """Paper science task from `path` (a ``science_data`` folder or one split folder)."""
    return _load_task("science", path, train_path, limit)
