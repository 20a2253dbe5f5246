"""Per-query retrieval sums, from a ranking or from ordered groups of tied items.

Both entry points return, for every query and every cut-off ``k``:

* ``hits`` - (expected) number of relevant items in the top ``k``;
* ``S`` - (expected) sum, over the relevant items in the top ``k``, of the precision at their rank;
* ``ap_hits`` - (expected) ``S / hits`` with ``0`` when there is no hit: the "hits" convention.

AP under the other conventions is linear in ``S`` (``S / R`` and ``S / min(k, R)``), so its
expectation is ``E[S]`` over a fixed denominator. The hits convention divides by a random ``hits``
when a tie group straddles ``k``; its expectation is computed exactly with the hypergeometric law
of the number of relevant items that fall before the cut (see docs/metrics.md).

Tie-aware sums follow He et al., "Hashing as Tie-Aware Learning to Rank" (CVPR 2018), eq. (6):
in a group of ``n`` tied items with ``r`` relevant, starting after ``N0`` items of which ``R0`` are
relevant, the item at in-group position ``j`` is relevant with probability ``r / n`` and, given
that, has ``(j - 1)(r - 1)/(n - 1)`` relevant items before it in the group on average, so

    E[sum of precisions over the first m positions]
        = r/n * sum_{j=1..m} (R0 + 1 + (j - 1) b) / (N0 + j),   b = (r - 1)/(n - 1)
        = r/n * (b m + (R0 + 1 - b (N0 + 1)) (H(N0 + m) - H(N0)))

with ``H`` the harmonic numbers: a closed form, vectorised over queries and groups.
"""

from __future__ import annotations

import numpy as np
import torch

from hashbench.platform.evaluation import tie_sums

F64 = torch.float64


class TorchOps:
    """The array namespace of :mod:`~hashbench.platform.evaluation.tie_sums` for torch float64 tensors."""

    where = staticmethod(torch.where)
    minimum = staticmethod(torch.minimum)
    exp = staticmethod(torch.exp)
    lgamma = staticmethod(torch.lgamma)

    @staticmethod
    def clamp_min(x, value):
        return x.clamp_min(value)

    @staticmethod
    def f64(x):
        return x.to(F64)

    @staticmethod
    def take(table, index):
        return table[index.long()]

    @staticmethod
    def stack(xs):
        return torch.stack(xs, 1)

    @staticmethod
    def rows(mask):
        return mask.nonzero()[:, 0]

    @staticmethod
    def first_true(mask):
        return mask.to(torch.int64).argmax(1, keepdim=True)

    @staticmethod
    def take_along(x, cols):
        return x.gather(1, cols)

    @staticmethod
    def arange_like(n, like):
        return torch.arange(n, dtype=F64, device=like.device)

    @staticmethod
    def zeros_like_table(n, like):
        return torch.zeros(n, dtype=F64, device=like.device)

    @staticmethod
    def copy(x):
        return x.clone()


TORCH = TorchOps


def harmonic_table(n_max: int, device) -> torch.Tensor:
    """``H[i] = sum_{j<=i} 1/j`` for ``i = 0..n_max`` (float64)."""
    return tie_sums.harmonic_table(TORCH, n_max, torch.empty(0, device=device))


def ranked_sums(rel: torch.Tensor, cutoffs: torch.Tensor):
    """Sums for a fixed ranking.

    rel: (q, K) bool, relevance of the ranked items; cutoffs: (q, m) int64 in ``[0, K]``.
    Returns ``hits, S, ap_hits``, each (q, m) float64.
    """
    q, K = rel.shape
    cum = torch.cumsum(rel, 1, dtype=torch.int32)
    pos = torch.arange(1, K + 1, device=rel.device, dtype=F64)
    contrib = torch.where(rel, cum.to(F64) / pos, 0.0)
    zero = torch.zeros(q, 1, dtype=F64, device=rel.device)
    s_cum = torch.cat([zero, torch.cumsum(contrib, 1)], 1)
    h_cum = torch.cat([zero, cum.to(F64)], 1)
    hits = h_cum.gather(1, cutoffs)
    s = s_cum.gather(1, cutoffs)
    ap_hits = torch.where(hits > 0, s / hits.clamp_min(1), 0.0)
    return hits, s, ap_hits


def ranked_sums_np(rel: np.ndarray, cutoffs: np.ndarray):
    """:func:`ranked_sums` in numpy for the CPU: only the relevant positions are touched."""
    q, K = rel.shape
    flat = np.flatnonzero(rel)
    per_row = np.count_nonzero(rel, axis=1)
    rows = np.repeat(np.arange(q), per_row)
    cols = flat - rows * K
    ordinal = np.arange(1, flat.size + 1) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    prec = ordinal / (cols + 1.0)
    hits = np.empty(cutoffs.shape, dtype=np.float64)
    s = np.empty(cutoffs.shape, dtype=np.float64)
    for c in range(cutoffs.shape[1]):
        keep = cols < cutoffs[rows, c]
        hits[:, c] = np.bincount(rows[keep], minlength=q)
        s[:, c] = np.bincount(rows[keep], weights=prec[keep], minlength=q)
    ap = np.divide(s, hits, out=np.zeros_like(s), where=hits > 0)
    return torch.from_numpy(hits), torch.from_numpy(s), torch.from_numpy(ap)


def grouped_sums(n: torch.Tensor, r: torch.Tensor, cutoffs: torch.Tensor, harm: torch.Tensor,
                 need_ap_hits: bool = True, ap_columns: int | None = None, sync_free_ks=None):
    """Expected sums over uniformly random orders inside each tie group: :func:`tie_sums.grouped_sums`
    for torch tensors (see there; ``sync_free_ks``: its form without host syncs)."""
    return tie_sums.grouped_sums(TORCH, n, r, cutoffs, harm, need_ap_hits, ap_columns, sync_free_ks)


def apply_convention(convention: str, hits, s, ap_hits, k, R):
    """Per-query AP under a named convention (0 where the denominator is 0)."""
    return tie_sums.apply_convention(TORCH, convention, hits, s, ap_hits, k, R)
