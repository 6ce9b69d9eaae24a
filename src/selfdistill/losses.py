"""Token-level losses for SDFT (self-distillation fine-tuning) and its SFT / DFT baselines.

Notation
--------
Shape suffixes: ``B`` batch (sequences), ``T`` completion positions, ``V`` vocabulary, ``K`` top-k bins,
``N`` flattened selected positions. At every completion position ``t`` (the student's own on-policy sample):

* ``p_t`` = **student** distribution: softmax of the student logits, computed from the prompt only. Has grad.
* ``q_t`` = **teacher** distribution: softmax of the teacher logits, computed from prompt + demonstration
  (the in-context teacher, usually an EMA copy). Always detached here: the teacher never gets a gradient.

Both come from logits at the *same* completion positions. Log-softmax is taken in float32 whatever the
logits' dtype (float64 inputs stay float64, which the tests use as the exact reference).
Logits must be finite (no ``-inf`` masking of the vocabulary).

Divergence directions (``DivergenceSpec.divergence``)
----------------------------------------------------
* ``"forward_kl"`` (DEFAULT) = KL(q ‖ p) = Σ_v q (log q − log p), i.e. KL(teacher ‖ student).
  This is what produced all published SDFT results (official code ``alpha=0``; authors' reply on
  idanshen/Self-Distillation#5), even though the paper's Eq. 1 writes the reverse direction.
  Same as ``F.kl_div(log_p, log_q, log_target=True)`` (PyTorch's ``kl_div(input, target)`` is
  KL(target ‖ input)). Gradient w.r.t. the student logits: ``p − q``.
* ``"reverse_kl"`` = KL(p ‖ q) = Σ_v p (log p − log q), the paper's Eq. 1 direction.
  Gradient w.r.t. the student logits: ``p ⊙ (log p − log q − KL(p‖q))``.
* ``"jsd"`` = generalised Jensen–Shannon with ``jsd_beta = β ∈ (0, 1)``, where **β is the weight of the
  student**::

      m   = β·p + (1 − β)·q
      JSD = β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)

  Gradient w.r.t. the student logits: ``β·p ⊙ (log p − log m − KL(p‖m))``. Both ends β→0 and β→1 give 0
  (this is not an interpolation between the two KLs). TRL's ``generalized_jsd_loss(beta=b)`` (and the
  official SDFT ``alpha``) put weight ``b`` on the *teacher*: our ``jsd_beta`` equals ``1 − b``; at 0.5
  the two coincide.

Support (``DivergenceSpec.support``)
------------------------------------
* ``"full"``: the divergence over the whole vocabulary (the paper's "full analytic per-token" estimator).
* ``"top_k"``: take the ``top_k`` token ids of one side (``topk_from="teacher"`` or ``"student"``), gather
  both sides' log-probs at those ids and add one tail bin holding ``1 − Σ top-k probs`` (computed as
  ``log(−expm1(logsumexp))`` with the top-k log-mass clamped just below 0, so the tail is never exactly 0).
  Both sides then sum to 1 over ``K + 1`` bins and the same divergence is applied there. With
  ``top_k == V`` the value equals the full-vocabulary one (up to the ~1e-7 clamped tail).

Masks
-----
``completion_mask_BT`` is 1 on real completion tokens and 0 on padding / tokens after EOS. The loss mask
additionally drops the first ``skip_first_tokens`` (default 3, as the official trainer) real completion
tokens of each row, counted from the row's first real token, so it works for left and right padding
(:func:`build_loss_mask`). The attention mask is not affected.

Reduction (and gradient accumulation)
-------------------------------------
Token mean per sequence over the loss mask, then mean over sequences; written as a *sum* so that it is
invariant to how a batch is split into micro-batches::

    loss = Σ_b w_b · (Σ_t mask_bt · ℓ_bt / max(Σ_t mask_bt, 1)) / num_sequences_total

``num_sequences_total`` is the number of sequences in the whole optimizer step (defaults to this batch's
``B``). If every micro-batch passes the optimizer-step total and the trainer *sums* (not averages) the
micro-batch losses — i.e. calls ``backward()`` on each without further division — the accumulated value
and gradient equal those of the single big batch exactly. Sequences whose loss mask is empty contribute 0
while the loss stays connected to the graph (masks multiply; nothing branches). ``w_b`` is an optional
detached per-sequence weight (:func:`sequence_importance_weights`, the official trainer's truncated
vLLM importance-sampling correction, cap 2).

Memory-lean full-vocabulary path
--------------------------------
:func:`chunked_divergence_BT` (used by :func:`distillation_loss` when ``chunk_size`` is given; the caller
passes only the loss positions) evaluates the divergence chunk by chunk over positions inside a custom
``torch.autograd.Function``. Per chunk it builds the float32 log-softmax of both sides, writes the
per-token value and the analytic gradient ``∂ℓ_n/∂student_logits_n`` (stored in the student logits' dtype)
and drops the float32 temporaries. The only tensor saved for backward is that ``[N, V]`` gradient: the
student and teacher logits are *not* kept alive (saving them and recomputing in backward would cost two
``[N, V]`` tensors and a second softmax pass; the precomputed gradient costs one and none). Backward only
scales it, in place, by the incoming per-token gradient, chunk by chunk, and returns that same buffer as the
input gradient, so the whole loss allocates one ``[N, V]`` tensor beyond its inputs (backward twice on one graph
is therefore an error). When the student does not require grad nothing is kept. Only the full-vocabulary support is chunked: ``support="top_k"`` with ``chunk_size``
raises ``ValueError`` (top-k already keeps just ``[B, T, K+1]`` bins after the log-softmax).

SFT / DFT
---------
:func:`sft_loss` is token cross-entropy on the demonstration, :func:`dft_loss` is the same cross-entropy
weighted per token by the token's own detached probability (Dynamic Fine-Tuning, arXiv 2508.05629). Both
use the same per-sequence-mean reduction. Targets must already be aligned with the logits (shifted by the
caller): ``logits_BTV[:, t]`` predicts ``target_ids_BT[:, t]``.

Every loss returns ``(loss, metrics)`` with ``metrics`` a dict of detached python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "DIVERGENCES",
    "DivergenceSpec",
    "build_loss_mask",
    "chunked_divergence_BT",
    "dft_loss",
    "distillation_loss",
    "divergence_from_logprobs",
    "log_softmax_fp32",
    "per_token_divergence_BT",
    "reasoning_mask_BT",
    "reduce_per_sequence_mean",
    "sequence_importance_weights",
    "sft_loss",
    "topk_with_tail_logprobs",
]

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
SUPPORTS: tuple[str, ...] = ("full", "top_k")
TOPK_FROM: tuple[str, ...] = ("teacher", "student")


@dataclass(frozen=True)
class DivergenceSpec:
    """Which per-token divergence the SDFT loss uses, as one object (config: the `loss.*` keys of the same names).

    ``divergence``: forward_kl = KL(teacher ‖ student) (default, the published results), reverse_kl =
    KL(student ‖ teacher), jsd (``jsd_beta`` = the student's weight in the mixture). ``support``: full vocabulary,
    or ``top_k`` ids of ``topk_from``'s side plus one tail bin. Invalid combinations raise ``ValueError`` here."""
    divergence: Divergence = "forward_kl"
    jsd_beta: float = 0.5
    support: Literal["full", "top_k"] = "full"
    top_k: int = 20
    topk_from: Literal["teacher", "student"] = "teacher"

    def __post_init__(self) -> None:
        _check_divergence(self.divergence, self.jsd_beta)
        if self.support not in SUPPORTS:
            raise ValueError(f"support must be one of {SUPPORTS}, got {self.support!r}")
        if self.topk_from not in TOPK_FROM:
            raise ValueError(f"topk_from must be one of {TOPK_FROM}, got {self.topk_from!r}")

    @classmethod
    def from_config(cls, loss_cfg) -> DivergenceSpec:
        """From a `LossConfig` (or anything with the same attributes)."""
        return cls(loss_cfg.divergence, loss_cfg.jsd_beta, loss_cfg.support, loss_cfg.top_k, loss_cfg.topk_from)


# ----------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for every input dtype except float64 (kept, so tests can use exact references)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def log_softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last dim in float32 (float64 stays float64)."""
    return torch.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)


def _check_divergence(divergence: str, jsd_beta: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not (0.0 < float(jsd_beta) < 1.0):
        raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}")


def _jsd_log_mixture(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """log m with m = beta * p + (1 - beta) * q, computed stably in log space."""
    return torch.logaddexp(student_logp + math.log(beta), teacher_logp + math.log1p(-beta))


def divergence_from_logprobs(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    divergence: Divergence = "forward_kl",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence between two normalised log-distributions over the last dim.

    ``forward_kl`` = KL(teacher ‖ student), ``reverse_kl`` = KL(student ‖ teacher),
    ``jsd`` = β·KL(p‖m) + (1−β)·KL(q‖m) with m = β·p + (1−β)·q, β = ``jsd_beta`` (student weight).
    Returns a tensor with the last dim reduced. Differentiable w.r.t. both inputs (detach the teacher).
    """
    _check_divergence(divergence, jsd_beta)
    if divergence == "forward_kl":
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    if divergence == "reverse_kl":
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    log_m = _jsd_log_mixture(student_logp, teacher_logp, jsd_beta)
    kl_pm = (student_logp.exp() * (student_logp - log_m)).sum(-1)
    kl_qm = (teacher_logp.exp() * (teacher_logp - log_m)).sum(-1)
    return jsd_beta * kl_pm + (1.0 - jsd_beta) * kl_qm


def topk_with_tail_logprobs(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    top_k: int,
    topk_from: Literal["teacher", "student"] = "teacher",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Restrict two log-distributions ``[..., V]`` to ``top_k`` ids of one side plus one tail bin.

    Returns ``(student_logp_K1, teacher_logp_K1, student_topk_mass, teacher_topk_mass)``; the first two have
    shape ``[..., top_k + 1]`` (last bin = tail) and each exponentiates to a distribution summing to 1 (the
    top-k log-mass is clamped to ``≤ −eps`` so the tail bin is at least ~eps, never log 0). The masses
    (``[...]``, detached) are the probability each side puts on the selected ids. Gradients flow to
    ``student_logp`` through the gathered values and the tail; the id selection itself is discrete.
    """
    if topk_from not in TOPK_FROM:
        raise ValueError(f"topk_from must be one of {TOPK_FROM}, got {topk_from!r}")
    V = student_logp.shape[-1]
    if not (1 <= int(top_k) <= V):
        raise ValueError(f"top_k must be in [1, V={V}], got {top_k}")
    source = teacher_logp if topk_from == "teacher" else student_logp
    ids = source.detach().topk(int(top_k), dim=-1).indices
    eps = torch.finfo(student_logp.dtype).eps

    def with_tail(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = logp.gather(-1, ids)
        log_mass = torch.logsumexp(top, dim=-1, keepdim=True)
        # log(1 - exp(x)) for x < 0; clamping *before* the log keeps value and gradient finite.
        tail = torch.log(-torch.expm1(log_mass.clamp(max=-eps)))
        return torch.cat([top, tail], dim=-1), log_mass.squeeze(-1).detach().exp()

    s_K1, s_mass = with_tail(student_logp)
    t_K1, t_mass = with_tail(teacher_logp)
    return s_K1, t_K1, s_mass, t_mass


def per_token_divergence_BT(
    student_logits_BTV: torch.Tensor,
    teacher_logits_BTV: torch.Tensor,
    spec: DivergenceSpec = DivergenceSpec(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Straightforward (autograd) per-position divergence ``[..., V] -> [...]`` (float32 or float64).

    The teacher is detached. Returns ``(divergence, extras)``; for ``support="top_k"`` extras holds the
    detached per-position captured masses ``topk_mass_student`` / ``topk_mass_teacher``.
    """
    if student_logits_BTV.shape != teacher_logits_BTV.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got "
            f"{tuple(student_logits_BTV.shape)} vs {tuple(teacher_logits_BTV.shape)}"
        )
    student_logp = log_softmax_fp32(student_logits_BTV)
    with torch.no_grad():
        teacher_logp = log_softmax_fp32(teacher_logits_BTV.detach()).to(student_logp.dtype)
    extras: dict[str, torch.Tensor] = {}
    if spec.support == "top_k":
        student_logp, teacher_logp, s_mass, t_mass = topk_with_tail_logprobs(
            student_logp, teacher_logp, spec.top_k, spec.topk_from
        )
        extras = {"topk_mass_student": s_mass, "topk_mass_teacher": t_mass}
    return divergence_from_logprobs(student_logp, teacher_logp, spec.divergence, spec.jsd_beta), extras


# ----------------------------------------------------------------------------------------------------------
# Masks and reduction
# ----------------------------------------------------------------------------------------------------------
def build_loss_mask(completion_mask_BT: torch.Tensor, skip_first_tokens: int = 3) -> torch.Tensor:
    """Bool loss mask: real completion tokens minus the first ``skip_first_tokens`` real ones of each row.

    Counting starts at each row's first real token, so left- and right-padded rows behave the same.
    """
    if skip_first_tokens < 0:
        raise ValueError(f"skip_first_tokens must be >= 0, got {skip_first_tokens}")
    real_BT = completion_mask_BT.bool()
    rank_BT = real_BT.long().cumsum(dim=-1)  # 1 for the first real token of the row, 2 for the next, ...
    return real_BT & (rank_BT > int(skip_first_tokens))


def reasoning_mask_BT(
    completion_ids_BT: torch.Tensor,
    open_id: int,
    close_id: int,
    starts_inside_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool ``[B, T]``: True on the tokens of reasoning blocks (``open_id`` ... ``close_id``, both markers
    included; Qwen3's ``<think>`` ... ``</think>``), False elsewhere.

    A token is inside a block when the last ``open_id`` at or before it comes after the last ``close_id``
    strictly before it. ``starts_inside_B`` marks rows whose prompt already opened a block (templates that
    pre-fill ``<think>`` in the generation prompt): they are inside from position 0 until the first close.
    Blocks do not nest; a stray ``close_id`` outside a block is not masked; an unclosed block runs to the end.
    """
    B, T = completion_ids_BT.shape
    pos_BT = torch.arange(1, T + 1, device=completion_ids_BT.device).expand(B, T)
    base_B1 = torch.full((B, 1), -1, dtype=pos_BT.dtype, device=pos_BT.device)
    if starts_inside_B is not None:  # a virtual open marker at position 0
        base_B1 = torch.where(starts_inside_B.bool().reshape(B, 1).to(pos_BT.device), 0, base_B1)
    last_open_BT = torch.where(completion_ids_BT == open_id, pos_BT, base_B1).cummax(-1).values
    last_close_BT = torch.where(completion_ids_BT == close_id, pos_BT, -1).cummax(-1).values
    close_before_BT = torch.cat([torch.full_like(last_close_BT[:, :1], -1), last_close_BT[:, :-1]], -1)
    return last_open_BT > close_before_BT


def _sequence_token_weights_BT(
    loss_mask_BT: torch.Tensor,
    num_sequences_total: int | None,
    importance_weights_B: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """w_bt = mask_bt · iw_b / (max(Σ_t mask_bt, 1) · num_sequences_total), detached."""
    mask_BT = loss_mask_BT.to(dtype)
    n_total = loss_mask_BT.shape[0] if num_sequences_total is None else int(num_sequences_total)
    if n_total <= 0:
        raise ValueError(f"num_sequences_total must be positive, got {num_sequences_total}")
    per_seq_B = 1.0 / (mask_BT.sum(-1).clamp(min=1.0) * n_total)
    if importance_weights_B is not None:
        per_seq_B = per_seq_B * importance_weights_B.detach().to(dtype).reshape(-1)
    return mask_BT * per_seq_B[:, None]


def reduce_per_sequence_mean(
    per_token_BT: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    num_sequences_total: int | None = None,
) -> torch.Tensor:
    """Σ_b (Σ_t mask·ℓ / max(Σ_t mask, 1)) / num_sequences_total  (defaults to ``B``).

    Equal to "token mean per sequence, then mean over sequences" when ``num_sequences_total == B``. With the
    optimizer step's total number of sequences, summing this over micro-batches gives exactly the big-batch
    value and gradient. Values at masked-out positions never reach the result (not even NaN/inf); empty rows
    contribute 0 and the result stays attached to ``per_token_BT``'s graph.
    """
    mask_BT = loss_mask_BT.bool()
    weights_BT = _sequence_token_weights_BT(mask_BT, num_sequences_total, None, per_token_BT.dtype)
    return (torch.where(mask_BT, per_token_BT, 0.0) * weights_BT).sum()


@torch.no_grad()
def token_logprobs_BT(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """``log_softmax(logits)[ids]`` per position, detached float32 ``[B, T]``, computed ``chunk_size`` positions
    at a time as the token's logit minus the position's log-sum-exp: no ``[B, T, V]`` float32 copy (or
    log-softmax) is made, only one ``[chunk_size, V]`` float32 chunk at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, V = logits_BTV.shape
    flat_NV, ids_N = logits_BTV.detach().reshape(B * T, V), ids_BT.reshape(B * T)
    out_N = torch.empty(B * T, dtype=torch.float32, device=logits_BTV.device)
    with torch.no_grad():
        for s in range(0, B * T, chunk_size):
            x_nV = flat_NV[s:s + chunk_size].float()
            out_N[s:s + chunk_size] = x_nV.gather(-1, ids_N[s:s + chunk_size, None]).squeeze(-1) - x_nV.logsumexp(-1)
    return out_N.view(B, T)


def sequence_importance_weights(
    train_logprobs_BT: torch.Tensor,
    sampler_logprobs_BT: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    cap: float = 2.0,
) -> torch.Tensor:
    """Truncated importance weight per sequence, detached, float32 ``[B]``.

    ρ_bt = min(exp(train_logprob − sampler_logprob), cap) on the sampled tokens; w_b = mean of ρ_bt over the
    row's loss tokens (1.0 for a row with no loss token). ``train_logprobs`` are the trainer's log-probs of
    the sampled tokens before the update, ``sampler_logprobs`` those reported by the sampler (e.g. vLLM).
    """
    mask_BT = loss_mask_BT.bool()
    log_ratio_BT = train_logprobs_BT.detach().float() - sampler_logprobs_BT.detach().float()
    log_ratio_BT = torch.where(mask_BT, log_ratio_BT, 0.0).clamp(max=math.log(cap))  # min(exp(.), cap)
    ratio_BT = torch.where(mask_BT, log_ratio_BT.exp(), 0.0)
    count_B = mask_BT.float().sum(-1)
    return torch.where(count_B > 0, ratio_BT.sum(-1) / count_B.clamp(min=1.0), 1.0)


# ----------------------------------------------------------------------------------------------------------
# Memory-lean chunked full-vocabulary divergence
# ----------------------------------------------------------------------------------------------------------
def _divergence_and_grad_chunk(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    divergence: str,
    jsd_beta: float,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Value ``[n]`` and analytic ∂value/∂student_logits ``[n, V]`` from log-probs ``[n, V]``, which it
    overwrites: the two KLs work in place, so a chunk holds three ``[n, V]`` buffers (four for reverse KL), not
    seven.

    With G = ∂ℓ/∂log p (log p treated as free), ∂ℓ/∂z = G − p·ΣG for z the student logits. This gives
    forward KL: p − q;  reverse KL: p ⊙ (log p − log q − KL(p‖q));
    JSD: β p ⊙ (log p − log m − KL(p‖m))  (since ∂JSD/∂p_v = β (log p_v − log m_v)).
    """
    if divergence == "forward_kl":
        q = teacher_logp.exp()
        value = teacher_logp.sub_(student_logp).mul_(q).sum(-1)  # Σ q (log q − log p)
        grad = student_logp.exp_().sub_(q) if need_grad else None  # p − q
    elif divergence == "reverse_kl":
        p = student_logp.exp()
        diff = student_logp.sub_(teacher_logp)  # log p − log q
        value = (p * diff).sum(-1)
        grad = p.mul_(diff.sub_(value[:, None])) if need_grad else None
    else:
        beta = jsd_beta
        p, q = student_logp.exp(), teacher_logp.exp()
        log_m = _jsd_log_mixture(student_logp, teacher_logp, beta)
        diff_p = student_logp - log_m
        kl_pm = (p * diff_p).sum(-1)
        kl_qm = (q * (teacher_logp - log_m)).sum(-1)
        value = beta * kl_pm + (1.0 - beta) * kl_qm
        grad = beta * p * (diff_p - kl_pm[:, None]) if need_grad else None
    return value, grad


def _rows_kept(x_nV: torch.Tensor, keep_n1: torch.Tensor | None) -> torch.Tensor:
    """Rows outside the loss zeroed (a copy), so they are never computed on: non-finite logits there are fine."""
    return x_nV if keep_n1 is None else torch.where(keep_n1, x_nV, 0.0)


class _ChunkedDivergenceFn(torch.autograd.Function):
    """Per-row divergence of ``[N, V]`` student/teacher logits, chunked over rows; see module docstring."""

    @staticmethod
    def forward(ctx, student_NV, teacher_NV, divergence, jsd_beta, chunk_size, row_mask_N=None,  # type: ignore[override]
                inplace_backward=True):
        N, _ = student_NV.shape
        cdt = _compute_dtype(student_NV)
        need_grad = bool(ctx.needs_input_grad[0])
        out_N = torch.empty(N, dtype=cdt, device=student_NV.device)
        dvalue_NV = torch.empty_like(student_NV, memory_format=torch.contiguous_format) if need_grad else None
        for start in range(0, N, chunk_size):
            end = min(start + chunk_size, N)
            keep = None if row_mask_N is None else row_mask_N[start:end, None]
            s_logp = torch.log_softmax(_rows_kept(student_NV[start:end].to(cdt), keep), dim=-1)
            t_logp = torch.log_softmax(_rows_kept(teacher_NV[start:end].to(cdt), keep), dim=-1)
            value, grad = _divergence_and_grad_chunk(s_logp, t_logp, divergence, jsd_beta, need_grad)
            if row_mask_N is not None:
                value = torch.where(row_mask_N[start:end], value, 0.0)
                if need_grad:
                    grad.masked_fill_(~row_mask_N[start:end, None], 0.0)
            out_N[start:end] = value
            if need_grad:
                dvalue_NV[start:end] = grad.to(dvalue_NV.dtype)
            del s_logp, t_logp, value, grad
        # Kept as a plain attribute, not save_for_backward: backward scales it in place and hands it back as the
        # input gradient, so no second [N, V] buffer is ever allocated.
        ctx.dvalue_NV = dvalue_NV
        ctx.chunk_size = chunk_size
        ctx.inplace_backward = inplace_backward
        return out_N

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out_N):  # type: ignore[override]
        dvalue_NV = ctx.dvalue_NV
        if dvalue_NV is None:
            raise RuntimeError("chunked divergence: backward called twice on one graph; the per-row gradient "
                               "buffer was reused in place as the input gradient (pass inplace_backward=False "
                               "to chunked_divergence_BT for retain_graph / gradcheck)")
        if ctx.inplace_backward:
            grad_NV, ctx.dvalue_NV = dvalue_NV, None
        else:
            grad_NV = torch.empty_like(dvalue_NV)
        cdt = _compute_dtype(dvalue_NV)
        for start in range(0, dvalue_NV.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, dvalue_NV.shape[0])
            chunk = dvalue_NV[start:end].to(cdt) * grad_out_N[start:end, None].to(cdt)
            grad_NV[start:end] = chunk.to(grad_NV.dtype)
        return grad_NV, None, None, None, None, None, None


def chunked_divergence_BT(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    spec: DivergenceSpec = DivergenceSpec(),
    *,
    chunk_size: int = 1024,
    row_mask: torch.Tensor | None = None,
    inplace_backward: bool = True,
) -> torch.Tensor:
    """Memory-lean full-vocabulary per-position divergence: ``[..., V] -> [...]`` (float32/float64).

    Intended input: the flattened loss positions ``[N, V]`` (e.g. ``logits_BTV[loss_mask_BT]``), though any
    leading shape works. ``chunk_size`` = positions per chunk. Value and gradient equal
    :func:`per_token_divergence_BT` with ``support="full"``; the teacher gets no gradient. Only one ``[N, V]``
    tensor in the student's dtype is kept for backward (the analytic per-row gradient), and backward scales it in
    place into the input gradient. ``inplace_backward=False`` allocates a fresh gradient instead, which is what
    ``retain_graph=True`` (several backward passes through one graph, e.g. ``gradcheck``) needs.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got "
            f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    if spec.support != "full":
        raise ValueError("the chunked divergence is over the full vocabulary; support='top_k' is not chunked")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead_shape = student_logits.shape[:-1]
    V = student_logits.shape[-1]
    out_N = _ChunkedDivergenceFn.apply(
        student_logits.reshape(-1, V),
        teacher_logits.detach().reshape(-1, V),
        spec.divergence,
        float(spec.jsd_beta),
        int(chunk_size),
        None if row_mask is None else row_mask.reshape(-1).bool(),
        bool(inplace_backward),
    )
    return out_N.reshape(lead_shape)


# ----------------------------------------------------------------------------------------------------------
# Main entry points
# ----------------------------------------------------------------------------------------------------------
def distillation_loss(
    student_logits_BTV: torch.Tensor,
    teacher_logits_BTV: torch.Tensor,
    completion_mask_BT: torch.Tensor,
    spec: DivergenceSpec = DivergenceSpec(),
    *,
    skip_first_tokens: int = 3,
    num_sequences_total: int | None = None,
    importance_weights_B: torch.Tensor | None = None,
    chunk_size: int | None = None,
    keep_mask_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SDFT loss: per-token ``divergence`` between student and (detached) teacher, per-sequence-mean reduced.

    Logits are at the same ``B × T`` completion positions (position t predicts completion token t).
    Loss mask = :func:`build_loss_mask` (``completion_mask_BT``, ``skip_first_tokens``), AND ``keep_mask_BT``
    when given (e.g. ``~reasoning_mask_BT(...)`` to drop reasoning blocks; the first-token skip still counts
    from the start of the completion). Reduction as in
    :func:`reduce_per_sequence_mean`, each sequence's term multiplied by the detached
    ``importance_weights_B`` when given. ``chunk_size`` switches the full-vocabulary computation to
    :func:`chunked_divergence_BT` over the loss positions only (same value and gradient, less memory);
    it is not supported with ``support="top_k"`` (raises ``ValueError``).

    Metrics (python floats): ``<divergence>`` = mean per-token divergence over all loss tokens of this batch
    (unweighted), ``num_loss_tokens``, ``loss``; with top-k also ``topk_mass_student`` / ``topk_mass_teacher``
    (mean captured probability of the selected ids); with importance weights ``importance_weight_mean``.
    """
    if student_logits_BTV.dim() != 3:
        raise ValueError(f"expected [B, T, V] logits, got shape {tuple(student_logits_BTV.shape)}")
    if student_logits_BTV.shape != teacher_logits_BTV.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got "
            f"{tuple(student_logits_BTV.shape)} vs {tuple(teacher_logits_BTV.shape)}"
        )
    if completion_mask_BT.shape != student_logits_BTV.shape[:2]:
        raise ValueError(
            f"completion_mask_BT shape {tuple(completion_mask_BT.shape)} does not match logits "
            f"{tuple(student_logits_BTV.shape[:2])}"
        )
    if chunk_size is not None and spec.support != "full":
        raise ValueError("chunk_size is only implemented for support='full'; use chunk_size=None with top_k")

    loss_mask_BT = build_loss_mask(completion_mask_BT, skip_first_tokens)
    if keep_mask_BT is not None:
        loss_mask_BT = loss_mask_BT & keep_mask_BT.bool().to(loss_mask_BT.device)
    cdt = _compute_dtype(student_logits_BTV)
    weights_BT = _sequence_token_weights_BT(loss_mask_BT, num_sequences_total, importance_weights_B, cdt)
    extras: dict[str, torch.Tensor] = {}

    if chunk_size is not None:
        # All B*T rows in place (a boolean index would copy both [N, V] tensors and scatter the gradient back);
        # rows outside the loss mask are skipped inside the chunk loop and get value 0 and gradient 0.
        per_token_BT = chunked_divergence_BT(
            student_logits_BTV,
            teacher_logits_BTV.detach(),
            spec,
            chunk_size=chunk_size,
            row_mask=loss_mask_BT,
        )
        loss = (per_token_BT * weights_BT).sum()
        per_token_sum = per_token_BT.detach().sum()
    else:
        per_token_BT, extras = per_token_divergence_BT(student_logits_BTV, teacher_logits_BTV, spec)
        masked_BT = torch.where(loss_mask_BT, per_token_BT, 0.0)
        loss = (masked_BT * weights_BT).sum()
        per_token_sum = masked_BT.detach().sum()

    n_tokens = int(loss_mask_BT.sum().item())
    denom = max(n_tokens, 1)
    metrics: dict[str, float] = {
        spec.divergence: float(per_token_sum.item()) / denom,
        "num_loss_tokens": float(n_tokens),
        "loss": float(loss.detach().item()),
    }
    for name, value_BT in extras.items():
        metrics[name] = float(torch.where(loss_mask_BT, value_BT, 0.0).sum().item()) / denom
    if importance_weights_B is not None:
        metrics["importance_weight_mean"] = float(importance_weights_B.detach().float().mean().item())
    return loss, metrics


def _token_nll_and_logp_BT(logits_BTV: torch.Tensor, target_ids_BT: torch.Tensor, mask_BT: torch.Tensor):
    if logits_BTV.shape[:2] != target_ids_BT.shape or target_ids_BT.shape != mask_BT.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits_BTV.shape)}, targets {tuple(target_ids_BT.shape)}, "
            f"mask {tuple(mask_BT.shape)}"
        )
    B, T, V = logits_BTV.shape
    mask_BT = mask_BT.bool()
    safe_targets_BT = torch.where(mask_BT, target_ids_BT, 0).long()  # -100 / pad ids at masked positions
    nll_BT = F.cross_entropy(
        logits_BTV.to(_compute_dtype(logits_BTV)).reshape(B * T, V),
        safe_targets_BT.reshape(B * T),
        reduction="none",
    ).reshape(B, T)
    return nll_BT, mask_BT


def sft_loss(
    logits_BTV: torch.Tensor,
    target_ids_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_sequences_total: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token cross-entropy (NLL of ``target_ids_BT``) with the per-sequence-mean reduction.

    ``logits_BTV[:, t]`` must predict ``target_ids_BT[:, t]`` (shift done by the caller); ``mask_BT`` is the
    loss mask (targets at masked positions are ignored, may be -100). Metrics: ``sft_nll`` (token mean),
    ``num_loss_tokens``, ``loss``.
    """
    nll_BT, mask_BT = _token_nll_and_logp_BT(logits_BTV, target_ids_BT, mask_BT)
    loss = reduce_per_sequence_mean(nll_BT, mask_BT, num_sequences_total)
    n_tokens = int(mask_BT.sum().item())
    nll_sum = float(torch.where(mask_BT, nll_BT.detach(), 0.0).sum().item())
    return loss, {
        "sft_nll": nll_sum / max(n_tokens, 1),
        "num_loss_tokens": float(n_tokens),
        "loss": float(loss.detach().item()),
    }


def dft_loss(
    logits_BTV: torch.Tensor,
    target_ids_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_sequences_total: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dynamic Fine-Tuning (arXiv 2508.05629): per-token CE × the token's own *detached* probability.

    ℓ_t = −sg(p(y_t)) · log p(y_t), reduced like :func:`sft_loss`. Metrics: ``dft_loss_token`` (token mean of
    ℓ), ``sft_nll``, ``mean_target_prob``, ``num_loss_tokens``, ``loss``.
    """
    nll_BT, mask_BT = _token_nll_and_logp_BT(logits_BTV, target_ids_BT, mask_BT)
    prob_BT = torch.exp(-nll_BT.detach())
    per_token_BT = nll_BT * prob_BT
    loss = reduce_per_sequence_mean(per_token_BT, mask_BT, num_sequences_total)
    n_tokens = int(mask_BT.sum().item())
    denom = max(n_tokens, 1)

    def masked_mean(x_BT: torch.Tensor) -> float:
        return float(torch.where(mask_BT, x_BT.detach(), 0.0).sum().item()) / denom

    return loss, {
        "dft_loss_token": masked_mean(per_token_BT),
        "sft_nll": masked_mean(nll_BT),
        "mean_target_prob": masked_mean(prob_BT),
        "num_loss_tokens": float(n_tokens),
        "loss": float(loss.detach().item()),
    }
