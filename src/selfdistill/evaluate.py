"""Evaluation: greedy generation, choice log-likelihoods, task accuracy, drift from the base model, the probe.

* :func:`generate_greedy` — chat-templated, batched, left-padded greedy decoding with the KV cache; stops at EOS;
  outputs decoded without special tokens, returned in input order (batches are formed from length-sorted prompts,
  which does not change any output: each row is decoded exactly as it would be alone).
* :func:`choice_logliks` — log-likelihood of each choice as the assistant's reply. **Convention used everywhere
  here, the retention suite included:** the SUMMED log-probability of the choice's tokens right after the
  chat-templated prompt (lm-eval's `acc` convention), i.e. ``log p(reply starts with choice)``, unnormalised.
  Exception (``include_eos=None``, the default): when one choice of an item is a prefix of another ("Washington" /
  "Washington, D.C."), a prefix would always out-score its extension, so for that item every choice is scored as a
  complete reply, choice tokens + end-of-turn token (``log p(reply == choice)``). The shipped retention items have
  no such prefixes. On the 120 retention items SmolLM2-135M-Instruct gets 77 right with this rule, 67 when every
  choice is scored as a complete reply, 60-64 with per-token normalisation. ``normalize=True`` gives the
  per-token mean, ``include_eos=True/False`` forces either form.
* :func:`evaluate_task` — accuracy with a Wilson 95% interval and per-item records. ``generate`` tasks are scored
  with ``task.scorer`` on greedy outputs; ``multiple_choice`` tasks with :func:`choice_logliks` +
  :func:`selfdistill.tasks.base.mc_correct` (strictly highest log-likelihood; ties are wrong).
* :func:`drift_kl` — the paper's distance from the base policy: mean per-token KL(base ‖ tuned) over the full
  vocabulary, on the base model's own greedy completions of held-out general prompts (:data:`DRIFT_PROMPTS`),
  teacher-forced through both models.
* :func:`probe` — before training: student (prompt only) vs teacher (demonstration in context, the paper's
  template) greedy accuracy on the task's train items, with Wilson intervals, plus the mean per-token
  KL(teacher ‖ student) on the student's own greedy rollouts, and a plain verdict.
* :func:`run_eval_cli` / :func:`run_probe_cli` — the `selfdistill eval` / `selfdistill probe` commands.

Log-likelihoods and KLs reuse :func:`selfdistill.train.pack` / :func:`selfdistill.train.completion_logits`, so
they are computed on exactly the packed layout used in training. Log-softmax is taken in float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import ContextConfig
from .contexts import render_prompt_ids, teacher_messages
from .data import DataError, Example
from .metrics import wilson_interval
from .train import completion_logits, cut_at_eos, pack

# Held-out general chat prompts for drift_kl: everyday requests unrelated to any training task here.
DRIFT_PROMPTS: list[str] = [
    "Give me three tips for staying focused while studying.",
    "Write a short poem about the sea.",
    "Explain what photosynthesis is in simple terms.",
    "What are some healthy breakfast ideas?",
    "How do I politely decline a meeting invitation?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly orange cat.",
    "How does a rainbow form?",
    "Write a haiku about autumn leaves.",
    "Why is regular exercise good for you?",
    "Explain what a prime number is.",
    "Give me a simple recipe for pancakes.",
    "What should I pack for a weekend camping trip?",
    "Describe the water cycle briefly.",
    "How can I improve my handwriting?",
    "Tell me a fun fact about octopuses.",
    "What is the purpose of a thesis statement in an essay?",
    "Write a two-sentence story about a lost key.",
    "How do vaccines help the immune system?",
    "What are the primary colors?",
    "Explain gravity to a ten-year-old.",
    "List three ways to save energy at home.",
    "What makes a good friend?",
]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gc_eos, int):
        ids.add(gc_eos)
    elif isinstance(gc_eos, (list, tuple)):
        ids.update(int(i) for i in gc_eos)
    ids.discard(None)
    return ids


class _eval_mode:
    """model.eval() inside, the previous train/eval state restored after."""

    def __init__(self, *models):
        self.models = models
        self.was = []

    def __enter__(self):
        self.was = [m.training for m in self.models]
        for m in self.models:
            m.eval()
        return self

    def __exit__(self, *exc):
        for m, w in zip(self.models, self.was):
            m.train(w)
        return False


# ----------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def greedy_ids(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
               batch_size: int = 16) -> list[list[int]]:
    """Greedy completion token ids for already-tokenised prompts, cut after the first EOS (EOS kept).

    Prompts are sorted by length (longest first) and decoded in left-padded batches with the KV cache; the
    result is in input order.
    """
    if not prompt_ids:
        return []
    if max_new_tokens < 1:
        return [[] for _ in prompt_ids]
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[list[int]] = [[] for _ in prompt_ids]
    bs = max(1, int(batch_size))
    with _eval_mode(model):
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            L = max(len(prompt_ids[i]) for i in idx)
            ids = torch.full((len(idx), L), pad, dtype=torch.long)
            att = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                p = prompt_ids[i]
                ids[r, L - len(p):] = torch.tensor(p, dtype=torch.long)
                att[r, L - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=int(max_new_tokens), use_cache=True,
                                 pad_token_id=pad, eos_token_id=sorted(eos_ids),
                                 temperature=None, top_p=None, top_k=None)
            new = gen[:, L:].tolist()
            for r, i in enumerate(idx):
                out[i] = cut_at_eos(new[r], eos_ids)
    return out


def decode_completion(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def generate_greedy(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                    batch_size: int = 16) -> list[str]:
    """Greedy replies to chat prompts (lists of messages), in input order, decoded without special tokens."""
    ids = [render_prompt_ids(tokenizer, p) for p in prompts]
    comps = greedy_ids(model, tokenizer, ids, max_new_tokens, batch_size)
    return [decode_completion(tokenizer, c) for c in comps]


# ----------------------------------------------------------------------------------------------------------
# Log-likelihoods


def choice_ids(tokenizer, choice: str, include_eos: bool = False) -> list[int]:
    ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if include_eos else ids


@torch.no_grad()
def sequence_logliks(model, tokenizer, prompt_ids: list[list[int]], completions: list[list[int]],
                     batch_size: int = 16, normalize: bool = False) -> list[float]:
    """Sum (or, with normalize, mean) of log p(completion token | prompt, earlier tokens) for each pair."""
    n = len(prompt_ids)
    if n != len(completions):
        raise ValueError(f"{n} prompts for {len(completions)} completions")
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(completions[i])))
    out = [0.0] * n
    bs = max(1, int(batch_size))
    with _eval_mode(model), torch.inference_mode():
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            batch = pack([prompt_ids[i] for i in idx], [completions[i] for i in idx], pad, device)
            logp = completion_logits(model, batch).float().log_softmax(-1)
            tok = logp.gather(-1, batch.completion_ids_BT.unsqueeze(-1)).squeeze(-1)
            mask = batch.completion_mask_BT
            sums = (tok * mask).sum(-1)
            counts = mask.sum(-1)
            for r, i in enumerate(idx):
                v = float(sums[r])
                if normalize:
                    v = v / max(float(counts[r]), 1.0)
                out[i] = v
    return out


def _has_prefix_pair(choices: Sequence[str]) -> bool:
    return any(a != b and b.startswith(a) for a in choices for b in choices)


def choice_logliks(model, tokenizer, prompts: list[list[dict]], choices_list: list[list[str]],
                   batch_size: int = 16, *, normalize: bool = False,
                   include_eos: bool | None = None) -> list[list[float]]:
    """Log-likelihood of each choice as the assistant's reply to its prompt (prompt ids + choice ids).

    Default (used by evaluate_task, so by the retention suite): the summed log-probs of the choice's tokens.
    ``include_eos=None`` appends the end-of-turn token to every choice of an item only when one of its choices is
    a prefix of another (then each choice is scored as the complete reply); True/False force it on/off.
    ``normalize=True``: per-token mean (over the scored tokens, EOS included when appended) instead of the sum.
    """
    if len(prompts) != len(choices_list):
        raise ValueError(f"{len(prompts)} prompts for {len(choices_list)} choice lists")
    prompt_ids = [render_prompt_ids(tokenizer, msgs) for msgs in prompts]
    choice_tokens = []
    for choices in choices_list:
        eos = _has_prefix_pair(choices) if include_eos is None else bool(include_eos)
        choice_tokens.append([choice_ids(tokenizer, c, eos) for c in choices])
    out = shared_prompt_logliks(model, tokenizer, prompt_ids, choice_tokens, batch_size)
    if normalize:
        out = [[v / max(len(c), 1) for v, c in zip(row, cs)] for row, cs in zip(out, choice_tokens)]
    return out


def shared_prompt_logliks(model, tokenizer, prompt_ids: list[list[int]], choices: list[list[list[int]]],
                          batch_size: int = 16) -> list[list[float]]:
    """Summed log p(choice tokens | prompt) for several choices per prompt, the prompt run once per item.

    Equal to :func:`sequence_logliks` on every (prompt, choice) pair (tested), about #choices times cheaper: the
    prompts of `batch_size` items go through the model once (left-padded, KV cache kept), the cache is repeated
    per choice, and only the choice tokens are run on top of it.
    """
    if len(prompt_ids) != len(choices):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(choices)} choice lists")
    if any(len(c) == 0 for cs in choices for c in cs):
        raise ValueError("every choice needs at least one token")
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[float]] = [[] for _ in prompt_ids]
    bs = max(1, int(batch_size))
    with _eval_mode(model), torch.inference_mode():
        for s in range(0, len(prompt_ids), bs):
            items = list(range(s, min(s + bs, len(prompt_ids))))
            pb = pack([prompt_ids[i] for i in items], [[]] * len(items), pad, device)
            L = pb.input_ids_BL.shape[1] - 1  # pack adds one empty completion column
            att_BL = pb.attention_mask_BL[:, :L]
            first = model(input_ids=pb.input_ids_BL[:, :L], attention_mask=att_BL,
                          position_ids=pb.position_ids_BL[:, :L], use_cache=True, logits_to_keep=1)
            first_logp_BV = first.logits[:, -1].float().log_softmax(-1)
            row_C = [r for r, i in enumerate(items) for _ in choices[i]]
            comps = [c for i in items for c in choices[i]]
            idx_C = torch.tensor(row_C, device=device)
            cache = first.cache
            cache.batch_select_indices(idx_C)  # one copy of its prompt's cache per choice
            T = max(len(c) for c in comps)
            ids_CT = torch.full((len(comps), T), pad, dtype=torch.long)
            mask_CT = torch.zeros((len(comps), T))
            for k, c in enumerate(comps):
                ids_CT[k, :len(c)] = torch.tensor(c)
                mask_CT[k, :len(c)] = 1
            ids_CT, mask_CT = ids_CT.to(device), mask_CT.to(device)
            sums_C = first_logp_BV[idx_C].gather(-1, ids_CT[:, :1]).squeeze(-1)  # first choice token
            if T > 1:
                att_CL = torch.cat([att_BL[idx_C], torch.ones((len(comps), T - 1), dtype=att_BL.dtype,
                                                                device=device)], 1)
                pos_CT = att_BL[idx_C].sum(-1, keepdim=True) + torch.arange(T - 1, device=device)
                rest = model(input_ids=ids_CT[:, :-1], attention_mask=att_CL, position_ids=pos_CT,
                             cache=cache, use_cache=True)
                logp_CTV = rest.logits.float().log_softmax(-1)
                tok_CT = logp_CTV.gather(-1, ids_CT[:, 1:].unsqueeze(-1)).squeeze(-1)
                sums_C = sums_C + (tok_CT * mask_CT[:, 1:]).sum(-1)
            k = 0
            for i in items:
                out[i] = [float(v) for v in sums_C[k:k + len(choices[i])]]
                k += len(choices[i])
    return out


# ----------------------------------------------------------------------------------------------------------
# Task accuracy


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _item_id(ex: Example) -> str:
    return str(ex.extra.get("id", ex.origin))


def _reference(ex: Example) -> str:
    if "choices" in ex.extra and "answer_index" in ex.extra:
        return str(ex.extra["choices"][ex.extra["answer_index"]])
    for k in ("reference", "answer", "target", "code"):
        if k in ex.extra and isinstance(ex.extra[k], (str, int, float)):
            return str(ex.extra[k])
    return _short(ex.demonstration, 200)


def _summary(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": (k / n) if n else float("nan"), "ci95": [lo, hi]}


def _select(task, split: str, limit: int) -> list[Example]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    items = list(getattr(task, split))
    return items[:limit] if limit and limit > 0 else items


def evaluate_task(model, tokenizer, task, split: str = "test", limit: int = 0, batch_size: int = 16) -> dict:
    """Accuracy on `task`'s split with a Wilson 95% interval and per-item records.

    Returns {task, split, kind, scoring, n, correct, accuracy, ci95: [lo, hi], items: [{id, origin, prompt,
    output, reference, correct, (choice_logliks)}]}.
    """
    items = _select(task, split, limit)
    records = []
    if task.kind == "multiple_choice":
        from .tasks.base import mc_correct, mc_predicted_index

        lls = choice_logliks(model, tokenizer, [ex.prompt for ex in items],
                             [ex.extra["choices"] for ex in items], batch_size)
        for ex, ll in zip(items, lls):
            ok = bool(mc_correct(ll, ex))
            records.append({"id": _item_id(ex), "origin": ex.origin, "prompt": _short(ex.prompt[-1]["content"]),
                            "output": ex.extra["choices"][mc_predicted_index(ll)], "reference": _reference(ex),
                            "correct": ok, "choice_logliks": [round(v, 4) for v in ll]})
        scoring = ("multiple choice: summed log-prob of the choice tokens as the reply (+ end-of-turn token when "
                   "a choice is a prefix of another); strict argmax, ties wrong")
    else:
        outputs = generate_greedy(model, tokenizer, [ex.prompt for ex in items], task.max_new_tokens, batch_size)
        for ex, o in zip(items, outputs):
            ok = bool(task.score(o, ex))
            records.append({"id": _item_id(ex), "origin": ex.origin, "prompt": _short(ex.prompt[-1]["content"]),
                            "output": o, "reference": _reference(ex), "correct": ok})
        scoring = f"greedy generation (max_new_tokens={task.max_new_tokens}) scored with the task scorer"
    k = sum(r["correct"] for r in records)
    out = {"task": task.name, "split": split, "kind": task.kind, "scoring": scoring, **_summary(k, len(records)),
           "items": records}
    groups = _group_summaries(items, records)
    if groups:
        out["groups"] = groups
    return out


def item_group(ex: Example) -> str | None:
    """The item's group for separate reporting: ``extra["group"]``, else ``extra["phrasing"]`` (knowledge)."""
    g = ex.extra.get("group", ex.extra.get("phrasing"))
    return None if g is None else str(g)


def _group_summaries(items: list[Example], records: list[dict]) -> dict:
    """{group: summary} when the items fall into more than one group (e.g. the knowledge phrasings), else {}."""
    by: dict[str, list[bool]] = {}
    for ex, r in zip(items, records):
        g = item_group(ex)
        r["group"] = g
        by.setdefault(g, []).append(r["correct"])
    if len(by) < 2:
        return {}
    return {str(g): _summary(sum(v), len(v)) for g, v in by.items()}


# ----------------------------------------------------------------------------------------------------------
# KLs


@torch.no_grad()
def _mean_token_kl(p_model, p_prompts: list[list[int]], q_model, q_prompts: list[list[int]],
                   completions: list[list[int]], pad_id: int, batch_size: int) -> tuple[float, int]:
    """Token-mean of KL(P ‖ Q) over the completions, where P = p_model(. | p_prompt, y_<t) and
    Q = q_model(. | q_prompt, y_<t), full vocabulary. Returns (mean, number of tokens)."""
    from .losses import divergence_from_logprobs

    total, count = 0.0, 0
    order = sorted(range(len(completions)), key=lambda i: -len(completions[i]))
    bs = max(1, int(batch_size))
    with _eval_mode(p_model, q_model):
        for s in range(0, len(order), bs):
            idx = [i for i in order[s:s + bs] if completions[i]]
            if not idx:
                continue
            comps = [completions[i] for i in idx]
            bp = pack([p_prompts[i] for i in idx], comps, pad_id, _device(p_model))
            bq = pack([q_prompts[i] for i in idx], comps, pad_id, _device(q_model))
            lp = completion_logits(p_model, bp).float().log_softmax(-1)
            lq = completion_logits(q_model, bq).float().log_softmax(-1).to(lp.device)
            # divergence_from_logprobs(student, teacher, "forward_kl") = KL(teacher ‖ student): P is the "teacher".
            kl = divergence_from_logprobs(lq, lp, "forward_kl").clamp(min=0.0)
            mask = bp.completion_mask_BT.to(kl.device)
            total += float((kl * mask).sum())
            count += int(mask.sum())
    return (total / count if count else float("nan")), count


def drift_kl(base_model, tuned_model, tokenizer, prompts: Sequence[str | list[dict]] | None = None,
             max_new_tokens: int = 32, batch_size: int = 8) -> float:
    """Mean per-token KL(base ‖ tuned) over the full vocabulary on the base model's greedy completions.

    `prompts` are strings (one user turn) or chat message lists; default :data:`DRIFT_PROMPTS`. The completions
    (up to `max_new_tokens`, EOS included when produced) are teacher-forced through both models with the same
    chat-templated prompt; the KL is averaged over all completion tokens of all prompts.
    """
    prompts = DRIFT_PROMPTS if prompts is None else prompts
    msgs = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    ids = [render_prompt_ids(tokenizer, m) for m in msgs]
    comps = greedy_ids(base_model, tokenizer, ids, max_new_tokens, batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kl, _ = _mean_token_kl(base_model, ids, tuned_model, ids, comps, pad, batch_size)
    return kl


# ----------------------------------------------------------------------------------------------------------
# Probe


UNLIKELY = ("SDFT is unlikely to help with this model and task: the teacher does not beat the student beyond the "
            "95% intervals (the paper saw SDFT lose to SFT at 3B for this reason)")


def probe_verdict(student: dict, teacher: dict) -> tuple[bool, str]:
    """(signal, verdict) from two accuracy summaries ({accuracy, ci95})."""
    s_acc, t_acc = student["accuracy"], teacher["accuracy"]
    overlap = teacher["ci95"][0] <= student["ci95"][1]
    if overlap or not t_acc > s_acc:
        return False, (f"{UNLIKELY}. Teacher {t_acc:.1%} vs student {s_acc:.1%} on {student['n']} items.")
    return True, (f"SDFT has a signal: the teacher (demonstration in context) beats the student by "
                  f"{t_acc - s_acc:+.1%} ({t_acc:.1%} vs {s_acc:.1%} on {student['n']} items; the 95% intervals "
                  f"do not overlap).")


def probe(model, tokenizer, task_or_examples, ctx: ContextConfig | None = None, limit: int = 40,
          batch_size: int = 16, max_new_tokens: int | None = None,
          scorer: Callable[[str, Example], bool] | None = None, n_examples: int = 3) -> dict:
    """Before training: does the in-context teacher beat the student on the task's TRAIN items?

    `task_or_examples`: a Task (its train split and scorer are used) or a list of Examples (scored with
    `scorer`, default exact match against `extra['reference']` or else the demonstration). Both sides decode
    greedily (up to `max_new_tokens`, default the task's). `kl_teacher_student` is the mean per-token
    KL(teacher ‖ student) over the full vocabulary on the student's greedy rollouts (every completion token,
    none skipped), teacher-forced under the teacher context and the student context.
    """
    ctx = ctx or ContextConfig()
    if isinstance(task_or_examples, (list, tuple)):
        examples = list(task_or_examples)
        name = "examples"
        if scorer is None:
            from .tasks.scorers import exact_match

            def scorer(o, ex):  # noqa: E306
                return exact_match(o, str(ex.extra.get("reference", ex.demonstration)))
        mnt = max_new_tokens or 256
    else:
        task = task_or_examples
        examples = list(task.train)
        name = task.name
        scorer = scorer or task.score
        mnt = max_new_tokens or task.max_new_tokens
    if not examples:
        raise DataError(f"probe: task {name!r} has no training items with demonstrations (an evaluation-only "
                        f"suite); probe a task that has them, e.g. knowledge or tooluse, or pass --data")
    if limit and limit > 0:
        examples = examples[:limit]
    s_ids = [render_prompt_ids(tokenizer, ex.prompt) for ex in examples]
    t_ids = [render_prompt_ids(tokenizer, teacher_messages(ex, ctx)) for ex in examples]
    s_comps = greedy_ids(model, tokenizer, s_ids, mnt, batch_size)
    t_comps = greedy_ids(model, tokenizer, t_ids, mnt, batch_size)
    s_out = [decode_completion(tokenizer, c) for c in s_comps]
    t_out = [decode_completion(tokenizer, c) for c in t_comps]
    s_ok = [bool(scorer(o, ex)) for o, ex in zip(s_out, examples)]
    t_ok = [bool(scorer(o, ex)) for o, ex in zip(t_out, examples)]
    student, teacher = _summary(sum(s_ok), len(examples)), _summary(sum(t_ok), len(examples))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kl, n_tok = _mean_token_kl(model, t_ids, model, s_ids, s_comps, pad, max(1, batch_size // 2))
    signal, verdict = probe_verdict(student, teacher)
    ex_out = [{"id": _item_id(ex), "prompt": _short(ex.prompt[-1]["content"]), "reference": _reference(ex),
               "student_output": so, "student_correct": sc, "teacher_output": to, "teacher_correct": tc}
              for ex, so, sc, to, tc in zip(examples, s_out, s_ok, t_out, t_ok)]
    return {"task": name, "n": len(examples), "max_new_tokens": mnt, "student": student, "teacher": teacher,
            "gap": teacher["accuracy"] - student["accuracy"], "kl_teacher_student": kl, "kl_tokens": n_tok,
            "signal": signal, "verdict": verdict, "examples": ex_out[:max(0, n_examples)], "items": ex_out}


# ----------------------------------------------------------------------------------------------------------
# CLI glue


def split_task_names(spec: str) -> tuple[list[str], list[str]]:
    """'knowledge,retention,lm-eval:hellaswag,mmlu' -> (['knowledge', 'retention'], ['hellaswag', 'mmlu']).

    Everything after 'lm-eval:' is a comma-separated list of lm-eval task names.
    """
    spec = spec.strip()
    ours, _, lm = spec.partition("lm-eval:")
    own = [t.strip() for t in ours.split(",") if t.strip()]
    lm_tasks = [t.strip() for t in lm.split(",") if t.strip()]
    if "lm-eval:" in spec and not lm_tasks:
        raise ValueError("--tasks lm-eval: needs task names, e.g. lm-eval:hellaswag,mmlu")
    return own, lm_tasks


def resolve_task(name: str, data: str | None = None, scorer: str = "exact", *, all_phrasings: bool = False):
    """A task from a spec (:func:`selfdistill.tasks.task_from_spec`: a built-in name with options, or a file with
    options), or ``user`` built from `data` scored with `scorer`. `all_phrasings`: a bare ``knowledge`` gets
    every test phrasing (``selfdistill eval`` reports them separately)."""
    from . import tasks
    from .data import DataError

    try:
        if name == "user" or (data and name in ("", None)):
            if not data:
                raise DataError("task 'user' needs --data PATH")
            _, opts = tasks.parse_task_spec(data)
            return tasks.task_from_spec(data if "scorer" in opts else _with_option(data, "scorer", scorer))
        if all_phrasings and name == "knowledge":
            name = "knowledge@test_phrasing=all"
        return tasks.task_from_spec(name)
    except DataError:
        raise
    except ValueError as e:  # unknown task / scorer: one line from the CLI, not a traceback
        raise DataError(str(e)) from None


def _with_option(spec: str, key: str, value: str) -> str:
    from .tasks import parse_task_spec

    name, opts = parse_task_spec(spec)
    opts[key] = value
    return name + "@" + ",".join(f"{k}={v}" for k, v in opts.items())


def eval_task_specs(tasks_arg: str | None, task_args: list[str] | None, data: str | None) -> tuple[list, list]:
    """(own task specs, lm-eval task names) for `selfdistill eval`: exactly what was asked (`--tasks` names,
    each `--task` spec, `--data`); knowledge and retention only when nothing was asked."""
    own, lm_tasks = split_task_names(tasks_arg or "")
    own += list(task_args or [])
    if data:
        own.append("user")
    if not own and not lm_tasks:
        own = ["knowledge", "retention"]
    return own, lm_tasks


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=escape(title))
        for h in header:
            t.add_column(h, justify="left" if h in ("task", "metric", "") else "right")
        for r in rows:  # escaped: "knowledge [reworded]" is text, not rich markup
            t.add_row(*(escape(c) for c in r))
        Console().print(t)
    except ImportError:  # pragma: no cover - rich is a dependency; plain fallback
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _write_json(path: str, obj: dict) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default), encoding="utf-8")


def run_eval_cli(args) -> int:
    from .models import load_model

    own, lm_tasks = eval_task_specs(args.tasks, getattr(args, "task", None), args.data)
    task_objs = [resolve_task(n, args.data, args.scorer, all_phrasings=True) for n in own]  # fail before loading
    model, tok, info = load_model(args.model)
    results: dict[str, Any] = {"model": info.name, "model_path": info.path, "split": args.split,
                               "limit": args.limit, "tasks": {}}
    rows = []
    for task in task_objs:
        r = evaluate_task(model, tok, task, split=args.split, limit=args.limit, batch_size=args.batch_size)
        results["tasks"][task.name] = r
        for label, g in ([(f"{task.name} [{k}]", v) for k, v in r["groups"].items()] if r.get("groups")
                         else [(task.name, r)]):
            rows.append([label, str(g["n"]), f"{g['accuracy']:.3f}", _fmt_ci(g["ci95"])])
    if rows:
        _print_table(f"selfdistill eval: {info.name} ({args.split} split)", ["task", "n", "accuracy", "95% CI"], rows)
    if lm_tasks:
        from .lmeval import print_results, run_lm_eval

        lm = run_lm_eval(model, tok, lm_tasks, limit=args.limit or None, batch_size=args.batch_size)
        results["lm_eval"] = {t: {"metric": m, "value": v, "stderr": se} for t, (m, v, se) in lm.items()}
        print_results(lm)
    if args.output:
        _write_json(args.output, results)
        print(f"results written to {args.output}")
    return 0


def format_probe(r: dict) -> str:
    s, t = r["student"], r["teacher"]
    lines = [f"probe: {r['task']}, {r['n']} train items, greedy, max_new_tokens={r['max_new_tokens']}",
             f"  student (prompt only)            accuracy {s['accuracy']:.3f}  95% CI {_fmt_ci(s['ci95'])}",
             f"  teacher (demonstration in ctx)   accuracy {t['accuracy']:.3f}  95% CI {_fmt_ci(t['ci95'])}",
             f"  mean per-token KL(teacher || student) on student rollouts: {r['kl_teacher_student']:.4f} "
             f"({r['kl_tokens']} tokens)"]
    for e in r["examples"]:
        lines += [f"  - {e['prompt']}  (reference: {e['reference']})",
                  f"      student{' ✓' if e['student_correct'] else ' ✗'}: {_short(e['student_output'], 120)}",
                  f"      teacher{' ✓' if e['teacher_correct'] else ' ✗'}: {_short(e['teacher_output'], 120)}"]
    lines.append(f"verdict: {r['verdict']}")
    return "\n".join(lines)


def run_probe_cli(args) -> int:
    from .models import load_model

    task = resolve_task("user" if args.data else args.task, args.data, args.scorer)
    model, tok, info = load_model(args.model)
    r = probe(model, tok, task, ContextConfig(), limit=args.limit, batch_size=args.batch_size)
    r["model"] = info.name
    print(format_probe(r))
    if args.output:
        _write_json(args.output, r)
        print(f"probe written to {args.output}")
    return 0
