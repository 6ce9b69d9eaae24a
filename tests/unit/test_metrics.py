"""Continual-learning metrics on hand-made matrices, intervals against known values."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from selfdistill import metrics as M

# Rows: base, after task0, after task1, after task2.  Columns: task0..task2.
R3 = [
    [0.20, 0.30, 0.10],   # base
    [0.80, 0.35, 0.15],   # after training task0
    [0.70, 0.90, 0.20],   # after training task1
    [0.60, 0.85, 0.75],   # after training task2 (final)
]


def test_average_accuracy():
    assert M.average_accuracy(R3) == pytest.approx((0.60 + 0.85 + 0.75) / 3)


def test_backward_transfer_by_hand():
    # BWT = mean over i<T of R[T,i] - R[i+1,i]: (0.60-0.80) and (0.85-0.90)
    expected = ((0.60 - 0.80) + (0.85 - 0.90)) / 2
    assert expected == pytest.approx(-0.125)
    assert M.backward_transfer(R3) == pytest.approx(expected)


def test_forgetting_by_hand():
    # task0: max(R[1,0], R[2,0]) - R[3,0] = 0.80 - 0.60 = 0.20
    # task1: max(R[1,1], R[2,1]) - R[3,1] = 0.90 - 0.85 = 0.05
    f = M.forgetting_per_task(R3)
    assert f == pytest.approx([0.20, 0.05])
    assert M.average_forgetting(R3) == pytest.approx(0.125)


def test_forgetting_ignores_base_row():
    # base row is higher than every trained stage for task0: it must not count
    R = [[0.99, 0.0], [0.50, 0.1], [0.40, 0.9]]
    assert M.forgetting_per_task(R) == pytest.approx([0.10])


def test_forgetting_can_be_negative_and_uses_max():
    R = [[0.1, 0.1, 0.1], [0.5, 0.2, 0.1], [0.7, 0.6, 0.2], [0.9, 0.6, 0.8]]
    # task0: max(0.5, 0.7) - 0.9 = -0.2 ; task1: max(0.2, 0.6) - 0.6 = 0
    assert M.forgetting_per_task(R) == pytest.approx([-0.2, 0.0])


def test_forward_transfer_and_learning_accuracy():
    # FWT = mean_{i>=1} R[i,i] - R[0,i]: (0.35-0.30) and (0.20-0.10)
    assert M.forward_transfer(R3) == pytest.approx(((0.35 - 0.30) + (0.20 - 0.10)) / 2)
    assert M.learning_accuracy(R3) == pytest.approx((0.80 + 0.90 + 0.75) / 3)
    assert M.new_task_accuracy(R3) == pytest.approx(0.75)


def test_single_task():
    R = [[0.3], [0.8]]
    assert M.average_accuracy(R) == pytest.approx(0.8)
    assert M.new_task_accuracy(R) == pytest.approx(0.8)
    assert math.isnan(M.backward_transfer(R))
    assert math.isnan(M.forward_transfer(R))
    assert M.forgetting_per_task(R) == []
    assert math.isnan(M.average_forgetting(R))


def test_shape_errors_and_none():
    with pytest.raises(ValueError):
        M.backward_transfer([[0.1, 0.2], [0.3, 0.4]])  # missing a stage row
    with pytest.raises(ValueError):
        M.as_matrix([[0.1]])  # no stage row
    with pytest.raises(ValueError):
        M.as_matrix([[0.1, 0.2], [0.3]])
    R = [[0.1, None], [0.5, 0.2], [0.4, 0.9]]
    assert M.backward_transfer(R) == pytest.approx(-0.1)
    assert math.isnan(M.forward_transfer(R))  # NaN propagates, never silently dropped


def test_retention_change():
    assert M.retention_change([0.62, 0.60, 0.55]) == pytest.approx(-0.07)
    with pytest.raises(ValueError):
        M.retention_change([0.5])


@pytest.mark.parametrize("k,n,lo,hi", [
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_known_values(k, n, lo, hi):
    low, high = M.wilson_interval(k, n)
    assert low == pytest.approx(lo, abs=1e-4)
    assert high == pytest.approx(hi, abs=1e-4)


def test_wilson_edge_cases():
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = M.wilson_interval(8, 10, z=2.576)  # wider at 99%
    assert lo < 0.4902 and hi > 0.9433
    with pytest.raises(ValueError):
        M.wilson_interval(1, -1)


def test_t_quantile_known_values():
    assert M.t_quantile(4) == pytest.approx(2.776445, abs=1e-5)
    assert M.t_quantile(1) == pytest.approx(12.7062, abs=1e-3)
    assert M.t_quantile(30) == pytest.approx(2.042272, abs=1e-5)


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 9, 14, 29, 30, 31, 45, 100, 1000])
def test_t_fallback_table(dof):
    ref = {1: 12.706205, 2: 4.302653, 3: 3.182446, 5: 2.570582, 9: 2.262157, 14: 2.144787,
           29: 2.045230, 30: 2.042272, 31: 2.039513, 45: 2.014103, 100: 1.983972,
           1000: 1.962339}[dof]
    assert M.t_quantile(dof, use_scipy=False) == pytest.approx(ref, abs=2e-5)
    with pytest.raises(ValueError):
        M.t_quantile(dof, confidence=0.9, use_scipy=False)


def test_t_quantile_scipy_agrees():
    import scipy  # noqa: F401 - installed with the pinned requirements (scikit-learn needs it)
    for dof in range(1, 60):
        assert M.t_quantile(dof) == pytest.approx(M.t_quantile(dof, use_scipy=False), abs=2e-5)


def test_aggregate_seeds_known_value():
    a = M.aggregate_seeds([1, 2, 3, 4, 5])
    # mean 3, sd sqrt(2.5), se = sqrt(0.5), t_{0.975,4} = 2.776445
    half = 2.776445 * math.sqrt(0.5)
    assert a["n"] == 5 and a["mean"] == pytest.approx(3.0)
    assert a["low"] == pytest.approx(3 - half, abs=1e-5)
    assert a["high"] == pytest.approx(3 + half, abs=1e-5)
    assert a["low"] == pytest.approx(1.0368, abs=1e-4)


def test_aggregate_seeds_small_n():
    one = M.aggregate_seeds([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7
    assert math.isnan(one["low"]) and math.isnan(one["high"])
    none = M.aggregate_seeds([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    two = M.aggregate_seeds([0.5, float("nan"), 0.7, None])
    assert two["n"] == 2 and two["mean"] == pytest.approx(0.6)
    half = 12.7062047 * np.std([0.5, 0.7], ddof=1) / math.sqrt(2)
    assert two["high"] - two["mean"] == pytest.approx(half, rel=1e-5)


def test_acquisition_matched_crafted():
    # A keeps retention flat at 0.6; B loses retention linearly as accuracy grows.
    a = [(0.2, 0.6), (0.5, 0.6), (0.8, 0.6)]
    b = [{"new_task_acc": 0.3, "retention": 0.6}, {"new_task_acc": 0.9, "retention": 0.3}]
    res = M.acquisition_matched(a, b, n_levels=3)
    assert res["range"] == pytest.approx((0.3, 0.8))
    assert res["levels"] == pytest.approx([0.3, 0.55, 0.8])
    assert res["retention_a"] == pytest.approx([0.6, 0.6, 0.6])
    # B at 0.55: 0.6 - (0.25/0.6)*0.3 = 0.475 ; at 0.8: 0.6 - (0.5/0.6)*0.3 = 0.35
    assert res["retention_b"] == pytest.approx([0.6, 0.475, 0.35])
    assert res["difference"] == pytest.approx([0.0, 0.125, 0.25])


def test_acquisition_matched_unsorted_duplicates_and_levels():
    a = [(0.8, 0.4), (0.2, 0.8), (0.5, 0.5), (0.5, 0.7)]  # dup x=0.5 -> mean 0.6
    b = [(0.1, 0.5), (0.9, 0.5)]
    res = M.acquisition_matched(a, b, levels=[0.0, 0.35, 0.5, 0.95])
    assert res["levels"] == pytest.approx([0.35, 0.5])  # outside a's range dropped
    assert res["retention_a"] == pytest.approx([0.7, 0.6])
    assert res["retention_b"] == pytest.approx([0.5, 0.5])


def test_acquisition_matched_no_overlap():
    res = M.acquisition_matched([(0.1, 0.5), (0.2, 0.4)], [(0.5, 0.5), (0.9, 0.1)])
    assert res["levels"] == [] and res["range"] is None
    assert M.acquisition_matched([], [(0.5, 0.5)])["levels"] == []
    one = M.acquisition_matched([(0.1, 0.5), (0.5, 0.3)], [(0.5, 0.2), (0.9, 0.1)])
    assert one["levels"] == pytest.approx([0.5])
    assert one["difference"] == pytest.approx([0.1])


def _results():
    return {
        "tasks": ["a", "b", "c"],
        "runs": [
            {"method": "sdft", "seed": 0, "matrix": R3, "retention": [0.6, 0.6, 0.58, 0.57],
             "retention_n": 100, "drift": [0, 0.01, 0.02, 0.03]},
            {"method": "sdft", "seed": 1, "matrix": R3, "retention": [0.6, 0.59, 0.58, 0.55]},
            {"method": "sft", "seed": 0, "matrix": R3, "retention": [0.6, 0.5, 0.45, None]},
        ],
    }


def test_summarize():
    s = M.summarize_results(_results())
    assert [r["method"] for r in s["runs"]] == ["sdft", "sdft", "sft"]
    r0 = s["runs"][0]
    assert r0["bwt"] == pytest.approx(-0.125)
    assert r0["retention_change"] == pytest.approx(-0.03)
    assert r0["drift_final"] == pytest.approx(0.03)
    sd = s["methods"]["sdft"]
    assert sd["retention_change"]["n"] == 2
    assert sd["retention_change"]["mean"] == pytest.approx(-0.04)
    assert s["methods"]["sft"]["retention_change"]["n"] == 0  # None after -> NaN -> dropped


def test_write_results(tmp_path):
    res = _results()
    paths = M.write_results(tmp_path, res)
    names = sorted(p.name for p in paths)
    assert names == sorted(["results.json", "matrix_sdft_seed0.csv", "matrix_sdft_seed1.csv",
                            "matrix_sft_seed0.csv", "summary.csv"])
    back = json.loads((tmp_path / "results.json").read_text())
    assert back["tasks"] == ["a", "b", "c"] and back["runs"][2]["retention"][-1] is None
    rows = list(csv.reader((tmp_path / "matrix_sdft_seed0.csv").open()))
    assert rows[0] == ["stage", "label", "a", "b", "c"]
    assert rows[1][:2] == ["0", "base"] and rows[2][1] == "after a"
    assert float(rows[4][4]) == pytest.approx(0.75)
    summ = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["seed"] for r in summ] == ["0", "1", "0", "mean", "ci95_low", "ci95_high",
                                         "mean", "ci95_low", "ci95_high"]
    assert float(summ[0]["bwt"]) == pytest.approx(-0.125)
    sft_low = [r for r in summ if r["method"] == "sft" and r["seed"] == "ci95_low"][0]
    assert sft_low["bwt"] == ""  # one seed: no interval


# --------------------------------------------------------------------------- #
# forgetting statistics and frontiers, each against its definition computed another way
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("lost,gained", [(0, 0), (3, 0), (5, 2), (10, 10), (1, 12), (30, 17)])
def test_mcnemar_exact_equals_scipy_binomial_test(lost, gained):
    from scipy.stats import binomtest
    from selfdistill.metrics import mcnemar_exact_p
    want = 1.0 if lost + gained == 0 else binomtest(min(lost, gained), lost + gained, 0.5).pvalue
    assert mcnemar_exact_p(lost, gained) == pytest.approx(want, rel=1e-9)


def test_paired_retention_change_counts_and_bootstrap_match_their_definitions():
    from selfdistill.metrics import paired_retention_change
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 120)
    now = np.where(rng.random(120) < 0.2, 1 - base, base)  # 20% of items flip, either way
    r = paired_retention_change(base.tolist(), now.tolist(), n_boot=20000)
    assert r["lost"] == sum(1 for b, n in zip(base, now) if b and not n)
    assert r["gained"] == sum(1 for b, n in zip(base, now) if n and not b)
    assert r["change"] == pytest.approx(now.mean() - base.mean())
    # the bootstrap distribution of a mean of n iid draws from the empirical d: sd = sd_pop(d) / sqrt(n), so the
    # 95% percentile interval is close to the normal one (n = 120)
    d = now - base
    half = 1.959964 * d.std() / math.sqrt(d.size)
    assert r["low"] == pytest.approx(d.mean() - half, abs=0.01)
    assert r["high"] == pytest.approx(d.mean() + half, abs=0.01)
    with pytest.raises(ValueError):
        paired_retention_change([1, 0], [1])


def test_margin_change_equals_scipy_paired_t_interval():
    from scipy import stats
    from selfdistill.metrics import margin_change
    rng = np.random.default_rng(2)
    base = rng.normal(1.0, 2.0, 50)
    now = base + rng.normal(-0.3, 0.5, 50)
    r = margin_change(base, now)
    d = now - base
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert (r["change"], r["low"], r["high"], r["n"]) == (pytest.approx(d.mean()), pytest.approx(lo),
                                                          pytest.approx(hi), 50)


def test_conditional_retention_is_accuracy_on_base_correct_items():
    from selfdistill.metrics import conditional_retention
    assert conditional_retention([1, 1, 0, 1, 0], [1, 0, 1, 1, 1]) == {"value": 2 / 3, "n": 3}


def test_pareto_frontier_and_frontier_value_equal_brute_force():
    from selfdistill.metrics import frontier_value, pareto_frontier
    rng = np.random.default_rng(3)
    for _ in range(20):
        pts = [tuple(v) for v in np.round(rng.random((12, 2)), 1)]
        dominated = {p for p in pts for q in pts if q != p and q[0] >= p[0] and q[1] >= p[1]}
        assert pareto_frontier(pts) == sorted(set(pts) - dominated)
        for lv in (0.0, 0.35, 0.7, 1.1):
            reach = [y for x, y in pts if x >= lv]
            want = max(reach) if reach else float("nan")
            got = frontier_value(pts, lv)
            assert got == want or (math.isnan(got) and math.isnan(want))


def test_frontier_comparison_pairs_seeds():
    from selfdistill.metrics import frontier_comparison
    a = {0: [(0.0, 0.8), (0.5, 0.7), (1.0, 0.5)], 1: [(0.0, 0.8), (0.5, 0.6), (1.0, 0.4)]}
    b = {0: [(0.0, 0.8), (0.6, 0.5)], 1: [(0.0, 0.8), (0.5, 0.5)]}
    r = frontier_comparison(a, b, [0.5, 0.9])
    assert r[0]["a"]["mean"] == pytest.approx(0.65) and r[0]["b"]["mean"] == pytest.approx(0.5)
    assert r[0]["diff"]["mean"] == pytest.approx(0.15) and r[0]["diff"]["n"] == 2
    assert r[0]["diff"]["low"] == pytest.approx(0.15 - 12.7062047 * np.std([0.2, 0.1], ddof=1) / math.sqrt(2))
    assert r[1]["b"]["n"] == 0 and r[1]["diff"]["n"] == 0  # B never reached 0.9: nothing is extrapolated
