"""Tests for selfdistill.losses: directions, gradients, top-k tail, masks, reduction, chunking, memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.losses import (
    DivergenceSpec,
    build_loss_mask,
    chunked_divergence_BT,
    dft_loss,
    distillation_loss,
    per_token_divergence_BT,
    reduce_per_sequence_mean,
    sequence_importance_weights,
    sft_loss,
    topk_with_tail_logprobs,
)

DIVS = ["forward_kl", "reverse_kl", "jsd"]


def _logits(*shape, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _explicit_divergence(s_logits, t_logits, divergence, beta=0.5):
    """Reference from probabilities (softmax then torch.log), float64, explicit sums."""
    p = torch.softmax(s_logits.double(), -1)
    q = torch.softmax(t_logits.double(), -1)
    if divergence == "forward_kl":
        return (q * (torch.log(q) - torch.log(p))).sum(-1)
    if divergence == "reverse_kl":
        return (p * (torch.log(p) - torch.log(q))).sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * (p * torch.log(p / m)).sum(-1) + (1 - beta) * (q * torch.log(q / m)).sum(-1)


def _masked_rows():
    # row 0: right padded (5 real), row 1: left padded (4 real), row 2: full (8), row 3: 2 real (empty after skip 3)
    return torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 0, 0, 0, 0, 0, 0],
        ]
    )


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("divergence", DIVS)
def test_divergence_matches_explicit_float64_definition(divergence):
    s, t = _logits(3, 5, 11, seed=1), _logits(3, 5, 11, seed=2)
    beta = 0.3  # asymmetric: pins which side gets which weight
    got, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence=divergence, jsd_beta=beta))
    ref = _explicit_divergence(s, t, divergence, beta)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_kl_direction_pinned_against_f_kl_div():
    s, t = _logits(4, 6, 13, seed=3), _logits(4, 6, 13, seed=4)
    log_p, log_q = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    fwd, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence="forward_kl"))
    rev, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence="reverse_kl"))
    # F.kl_div(input, target) = KL(target || input): forward KL(q||p) = kl_div(log p, log q)
    torch.testing.assert_close(fwd, F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1))
    torch.testing.assert_close(rev, F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1))
    assert not torch.allclose(fwd, rev)  # the two directions really differ on this data


def test_jsd_beta_is_student_weight_and_matches_trl_convention_with_one_minus_beta():
    s, t = _logits(2, 3, 9, seed=5), _logits(2, 3, 9, seed=6)
    beta = 0.2
    got, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence="jsd", jsd_beta=beta))
    # TRL generalized_jsd_loss(beta=b): mixture = (1-b) p + b q, jsd = b KL(q||m) + (1-b) KL(p||m)
    b = 1 - beta
    lp, lq = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    log_m = torch.logsumexp(torch.stack([lp + torch.log(torch.tensor(1 - b)), lq + torch.log(torch.tensor(b))]), 0)
    trl = b * F.kl_div(log_m, lq, log_target=True, reduction="none").sum(-1) + (1 - b) * F.kl_div(
        log_m, lp, log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(got, trl)
    other, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence="jsd", jsd_beta=1 - beta))
    assert not torch.allclose(got, other)


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("support", ["full", "top_k"])
def test_zero_for_identical_positive_otherwise(divergence, support):
    s = _logits(2, 4, 17, seed=7)
    same, _ = per_token_divergence_BT(s, s.clone(), DivergenceSpec(divergence=divergence, support=support, top_k=5))
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-12, rtol=0)
    spec = DivergenceSpec(divergence=divergence, support=support, top_k=5)
    diff, _ = per_token_divergence_BT(s, _logits(2, 4, 17, seed=8), spec)
    assert (diff > 1e-6).all()


# ------------------------------------------------------------------------------------------------ gradients
def test_forward_kl_gradient_is_p_minus_q_per_token():
    s = _logits(3, 4, 10, seed=9).requires_grad_(True)
    t = _logits(3, 4, 10, seed=10)
    w = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    per_tok, _ = per_token_divergence_BT(s, t, DivergenceSpec(divergence="forward_kl"))
    (per_tok * w).sum().backward()
    expected = w[..., None] * (torch.softmax(s.detach(), -1) - torch.softmax(t, -1))
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_teacher_gets_no_gradient():
    s = _logits(2, 3, 7, seed=11).requires_grad_(True)
    t = _logits(2, 3, 7, seed=12).requires_grad_(True)
    loss, _ = distillation_loss(s, t, torch.ones(2, 3), skip_first_tokens=0)
    loss.backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("divergence,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.3)])
def test_chunked_function_passes_gradcheck_float64(divergence, beta):
    s = _logits(5, 7, seed=13).requires_grad_(True)
    t = _logits(5, 7, seed=14)
    spec = DivergenceSpec(divergence=divergence, jsd_beta=beta)
    fn = lambda x: chunked_divergence_BT(x, t, spec, chunk_size=2,  # noqa: E731
                                         inplace_backward=False)  # gradcheck runs backward many times per graph
    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("divergence", DIVS)
def test_chunked_inplace_backward_equals_copying_backward_and_refuses_a_second_pass(divergence):
    t = _logits(9, 11, seed=17)
    w = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for inplace in (True, False):
        s = _logits(9, 11, seed=18).requires_grad_(True)
        spec = DivergenceSpec(divergence=divergence)
        (chunked_divergence_BT(s, t, spec, chunk_size=4, inplace_backward=inplace) * w).sum().backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    s = _logits(9, 11, seed=18).requires_grad_(True)
    out = chunked_divergence_BT(s, t, DivergenceSpec(divergence=divergence), chunk_size=4).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        out.backward()


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_equals_straightforward_value_and_gradient(divergence, dtype, tol):
    s0, t = _logits(13, 50, dtype=dtype, seed=15), _logits(13, 50, dtype=dtype, seed=16)
    w = torch.rand(13, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s_ref = s0.clone().requires_grad_(True)
    ref, _ = per_token_divergence_BT(s_ref, t, DivergenceSpec(divergence=divergence, jsd_beta=0.4))
    (ref * w.to(ref.dtype)).sum().backward()
    s_chk = s0.clone().requires_grad_(True)
    got = chunked_divergence_BT(s_chk, t, DivergenceSpec(divergence=divergence, jsd_beta=0.4), chunk_size=4)
    (got * w.to(got.dtype)).sum().backward()
    torch.testing.assert_close(got, ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(s_chk.grad, s_ref.grad, rtol=tol, atol=tol)
    # and against the float64 reference when run in float32
    ref64 = _explicit_divergence(s0, t, divergence, 0.4)
    torch.testing.assert_close(got.double(), ref64, rtol=max(tol, 1e-5), atol=max(tol, 1e-5))


@pytest.mark.parametrize("divergence", DIVS)
def test_distillation_loss_chunked_equals_straightforward(divergence):
    B, T, V = 4, 8, 19
    s0, t = _logits(B, T, V, seed=17), _logits(B, T, V, seed=18)
    mask = _masked_rows()
    iw = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    out = {}
    for chunk in (None, 3):
        s = s0.clone().requires_grad_(True)
        loss, metrics = distillation_loss(s, t, mask, DivergenceSpec(divergence=divergence, jsd_beta=0.7),
                                          chunk_size=chunk, importance_weights_B=iw)
        loss.backward()
        out[chunk] = (loss.detach(), s.grad, metrics)
    torch.testing.assert_close(out[3][0], out[None][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[3][1], out[None][1], rtol=1e-10, atol=1e-12)
    assert out[3][2][divergence] == pytest.approx(out[None][2][divergence], rel=1e-10)


def test_chunked_with_bfloat16_inputs_close_to_float32_reference():
    s0 = _logits(16, 64, dtype=torch.bfloat16, seed=19)
    t = _logits(16, 64, dtype=torch.bfloat16, seed=20)
    s = s0.clone().requires_grad_(True)
    got = chunked_divergence_BT(s, t, chunk_size=5)
    got.sum().backward()
    assert got.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    expected_grad = torch.softmax(s0.float(), -1) - torch.softmax(t.float(), -1)
    ref = _explicit_divergence(s0.float(), t.float(), "forward_kl")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.grad.float(), expected_grad, rtol=2e-2, atol=2e-3)


def test_top_k_with_chunk_size_raises():
    s, t = _logits(2, 4, 10), _logits(2, 4, 10, seed=1)
    with pytest.raises(ValueError, match="chunk_size"):
        distillation_loss(s, t, torch.ones(2, 4), DivergenceSpec(support="top_k", top_k=3), chunk_size=2)


# ------------------------------------------------------------------------------------------------ top-k
@pytest.mark.parametrize("topk_from", ["teacher", "student"])
def test_topk_tail_bins_sum_to_one_and_select_the_right_side(topk_from):
    s, t = _logits(3, 5, 30, seed=21), _logits(3, 5, 30, seed=22)
    lp, lq = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    k = 6
    s_k1, t_k1, s_mass, t_mass = topk_with_tail_logprobs(lp, lq, k, topk_from)
    assert s_k1.shape == (3, 5, k + 1) and t_k1.shape == (3, 5, k + 1)
    torch.testing.assert_close(s_k1.exp().sum(-1), torch.ones(3, 5, dtype=torch.float64))
    torch.testing.assert_close(t_k1.exp().sum(-1), torch.ones(3, 5, dtype=torch.float64))
    src = lq if topk_from == "teacher" else lp
    top_src = src.topk(k, -1).values
    own = t_k1 if topk_from == "teacher" else s_k1
    torch.testing.assert_close(own[..., :k], top_src)  # the chosen side's own top-k, sorted
    torch.testing.assert_close((t_mass if topk_from == "teacher" else s_mass), top_src.exp().sum(-1))
    # the other side is gathered at the same ids
    ids = src.topk(k, -1).indices
    other, other_k1 = (lp, s_k1) if topk_from == "teacher" else (lq, t_k1)
    torch.testing.assert_close(other_k1[..., :k], other.gather(-1, ids))
    torch.testing.assert_close(other_k1[..., k], torch.log1p(-other.gather(-1, ids).exp().sum(-1)))


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("topk_from", ["teacher", "student"])
def test_top_k_equal_vocab_reproduces_full(divergence, topk_from):
    V = 12
    s0, t = _logits(2, 6, V, seed=23), _logits(2, 6, V, seed=24)
    mask = torch.ones(2, 6)
    grads = {}
    vals = {}
    for support in ("full", "top_k"):
        s = s0.clone().requires_grad_(True)
        spec = DivergenceSpec(divergence=divergence, support=support, top_k=V, topk_from=topk_from)
        loss, _ = distillation_loss(s, t, mask, spec)
        loss.backward()
        vals[support], grads[support] = loss.detach(), s.grad
    torch.testing.assert_close(vals["top_k"], vals["full"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads["top_k"], grads["full"], rtol=1e-9, atol=1e-12)


def test_top_k_explicit_value_and_metrics():
    s, t = _logits(2, 5, 20, seed=25), _logits(2, 5, 20, seed=26)
    k = 4
    loss, metrics = distillation_loss(s, t, torch.ones(2, 5), DivergenceSpec(support="top_k", top_k=k),
                                      skip_first_tokens=0)
    p, q = torch.softmax(s, -1), torch.softmax(t, -1)
    ids = q.topk(k, -1).indices
    pk, qk = p.gather(-1, ids), q.gather(-1, ids)
    P = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    Q = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    ref = (Q * torch.log(Q / P)).sum(-1).mean()
    torch.testing.assert_close(loss, ref)
    assert metrics["forward_kl"] == pytest.approx(ref.item(), rel=1e-9)
    assert metrics["topk_mass_teacher"] == pytest.approx(qk.sum(-1).mean().item(), rel=1e-9)
    assert metrics["topk_mass_student"] == pytest.approx(pk.sum(-1).mean().item(), rel=1e-9)
    assert 0 < metrics["topk_mass_student"] < metrics["topk_mass_teacher"] < 1


# ------------------------------------------------------------------------------------------------ masks
def test_build_loss_mask_skips_first_real_tokens_left_and_right_padding():
    mask = _masked_rows()
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(build_loss_mask(mask, 3), expected)
    assert torch.equal(build_loss_mask(mask, 0), mask.bool())
    assert torch.equal(build_loss_mask(mask.float(), 1).sum(-1), torch.tensor([4, 3, 7, 1]))


@pytest.mark.parametrize("support,chunk_size", [("full", None), ("full", 4), ("top_k", None)])
def test_masked_positions_do_not_affect_loss(support, chunk_size):
    B, T, V = 4, 8, 16
    s0, t0 = _logits(B, T, V, seed=27), _logits(B, T, V, seed=28)
    mask = _masked_rows()
    loss_mask = build_loss_mask(mask, 3)
    s1, t1 = s0.clone(), t0.clone()
    s1[~loss_mask] = _logits(int((~loss_mask).sum()), V, seed=29) * 10
    t1[~loss_mask] = _logits(int((~loss_mask).sum()), V, seed=30) * 10
    results = []
    for s, t in ((s0, t0), (s1, t1)):
        s = s.clone().requires_grad_(True)
        loss, _ = distillation_loss(s, t, mask, DivergenceSpec(support=support, top_k=5), chunk_size=chunk_size)
        loss.backward()
        results.append((loss.detach(), s.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-14)
    assert (results[0][1][~loss_mask] == 0).all()
    assert (results[0][1][loss_mask].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_loss_mask_gives_connected_zero(chunk_size):
    s = _logits(2, 4, 6).requires_grad_(True)
    t = _logits(2, 4, 6, seed=1)
    loss, metrics = distillation_loss(s, t, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]]), chunk_size=chunk_size)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert metrics["num_loss_tokens"] == 0.0 and metrics["forward_kl"] == 0.0


# ------------------------------------------------------------------------------------------------ reduction
def test_reduction_is_per_sequence_token_mean_then_batch_mean():
    B, T, V = 4, 8, 9
    s, t = _logits(B, T, V, seed=31), _logits(B, T, V, seed=32)
    mask = _masked_rows()
    loss, metrics = distillation_loss(s, t, mask, DivergenceSpec(divergence="reverse_kl"), skip_first_tokens=1)
    per_tok = _explicit_divergence(s, t, "reverse_kl")
    lm = build_loss_mask(mask, 1)
    seq_means = [per_tok[b][lm[b]].mean() for b in range(B)]
    torch.testing.assert_close(loss, torch.stack(seq_means).mean())
    assert metrics["reverse_kl"] == pytest.approx(per_tok[lm].mean().item(), rel=1e-10)
    assert metrics["num_loss_tokens"] == float(lm.sum())
    assert isinstance(metrics["reverse_kl"], float)
    # the sum form with a larger total, empty rows contribute 0
    per_tok_nan = per_tok.clone()
    per_tok_nan[~lm] = float("nan")  # masked values never leak, not even NaN
    sum_form = reduce_per_sequence_mean(per_tok_nan, lm, num_sequences_total=10)
    torch.testing.assert_close(sum_form, torch.stack(seq_means).sum() / 10)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_gradient_accumulation_invariance(chunk_size, divergence):
    torch.manual_seed(0)
    B, T, H, V = 8, 7, 5, 13
    hidden = torch.randn(B, T, H, dtype=torch.float64)
    teacher = _logits(B, T, V, seed=33)
    lengths = torch.tensor([7, 3, 5, 6, 2, 7, 4, 1])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    iw = torch.rand(B, dtype=torch.float64) + 0.5
    w0 = torch.randn(H, V, dtype=torch.float64)

    w_big = w0.clone().requires_grad_(True)
    spec, kwargs = DivergenceSpec(divergence=divergence), dict(skip_first_tokens=2, chunk_size=chunk_size)
    big, _ = distillation_loss(hidden @ w_big, teacher, mask, spec, importance_weights_B=iw, **kwargs)
    big.backward()

    w_acc = w0.clone().requires_grad_(True)
    total = 0.0
    for i in range(0, B, 2):
        sl = slice(i, i + 2)
        part, _ = distillation_loss(
            hidden[sl] @ w_acc, teacher[sl], mask[sl], spec, num_sequences_total=B, importance_weights_B=iw[sl], **kwargs
        )
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, big.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w_acc.grad, w_big.grad, rtol=1e-10, atol=1e-13)
    # without num_sequences_total each micro-batch averages over its own 2 rows: 4x too large
    part, _ = distillation_loss(hidden[:2] @ w0, teacher[:2], mask[:2], spec, importance_weights_B=iw[:2], **kwargs)
    part8, _ = distillation_loss(
        hidden[:2] @ w0, teacher[:2], mask[:2], spec, num_sequences_total=8, importance_weights_B=iw[:2], **kwargs
    )
    torch.testing.assert_close(part, 4 * part8)


# ------------------------------------------------------------------------------------------------ memory
def _saved_tensor_bytes(fn):
    seen, total = set(), [0]

    def pack(x):
        key = (x.untyped_storage().data_ptr(), x.dtype, tuple(x.shape))
        if key not in seen:
            seen.add(key)
            total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, _ = fn()
    # The chunked Function keeps its [N, V] gradient buffer as a ctx attribute (reused in place by backward),
    # which saved_tensors_hooks does not see: count it by walking the graph.
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        held = getattr(node, "dvalue_NV", None)
        if isinstance(held, torch.Tensor):
            total[0] += held.numel() * held.element_size()
        stack += [n for n, _ in node.next_functions]
    return total[0], loss


@pytest.mark.parametrize("divergence", DIVS)
def test_chunked_path_saves_less_than_half_of_naive(divergence):
    B, T, V = 4, 64, 4096
    s = _logits(B, T, V, dtype=torch.bfloat16, seed=34).requires_grad_(True)
    t = _logits(B, T, V, dtype=torch.bfloat16, seed=35)
    mask = torch.ones(B, T)
    spec = DivergenceSpec(divergence=divergence)
    naive, loss_n = _saved_tensor_bytes(lambda: distillation_loss(s, t, mask, spec, skip_first_tokens=0))
    chunked, loss_c = _saved_tensor_bytes(lambda: distillation_loss(s, t, mask, spec, skip_first_tokens=0,
                                                                    chunk_size=32))
    # naive keeps fp32 [B,T,V] log-probs of both sides; chunked one bf16 [N,V] gradient
    assert naive >= 2 * B * T * V * 4
    assert chunked < 0.5 * naive
    assert B * T * V * 2 <= chunked <= B * T * V * 2 + 64 * 1024  # the one bf16 [N, V] gradient buffer
    torch.testing.assert_close(loss_c, loss_n, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ importance weights
def test_sequence_importance_weights_capped_mean_detached():
    train = torch.tensor([[0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    sampler = torch.tensor([[0.0, -5.0, 0.0, 0.0], [-0.5, -0.5, 0.0, -9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    w = sequence_importance_weights(train, sampler, mask, cap=2.0)
    row0 = (1.0 + 2.0 + math.exp(-1.0)) / 3  # exp(5) capped at 2; position 3 (ratio 1) masked
    row1 = (math.exp(0.5) + 1.0) / 2  # the exp(9) token is masked, not in the mean
    torch.testing.assert_close(w, torch.tensor([row0, row1, 1.0]))
    assert not w.requires_grad
    assert (w <= 2.0).all()
    w_cap3 = sequence_importance_weights(train, sampler, mask, cap=3.0)
    assert w_cap3[0] > w[0]


def test_importance_weights_scale_each_sequence_loss():
    B, T, V = 4, 8, 11
    s, t = _logits(B, T, V, seed=36), _logits(B, T, V, seed=37)
    mask = _masked_rows()
    iw = torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    s_leaf = s.clone().requires_grad_(True)
    loss, metrics = distillation_loss(s_leaf, t, mask, importance_weights_B=iw)
    per_tok = _explicit_divergence(s, t, "forward_kl")
    lm = build_loss_mask(mask, 3)
    ref = sum(iw[b].item() * per_tok[b][lm[b]].mean() for b in range(3)) / 4  # row 3 empty
    torch.testing.assert_close(loss.detach(), ref)
    loss.backward()
    assert iw.grad is None  # the weights are treated as constants
    # gradient of each row is scaled by its weight: compare with the unweighted loss of row 0 alone
    s_row = s[:1].clone().requires_grad_(True)
    distillation_loss(s_row, t[:1], mask[:1], num_sequences_total=4)[0].backward()
    torch.testing.assert_close(s_leaf.grad[:1], 2.0 * s_row.grad)
    loss_plain, m_plain = distillation_loss(s, t, mask)
    assert metrics["forward_kl"] == pytest.approx(m_plain["forward_kl"])  # metric is the unweighted divergence


# ------------------------------------------------------------------------------------------------ SFT / DFT
def test_sft_loss_equals_per_sequence_cross_entropy():
    B, T, V = 4, 8, 10
    logits = _logits(B, T, V, seed=38).requires_grad_(True)
    targets = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    mask = _masked_rows().bool()
    targets_with_ignore = torch.where(mask, targets, -100)
    loss, metrics = sft_loss(logits, targets_with_ignore, mask)
    seq = [F.cross_entropy(logits[b][mask[b]], targets[b][mask[b]]) for b in range(B)]
    torch.testing.assert_close(loss, torch.stack(seq).mean())
    assert metrics["sft_nll"] == pytest.approx(F.cross_entropy(logits[mask], targets[mask]).item())
    loss10, _ = sft_loss(logits, targets, mask, num_sequences_total=10)
    torch.testing.assert_close(loss10, torch.stack(seq).sum() / 10)


def test_dft_loss_is_ce_weighted_by_detached_token_probability():
    B, T, V = 4, 8, 10
    logits0 = _logits(B, T, V, seed=39)
    targets = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    mask = _masked_rows().bool()
    logits = logits0.clone().requires_grad_(True)
    loss, metrics = dft_loss(logits, targets, mask)
    loss.backward()

    ref_logits = logits0.clone().requires_grad_(True)
    logp = torch.log_softmax(ref_logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    prob = logp.exp().detach()
    per_tok = -prob * logp
    ref = torch.stack([per_tok[b][mask[b]].mean() for b in range(B)]).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    assert metrics["mean_target_prob"] == pytest.approx(prob[mask].mean().item())
    # the weight is detached: gradient differs from the gradient of -(p * log p) with p attached
    attached = logits0.clone().requires_grad_(True)
    lp2 = torch.log_softmax(attached, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.stack([(-(lp2.exp() * lp2))[b][mask[b]].mean() for b in range(B)]).mean().backward()
    assert not torch.allclose(attached.grad, logits.grad)


# ------------------------------------------------------------------------------------------------ misc
def test_bfloat16_logits_use_float32_log_softmax():
    s = _logits(2, 5, 33, dtype=torch.bfloat16, seed=40).requires_grad_(True)
    t = _logits(2, 5, 33, dtype=torch.bfloat16, seed=41)
    loss, _ = distillation_loss(s, t, torch.ones(2, 5), skip_first_tokens=0)
    assert loss.dtype == torch.float32
    ref = _explicit_divergence(s.detach().float(), t.float(), "forward_kl").mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert s.grad.dtype == torch.bfloat16


def test_invalid_arguments_raise():
    s, t, m = _logits(1, 3, 5), _logits(1, 3, 5, seed=1), torch.ones(1, 3)
    with pytest.raises(ValueError):
        distillation_loss(s, t, m, DivergenceSpec(divergence="kl"))
    with pytest.raises(ValueError):
        distillation_loss(s, t, m, DivergenceSpec(divergence="jsd", jsd_beta=1.0))
    with pytest.raises(ValueError):
        distillation_loss(s, t, m, DivergenceSpec(support="top_k", top_k=6))
    with pytest.raises(ValueError):
        distillation_loss(s, t, m, DivergenceSpec(support="top_k", topk_from="both"))
    with pytest.raises(ValueError):
        distillation_loss(s, t[..., :4], m)
