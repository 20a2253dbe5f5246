"""fused_tie_sums.grouped_sums (one Triton program per query) against tie_sums.grouped_sums (the torch /
numpy reference) and a brute force over every placement of the relevant items inside each tie group.
The kernel runs in Triton's interpreter (``HASHBENCH_FUSED_CUDA=1``: compiled, on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from _triton_interp import DEV, import_interpreted  # noqa: E402

_, FTS = import_interpreted()

from hashbench.platform.evaluation import metrics as M  # noqa: E402
from hashbench.platform.evaluation import tie_sums  # noqa: E402
from hashbench.platform.evaluation.metrics import TORCH  # noqa: E402
from test_tie_sums_sync_free import brute_force, random_case  # noqa: E402

F64 = torch.float64


def run_both(n, r, cut, need_ap_hits=True, ap_columns=None):
    n = torch.as_tensor(np.asarray(n), dtype=F64, device=DEV)
    r = torch.as_tensor(np.asarray(r), dtype=F64, device=DEV)
    cut = torch.as_tensor(np.asarray(cut), dtype=torch.int64, device=DEV).reshape(n.shape[0], -1)
    total = int(n.sum(1).max())
    harm = M.harmonic_table(total, DEV)
    lf = FTS.log_factorials(total, DEV)
    ks = [int(c) for c in cut.max(0).values]
    got = FTS.grouped_sums(n, r, cut, harm, lf, ks, need_ap_hits=need_ap_hits, ap_columns=ap_columns)
    ref = tie_sums.grouped_sums(TORCH, n, r, cut, harm, need_ap_hits=need_ap_hits, ap_columns=ap_columns)
    return got, ref


def assert_close(got, ref):
    for g, e in zip(got, ref):
        if e is None:
            assert g is None
            continue
        assert g.shape == e.shape
        np.testing.assert_allclose(g.cpu().numpy(), e.cpu().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_random_groups_match_the_reference_and_a_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, r = random_case(rng, 12, 4, 4)
    k = rng.integers(0, int(n.sum(1).max()) + 3, 12)        # 0, inside, at and past the end of the list
    (hits, s, ap), ref = run_both(n, r, k)
    assert_close((hits, s, ap), ref)
    bf = [brute_force(n[i], r[i], int(k[i])) for i in range(12)]
    np.testing.assert_allclose(ap[:, 0].cpu().numpy(), bf, rtol=1e-12, atol=1e-15)


def test_wide_groups_and_several_columns():
    """Hundreds of items per group (the loop over h takes several steps of BH), three cut-off columns,
    one of them a per-query R as MAP@R passes it (no AP wanted there)."""
    rng = np.random.default_rng(11)
    n = rng.integers(0, 400, (9, 6))
    r = rng.integers(0, 400, (9, 6)) % (n + 1)
    tot = n.sum(1)
    cut = np.stack([np.minimum(50, tot), np.minimum(700, tot), r.sum(1)], 1)
    assert_close(*run_both(n, r, cut, ap_columns=2))
    assert_close(*run_both(n, r, cut, need_ap_hits=False))


def test_edge_groups():
    """Empty groups, no relevant items, all relevant, a cut-off of 0, at a group edge and past the end;
    a straddling first group; one group only."""
    n = [[0, 5, 0, 3], [4, 4, 4, 4], [4, 4, 4, 4], [7, 0, 0, 0], [2, 3, 0, 1], [6, 6, 6, 6]]
    r = [[0, 5, 0, 0], [0, 0, 0, 0], [4, 4, 4, 4], [3, 0, 0, 0], [2, 0, 0, 1], [1, 5, 0, 6]]
    for k in (0, 1, 4, 5, 8, 9, 30):
        assert_close(*run_both(n, r, [k] * 6))


def test_log_factorials_are_lgamma_of_the_integers():
    lf = FTS.log_factorials(20, "cpu")
    assert lf[0] == 0 and lf[1] == 0
    np.testing.assert_allclose(lf[5].item(), np.log(120.0), rtol=1e-15)
    np.testing.assert_allclose(lf.numpy(), [np.sum(np.log(np.arange(1, x + 1))) for x in range(21)], rtol=1e-13)
