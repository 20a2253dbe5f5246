"""The sync-free form of ``tie_sums.expected_ap_hits`` (``hmax`` given: the fused path's device re-count).

References: the synced form (the torch engine's), and a brute force over every placement of the
relevant items inside each tie group (``itertools.combinations``, all equally likely). That the form
reads nothing back from the device is checked on ``meta`` tensors (no data: ``bool()``, ``int()``,
``.item()``, ``nonzero()`` raise there) and by recording such calls under a ``TorchFunctionMode``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from hashbench.platform.evaluation import metrics as M
from hashbench.platform.evaluation import tie_sums
from hashbench.platform.evaluation.metrics import TORCH

F64 = torch.float64


def inputs(n, r, k):
    """What ``grouped_sums`` passes to ``expected_ap_hits`` for groups ``n, r`` (q, G) and cut-off ``k`` (q,)."""
    n, r = torch.as_tensor(n, dtype=F64), torch.as_tensor(r, dtype=F64)
    kk = torch.as_tensor(k, dtype=F64)[:, None]
    n0, r0 = n.cumsum(1) - n, r.cumsum(1) - r
    p = torch.where(n > 0, r / n.clamp_min(1), 0.0)
    b = torch.where(n > 1, (r - 1) / (n - 1).clamp_min(1), 0.0)
    m = torch.minimum((kk - n0).clamp_min(0), n)
    harm = M.harmonic_table(int(n.sum(1).max()), "cpu")
    return n, r, m, n0, r0, p, b, harm


def both_forms(n, r, k, hmax=None):
    args = inputs(n, r, k)
    synced = tie_sums.expected_ap_hits(TORCH, *args)
    free = tie_sums.expected_ap_hits(TORCH, *args, hmax=max(k) if hmax is None else hmax)
    return synced, free


def brute_force(n_row, r_row, k):
    """E[S / hits] of one query: every placement of the relevant items of each group, equally likely."""
    groups = [(int(a), int(b)) for a, b in zip(n_row, r_row)]
    total, count = 0.0, 0
    for picks in itertools.product(*(itertools.combinations(range(a), b) for a, b in groups)):
        rel = [j in pick for (a, _), pick in zip(groups, picks) for j in range(a)]
        hits, s = 0, 0.0
        for rank, is_rel in enumerate(rel[:k], 1):
            if is_rel:
                hits += 1
                s += hits / rank
        total += s / hits if hits else 0.0
        count += 1
    return total / count


def random_case(rng, q, groups, max_n):
    n = rng.integers(0, max_n + 1, (q, groups))
    r = rng.integers(0, max_n + 1, (q, groups)) % (n + 1)
    return n, r


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("seed", range(4))
def test_sync_free_equals_synced_and_brute_force_on_random_groups(seed):
    rng = np.random.default_rng(seed)
    n, r = random_case(rng, 12, 4, 4)
    k = rng.integers(0, int(n.sum(1).max()) + 3, 12)        # 0, inside, at and past the end of the list
    synced, free = both_forms(n, r, k)
    np.testing.assert_allclose(free.numpy(), synced.numpy(), rtol=1e-13, atol=0)
    ref = [brute_force(n[i], r[i], int(k[i])) for i in range(12)]
    np.testing.assert_allclose(free.numpy(), ref, rtol=1e-12, atol=1e-15)


def test_larger_groups_and_a_loose_bound():
    """Wide groups (hundreds of levels) and hmax far above min(m, r): the extra levels add zeros."""
    rng = np.random.default_rng(7)
    n, r = random_case(rng, 64, 6, 300)
    k = rng.integers(1, int(n.sum(1).max()), 64)
    synced, free = both_forms(n, r, k)
    assert (synced > 0).any()
    np.testing.assert_allclose(free.numpy(), synced.numpy(), rtol=1e-13, atol=0)
    _, loose = both_forms(n, r, k, hmax=int(n.sum(1).max()) + 50)
    np.testing.assert_allclose(loose.numpy(), synced.numpy(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("case", ["no_straddle", "all_straddle", "r0", "r_eq_n", "k_past_n", "k0",
                                  "empty_groups"])
def test_edge_cases(case):
    """No row straddles (cut-offs on group boundaries); every row straddles (with groups entirely before
    (m=n) and after (m=0) the cut); straddling groups with no (r=0) or only (r=n) relevant items; k past the
    list; k=0; empty groups (n=0) around the straddling one."""
    n = np.array([[2, 3, 4], [1, 5, 2], [4, 4, 4], [3, 0, 6]])
    r = np.array([[1, 2, 2], [1, 3, 0], [0, 4, 1], [2, 0, 3]])
    k = np.array([4, 3, 6, 5])
    if case == "no_straddle":
        k = np.array([2, 6, 8, 3])
    elif case == "r0":
        r = r.copy()
        r[:, 1] = 0
    elif case == "r_eq_n":
        r = r.copy()
        r[:, 1] = n[:, 1]
    elif case == "k_past_n":
        k = n.sum(1) + 5
    elif case == "k0":
        k = np.zeros(4, dtype=np.int64)
    elif case == "empty_groups":
        n = np.array([[0, 2, 0, 5, 0], [0, 0, 7, 0, 1]])
        r = np.array([[0, 1, 0, 3, 0], [0, 0, 2, 0, 1]])
        k = np.array([4, 2])
    synced, free = both_forms(n, r, k)
    args = inputs(n, r, k)
    m, nn = args[2], args[0]
    straddles = ((m > 0) & (m < nn)).any(1)
    want = {"no_straddle": 0, "all_straddle": len(k), "r0": len(k), "r_eq_n": len(k),
            "k_past_n": 0, "k0": 0, "empty_groups": 2}[case]
    assert int(straddles.sum()) == want                      # the case is the one its name says
    np.testing.assert_allclose(free.numpy(), synced.numpy(), rtol=1e-13, atol=0)
    ref = [brute_force(n[i], r[i], int(k[i])) for i in range(len(k))]
    np.testing.assert_allclose(free.numpy(), ref, rtol=1e-12, atol=1e-15)
    if case == "k0":
        assert not free.any()


def test_grouped_sums_with_host_cutoffs_equals_the_synced_one():
    """grouped_sums(sync_free_ks=the cut-offs): same hits, S, ap_hits; the ap column past ap_columns
    (MAP@R's cut-off R) is not asked for, so it needs no bound."""
    rng = np.random.default_rng(3)
    n, r = (torch.as_tensor(a, dtype=F64) for a in random_case(rng, 20, 5, 30))
    ks = [1, 7, 40]
    R = r.sum(1).to(torch.int64)[:, None]
    cut = torch.cat([torch.tensor(ks).expand(20, -1), R], 1)
    harm = M.harmonic_table(int(n.sum(1).max()), "cpu")
    a = M.grouped_sums(n, r, cut, harm, ap_columns=3)
    b = M.grouped_sums(n, r, cut, harm, ap_columns=3, sync_free_ks=ks)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.testing.assert_allclose(b[2].numpy(), a[2].numpy(), rtol=1e-13, atol=0)


# ---------------------------------------------------------------- no host reads
def test_sync_free_form_runs_on_meta_tensors_and_the_synced_one_does_not():
    """Meta tensors have shapes but no values: anything that reads one on the host raises."""
    args = [t.to("meta") for t in inputs([[2, 3, 4]] * 5, [[1, 2, 2]] * 5, [4] * 5)]
    out = tie_sums.expected_ap_hits(TORCH, *args, hmax=4)
    assert out.device.type == "meta" and out.shape == (5,)
    with pytest.raises((RuntimeError, NotImplementedError)):
        tie_sums.expected_ap_hits(TORCH, *args)
    cut = torch.full((5, 2), 4, dtype=torch.int64, device="meta")
    hits, s, ap = M.grouped_sums(args[0], args[1], cut, args[-1], sync_free_ks=[4, 4])
    assert ap.device.type == "meta" and ap.shape == (5, 2)


class HostReads(TorchFunctionMode):
    """Records the torch calls that read values on the host, and boolean-mask indexing (a sync on CUDA)."""

    READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "numpy", "cpu",
             "unique", "masked_select"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def record(self, name: str):
        self.calls.append(name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        masked = (name in ("__getitem__", "__setitem__") and len(args) > 1
                  and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool)
        if name in self.READS or masked:
            self.record(name)
        return func(*args, **(kwargs or {}))


def spy_hmax(monkeypatch) -> list:
    """The ``hmax`` of every later ``tie_sums.expected_ap_hits`` call (None: the synced form)."""
    hmaxes = []
    real = tie_sums.expected_ap_hits

    def spy(*args, hmax=None):
        hmaxes.append(hmax)
        return real(*args, hmax=hmax)

    monkeypatch.setattr(tie_sums, "expected_ap_hits", spy)
    return hmaxes


def test_sync_free_form_reads_nothing_on_the_host():
    rng = np.random.default_rng(1)
    n, r = random_case(rng, 30, 4, 20)
    k = rng.integers(1, 40, 30)
    args = inputs(n, r, k)
    with HostReads() as free:
        tie_sums.expected_ap_hits(TORCH, *args, hmax=int(k.max()))
    with HostReads() as synced:
        tie_sums.expected_ap_hits(TORCH, *args)
    assert free.calls == []
    assert {"__bool__", "nonzero", "__int__"} <= set(synced.calls)


def test_budget_sends_large_tables_to_the_synced_form(monkeypatch):
    """A column whose (queries x (k + 1)) table exceeds SYNC_FREE_BUDGET takes the synced form."""
    hmaxes = spy_hmax(monkeypatch)
    n, r, *_ = inputs([[2, 3, 4]] * 5, [[1, 2, 2]] * 5, [4] * 5)
    cut = torch.tensor([[3, 9]] * 5)
    harm = M.harmonic_table(9, "cpu")
    monkeypatch.setattr(tie_sums, "SYNC_FREE_BUDGET", 5 * 4)      # 5 x (3 + 1) fits, 5 x (9 + 1) does not
    M.grouped_sums(n, r, cut, harm, sync_free_ks=[3, 9])
    assert hmaxes == [3, None]
