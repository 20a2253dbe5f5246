"""Statistics of comparisons (hashbench/platform/stats.py) and the per-query values they pair.

Every expected value comes from an independent computation: brute-force loops, scipy.stats, or
hand-worked cases (Demšar 2006's table for the Nemenyi critical difference).
"""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.platform.evaluation import evaluate


# ---------------------------------------------------------------------------------- per-query values

def _brute_ap_p(q, db, ql, dl, k):
    """Per query: AP@k (hits convention, ties by database index) and P@k, by plain loops."""
    aps, ps = [], []
    for i in range(len(q)):
        order = sorted(range(len(db)), key=lambda j: (int((q[i] != db[j]).sum()), j))[:k]
        hits, s = 0, 0.0
        for r, j in enumerate(order, start=1):
            if ql[i] == dl[j]:
                hits += 1
                s += hits / r
        aps.append(s / hits if hits else 0.0)
        ps.append(hits / k)
    return np.array(aps), np.array(ps)


def test_per_query_values_match_a_brute_force_loop_and_average_to_the_metric():
    rng = np.random.default_rng(3)
    q = rng.choice([-1, 1], size=(9, 6)).astype(np.int8)
    db = rng.choice([-1, 1], size=(30, 6)).astype(np.int8)
    ql, dl = rng.integers(0, 3, 9), rng.integers(0, 3, 30)
    res = evaluate(q, db, ql, dl, ks=(5, 10), ties="index", per_query=True)
    for k in (5, 10):
        ap, p = _brute_ap_p(q, db, ql, dl, k)
        np.testing.assert_allclose(res["per_query"][f"mAP@{k}"], ap, atol=1e-12)
        np.testing.assert_allclose(res["per_query"][f"P@{k}"], p, atol=1e-12)
        assert res["per_query"][f"mAP@{k}"].mean() == pytest.approx(res[f"mAP@{k}"], abs=1e-12)
    assert res["per_query"]["MAP@R"].shape == (9,)
    assert "per_query" not in evaluate(q, db, ql, dl, ks=(5,))   # only when asked for


def test_per_query_marks_queries_left_out_by_exclude_no_hit_as_nan():
    q = np.array([[1, 1], [-1, -1]], np.int8)
    db = np.array([[1, 1], [1, -1], [-1, 1]], np.int8)
    ql, dl = np.array([0, 5]), np.array([0, 1, 0])        # query 1's class 5 is not in the database
    res = evaluate(q, db, ql, dl, ks=(2,), ties="index", exclude_no_hit=True, per_query=True)
    ap = res["per_query"]["mAP@2"]
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1])
    assert np.nanmean(ap) == pytest.approx(res["mAP@2"])


# ---------------------------------------------------------------------------------- pure statistics

from hashbench.platform import stats as S  # noqa: E402
from hashbench.platform.errors import HashbenchError  # noqa: E402


def test_bootstrap_matches_a_slow_loop_with_the_same_draws():
    rng = np.random.default_rng(11)
    a, b = rng.random(57), rng.random(57) * 0.9
    got = S.paired_bootstrap(a, b, resamples=2000, seed=5, chunk_bytes=4 * 57 * 300)   # 7 chunks
    draw = np.random.default_rng(5)
    means = []
    for _ in range(2000):                                 # one resample at a time, plain Python
        idx = draw.integers(0, 57, size=57, dtype=np.int32)
        means.append(sum(a[i] - b[i] for i in idx) / 57)
    means = np.sort(means)
    # numpy's linear quantile by hand: position (n - 1) q
    def quantile(q):
        pos = (len(means) - 1) * q
        lo = int(np.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])
    assert got["ci_low"] == pytest.approx(quantile(0.025), abs=1e-12)
    assert got["ci_high"] == pytest.approx(quantile(0.975), abs=1e-12)
    assert got["mean_diff"] == pytest.approx(float(np.mean(a - b)), abs=1e-12) and got["n"] == 57
    assert S.paired_bootstrap(a, b, resamples=2000, seed=5) == got    # fixed seed: same interval


def test_bootstrap_agrees_with_scipy_paired_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(2)
    a = rng.beta(4, 2, 400)
    b = np.clip(a - 0.03 + rng.normal(0, 0.1, 400), 0, 1)
    ours = S.paired_bootstrap(a, b)                       # 10,000 resamples
    ref = bootstrap((a, b), lambda x, y: np.mean(x - y), paired=True, vectorized=False, n_resamples=10_000,
                    method="percentile", random_state=np.random.default_rng(9)).confidence_interval
    width = ref.high - ref.low
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.05 * width)   # Monte Carlo error only
    assert ours["ci_high"] == pytest.approx(ref.high, abs=0.05 * width)
    assert ours["resamples"] == 10_000 and ours["ci_low"] < ours["mean_diff"] < ours["ci_high"]


def test_bootstrap_drops_nan_queries_and_refuses_too_few():
    a = np.array([0.5, np.nan, 0.7, 0.1])
    b = np.array([0.4, 0.3, np.nan, 0.2])
    assert S.paired_bootstrap(a, b, resamples=100)["n"] == 2
    with pytest.raises(HashbenchError, match="at least 2 queries"):
        S.paired_bootstrap([0.5], [0.4])
    with pytest.raises(HashbenchError, match="equal length"):
        S.paired_bootstrap([0.5, 0.1], [0.4])


def test_wilcoxon_and_identical_runs():
    from scipy.stats import wilcoxon

    a = np.array([0.9, 0.8, 0.75, 0.6, 0.95, 0.7, 0.85, 0.5])
    b = a - np.array([0.1, 0.05, -0.02, 0.08, 0.12, 0.03, 0.07, 0.04])
    assert S.wilcoxon_p(a, b) == pytest.approx(wilcoxon(a - b).pvalue)
    assert S.wilcoxon_p(a, a) == 1.0


def test_paired_seeds_t_test_and_too_few_seeds():
    from scipy.stats import t as student_t

    a = {0: 0.80, 1: 0.82, 2: 0.79}
    b = {0: 0.75, 1: 0.78, 2: 0.76, 7: 0.99}              # seed 7 has no partner: left out
    res = S.paired_seeds(a, b)
    d = np.array([0.05, 0.04, 0.03])
    tstat = d.mean() / (d.std(ddof=1) / np.sqrt(3))      # hand formula
    assert res["seeds"] == [0, 1, 2] and res["mean_diff"] == pytest.approx(0.04)
    assert res["p"] == pytest.approx(2 * student_t.sf(tstat, 2))
    half = student_t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.04 - half, 0.04 + half))
    one = S.paired_seeds({0: 0.8}, {0: 0.7, 1: 0.6})
    assert one["p"] is None and "at least 2" in one["message"]


def test_holm_hand_case():
    # p sorted: .01 (x4 = .04), .02 (x3 = .06), .03 (x2 = .06, monotone), .04 (x1 = .04 -> .06)
    assert S.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert S.holm([0.5, None, 0.4]) == [pytest.approx(0.8), None, pytest.approx(0.8)]
    assert S.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])                  # capped at 1
    assert S.holm([]) == []


def test_average_ranks_hand_case_with_ties():
    scores = np.array([[0.9, 0.8, 0.7],
                       [0.6, 0.6, 0.9],     # tie for 2nd/3rd: 2.5 each
                       [0.5, 0.7, 0.6]])
    # method 0: 1, 2.5, 3 -> 6.5/3; method 1: 2, 2.5, 1 -> 5.5/3; method 2: 3, 1, 2 -> 2
    np.testing.assert_allclose(S.average_ranks(scores), [6.5 / 3, 5.5 / 3, 2.0])


def test_friedman_statistic_by_demsar_formula_and_scipy():
    from scipy.stats import friedmanchisquare

    rng = np.random.default_rng(4)
    scores = rng.random((6, 4)) + np.array([0.3, 0.2, 0.1, 0.0])   # no ties
    res = S.friedman(scores)
    n, k = scores.shape
    r = S.average_ranks(scores)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4)   # Demšar 2006, eq. (1)
    assert res["statistic"] == pytest.approx(chi2)
    assert res["p"] == pytest.approx(friedmanchisquare(*scores.T).pvalue)
    with pytest.raises(HashbenchError, match="at least 3 methods"):
        S.friedman(scores[:, :2])
    with pytest.raises(HashbenchError, match="at least 2 datasets"):
        S.friedman(scores[:1])


def test_nemenyi_q_and_cd_match_demsars_table():
    # Demšar 2006, Table 5(a): q_0.05 for k = 2..10
    table = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in table.items():
        assert S.nemenyi_q(k) == pytest.approx(q, abs=1.5e-3)
    # CD for k = 5 methods over N = 4 datasets: 2.728 * sqrt(5 * 6 / 24)
    assert S.nemenyi_cd(5, 4) == pytest.approx(2.728 * np.sqrt(30 / 24), abs=2e-3)
