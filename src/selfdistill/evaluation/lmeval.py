"""Standard benchmarks through EleutherAI's lm-evaluation-harness (lm_eval 0.4.13), on the IN-MEMORY model.

The paper reports retention on HellaSwag, MMLU, TruthfulQA, WinoGrande, IFEval and HumanEval. The metric used for
each is pinned in :data:`PAPER_SUITE` (and printed with every result); the names are the ones the installed
lm_eval task YAML files declare (checked by :func:`declared_metrics` and the tests):

  hellaswag       acc_norm                  (hellaswag/hellaswag.yaml: acc, acc_norm)
  mmlu            acc                       (group mmlu/default/_mmlu.yaml: aggregate acc, weighted by size)
  truthfulqa_mc2  acc                       (truthfulqa/truthfulqa_mc2.yaml)
  winogrande      acc                       (winogrande/default.yaml)
  ifeval          prompt_level_strict_acc   (ifeval/ifeval.yaml)
  humaneval       pass@1                    (humaneval/humaneval.yaml: pass_at_k with k=[1], filter create_test)

These benchmarks download their data from the Hugging Face Hub (and humaneval also the `code_eval` metric and
runs generated code: ``confirm_run_unsafe_code=True`` and ``HF_ALLOW_CODE_EVAL=1`` are set for it), so they need
network access or a warm HF cache. A local task folder (``include_path``, e.g. ``tests/data/lmeval_task``) works offline.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .table import print_table

PAPER_SUITE: dict[str, str] = {
    "hellaswag": "acc_norm",
    "mmlu": "acc",
    "truthfulqa_mc2": "acc",
    "winogrande": "acc",
    "ifeval": "prompt_level_strict_acc",
    "humaneval": "pass@1",
}
UNSAFE_CODE_TASKS = frozenset({"humaneval", "humaneval_instruct", "humaneval_plus", "mbpp", "mbpp_plus"})


def _task_manager(include_path: str | Path | list | None = None, include_defaults: bool = True):
    from lm_eval.tasks import TaskManager  # lm-eval: imported on use (heavy; only `eval --tasks lm-eval:...`)

    if include_path is None:
        return TaskManager(include_defaults=include_defaults)
    paths = include_path if isinstance(include_path, (list, tuple)) else [include_path]
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults)


def declared_metrics(task: str, task_manager=None) -> list[str]:
    """The metric names a task's (or group's) YAML declares, as they appear in lm_eval's results.

    `metric_list` for tasks, `aggregate_metric_list` for groups; a ``pass_at_k`` function metric with ``k: [1, 10]``
    expands to ``pass@1``, ``pass@10`` (as lm_eval does for HF `evaluate` dict results).
    """
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval: imported on use (heavy)

    tm = task_manager or _task_manager()
    entry = tm.task_index.get(task)
    if entry is None:
        raise KeyError(f"lm_eval does not know the task {task!r}")
    cfg = entry.cfg or {}
    if entry.yaml_path is not None:
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
    names: list[str] = []
    for m in (cfg.get("metric_list") or []) + (cfg.get("aggregate_metric_list") or []):
        name = m.get("metric")
        if not isinstance(name, str):
            continue
        base = name.rsplit(".", 1)[-1] if "/" in name or "." in name else name
        if base == "pass_at_k":
            ks = m.get("k", [1])
            names += [f"pass@{k}" for k in (ks if isinstance(ks, list) else [ks])]
        else:
            names.append(name)
    return names


def _pick(res: dict, metric: str | None) -> tuple[str, float, float]:
    """(metric, value, stderr) from one lm_eval results entry such as {'acc,none': .., 'acc_stderr,none': ..}."""
    keys = [k for k in res if "," in k and "_stderr," not in k and not k.startswith("alias")]
    if metric is None:
        keys_num = [k for k in keys if isinstance(res[k], (int, float))]
        if not keys_num:
            raise KeyError(f"no numeric metric in lm_eval results {sorted(res)}")
        key = keys_num[0]
    else:
        match = [k for k in keys if k.split(",", 1)[0] == metric]
        if not match:
            raise KeyError(f"metric {metric!r} not in lm_eval results (have: {sorted(keys)})")
        key = next((k for k in match if k.endswith(",none")), match[0])
    name, filt = key.split(",", 1)
    value = float(res[key])
    se = res.get(f"{name}_stderr,{filt}")
    try:
        stderr = float(se)
    except (TypeError, ValueError):  # "N/A" for some aggregations
        stderr = float("nan")
    return name, value, stderr


def run_lm_eval(model, tokenizer, tasks: list[str], limit: int | float | None = None,
                include_path: str | Path | list | None = None, batch_size: int = 8, *,
                apply_chat_template: bool = False, num_fewshot: int | None = None,
                metrics: dict[str, str] | None = None, bootstrap_iters: int = 1000,
                include_defaults: bool = True, return_raw: bool = False) -> dict[str, tuple[str, float, float]]:
    """Evaluate the in-memory `model` on lm_eval `tasks`; returns {task: (metric name, value, stderr)}.

    The metric per task is `metrics[task]`, else :data:`PAPER_SUITE`'s, else the first one lm_eval reports.
    `limit`: at most this many documents per task (None: all). `include_path`: extra task folders (custom YAML);
    `include_defaults=False` indexes only those folders (skips scanning lm_eval's ~10k built-in YAML files).
    With `return_raw`, the full lm_eval results dict is stored under the key ``"_raw"``.
    """
    import lm_eval  # imported on use (heavy)
    from lm_eval.models.huggingface import HFLM

    tasks = [t for t in tasks if t]
    if not tasks:
        raise ValueError("run_lm_eval: no tasks")
    metrics = {**PAPER_SUITE, **(metrics or {})}
    unsafe = any(t in UNSAFE_CODE_TASKS for t in tasks)
    if unsafe:  # HF evaluate's code_eval refuses to execute generated code without this
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size))
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
            task_manager=_task_manager(include_path, include_defaults), log_samples=False,
            apply_chat_template=apply_chat_template, bootstrap_iters=bootstrap_iters,
            confirm_run_unsafe_code=unsafe,
        )
    finally:
        model.train(was_training)  # HFLM puts the model in eval mode
    if out is None:  # non-zero rank under accelerate
        return {}
    res = {**out.get("groups", {}), **out["results"]} if isinstance(out, dict) else out["results"]
    results: dict[str, Any] = {}
    for t in tasks:
        if t not in res:
            raise KeyError(f"lm_eval returned no result for {t!r} (got {sorted(res)[:20]})")
        results[t] = _pick(res[t], metrics.get(t))
    if return_raw:
        results["_raw"] = out
    return results


def format_results(results: dict[str, tuple[str, float, float]]) -> list[list[str]]:
    rows = []
    for t, v in results.items():
        if t.startswith("_"):
            continue
        m, val, se = v
        rows.append([t, m, f"{val:.4f}", "n/a" if not math.isfinite(se) else f"{se:.4f}"])
    return rows


def print_results(results: dict[str, tuple[str, float, float]]) -> None:

    print_table("lm-eval (metric pinned per benchmark)", ["task", "metric", "value", "stderr"],
                 format_results(results))
