"""lm-eval glue: the in-memory model through lm_eval on a local offline task, and the pinned paper metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import DATA
from selfdistill.evaluation.lmeval import PAPER_SUITE, _pick, _task_manager, declared_metrics, run_lm_eval  # noqa: E402

TASK_DIR = DATA / "lmeval_task"
TASK = "selfdistill_tiny_mc"


def _items():
    return [json.loads(line) for line in (TASK_DIR / "items.jsonl").read_text().splitlines() if line.strip()]


@torch.no_grad()
def _independent_accuracy(model, tok) -> float:
    """lm-eval's multiple_choice definition, computed here: context = question, continuation = ' ' + choice
    (target_delimiter ' '), continuation ids = ids(context + continuation) minus the ids of the context; the
    prediction is the choice with the highest summed log-likelihood."""
    model.eval()
    correct = 0
    for it in _items():
        ctx = tok.encode(it["question"])
        scores = []
        for ch in it["choices"]:
            whole = tok.encode(it["question"] + " " + ch)
            assert whole[:len(ctx)] == ctx
            logp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        correct += max(range(len(scores)), key=lambda i: scores[i]) == it["answer"]
    return correct / len(_items())


def test_run_lm_eval_on_local_task_matches_independent_loglikelihoods(tiny_tok, tiny_model):
    want = _independent_accuracy(tiny_model, tiny_tok)
    tiny_model.train()
    res = run_lm_eval(tiny_model, tiny_tok, [TASK], include_path=TASK_DIR, batch_size=4, include_defaults=False)
    metric, value, stderr = res[TASK]
    assert metric == "acc"
    assert value == pytest.approx(want, abs=1e-9)
    n = len(_items())
    assert stderr == pytest.approx(math.sqrt(want * (1 - want) / (n - 1)), rel=1e-6)
    assert tiny_model.training  # the caller's train/eval state is restored


def test_run_lm_eval_limit(tiny_tok, tiny_model):
    res = run_lm_eval(tiny_model, tiny_tok, [TASK], limit=3, include_path=str(TASK_DIR), batch_size=2,
                      include_defaults=False, return_raw=True)
    assert res["_raw"]["results"][TASK]["sample_len"] == 3
    assert any(res[TASK][1] == pytest.approx(k / 3) for k in range(4))


def test_paper_suite_metrics_are_declared_by_the_installed_task_yaml():
    import lm_eval.tasks

    # Index only the folders holding these benchmarks (scanning all of lm_eval's YAML files takes ~10 s).
    root = Path(lm_eval.tasks.__file__).parent
    dirs = [root / d for d in ("hellaswag", "mmlu/default", "truthfulqa", "winogrande", "ifeval", "humaneval")]
    tm = _task_manager(dirs, include_defaults=False)
    for task, metric in PAPER_SUITE.items():
        assert metric in declared_metrics(task, tm), (task, metric, declared_metrics(task, tm))
    assert PAPER_SUITE == {"hellaswag": "acc_norm", "mmlu": "acc", "truthfulqa_mc2": "acc", "winogrande": "acc",
                           "ifeval": "prompt_level_strict_acc", "humaneval": "pass@1"}


def test_pick_metric_from_results_entries():
    assert _pick({"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.7,
                  "acc_norm_stderr,none": 0.2}, "acc_norm") == ("acc_norm", 0.7, 0.2)
    name, v, se = _pick({"pass@1,create_test": 0.25, "pass@1_stderr,create_test": "N/A"}, "pass@1")
    assert (name, v) == ("pass@1", 0.25) and math.isnan(se)
    with pytest.raises(KeyError):
        _pick({"acc,none": 0.5}, "acc_norm")
