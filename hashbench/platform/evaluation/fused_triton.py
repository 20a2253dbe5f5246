"""Fused Hamming evaluation kernels (Triton): per-query level histograms without the (queries, N) matrix.

Every exact Hamming metric needs, per query, the number of database items and of relevant items at
each distance level ``0..bits`` (the tie-aware sums, ``P@H<=r``, the PR curve), and, for the index
tie policy, the top-k ranking in (distance, database index) order. Two kernels stream the packed
codes and labels once per pass and keep only that:

* :func:`_hist_kernel` - one program per (block of ``BQ`` queries, chunk of the database); it walks
  its chunk in tiles of ``BN`` items, computes the ``(BN, BQ)`` distances (XOR + popcount of 32-bit
  words) and relevances (equal class id, or a shared bit of the multi-hot masks) in registers and
  adds ``1`` to ``hist[query, 2 * distance + relevant]`` (``atomic_add``) for the items at a distance
  ``<= thr[query]``. Nothing of size (queries, N) is ever written.
* :func:`_list_kernel` - the index-tie / top-k pass: the same tiles; every item at a distance
  ``<= t[query]`` (``t`` = the k-th smallest distance, known from the histogram) takes a slot of the
  query's row (an atomic counter) and stores its key ``distance * N + index``. The row holds exactly
  ``#(d <= t)`` keys; sorting them (torch) and keeping the first ``k`` is the exact top-k in faiss's
  order, from which the index-tie sums follow.

Thresholds keep the atomics few at cut-offs ``k < N``: the histogram of a strided sample of the
database (``SAMPLE`` items, every pair counted) gives per query a level ``T`` whose sample count is
well above ``k * SAMPLE / N``; the full pass counts only items at ``d <= T`` (a few times ``k`` per
query). A query whose ``#(d <= T)`` turns out below ``k`` (unlikely; the sample is a guess) is
counted again with ``T = bits``: the result is exact either way. ``k = N``, ``MAP@R`` and the PR curve
count every pair. The top-k pass needs the exact k-th distance ``t`` (from a thresholded counting pass)
to size its rows; opt-in, ``HASHBENCH_FUSED_ONEPASS=1`` skips that pass: the lists are filled at the
sample's ``T`` in rows of ``HASHBENCH_FUSED_ROOM`` (2) times the sample's estimate of ``#(d <= T)``, and
the rows that overflow or hold fewer than ``k`` items are ranked again the default way.

The popcount is the hardware instruction (``libdevice.popc``) on the GPU and a SWAR bit trick in
Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors: what the tests run), which lacks it.
Importing this module raises ImportError when Triton is missing; the engines then keep torch.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from hashbench.platform.errors import HashbenchError

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_env = os.environ.get


def _tunable(name: str, default: int, power_of_2: bool = True) -> int:
    """``HASHBENCH_FUSED_<name>`` as a positive int (a power of 2 where the kernel's tile needs one)."""
    raw = _env(f"HASHBENCH_FUSED_{name}", str(default))
    try:
        v = int(raw)
    except ValueError:
        v = 0
    if v <= 0 or (power_of_2 and v & (v - 1)):
        kind = "a power of 2" if power_of_2 else "a positive integer"
        raise HashbenchError(f"HASHBENCH_FUSED_{name}={raw!r}: expected {kind} (default {default}); unset it for the default")
    return v


# Defaults: the fastest of 48 settings timed on one H100 (10k x 1M, 64 bits, mAP@1000; benchmarks/fused_tune.sh
# grids 1-3, session 7: benchmarks/results/2026-12-06/gpu/session7/fused_h100.md). Small query blocks win:
# more programs, and fewer registers per thread for the (BN, BQ) tile.
#: histogram tile: queries per program, database items per step (HASHBENCH_FUSED_BQ / _BN)
BQ, BN = _tunable("BQ", 8), _tunable("BN", 256)
#: warps per program (histogram kernel)
WARPS = _tunable("WARPS", 8)
#: the top-k list kernel's own tile and warps (HASHBENCH_FUSED_LIST_BQ / _LIST_BN / _LIST_WARPS): it does
#: more per taken pair (a slot from an atomic counter, a key store). 8 / 256 / 8 since session 9 (grid 6 and
#: five processes each on one H100: index ties 18.5 ms against 19.6 at the earlier 4 / 256 / 2)
LIST_BQ, LIST_BN, LIST_WARPS = _tunable("LIST_BQ", 8), _tunable("LIST_BN", 256), _tunable("LIST_WARPS", 8)
#: database items whose histogram estimates the per-query threshold at cut-offs k < N
SAMPLE = _tunable("SAMPLE", 8192, power_of_2=False)
#: items per program along the database (rounded down to a multiple of the tile's BN)
CHUNK = _tunable("CHUNK", 1 << 14, power_of_2=False)
#: opt-in (HASHBENCH_FUSED_ONEPASS=1): top-k lists straight at the sample's threshold, without the exact
#: counting pass; rows get ROOM times the sample's estimate of their length (HASHBENCH_FUSED_ROOM)
ONEPASS = _env("HASHBENCH_FUSED_ONEPASS", "0") == "1"
ROOM = float(_env("HASHBENCH_FUSED_ROOM", 2.0))
#: where the rows whose sample threshold fell short of k are counted again (HASHBENCH_FUSED_RECOUNT):
#: "device" (default since session 9: no sync; a second launch over every query in which the rows that are
#: not short take nothing and skip their tiles, so the host queues the work after it while the full pass
#: runs, and the tie-aware sums after it take no sync either: fused_tie_sums, or without it
#: FusedEngine.sync_free and tie_sums.expected_ap_hits's hmax) or "host" (a sync reads whether any row is
#: short, then only those rows are launched). On one H100, 10k x 1M, mAP@1000 tie-aware: 9.3-9.9 ms
#: against 9.6-10.8 (benchmarks/fused_variance.py, two processes of three copies each)
RECOUNT = _env("HASHBENCH_FUSED_RECOUNT", "device")
if RECOUNT not in ("host", "device"):
    raise HashbenchError(f"HASHBENCH_FUSED_RECOUNT={RECOUNT!r}: expected 'host' or 'device'; unset it for 'device'")
#: largest number of keys sorted at once in the top-k pass (queries x row length)
SORT_BUDGET = 1 << 27
#: top-k keys ``distance * N + index`` are int32 below this (the int32 maximum pads the rows)
KEY32_LIMIT = 2 ** 31 - 1


@triton.jit
def _popc(x, USE_POPC: tl.constexpr):
    if USE_POPC:
        c = libdevice.popc(x)
    else:                                   # SWAR on uint32 (logical shifts)
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        c = ((u * 0x01010101) >> 24).to(tl.int32)
    return c


@triton.jit
def _max_combine(a, b):
    """tl.reduce's combine for a maximum (tl.max itself is a jit function of triton.language, which the
    tests' interpreter cannot call when Triton was imported before TRITON_INTERPRET was set)."""
    return tl.maximum(a, b)


# A program's query words (up to 4: codes of <= 128 bits) and multi-hot label words (up to 2) are loaded once,
# before its tile loop, and kept in registers; longer ones are loaded with every tile (registers would spill).
# The compiler cannot hoist those loads itself: the atomics might, for all it knows, write the query memory.
# Per pair that leaves, at 64 bits, 19 SASS instructions instead of 31 (sm_90, BQ=8 BN=256 8 warps:
# benchmarks/kernel_sass.py counts them offline).


@triton.jit
def _word(ptr, w: tl.constexpr, stride, idx, mask, other, W: tl.constexpr):
    """Word ``w`` of the word-major array at ``ptr`` for the rows ``idx`` (zeros past ``W``: never used)."""
    if w < W:
        v = tl.load(ptr + w * stride + idx, mask=mask, other=other)
    else:
        v = idx * 0                         # (tl.zeros_like is a jit function: see _max_combine)
    return v


@triton.jit
def _distances(qw_ptr, dbw_ptr, rows, rmask, cols, cmask, nq, N, q0, q1, q2, q3, W: tl.constexpr,
               USE_POPC: tl.constexpr):
    """(BN, BQ) int32 Hamming distances of database items ``cols`` to query rows ``rows``. Words are
    stored word-major: word ``w`` of query ``i`` at ``qw_ptr + w * nq + i``. Queries run along the
    last (fastest) axis, so that the lanes of a warp tend to update different queries' counters.
    ``q0..q3``: the query's first words, preloaded (``W <= 4``); longer codes load every word here."""
    x = tl.load(dbw_ptr + cols, mask=cmask, other=0)
    d = _popc(x[:, None] ^ q0[None, :], USE_POPC)
    if W <= 4:
        if W > 1:
            x = tl.load(dbw_ptr + N + cols, mask=cmask, other=0)
            d += _popc(x[:, None] ^ q1[None, :], USE_POPC)
        if W > 2:
            x = tl.load(dbw_ptr + 2 * N + cols, mask=cmask, other=0)
            d += _popc(x[:, None] ^ q2[None, :], USE_POPC)
        if W > 3:
            x = tl.load(dbw_ptr + 3 * N + cols, mask=cmask, other=0)
            d += _popc(x[:, None] ^ q3[None, :], USE_POPC)
    else:
        for w in tl.static_range(1, W):
            q = tl.load(qw_ptr + w * nq + rows, mask=rmask, other=0)
            x = tl.load(dbw_ptr + w * N + cols, mask=cmask, other=0)
            d += _popc(x[:, None] ^ q[None, :], USE_POPC)
    return d


@triton.jit
def _relevance(ql_ptr, dl_ptr, rows, rmask, cols, cmask, nq, N, a0, a1, LW: tl.constexpr, MULTI: tl.constexpr):
    """(BN, BQ) int32 1 where the item and the query share a label (class id, or a multi-hot bit).
    ``a0, a1``: the query's first label words, preloaded (``LW <= 2``)."""
    if MULTI:
        b = tl.load(dl_ptr + cols, mask=cmask, other=0)
        acc = b[:, None] & a0[None, :]
        if LW <= 2:
            if LW > 1:
                b = tl.load(dl_ptr + N + cols, mask=cmask, other=0)
                acc = acc | (b[:, None] & a1[None, :])
        else:
            for w in tl.static_range(1, LW):
                a = tl.load(ql_ptr + w * nq + rows, mask=rmask, other=0)
                b = tl.load(dl_ptr + w * N + cols, mask=cmask, other=0)
                acc = acc | (b[:, None] & a[None, :])
        rel = (acc != 0).to(tl.int32)
    else:
        b = tl.load(dl_ptr + cols, mask=cmask, other=-2)
        rel = (b[:, None] == a0[None, :]).to(tl.int32)
    return rel


@triton.jit
def _query_words(qw_ptr, nq, rows, rmask, W: tl.constexpr):
    """A program's query code words 0..3, loaded once before its tile loop (see above)."""
    return (_word(qw_ptr, 0, nq, rows, rmask, 0, W), _word(qw_ptr, 1, nq, rows, rmask, 0, W),
            _word(qw_ptr, 2, nq, rows, rmask, 0, W), _word(qw_ptr, 3, nq, rows, rmask, 0, W))


@triton.jit
def _tile(qw_ptr, dbw_ptr, rows, rmask, thr, lo, i, nq, N, q0, q1, q2, q3, W: tl.constexpr, BN: tl.constexpr,
          USE_POPC: tl.constexpr):
    """Tile ``i`` of a program's chunk (from item ``lo``): the items ``cols``, their mask, the (BN, BQ)
    distances and the pairs at a distance ``<= thr`` of their query (``take``)."""
    cols = lo + i * BN + tl.arange(0, BN)
    cmask = cols < N
    d = _distances(qw_ptr, dbw_ptr, rows, rmask, cols, cmask, nq, N, q0, q1, q2, q3, W, USE_POPC)
    return cols, cmask, d, (d <= thr[None, :]) & cmask[:, None]


@triton.jit
def _hist_tiles(qw_ptr, dbw_ptr, ql_ptr, dl_ptr, hist_ptr, rows, rmask, thr, nq, N, TILES: tl.constexpr,
                W: tl.constexpr, LW: tl.constexpr, MULTI: tl.constexpr, HW: tl.constexpr,
                BQ: tl.constexpr, BN: tl.constexpr, USE_POPC: tl.constexpr, REL: tl.constexpr):
    """The tiles of one program of :func:`_hist_kernel`. The query's words and labels are loaded once,
    and each query's histogram row pointer is formed once: per pair only its level offset is added."""
    hrow = (hist_ptr + rows * HW)[None, :]
    q0, q1, q2, q3 = _query_words(qw_ptr, nq, rows, rmask, W)
    if MULTI:
        a0 = _word(ql_ptr, 0, nq, rows, rmask, 0, LW)
    else:
        a0 = _word(ql_ptr, 0, nq, rows, rmask, -1, LW)
    a1 = _word(ql_ptr, 1, nq, rows, rmask, 0, LW)
    lo = tl.program_id(1) * (TILES * BN)
    for i in range(TILES):           # a constexpr trip count: runtime bounds break the interpreter
        cols, cmask, d, take = _tile(qw_ptr, dbw_ptr, rows, rmask, thr, lo, i, nq, N, q0, q1, q2, q3, W, BN, USE_POPC)
        if REL:
            off = 2 * d + _relevance(ql_ptr, dl_ptr, rows, rmask, cols, cmask, nq, N, a0, a1, LW, MULTI)
        else:
            off = 2 * d
        tl.atomic_add(hrow + off, 1, mask=take, sem="relaxed")


@triton.jit(do_not_specialize=["nq"])
def _hist_kernel(qw_ptr, dbw_ptr, ql_ptr, dl_ptr, thr_ptr, hist_ptr, nq, N, TILES: tl.constexpr,
                 W: tl.constexpr, LW: tl.constexpr, MULTI: tl.constexpr, HW: tl.constexpr,
                 BQ: tl.constexpr, BN: tl.constexpr, USE_POPC: tl.constexpr, REL: tl.constexpr,
                 SKIP: tl.constexpr):
    """``hist[i, 2 * d + rel] += 1`` for every item at distance ``d <= thr[i]`` of query ``i``
    (``rel`` = 0 without ``REL``: item counts only). ``SKIP`` (the device-side re-count, where most
    queries have ``thr < 0``): a program whose queries all take nothing skips its tiles; without it the
    kernel is the one the tile grids timed."""
    rows = tl.program_id(0) * BQ + tl.arange(0, BQ)
    rmask = rows < nq
    thr = tl.load(thr_ptr + rows, mask=rmask, other=-1)
    if SKIP:
        if tl.reduce(thr, 0, _max_combine) >= 0:
            _hist_tiles(qw_ptr, dbw_ptr, ql_ptr, dl_ptr, hist_ptr, rows, rmask, thr, nq, N, TILES, W, LW, MULTI,
                        HW, BQ, BN, USE_POPC, REL)
    else:
        _hist_tiles(qw_ptr, dbw_ptr, ql_ptr, dl_ptr, hist_ptr, rows, rmask, thr, nq, N, TILES, W, LW, MULTI,
                    HW, BQ, BN, USE_POPC, REL)


@triton.jit(do_not_specialize=["nq", "L"])
def _list_kernel(qw_ptr, dbw_ptr, thr_ptr, cnt_ptr, out_ptr, nq, N, TILES: tl.constexpr, L,
                 W: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, USE_POPC: tl.constexpr,
                 KEY64: tl.constexpr):
    """Row ``i`` of ``out`` (length ``L``) receives ``d * N + index`` of every item at distance
    ``d <= thr[i]``, in arbitrary order; ``cnt[2 * i]`` counts them. Keys are int32 unless ``KEY64``."""
    rows = tl.program_id(0) * BQ + tl.arange(0, BQ)
    rmask = rows < nq
    thr = tl.load(thr_ptr + rows, mask=rmask, other=-1)
    # per-query pointers and words, once per program: inside the loop a pair adds only its slot to its row's pointer.
    # The counters lie 2 apart (cnt_ptr + 2 * row): with contiguous counters Triton lays the counter atomics
    # out along the queries and the key stores along the items, and computes every distance twice, once per
    # layout (35.5 instructions per pair when none is taken, against 17.5-19.9 this way: kernel_sass.py)
    cnt_row = tl.broadcast_to((cnt_ptr + 2 * rows)[None, :], (BN, BQ))
    out_row = (out_ptr + rows.to(tl.int64) * L)[None, :]
    q0, q1, q2, q3 = _query_words(qw_ptr, nq, rows, rmask, W)
    lo = tl.program_id(1) * (TILES * BN)
    for i in range(TILES):           # a constexpr trip count: runtime bounds break the interpreter
        cols, cmask, d, take = _tile(qw_ptr, dbw_ptr, rows, rmask, thr, lo, i, nq, N, q0, q1, q2, q3, W, BN, USE_POPC)
        slot = tl.atomic_add(cnt_row, 1, mask=take, sem="relaxed")
        if KEY64:
            key = d.to(tl.int64) * N + cols[:, None]
        else:
            key = d * N + cols[:, None]
        tl.store(out_row + slot, key, mask=take & (slot < L))


def _chunk(n: int, bn: int) -> int:
    """Database items per program: a multiple of the tile's ``bn``, at most CHUNK, no longer than needed."""
    return min(max(bn, CHUNK // bn * bn), -(-n // bn) * bn)


def _pack_words(bits01: torch.Tensor) -> torch.Tensor:
    """(n, b) {0,1} -> (ceil(b / 32), n) int32 words, word-major (zero padded); bit ``j`` of a code
    is bit ``j % 32`` of word ``j // 32``. Bytes first (uint8 arithmetic only), then four bytes are
    read as one little-endian int32."""
    n, b = bits01.shape
    words = max(1, -(-b // 32))
    x = bits01.to(torch.uint8)
    if b != words * 32:
        x = torch.zeros(n, words * 32, dtype=torch.uint8, device=bits01.device)
        x[:, :b] = bits01
    shifts = torch.arange(8, dtype=torch.uint8, device=bits01.device)           # made on the device: no copy, no sync
    packed = (x.view(n, words * 4, 8) << shifts).sum(2, dtype=torch.uint8)      # bit j % 8 of byte j // 8
    if packed.dtype != torch.uint8 or not _LITTLE_ENDIAN:                         # pragma: no cover
        raise HashbenchError("fused kernels: byte packing needs a little-endian host")
    return packed.contiguous().view(torch.int32).T.contiguous()


_LITTLE_ENDIAN = sys.byteorder == "little"


class FusedHamming:
    """The database packed once for the kernels.

    codes01: (N, bits) {0,1} uint8 tensor; labels: (N,) class ids or (N, C) bool multi-hot, on the
    device the kernels run on (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """

    def __init__(self, codes01: torch.Tensor, labels: torch.Tensor):
        if codes01.device.type != "cuda" and not INTERPRET:
            raise HashbenchError(f"engine='fused' runs on CUDA tensors (got {codes01.device}); use engine='auto' "
                                 f"or set TRITON_INTERPRET=1 (slow, for tests)")
        self.device = codes01.device
        self.n, self.bits = codes01.shape
        self.db_w = _pack_words(codes01)
        self.multi = labels.dim() == 2
        if self.multi:
            self.db_l = _pack_words(labels)
        else:
            # the counts too: core.relevant_counts takes them instead of sorting the labels a second time
            self.classes, inv, self.class_counts = torch.unique(labels, return_inverse=True, return_counts=True)
            self.db_l = inv.to(torch.int32).reshape(1, -1).contiguous()
        self.use_popc = self.device.type == "cuda" and not INTERPRET
        self._sample = None

    def _on_device(self):
        """Launches go to the GPU that holds the tensors (not the current device)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    # ---- inputs -------------------------------------------------------------------------------
    def _query_labels(self, ql: torch.Tensor) -> torch.Tensor:
        if self.multi:
            return _pack_words(ql)
        pos = torch.searchsorted(self.classes, ql).clamp_max(self.classes.numel() - 1)
        ids = torch.where(self.classes[pos] == ql, pos, -1)       # a class no item has: never relevant
        return ids.to(torch.int32).reshape(1, -1).contiguous()

    def _launch_hist(self, qw, ql, thr, db_w, db_l, rel: bool = True, skip: bool = False):
        nq, n = qw.shape[1], db_w.shape[1]
        hw = 2 * (self.bits + 1)
        hist = torch.zeros(nq, hw, dtype=torch.int32, device=self.device)
        chunk = _chunk(n, BN)
        grid = (triton.cdiv(nq, BQ), triton.cdiv(n, chunk))
        with self._on_device():
            _hist_kernel[grid](qw, db_w, ql, db_l, thr.to(torch.int32).contiguous(), hist, nq, n, chunk // BN,
                               W=qw.shape[0], LW=ql.shape[0], MULTI=self.multi, HW=hw, BQ=BQ, BN=BN,
                               USE_POPC=self.use_popc, REL=rel, SKIP=skip, num_warps=WARPS)
        h = hist.view(nq, self.bits + 1, 2).to(torch.int64)
        return h.sum(2), h[:, :, 1]

    def _sample_db(self):
        if self._sample is None:
            idx = torch.linspace(0, self.n - 1, SAMPLE, device=self.device).round().long()
            self._sample = (self.db_w[:, idx].contiguous(), self.db_l[:, idx].contiguous())
        return self._sample

    # ---- histograms ---------------------------------------------------------------------------
    def histograms(self, q01: torch.Tensor, ql: torch.Tensor, k: int | None = None, min_level: int = 0):
        """(q, bits+1) int64 counts of all / relevant items per distance.

        ``k=None``: every level. ``k``: exact at least up to the k-th smallest distance of each
        query and up to ``min_level`` (later levels may be 0): enough for every cut-off <= k."""
        return self._thresholded(_pack_words(q01), self._query_labels(ql), k, min_level)

    def _sample_level(self, qw: torch.Tensor, k: int, min_level: int = 0):
        """Item counts per level of the database sample ``sn`` (q, bits+1), and per query the level ``T``
        whose count in it is well above ``k``'s share (at least ``min_level``)."""
        nq = qw.shape[1]
        no_labels = torch.zeros(self.db_l.shape[0], nq, dtype=torch.int32, device=self.device)  # rel=False
        full = torch.full((nq,), self.bits, device=self.device)
        sn, _ = self._launch_hist(qw, no_labels, full, *self._sample_db(), rel=False)
        target = int(2 * k * SAMPLE / self.n) + 16                      # well above the expected count
        return sn, (sn.cumsum(1) < target).sum(1).clamp(min(min_level, self.bits), self.bits)

    def _thresholded(self, qw: torch.Tensor, qlw: torch.Tensor | None, k: int | None, min_level: int = 0):
        """Histograms of packed queries; ``qlw=None``: item counts only (relevant counts 0)."""
        nq, rel = qw.shape[1], qlw is not None
        qlw = qlw if rel else torch.zeros(self.db_l.shape[0], nq, dtype=torch.int32, device=self.device)
        full = torch.full((nq,), self.bits, device=self.device)
        if k is None or k >= self.n or self.n <= SAMPLE or min_level >= self.bits:
            return self._launch_hist(qw, qlw, full, self.db_w, self.db_l, rel)
        _, thr = self._sample_level(qw, k, min_level)
        n, r = self._launch_hist(qw, qlw, thr, self.db_w, self.db_l, rel)
        short = n.sum(1) < k                                            # the guess was too low
        if RECOUNT == "device":                                         # no host sync: see RECOUNT
            n2, r2 = self._launch_hist(qw, qlw, torch.where(short, full, -1), self.db_w, self.db_l, rel, skip=True)
            return torch.where(short[:, None], n2, n), torch.where(short[:, None], r2, r)
        if bool(short.any()):
            rows = short.nonzero()[:, 0]
            n[rows], r[rows] = self._launch_hist(qw[:, rows].contiguous(), qlw[:, rows].contiguous(),
                                                 full[rows], self.db_w, self.db_l, rel)
        return n, r

    # ---- top-k ---------------------------------------------------------------------------------
    def ranking(self, q01: torch.Tensor, k: int):
        """The exact top-k in (distance, database index) order: ``(ids, dist)`` (q, k) int64."""
        k = min(int(k), self.n)
        qw = _pack_words(q01)
        if ONEPASS and k < self.n and self.n > SAMPLE:
            return self._ranking_onepass(qw, k)
        return self._ranking(qw, k)

    def _ranking(self, qw: torch.Tensor, k: int):
        """Counting pass (thresholded histograms) for the k-th distance ``t``, then the lists at ``t``."""
        n, _ = self._thresholded(qw, None, k)
        cum = n.cumsum(1)
        t = (cum < k).sum(1).clamp_max(self.bits)                       # the k-th smallest distance
        rows_len = cum.gather(1, t[:, None])[:, 0]                      # #(d <= t) >= k
        ids, dist, _ = self._lists(qw, t, rows_len, k)
        return ids, dist

    def _ranking_onepass(self, qw: torch.Tensor, k: int):
        """The lists straight at the sample's threshold ``T`` (one full pass instead of two): a row of
        ``ROOM`` times the sample's estimate of ``#(d <= T)``. Rows whose count overflows it, or falls
        below ``k``, are ranked again by :meth:`_ranking` (exact either way)."""
        sn, thr = self._sample_level(qw, k)
        est = sn.cumsum(1).gather(1, thr[:, None])[:, 0].to(torch.float64) * (self.n / SAMPLE)
        room = (est * ROOM).to(torch.int64).clamp(k + 64, self.n)
        ids, dist, cnt = self._lists(qw, thr, room, k)
        redo = (cnt > room) | (cnt < k)
        if bool(redo.any()):
            rows = redo.nonzero()[:, 0]
            ids[rows], dist[rows] = self._ranking(qw[:, rows].contiguous(), k)
        return ids, dist

    def _lists(self, qw: torch.Tensor, t: torch.Tensor, rows_len: torch.Tensor, k: int):
        """Per query the keys ``d * N + index`` of the items at ``d <= t`` in a row of ``rows_len``
        slots, sorted, the first ``k`` split into ``(ids, dist)``; ``cnt``: how many items each row
        had (rows with ``cnt > rows_len`` are incomplete)."""
        nq = qw.shape[1]
        chunk = _chunk(self.n, LIST_BN)
        # keys d * N + index (and the padding) in int32 when they fit: half the bytes to fill and sort
        key_dtype = torch.int32 if (self.bits + 1) * self.n < KEY32_LIMIT else torch.int64
        ids_out, dist_out, cnt_out = [], [], []
        step = max(1, min(nq, SORT_BUDGET // max(1, int(rows_len.max()))))
        for s in range(0, nq, step):
            e = min(nq, s + step)
            L = int(rows_len[s:e].max())
            out = torch.full((e - s, L), torch.iinfo(key_dtype).max, dtype=key_dtype, device=self.device)
            cnt2 = torch.zeros(e - s, 2, dtype=torch.int32, device=self.device)     # counters 2 apart: see _list_kernel
            cnt = cnt2[:, 0]
            grid = (triton.cdiv(e - s, LIST_BQ), triton.cdiv(self.n, chunk))
            with self._on_device():
                _list_kernel[grid](qw[:, s:e].contiguous(), self.db_w, t[s:e].to(torch.int32).contiguous(), cnt2,
                                   out, e - s, self.n, chunk // LIST_BN, L, W=qw.shape[0], BQ=LIST_BQ, BN=LIST_BN,
                                   USE_POPC=self.use_popc, KEY64=key_dtype == torch.int64, num_warps=LIST_WARPS)
            key = torch.sort(out, 1).values[:, :k].to(torch.int64)
            ids_out.append(key % self.n)
            dist_out.append(key // self.n)
            cnt_out.append(cnt)
        return torch.cat(ids_out), torch.cat(dist_out), torch.cat(cnt_out)
