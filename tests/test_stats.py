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
