"""Evaluation: task accuracy, log-likelihoods, drift from the base model, the probe, and lm-eval benchmarks.

* :mod:`.replies`: greedy replies as text (through :mod:`selfdistill.engines`), reasoning blocks stripped.
* :mod:`.loglik`: log-likelihoods of multiple-choice answers and of given completions.
* :mod:`.accuracy`: `evaluate_task` / `evaluate_tasks` (several tasks in shared generation batches), accuracy with a Wilson 95% interval and per-item records.
* :mod:`.drift`: KL(base ‖ tuned) on held-out general prompts.
* :mod:`.probe`: before training, does the teacher (demonstration in context) beat the student?
* :mod:`.lmeval`: standard benchmarks through lm-evaluation-harness, on the in-memory model.
* :mod:`.table`: the console table every command prints.
Scorers live with the tasks (:mod:`selfdistill.tasks.scorers`): a task names its scorer.
"""

from __future__ import annotations

from .accuracy import evaluate_task, evaluate_tasks, item_group, item_table
from .drift import DRIFT_PROMPTS, DriftReference, drift_from_reference, drift_kl, drift_reference, mean_token_kl
from .loglik import choice_logliks, completion_logprobs, sequence_logliks, shared_prompt_logliks
from .probe import format_probe, probe, probe_verdict
from .replies import answer_ids, generate_greedy, resolve_strip_thinking, scored_text

__all__ = ["DRIFT_PROMPTS", "DriftReference", "drift_from_reference", "drift_reference", "answer_ids", "choice_logliks", "drift_kl", "evaluate_task", "evaluate_tasks", "item_table", "format_probe",
           "generate_greedy", "item_group", "mean_token_kl", "probe", "probe_verdict", "resolve_strip_thinking",
           "scored_text", "sequence_logliks", "shared_prompt_logliks", "completion_logprobs"]
