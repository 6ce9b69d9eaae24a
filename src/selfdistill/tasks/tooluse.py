"""Tool use: BFCL v4 ``simple_python`` (one Python function, one call).

Source: the Berkeley Function Calling Leaderboard data shipped in the ``bfcl-eval`` wheel (version pinned in
requirements-data.txt): ``bfcl_eval/data/BFCL_v4_simple_python.json`` (399 questions with JSON-schema function
docs) and ``bfcl_eval/data/possible_answer/BFCL_v4_simple_python.json`` (the allowed values of each argument).
Licence: Apache-2.0 (ShishirPatil/gorilla, BFCL). The wheel is installed with ``--no-deps`` and is NEVER imported:
its files are located with ``importlib.util.find_spec`` and read as plain JSON lines.

Each example:
  * prompt: one user turn = a short instruction + the function documentation (JSON, one line) + the request;
  * demonstration: one canonical reference call, Python source ``name(arg=value, ...)`` built from the first
    allowed value of every argument (optional arguments whose first allowed value is ``""`` are left out);
  * extra: ``id``, ``ground_truth`` (the full BFCL possible answer), ``required`` (the doc's required list),
    ``function`` (the doc);
  * scorer: :func:`selfdistill.tasks.scorers.function_call_match` against the full possible answer.

Split: items sorted by their numeric id, shuffled with ``random.Random(seed)`` (default 0); the first ``n_test``
(default 100) are the test split, the rest the train split (optionally cut to ``n_train``).
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from selfdistill.tasks.base import Task, make_example
from selfdistill.tasks.scorers import function_call_match, render_reference_call

SOURCE_AND_LICENSE = ("BFCL v4 simple_python (Berkeley Function Calling Leaderboard, ShishirPatil/gorilla), read from "
                      "the bfcl-eval wheel's data files; Apache-2.0")
QUESTIONS_FILE = "BFCL_v4_simple_python.json"
INSTRUCTION = ("You have access to the function documented below (JSON schema). Answer the request with one "
               "Python function call that uses keyword arguments, e.g. name(arg=value), and nothing else.")
MAX_NEW_TOKENS = 128


def bfcl_data_dir() -> Path:
    """The ``data`` folder of the installed bfcl-eval wheel, found without importing the package."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bfcl-eval wheel is not installed (pip install --no-deps bfcl-eval; "
                                "see requirements-data.txt)")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if (d / QUESTIONS_FILE).is_file():
            return d
    raise FileNotFoundError(f"bfcl-eval is installed but {QUESTIONS_FILE} was not found in its data folder")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _id_number(item_id: str) -> int:
    return int(item_id.rsplit("_", 1)[1])


def load_bfcl_records(category: str = "simple_python", data_dir: str | Path | None = None) -> list[dict]:
    """Raw BFCL records joined with their possible answers, sorted by numeric id:
    ``{"id", "question", "function": {...}, "ground_truth": [{name: {param: [allowed]}}]}``."""
    d = Path(data_dir) if data_dir is not None else bfcl_data_dir()
    qpath = d / f"BFCL_v4_{category}.json"
    apath = d / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {r["id"]: r["ground_truth"] for r in _read_jsonl(apath)}
    out = []
    for r in _read_jsonl(qpath):
        turns = r["question"]
        if len(turns) != 1 or len(turns[0]) != 1 or turns[0][0]["role"] != "user" or len(r["function"]) != 1:
            raise ValueError(f"{qpath}: {r['id']} is not a single-turn, single-function item")
        if r["id"] not in answers:
            raise ValueError(f"{apath}: no possible answer for {r['id']}")
        out.append({"id": r["id"], "question": turns[0][0]["content"], "function": r["function"][0],
                    "ground_truth": answers[r["id"]]})
    out.sort(key=lambda r: _id_number(r["id"]))
    return out


def format_function_doc(function: dict[str, Any]) -> str:
    """The function documentation as one compact JSON line (key order kept)."""
    return json.dumps(function, ensure_ascii=False, separators=(", ", ": "))


def record_to_example(rec: dict) -> Any:
    required = list(rec["function"].get("parameters", {}).get("required", []))
    content = f"{INSTRUCTION}\n\nFunction:\n{format_function_doc(rec['function'])}\n\nRequest: {rec['question']}"
    return make_example(
        prompt=[{"role": "user", "content": content}],
        demonstration=render_reference_call(rec["ground_truth"], required),
        extra={"id": rec["id"], "ground_truth": rec["ground_truth"], "required": required,
               "function": rec["function"]},
        origin=f"bfcl:{rec['id']}",
    )


def score(output: str, example: Any) -> bool:
    return function_call_match(output, example.extra["ground_truth"], example.extra.get("required"))


def split_records(records: list[dict], n_test: int = 100, n_train: int | None = None,
                  seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic split: sort by numeric id, shuffle with `seed`, test = first `n_test`, train = the rest."""
    if n_test < 0 or n_test > len(records):
        raise ValueError(f"n_test must be in [0, {len(records)}], got {n_test}")
    order = sorted(records, key=lambda r: _id_number(r["id"]))
    random.Random(seed).shuffle(order)
    test, train = order[:n_test], order[n_test:]
    if n_train is not None:
        if n_train < 0:
            raise ValueError(f"n_train must be >= 0, got {n_train}")
        train = train[:n_train]
    return train, test


def load_task(n_train: int | None = None, n_test: int = 100, seed: int = 0,
              data_dir: str | Path | None = None) -> Task:
    """The BFCL simple_python tool-use task (train: 299 items by default, test: 100)."""
    records = load_bfcl_records("simple_python", data_dir)
    train, test = split_records(records, n_test=n_test, n_train=n_train, seed=seed)
    return Task(
        name="tooluse",
        description=("BFCL simple_python: write one Python call of the documented function that answers the "
                     "request; scored BFCL-style (name, required/unexpected args, allowed values)."),
        train=[record_to_example(r) for r in train],
        test=[record_to_example(r) for r in test],
        scorer=score,
        kind="generate",
        source_and_license=SOURCE_AND_LICENSE,
        max_new_tokens=MAX_NEW_TOKENS,
        info={"n_train": len(train), "n_test": len(test), "seed": seed, "n_total": len(records)},
    )
