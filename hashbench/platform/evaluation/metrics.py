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

F64 = torch.float64


def harmonic_table(n_max: int, device) -> torch.Tensor:
    """``H[i] = sum_{j<=i} 1/j`` for ``i = 0..n_max`` (float64)."""
    h = torch.zeros(n_max + 1, dtype=F64, device=device)
    if n_max:
        h[1:] = torch.cumsum(1.0 / torch.arange(1, n_max + 1, dtype=F64, device=device), 0)
    return h


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


def _partial_sum(p, b, m, n0, r0, harm):
    """``p * sum_{j=1..m} (r0 + 1 + (j-1) b) / (n0 + j)`` in closed form (all float64 tensors)."""
    hdiff = harm[(n0 + m).long()] - harm[n0.long()]
    return p * (b * m + (r0 + 1 - b * (n0 + 1)) * hdiff)


def grouped_sums(n: torch.Tensor, r: torch.Tensor, cutoffs: torch.Tensor, harm: torch.Tensor,
                 need_ap_hits: bool = True):
    """Expected sums over uniformly random orders inside each tie group.

    n, r: (q, G) float64 item and relevant counts of consecutive tie groups, nearest first (empty
    groups allowed); cutoffs: (q, m) int64; harm: :func:`harmonic_table` up to ``sum(n)``.
    Returns ``hits, S, ap_hits`` (q, m) float64 (``ap_hits`` is None unless asked for).
    """
    n0 = torch.cumsum(n, 1) - n          # items before each group
    r0 = torch.cumsum(r, 1) - r          # relevant items before each group
    nonempty = n > 0
    p = torch.where(nonempty, r / n.clamp_min(1), 0.0)
    b = torch.where(n > 1, (r - 1) / (n - 1).clamp_min(1), 0.0)
    hits_out, s_out, ap_out = [], [], []
    for c in range(cutoffs.shape[1]):
        k = cutoffs[:, c:c + 1].to(F64)
        m = torch.minimum((k - n0).clamp_min(0), n)
        hits_out.append((p * m).sum(1))
        s_out.append(_partial_sum(p, b, m, n0, r0, harm).sum(1))
        if need_ap_hits:
            ap_out.append(_expected_ap_hits(n, r, m, n0, r0, p, b, harm))
    hits, s = torch.stack(hits_out, 1), torch.stack(s_out, 1)
    return hits, s, (torch.stack(ap_out, 1) if need_ap_hits else None)


def _expected_ap_hits(n, r, m, n0, r0, p, b, harm):
    """E[S / hits] (0 when hits = 0) where at most one group per query straddles the cut-off."""
    full = (m == n) & (n > 0)
    s_full = torch.where(full, _partial_sum(p, b, n, n0, r0, harm), 0.0).sum(1)
    h_full = torch.where(full, r, 0.0).sum(1)
    straddle = (m > 0) & (m < n)
    has = straddle.any(1)
    det = torch.where(h_full > 0, s_full / h_full.clamp_min(1), 0.0)
    if not bool(has.any()):
        return det
    rows = has.nonzero()[:, 0]
    g = straddle[rows].to(torch.int64).argmax(1, keepdim=True)
    pick = lambda t: t[rows].gather(1, g)  # noqa: E731 - (s, 1) values of the straddling group
    ns, rs, ms, n0s, r0s = pick(n), pick(r), pick(m), pick(n0), pick(r0)
    hmax = int(torch.minimum(ms, rs).max().item())
    h = torch.arange(hmax + 1, device=n.device, dtype=F64).unsqueeze(0)            # (1, H)
    valid = (h <= torch.minimum(ms, rs)) & (h >= (ms - (ns - rs)).clamp_min(0))
    lg = torch.lgamma
    log_pmf = (lg(rs + 1) - lg(h + 1) - lg(rs - h + 1)
               + lg(ns - rs + 1) - lg(ms - h + 1) - lg(ns - rs - ms + h + 1)
               - (lg(ns + 1) - lg(ms + 1) - lg(ns - ms + 1)))
    pmf = torch.where(valid, torch.exp(torch.where(valid, log_pmf, 0.0)), 0.0)
    # given h relevant among the m positions before the cut: precision sum of those positions
    bh = torch.where(ms > 1, (h - 1) / (ms - 1).clamp_min(1), 0.0)
    hdiff = harm[(n0s + ms).long()] - harm[n0s.long()]
    s_h = (h / ms) * (bh * ms + (r0s + 1 - bh * (n0s + 1)) * hdiff)
    tot_h = h_full[rows].unsqueeze(1) + h
    ap = torch.where(tot_h > 0, (s_full[rows].unsqueeze(1) + s_h) / tot_h.clamp_min(1), 0.0)
    det = det.clone()
    det[rows] = (pmf * ap).sum(1)
    return det


def apply_convention(convention: str, hits, s, ap_hits, k, R):
    """Per-query AP under a named convention (0 where the denominator is 0)."""
    if convention == "hits":
        return ap_hits
    denom = R if convention == "r" else torch.minimum(k, R)
    return torch.where(denom > 0, s / denom.clamp_min(1), 0.0)
