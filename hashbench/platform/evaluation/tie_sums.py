"""The tie-aware sums of :mod:`~hashbench.platform.evaluation.metrics`, written once for torch tensors
and numpy arrays.

``metrics.grouped_sums`` (torch: ``core.evaluate``) and ``cpu_eval`` (numpy: the torch-free path of
``hashbench eval``) both call :func:`grouped_sums` and :func:`apply_convention` here, with an array
namespace ``xp``: :data:`NUMPY` below, or ``metrics.TORCH``. The formulas use only what both array
types share (arithmetic, comparisons, ``cumsum(1)``, ``sum(1)``, ``any(1)``, ``max()``, indexing); the
namespace supplies the rest (``where``, ``minimum``, ``clamp_min``, ``lgamma``, ...). This module imports
numpy, never torch. See the docstring of ``metrics.py`` and docs/metrics.md for the formulas.
"""

from __future__ import annotations

import math

import numpy as np


class NumpyOps:
    """The array namespace of the formulas for numpy float64 arrays."""

    where = staticmethod(np.where)
    minimum = staticmethod(np.minimum)
    exp = staticmethod(np.exp)

    @staticmethod
    def clamp_min(x, value):
        return np.maximum(x, value)

    @staticmethod
    def f64(x):
        return x.astype(np.float64)

    @staticmethod
    def take(table, index):
        """``table[index]`` for float ``index`` holding integers."""
        return table[index.astype(np.int64)]

    @staticmethod
    def stack(xs):
        return np.stack(xs, 1)

    @staticmethod
    def rows(mask):
        return np.flatnonzero(mask)

    @staticmethod
    def first_true(mask):
        """(s, 1) column of the first True of each row."""
        return mask.astype(np.int64).argmax(1)[:, None]

    @staticmethod
    def take_along(x, cols):
        return np.take_along_axis(x, cols, 1)

    @staticmethod
    def arange_like(n, like):
        return np.arange(n, dtype=np.float64)

    @staticmethod
    def zeros_like_table(n, like):
        return np.zeros(n, dtype=np.float64)

    @staticmethod
    def copy(x):
        return x.copy()

    _lgamma = np.zeros(1)

    @classmethod
    def lgamma(cls, x):
        """``lgamma`` of float arrays holding integers (every argument of the hypergeometric law is
        one), from a table of ``math.lgamma`` grown as needed. Entry 0 (and anything below, clipped to
        it) is a finite stand-in: the formulas mask those entries, where torch's ``lgamma`` is inf."""
        top = int(x.max()) if x.size else 0
        if top >= cls._lgamma.size:
            cls._lgamma = np.array([0.0] + [math.lgamma(i) for i in range(1, top + 1)], dtype=np.float64)
        return cls._lgamma[np.clip(x, 0, None).astype(np.int64)]


NUMPY = NumpyOps


def harmonic_table(xp, n_max: int, like=None):
    """``H[i] = sum_{j<=i} 1/j`` for ``i = 0..n_max`` (float64; a sequential cumulative sum)."""
    h = xp.zeros_like_table(n_max + 1, like)
    if n_max:
        h[1:] = (1.0 / (xp.arange_like(n_max, like) + 1)).cumsum(0)
    return h


def partial_sum(xp, p, b, m, n0, r0, harm):
    """``p * sum_{j=1..m} (r0 + 1 + (j-1) b) / (n0 + j)`` in closed form (all float64)."""
    hdiff = xp.take(harm, n0 + m) - xp.take(harm, n0)
    return p * (b * m + (r0 + 1 - b * (n0 + 1)) * hdiff)


#: largest (query rows x levels) table of the sync-free form of :func:`expected_ap_hits`: 64M entries (512 MB
#: of float64 each, several at a time); a column of cut-offs past it takes the synced form
SYNC_FREE_BUDGET = 1 << 26


def grouped_sums(xp, n, r, cutoffs, harm, need_ap_hits: bool = True, ap_columns: int | None = None,
                 sync_free_ks=None):
    """Expected ``hits, S, ap_hits`` (q, m) float64 over uniformly random orders inside each tie group.

    n, r: (q, G) float64 item and relevant counts of consecutive tie groups, nearest first (empty
    groups allowed); cutoffs: (q, m) int64; harm: :func:`harmonic_table` up to ``sum(n)``. ``ap_hits``
    (None unless asked for) only for the first ``ap_columns`` cut-offs (default all): the straddling
    groups of a cut-off such as R of MAP@R, whose AP is not wanted, are the widest and cost the most.
    ``sync_free_ks``: None, or per AP column a host int at least as large as every row's cut-off in that
    column (the cut-off itself): ``ap_hits`` is then computed without reading anything back from the
    device (:func:`expected_ap_hits` with ``hmax``), for every column whose table fits
    :data:`SYNC_FREE_BUDGET`.
    """
    n0 = n.cumsum(1) - n                 # items before each group
    r0 = r.cumsum(1) - r                 # relevant items before each group
    p = xp.where(n > 0, r / xp.clamp_min(n, 1), 0.0)
    b = xp.where(n > 1, (r - 1) / xp.clamp_min(n - 1, 1), 0.0)
    hits_out, s_out, ap_out = [], [], []
    for c in range(cutoffs.shape[1]):
        k = xp.f64(cutoffs[:, c:c + 1])
        m = xp.minimum(xp.clamp_min(k - n0, 0), n)
        hits_out.append((p * m).sum(1))
        s_out.append(partial_sum(xp, p, b, m, n0, r0, harm).sum(1))
        if need_ap_hits and (ap_columns is None or c < ap_columns):
            hmax = None
            if sync_free_ks is not None and n.shape[0] * (int(sync_free_ks[c]) + 1) <= SYNC_FREE_BUDGET:
                hmax = int(sync_free_ks[c])          # a host int: m <= k, so min(m, r) <= k
            ap_out.append(expected_ap_hits(xp, n, r, m, n0, r0, p, b, harm, hmax=hmax))
    return xp.stack(hits_out), xp.stack(s_out), (xp.stack(ap_out) if need_ap_hits else None)


def expected_ap_hits(xp, n, r, m, n0, r0, p, b, harm, hmax: int | None = None):
    """E[S / hits] (0 when hits = 0) where at most one group per query straddles the cut-off: the
    hypergeometric law of the number ``h`` of relevant items before the cut in that group.

    ``hmax=None``: the straddling rows are found on the host (a sync on the GPU: whether any straddles,
    which rows, and the largest ``min(m, r)`` of their groups, which sizes the (rows, levels) table).
    ``hmax``: a host int at least ``min(m, r)`` of every straddling group (a cut-off ``k`` bounds it):
    the sync-free form, for the fused path's device re-count: every row is computed over ``hmax + 1``
    levels and the rows that straddle nothing keep their deterministic value, so the host queues it all
    without waiting for the device. Its levels past a row's ``min(m, r)`` add exact zeros; the only
    difference from the synced form is the length, hence the association order, of the final per-row
    sum over levels (a few ulps at most; tests/test_tie_sums_sync_free.py compares at 1e-13 relative).
    """
    full = (m == n) & (n > 0)
    s_full = xp.where(full, partial_sum(xp, p, b, n, n0, r0, harm), 0.0).sum(1)
    h_full = xp.where(full, r, 0.0).sum(1)
    straddle = (m > 0) & (m < n)
    det = xp.where(h_full > 0, s_full / xp.clamp_min(h_full, 1), 0.0)
    if hmax is not None:
        g = xp.first_true(straddle)          # rows straddling nothing: some group, masked below
        cols = (xp.take_along(t, g) for t in (n, r, m, n0, r0))
        ap = _straddle_ap(xp, *cols, s_full[:, None], h_full[:, None], hmax, harm)
        return xp.where(straddle.any(1), ap, det)
    if not bool(straddle.any()):
        return det
    rows = xp.rows(straddle.any(1))
    g = xp.first_true(straddle[rows])
    ns, rs, ms, n0s, r0s = (xp.take_along(t[rows], g) for t in (n, r, m, n0, r0))   # (s, 1) each
    hmax = int(xp.minimum(ms, rs).max())
    det = xp.copy(det)
    det[rows] = _straddle_ap(xp, ns, rs, ms, n0s, r0s, s_full[rows][:, None], h_full[rows][:, None], hmax, harm)
    return det


def _straddle_ap(xp, ns, rs, ms, n0s, r0s, s_full, h_full, hmax: int, harm):
    """(s,) expected AP of rows whose group (ns, rs, after n0s items of which r0s relevant) straddles the
    cut at ms items, given the sums s_full, h_full (s, 1) of their groups before it: the hypergeometric
    law of h relevant before the cut over the levels h = 0..hmax."""
    h = xp.arange_like(hmax + 1, ns)[None, :]                                      # (1, H)
    valid = (h <= xp.minimum(ms, rs)) & (h >= xp.clamp_min(ms - (ns - rs), 0))
    lg = xp.lgamma
    log_pmf = (lg(rs + 1) - lg(h + 1) - lg(rs - h + 1)
               + lg(ns - rs + 1) - lg(ms - h + 1) - lg(ns - rs - ms + h + 1)
               - (lg(ns + 1) - lg(ms + 1) - lg(ns - ms + 1)))
    pmf = xp.where(valid, xp.exp(xp.where(valid, log_pmf, 0.0)), 0.0)
    # given h relevant among the m positions before the cut: precision sum of those positions
    bh = xp.where(ms > 1, (h - 1) / xp.clamp_min(ms - 1, 1), 0.0)
    hdiff = xp.take(harm, n0s + ms) - xp.take(harm, n0s)
    s_h = (h / ms) * (bh * ms + (r0s + 1 - bh * (n0s + 1)) * hdiff)
    tot_h = h_full + h
    ap = xp.where(tot_h > 0, (s_full + s_h) / xp.clamp_min(tot_h, 1), 0.0)
    return (pmf * ap).sum(1)


def apply_convention(xp, convention: str, hits, s, ap_hits, k, R):
    """Per-query AP under a named convention (0 where the denominator is 0)."""
    if convention == "hits":
        return ap_hits
    denom = R if convention == "r" else xp.minimum(k, R)
    return xp.where(denom > 0, s / xp.clamp_min(denom, 1), 0.0)
