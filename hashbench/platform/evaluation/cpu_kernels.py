"""numba kernels for exact Hamming evaluation on the CPU: no sort, no (queries, N) temporary.

:class:`PackedDatabase` packs the database once. Codes become ``uint64`` words (:func:`pack_codes`);
the Hamming distance of two codes is the popcount of their XOR summed over the words (the zero
padding XORs to 0). Labels become ``uint32`` rows: one compact class id per item (a query class no
item has gets an id no item has), or multi-hot labels as bitmasks, relevant when ``a & b != 0`` in
some word. The database is stored word-major, ``(W, N)``, so that the distance loop runs over
contiguous items and vectorises.

Per query, pass 1 writes ``2 * distance + relevant`` of every item into a buffer (``uint8`` up to
127 bits, else ``uint16``) and counts the buffer values: items and relevant items per distance level.

* :meth:`PackedDatabase.ranked_sums` - ``hits`` and ``S`` (the sum of the precision at each relevant
  rank) at per-query cut-offs, for the ranking by (distance, database index): the "index" tie
  policy, faiss's order. The item at level ``b`` has rank ``off[b] + seen[b]`` (0-based), with
  ``off`` the exclusive prefix sums of the level counts and ``seen[b]`` the items of its level before
  it in database order, and, if relevant, relevant-rank ``roff[b] + rseen[b] + 1``; its precision
  ``relevant-rank / (rank + 1)`` counts in ``S`` of every cut-off it falls before. When the largest
  cut-off reaches half the database or more (mAP@all, MAP@R), the counting pass itself notes, for
  each relevant item, its level and ``seen`` / ``rseen`` (the counts so far), and a short pass over
  the relevant items alone adds them up. Below that, a second pass walks the items in database
  order with a counter per level and skips the levels that start at or after the largest cut-off.
  Either way the precisions are added in database order. For same-set retrieval (``self_start``)
  the query's own item is left out of the counts and of both passes.
* :meth:`PackedDatabase.histograms` - the level counts alone (the tie-aware policy, ``P@H<=r`` and
  the Hamming PR curve need nothing else).

Both run in parallel over blocks of queries (numba ``prange``, numba's own thread pool:
``NUMBA_NUM_THREADS``; a few blocks per thread, each allocating its buffers once) and are compiled
on first use (about 11 s for the four signatures, once per machine): ``cache=True`` stores the
machine code in ``NUMBA_CACHE_DIR``, else ``__pycache__`` beside this file, else the user's cache
directory (``~/.cache/numba``), so later processes only load it (0.3-0.7 s with numba's library of
implementations, plus 0.2-0.4 s to import numba). Where none of them is writable the kernels compile in memory in each process (one
warning; :data:`UNCACHED` lists them). Importing this module raises ImportError when numba is
missing; the engines then keep their numpy path.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import get_num_threads, njit, prange

from hashbench.platform.errors import HashbenchWarning
from hashbench.platform.evaluation.cpu_numpy import MAX_BITS, PackedCodes, pack_codes  # noqa: F401 - re-exported

# SWAR popcount constants, as uint64 so that numba keeps the arithmetic in unsigned integers
# (mixing uint64 with an int64 literal would promote to float64). LLVM turns the pattern into a
# popcnt instruction.
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1, _S2, _S4, _S56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)
_NONE = np.uint32(0)
#: names of the kernels compiled without numba's disk cache (no writable cache directory)
UNCACHED: list = []


def _cached_njit(**options):
    """``njit(cache=True, **options)``. numba looks for a writable cache directory in
    ``NUMBA_CACHE_DIR``, then ``__pycache__`` beside this file, then the user's cache directory
    (``~/.cache/numba``); a read-only install with no writable home finds none, and numba refuses
    ``cache=True``. The kernel is then compiled in memory in every process (the same machine code,
    several seconds each time), with one warning that says how to get the cache back."""
    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as exc:       # "cannot cache function ...: no locator available ..."
            if "cannot cache" not in str(exc):
                raise
            if not UNCACHED:
                warnings.warn(f"numba kernels are not cached ({exc}); they compile in every process. "
                              f"Set NUMBA_CACHE_DIR to a writable directory to cache them",
                              HashbenchWarning, stacklevel=2)
            UNCACHED.append(fn.__name__)
            return njit(**options)(fn)
    return wrap


@njit(inline="always")
def _popcount(x):
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return (x * _H01) >> _S56


@njit(nogil=True, boundscheck=False)
def _level_codes(qw, ql, i, db_t, dl_t, multi, buf, scratch):
    """``buf[j] = 2 * hamming(query i, item j) + relevant(i, j)``, one item-contiguous loop per word."""
    n = db_t.shape[1]
    x = qw[i, 0]
    for j in range(n):
        buf[j] = _popcount(x ^ db_t[0, j])
    for w in range(1, db_t.shape[0]):
        x = qw[i, w]
        for j in range(n):
            buf[j] += _popcount(x ^ db_t[w, j])
    y = ql[i, 0]
    if not multi:
        for j in range(n):
            buf[j] = 2 * buf[j] + (dl_t[0, j] == y)
        return
    for j in range(n):
        scratch[j] = (dl_t[0, j] & y) != _NONE
    for w in range(1, dl_t.shape[0]):
        y = ql[i, w]
        for j in range(n):
            scratch[j] |= (dl_t[w, j] & y) != _NONE
    for j in range(n):
        buf[j] = 2 * buf[j] + scratch[j]


@_cached_njit(nogil=True, boundscheck=False)
def _count_levels(buf, i, n_out, r_out):
    """Row ``i`` of the per-level counts of all (``n_out``) and relevant (``r_out``) items from the
    per-item values ``buf`` = 2 * level + relevant."""
    width = n_out.shape[1]
    cnt = np.zeros(2 * width, dtype=np.int64)              # cnt[2b] non-relevant, cnt[2b+1] relevant
    for j in range(buf.shape[0]):
        cnt[buf[j]] += 1
    for b in range(width):
        n_out[i, b] = cnt[2 * b] + cnt[2 * b + 1]
        r_out[i, b] = cnt[2 * b + 1]


@njit(nogil=True, boundscheck=False)
def _count_levels_noting_relevant(buf, i, n_out, r_out, skip, rel_level, rel_before, rel_rank):
    """:func:`_count_levels` without item ``skip`` (none when -1), noting for each relevant item, in
    database order, its level, the items and the relevant items of its level before it (the counts
    so far); returns how many were noted."""
    width = n_out.shape[1]
    cnt = np.zeros(2 * width, dtype=np.int64)
    k = 0
    for j in range(buf.shape[0]):
        v = np.int64(buf[j])
        if j == skip:
            continue
        if v & 1:
            rel_level[k] = v >> 1
            rel_before[k] = cnt[v - 1] + cnt[v]
            rel_rank[k] = cnt[v]
            k += 1
        cnt[v] += 1
    for b in range(width):
        n_out[i, b] = cnt[2 * b] + cnt[2 * b + 1]
        r_out[i, b] = cnt[2 * b + 1]
    return k


@njit(inline="always")
def _add(i, pos, prec, cutoffs, hits, sums):
    """A relevant item at 0-based rank ``pos`` with precision ``prec`` counts for every cut-off past it."""
    for c in range(cutoffs.shape[1]):
        if pos < cutoffs[i, c]:
            hits[i, c] += 1.0
            sums[i, c] += prec


@njit(nogil=True, boundscheck=False)
def _pass2(buf, i, n_out, r_out, cutoffs, kmax, skip, hits, sums):
    """Pass 2 of a short ranking: the items in database order with a counter per level, skipping the
    levels that start at or after ``kmax``."""
    width = n_out.shape[1]
    off = np.empty(width, dtype=np.int64)
    roff = np.empty(width, dtype=np.int64)
    acc, racc, last, found = 0, 0, width - 1, False
    for b in range(width):
        off[b], roff[b] = acc, racc
        if not found and acc >= kmax:                       # this level starts past every cut-off
            last, found = b - 1, True
        acc += n_out[i, b]
        racc += r_out[i, b]
    vmax = 2 * last + 1
    seen = np.zeros(2 * width, dtype=np.int64)              # seen[2b], seen[2b+1]: seen[b] - rseen[b], rseen[b]
    for j in range(buf.shape[0]):
        v = np.int64(buf[j])
        if v > vmax or j == skip:
            continue
        s = seen[v]
        seen[v] = s + 1
        if v & 1:
            b = v >> 1
            pos = off[b] + seen[v - 1] + s                  # items of the level seen so far
            _add(i, pos, (roff[b] + s + 1) / (pos + 1.0), cutoffs, hits, sums)


@_cached_njit(parallel=True, nogil=True, boundscheck=False)
def _ranked_sums(qw, ql, db_t, dl_t, multi, cutoffs, bits, buf_proto, self_start, blocks):
    nq, n, m = qw.shape[0], db_t.shape[1], cutoffs.shape[1]
    width = bits + 1
    hits = np.zeros((nq, m), dtype=np.float64)
    sums = np.zeros((nq, m), dtype=np.float64)
    n_out = np.zeros((nq, width), dtype=np.int64)
    r_out = np.zeros((nq, width), dtype=np.int64)
    # queries in ``blocks`` blocks (a few per thread), so that each block allocates its buffers once
    # (fresh large arrays per query would be fresh pages from the system each time)
    for blk in prange(blocks):
        buf = np.empty(n, dtype=buf_proto.dtype)
        scratch = np.empty(n if multi else 0, dtype=np.bool_)
        notes = m > 0
        rel_level = np.empty(n if notes else 0, dtype=np.int32)
        rel_before = np.empty(n if notes else 0, dtype=np.int32)
        rel_rank = np.empty(n if notes else 0, dtype=np.int32)
        for i in range(blk * nq // blocks, (blk + 1) * nq // blocks):
            _level_codes(qw, ql, i, db_t, dl_t, multi, buf, scratch)
            kmax = 0
            for c in range(m):
                kmax = max(kmax, cutoffs[i, c])
            if kmax == 0:                                   # histograms only (no cut-off)
                _count_levels(buf, i, n_out, r_out)
                continue
            skip = self_start + i if self_start >= 0 else -1    # same-set: the query's own item
            if 2 * kmax < n:                                # a short ranking: pass 2 skips the far levels
                _count_levels(buf, i, n_out, r_out)
                if skip >= 0:
                    v = np.int64(buf[skip])
                    n_out[i, v >> 1] -= 1
                    r_out[i, v >> 1] -= v & 1
                _pass2(buf, i, n_out, r_out, cutoffs, kmax, skip, hits, sums)
                continue
            n_rel = _count_levels_noting_relevant(buf, i, n_out, r_out, skip, rel_level, rel_before, rel_rank)
            off = np.empty(width, dtype=np.int64)
            roff = np.empty(width, dtype=np.int64)
            acc, racc = 0, 0
            for b in range(width):
                off[b], roff[b] = acc, racc
                acc += n_out[i, b]
                racc += r_out[i, b]
            for t in range(n_rel):                          # the relevant items, in database order
                b = rel_level[t]
                pos = off[b] + rel_before[t]                # 0-based rank
                if pos < kmax:
                    _add(i, pos, (roff[b] + rel_rank[t] + 1) / (pos + 1.0), cutoffs, hits, sums)
    return hits, sums, n_out, r_out


def _blocks(n_queries: int) -> np.int64:
    """Query blocks of the kernels: 8 per thread (balance), at most one per query, at least one."""
    return np.int64(max(1, min(n_queries, 8 * get_num_threads())))


class PackedDatabase(PackedCodes):
    """Database codes and labels packed once for the kernels (:class:`~.cpu_numpy.PackedCodes`, which
    also checks every input); queries are packed per call.

    codes01: (N, bits) {0,1}; labels: (N,) class ids or (N, C) multi-hot, as numpy arrays.
    """

    def __init__(self, codes01: np.ndarray, labels: np.ndarray):
        super().__init__(codes01, labels)
        self.buf_proto = np.empty(0, dtype=np.uint8 if 2 * self.bits + 1 <= 255 else np.uint16)

    def ranked_sums(self, q01: np.ndarray, q_labels: np.ndarray, cutoffs: np.ndarray, self_start: int = -1):
        """Exact sums for the ranking by (Hamming distance, database index).

        cutoffs: (q, m) per-query cut-offs in ``[0, N]``. Returns ``hits, S`` (q, m) float64 -
        what :func:`hashbench.platform.evaluation.metrics.ranked_sums` gives for that ranking - and
        the histograms ``n, r`` (q, bits+1) int64 of :meth:`histograms`, which come for free.
        ``self_start >= 0`` (same-set retrieval): query ``i`` is database item ``self_start + i``, which
        is left out of its ranking and histograms.
        """
        qw, ql = self._queries(q01, q_labels)
        cutoffs = self._cutoffs(cutoffs, qw.shape[0])
        return _ranked_sums(qw, ql, self.db_t, self.dl_t, self.multi, cutoffs, self.bits, self.buf_proto,
                            np.int64(self_start), _blocks(qw.shape[0]))

    def histograms(self, q01: np.ndarray, q_labels: np.ndarray):
        """(q, bits+1) int64 counts of all / relevant database items at each Hamming distance."""
        qw, ql = self._queries(q01, q_labels)
        none = np.zeros((qw.shape[0], 0), dtype=np.int64)          # no cut-off: the first pass only
        return _ranked_sums(qw, ql, self.db_t, self.dl_t, self.multi, none, self.bits, self.buf_proto,
                            np.int64(-1), _blocks(qw.shape[0]))[2:]


def warm_up() -> None:
    """Compile (or load from the cache) every kernel signature the engines use."""
    rng = np.random.default_rng(0)
    for bits in (8, 200):                   # uint8 and uint16 level buffers
        codes, labels = rng.integers(0, 2, (4, bits)), np.arange(4)
        db = PackedDatabase(codes, labels)
        db.ranked_sums(codes, labels, np.ones((4, 1), dtype=np.int64))
        db.histograms(codes, labels)
