"""The tie-aware sums of :func:`tie_sums.grouped_sums` as one Triton kernel per cut-off column.

``tie_sums.grouped_sums`` (the reference, shared by the torch and numpy paths) spends ~100 small tensor
operations per column on the host - about 2.3 ms of Python and launches per evaluation on a GPU, more
than half the host time of a 10k x 1M fused evaluation - and, without a host sync, evaluates the
hypergeometric law of every query over ``k + 1`` levels in float64 tables of (queries, k + 1). Here
one program per query does the same sums in registers:

* ``hits = sum_g p_g m_g`` and ``S = sum_g partial_sum(m_g)`` over the tie groups ``g`` (the expected
  hits and precision sum before the cut-off; ``partial_sum`` is ``tie_sums.partial_sum``: ``p *
  sum_{j=1..m} (r0 + 1 + (j-1) b) / (n0 + j)`` through the harmonic table);
* the AP of the "hits" convention, ``E[S / hits]``: the groups wholly before the cut add their
  deterministic sums (``s_full``, ``h_full``); the one group that straddles the cut (``0 < m < n``;
  at most one per query) adds, for each number ``h`` of its relevant items before the cut, the
  hypergeometric probability ``C(r, h) C(n - r, m - h) / C(n, m)`` times ``(s_full + s_h) /
  (h_full + h)``, as ``tie_sums._straddle_ap`` does. ``log C`` comes from a log-factorial table
  ``lf[x] = lgamma(x + 1)`` (``torch.lgamma`` on the integers, the values the reference computes
  elementwise; Triton's interpreter has no ``lgamma``).

The only differences from the reference are the order of the float64 additions (a few ulps). On the
GPU the loop over ``h`` runs from the straddling group's lowest to highest possible ``h`` only;
Triton's interpreter (the CPU tests) needs a constant trip count and loops over ``0..HB`` with masks.
Importing this module raises ImportError when Triton is missing.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

#: Triton's CPU interpreter (the tests): read at import, as ``triton.jit`` reads it
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
F64 = torch.float64
#: levels of ``h`` per step of the straddling group's loop
BH = 128


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


# tl.sum / tl.min / tl.cumsum are themselves jit functions of triton.language, which the interpreter cannot
# call when Triton was imported before TRITON_INTERPRET was set (the tests); tl.reduce / associative_scan can
@triton.jit
def _sum(x):
    return tl.reduce(x, 0, _add)


@triton.jit
def _cumsum(x):
    return tl.associative_scan(x, 0, _add)


@triton.jit
def _partial(p, b, mm, n0, r0, harm_ptr):
    """tie_sums.partial_sum: ``p * (b m + (r0 + 1 - b (n0 + 1)) (H[n0 + m] - H[n0]))``."""
    hdiff = tl.load(harm_ptr + (n0 + mm).to(tl.int64)) - tl.load(harm_ptr + n0.to(tl.int64))
    return p * (b * mm + (r0 + 1.0 - b * (n0 + 1.0)) * hdiff)


@triton.jit
def _pick(sel, x):
    """The entry of ``x`` where ``sel`` (one lane, or none: 0)."""
    return _sum(tl.where(sel, x, 0.0))


@triton.jit
def _straddle_terms(h0, lo, hi, any_straddle, ns, rs, ms, n0s, r0s, c0, hdiff, s_full, h_full, lf_ptr,
                    BH: tl.constexpr):
    """Levels ``h = h0 .. h0 + BH - 1`` of the straddling group: P(h relevant before the cut) times the
    AP given h (tie_sums._straddle_ap), 0 outside ``lo..hi``."""
    h = (h0 + tl.arange(0, BH)).to(tl.float64)
    valid = (h >= lo) & (h <= hi) & any_straddle
    # log pmf = log C(r, h) + log C(n - r, m - h) - log C(n, m), lf[x] = log x!
    lfh = tl.load(lf_ptr + tl.where(valid, h, 0.0).to(tl.int64))
    lf1 = tl.load(lf_ptr + tl.where(valid, rs - h, 0.0).to(tl.int64))
    lf2 = tl.load(lf_ptr + tl.where(valid, ms - h, 0.0).to(tl.int64))
    lf3 = tl.load(lf_ptr + tl.where(valid, ns - rs - ms + h, 0.0).to(tl.int64))
    pmf = tl.where(valid, tl.exp(tl.where(valid, c0 - lfh - lf1 - lf2 - lf3, 0.0)), 0.0)
    # given h relevant among the m positions before the cut: their precision sum, as partial_sum
    bh = tl.where(ms > 1, (h - 1.0) / tl.maximum(ms - 1.0, 1.0), 0.0)
    s_h = (h / tl.maximum(ms, 1.0)) * (bh * ms + (r0s + 1.0 - bh * (n0s + 1.0)) * hdiff)
    tot = h_full + h
    ap_h = tl.where(tot > 0, (s_full + s_h) / tl.maximum(tot, 1.0), 0.0)
    return tl.where(valid, pmf * ap_h, 0.0)


@triton.jit
def _tie_sums_kernel(n_ptr, r_ptr, k_ptr, harm_ptr, lf_ptr, hits_ptr, s_ptr, ap_ptr, G, M, col,
                     BG: tl.constexpr, AP: tl.constexpr, HB: tl.constexpr, BH: tl.constexpr,
                     RUNTIME_LOOP: tl.constexpr):
    """Row ``i`` (program 0), column ``col``: ``hits[i]``, ``s[i]`` and (``AP``) ``ap[i]``. ``n``, ``r``:
    (q, G) float64 counts of the tie groups, nearest first; ``k``: (q, M) int64 cut-offs."""
    i = tl.program_id(0)
    g = tl.arange(0, BG)
    gm = g < G
    n = tl.load(n_ptr + i * G + g, mask=gm, other=0.0)
    r = tl.load(r_ptr + i * G + g, mask=gm, other=0.0)
    k = tl.load(k_ptr + i * M + col).to(tl.float64)
    n0 = _cumsum(n) - n                              # items before each group
    r0 = _cumsum(r) - r                              # relevant items before each group
    p = tl.where(n > 0, r / tl.maximum(n, 1.0), 0.0)      # share of relevant items in the group
    b = tl.where(n > 1, (r - 1.0) / tl.maximum(n - 1.0, 1.0), 0.0)
    m = tl.minimum(tl.maximum(k - n0, 0.0), n)            # the group's items before the cut
    tl.store(hits_ptr + i, _sum(p * m))
    tl.store(s_ptr + i, _sum(_partial(p, b, m, n0, r0, harm_ptr)))
    if AP:
        full = (m == n) & (n > 0)
        s_full = _sum(tl.where(full, _partial(p, b, n, n0, r0, harm_ptr), 0.0))
        h_full = _sum(tl.where(full, r, 0.0))
        det = tl.where(h_full > 0, s_full / tl.maximum(h_full, 1.0), 0.0)
        straddle = (m > 0) & (m < n)
        gs = tl.reduce(tl.where(straddle, g, BG), 0, _min)        # the straddling group (BG: none)
        sel = g == gs
        ns, rs, ms, n0s, r0s = _pick(sel, n), _pick(sel, r), _pick(sel, m), _pick(sel, n0), _pick(sel, r0)
        lo = tl.maximum(ms - (ns - rs), 0.0)              # h runs over lo..hi
        hi = tl.minimum(ms, rs)
        c0 = (tl.load(lf_ptr + rs.to(tl.int64)) + tl.load(lf_ptr + (ns - rs).to(tl.int64))
              - tl.load(lf_ptr + ns.to(tl.int64)) + tl.load(lf_ptr + ms.to(tl.int64))
              + tl.load(lf_ptr + (ns - ms).to(tl.int64)))   # log r! (n - r)! m! (n - m)! / n!
        hdiff = tl.load(harm_ptr + (n0s + ms).to(tl.int64)) - tl.load(harm_ptr + n0s.to(tl.int64))
        acc = tl.full((BH,), 0.0, tl.float64)
        if RUNTIME_LOOP:                                  # GPU: the straddling group's own h range
            for h0 in range(lo.to(tl.int32), tl.where(gs < BG, hi.to(tl.int32) + 1, 0), BH):
                acc += _straddle_terms(h0, lo, hi, gs < BG, ns, rs, ms, n0s, r0s, c0, hdiff, s_full, h_full,
                                       lf_ptr, BH)
        else:                                             # interpreter: a constant trip count, masked
            for h0 in range(0, HB, BH):
                acc += _straddle_terms(h0, lo, hi, gs < BG, ns, rs, ms, n0s, r0s, c0, hdiff, s_full, h_full,
                                       lf_ptr, BH)
        tl.store(ap_ptr + i, tl.where(gs < BG, _sum(acc), det))


def log_factorials(n_max: int, device) -> torch.Tensor:
    """``lf[x] = lgamma(x + 1) = log x!`` for ``x = 0..n_max`` (float64)."""
    return torch.lgamma(torch.arange(n_max + 1, dtype=F64, device=device) + 1)


def grouped_sums(n: torch.Tensor, r: torch.Tensor, cutoffs: torch.Tensor, harm: torch.Tensor, lf: torch.Tensor,
                 ks: list, need_ap_hits: bool = True, ap_columns: int | None = None):
    """:func:`tie_sums.grouped_sums` (same arguments and results) by the kernel. ``lf``:
    :func:`log_factorials` up to at least ``sum(n)``; ``ks``: per AP column a host int at least every
    row's cut-off there (the interpreter's loop bound)."""
    q, G = n.shape
    n, r = n.to(F64).contiguous(), r.to(F64).contiguous()
    cut = cutoffs.to(torch.int64).contiguous()
    m_cols = cut.shape[1]
    n_ap = (m_cols if ap_columns is None else min(ap_columns, m_cols)) if need_ap_hits else 0
    hits = torch.empty(m_cols, q, dtype=F64, device=n.device)
    s = torch.empty_like(hits)
    ap = torch.empty(max(n_ap, 1), q, dtype=F64, device=n.device)
    bg = triton.next_power_of_2(max(G, 1))
    with (torch.cuda.device(n.device) if n.device.type == "cuda" else contextlib.nullcontext()):
        for c in range(m_cols):
            want_ap = c < n_ap
            hb = triton.next_power_of_2(min(int(ks[c]), lf.numel() - 1) + 1) if (want_ap and INTERPRET) else BH
            _tie_sums_kernel[(q,)](n, r, cut, harm, lf, hits[c], s[c], ap[c] if want_ap else hits[c], G, m_cols, c,
                                   BG=bg, AP=want_ap, HB=max(hb, BH), BH=BH, RUNTIME_LOOP=not INTERPRET)
    return hits.T, s.T, (ap[:n_ap].T if need_ap_hits else None)

