"""Top-k of Hamming rankings without sorting or ``topk``: find the k-th distance level first.

A Hamming distance takes only ``bits + 1`` values, so the k nearest items of a query are every
item strictly nearer than the k-th smallest distance ``t`` plus some of the items at ``t``. Both
functions below work on the (queries, N) matrix of +-1 products ``dot`` (distance
``d = (bits - dot) / 2``) and read it a fixed, small number of times, with no device-to-host
synchronisation in the level search:

1. :func:`kth_level` — a (J+1)-ary search over distance levels: each pass counts, per query, the
   items at distance <= each of J candidate levels (one fused reduction on CUDA) and keeps the
   interval that holds the k-th smallest distance. The interval width goes from ``bits`` to
   ``floor(width / (J+1))`` per pass, so 64-bit codes need 2 passes and 2048-bit codes 4.
2. :func:`level_histograms` — tie-aware metrics need, per query, the number of all and of relevant
   items at each distance up to ``t``. Items nearer than ``t`` are fewer than k per query: they are
   listed with one ``nonzero`` and counted with ``index_add_``; the level ``t`` itself is counted by
   one fused reduction (all items at ``t`` and the relevant ones).
3. :func:`level_ranking` — the exact top-k in faiss's order (distance, then database index): the items
   nearer than ``t`` and the first ``k - #(d < t)`` items at ``t`` in index order (a cumulative
   count along the row), then a sort of those k items per query only.

On CUDA the counting passes over large matrices (``COMPILE_MIN_ELEMENTS``) are compiled with
``torch.compile`` (one kernel that reads ``dot`` once per pass); any compiler failure falls back to the
eager ops, which compute the same integers.
Set HASHBENCH_EVAL_COMPILE=0 to never compile.
"""

from __future__ import annotations

import os
import warnings

import torch

#: candidate levels per search pass (counts computed together in one reading of the products)
SEARCH_WIDTH = 8
#: product matrices smaller than this are counted with eager ops: compiling (tens of seconds, once
#: per process) only pays off on large ones
COMPILE_MIN_ELEMENTS = 2 ** 26

_compiled: dict = {}


def _counts_le(dot: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """(B, J) int32: per row, the number of products >= each of the J dot-space thresholds."""
    return torch.stack([(dot >= thr[:, j:j + 1]).sum(1, dtype=torch.int32) for j in range(SEARCH_WIDTH)], 1)


def maybe_compiled(name: str, fn, x: torch.Tensor):
    """``fn`` compiled for CUDA (once per process) when ``x`` is large, or ``fn`` itself (CPU, small
    input, no compiler, opted out)."""
    if (x.device.type != "cuda" or x.numel() < COMPILE_MIN_ELEMENTS
            or os.environ.get("HASHBENCH_EVAL_COMPILE", "1") == "0"):
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True)
    compiled = _compiled[name]
    if compiled is False:
        return fn

    def run(*args):
        try:
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - no compiler / Triton: the eager ops are exact too
            warnings.warn(f"fused {name} unavailable ({type(exc).__name__}: {exc}); using eager ops")
            _compiled[name] = False
            return fn(*args)
    return run


def search_passes(bits: int) -> int:
    """Passes of :func:`kth_level` for ``bits``-bit codes: the width shrinks to floor(width / (J+1))."""
    width, passes = bits, 0
    while width > 0:
        width //= SEARCH_WIDTH + 1
        passes += 1
    return passes


def kth_level(dot: torch.Tensor, bits: int, k: int):
    """Per row of ``dot``: the k-th smallest distance ``t`` and the counts ``#(d < t)``, ``#(d <= t)``.

    ``1 <= k <= N``. Returns three (B,) int64 tensors. Invariant of the search, per row:
    ``#(d <= lo - 1) < k <= #(d <= hi)`` with ``c_lo = #(d <= lo - 1)`` and ``c_hi = #(d <= hi)``.
    """
    b_rows, n = dot.shape
    dev = dot.device
    lo = torch.zeros(b_rows, dtype=torch.int64, device=dev)
    hi = torch.full((b_rows,), bits, dtype=torch.int64, device=dev)
    c_lo = torch.zeros(b_rows, dtype=torch.int64, device=dev)
    c_hi = torch.full((b_rows,), n, dtype=torch.int64, device=dev)
    j = torch.arange(1, SEARCH_WIDTH + 1, device=dev)
    count = maybe_compiled("level count", _counts_le, dot)
    for _ in range(search_passes(bits)):
        width = hi - lo
        t = lo[:, None] + (j[None, :] * width[:, None]) // (SEARCH_WIDTH + 1)   # in [lo, hi - 1] (or lo)
        c = count(dot, (bits - 2 * t).to(dot.dtype)).long()                      # #(d <= t_j), nondecreasing
        below = (c < k).sum(1)                                                   # candidates below the k-th
        up = torch.clamp(below, max=SEARCH_WIDTH - 1)[:, None]
        down = torch.clamp(below - 1, min=0)[:, None]
        has_up, has_down = below < SEARCH_WIDTH, below > 0
        hi = torch.where(has_up, t.gather(1, up)[:, 0], hi)
        c_hi = torch.where(has_up, c.gather(1, up)[:, 0], c_hi)
        lo = torch.where(has_down, t.gather(1, down)[:, 0] + 1, lo)
        c_lo = torch.where(has_down, c.gather(1, down)[:, 0], c_lo)
    return hi, c_lo, c_hi


def level_histograms(dot: torch.Tensor, bits: int, k: int, rel_pairs, boundary):
    """(B, bits + 1) float64 counts of all / relevant items per distance, exact up to the k-th
    smallest distance ``t`` of each row (later levels are 0): enough for any cut-off <= k.

    ``rel_pairs(rows, cols)`` gives the relevance of the listed (query row, database item) pairs;
    ``boundary(dot, thr)`` gives, per row, the number of items and of relevant items whose product
    equals ``thr`` (B, 1).
    """
    b_rows = dot.shape[0]
    t, _, _ = kth_level(dot, bits, k)
    thr = (bits - 2 * t).to(dot.dtype)[:, None]
    n_star, r_star = boundary(dot, thr)
    rows, cols = torch.nonzero(dot > thr, as_tuple=True)                        # fewer than k per row
    level = ((bits - dot[rows, cols].to(torch.float32)) * 0.5).long()
    width = bits + 1
    flat = rows * width + level
    f64 = torch.float64
    n = torch.zeros(b_rows * width, dtype=f64, device=dot.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=f64))
    r = torch.zeros_like(n).index_add_(0, flat, rel_pairs(rows, cols).to(f64))
    n, r = n.view(b_rows, width), r.view(b_rows, width)
    n.scatter_(1, t[:, None], n_star.to(f64)[:, None])
    r.scatter_(1, t[:, None], r_star.to(f64)[:, None])
    return n, r


def level_ranking(dot: torch.Tensor, bits: int, k: int):
    """The exact top-k per row in (distance, database index) order: ``(ids, dist)`` (B, k) int64."""
    b_rows, n = dot.shape
    t, c_lt, _ = kth_level(dot, bits, k)
    thr = (bits - 2 * t).to(dot.dtype)[:, None]
    at = dot == thr
    first = torch.cumsum(at, 1, dtype=torch.int32) <= (k - c_lt)[:, None].to(torch.int32)
    take = (dot > thr) | (at & first)                                            # exactly k per row
    cols = torch.nonzero(take)[:, 1].view(b_rows, k)
    dist = ((bits - dot.gather(1, cols).to(torch.float32)) * 0.5).long()
    order = torch.sort(dist * n + cols, 1).indices
    return cols.gather(1, order), dist.gather(1, order)
