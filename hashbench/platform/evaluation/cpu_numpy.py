"""The level counts and index-tie sums of :mod:`~hashbench.platform.evaluation.cpu_kernels` in numpy.

:class:`PackedCodes` packs the database once, as the numba kernels want it (codes as ``uint64`` words,
word-major; labels as ``uint32`` class ids or multi-hot bitmasks); it imports neither numba nor
torch. :class:`NumpyDatabase` adds the kernels' two methods, computed with numpy:

* ``histograms`` - per query, items and relevant items at each Hamming distance: XOR + popcount
  (``np.bitwise_count``) over the words, ``2 * distance + relevant`` per item, one ``bincount``;
* ``ranked_sums`` - ``hits`` and ``S`` at per-query cut-offs for the ranking by (distance, database
  index): a stable radix ``argsort`` of the distances, the relevance in that order, then the
  precision at each relevant rank and its running sum, read at the cut-offs by ``searchsorted``.

Same outputs as the numba kernels (the integer counts identical; ``S`` summed in rank order rather
than in database order, so it may differ in the last bit). Query chunks run on a thread pool (numpy
releases the GIL in the XOR, popcount and sort). Its use: a process that has not loaded numba yet
(a ``hashbench eval`` call) saves numba's start-up (import and loading of its library of
implementations and the cached kernels: 0.5-1 s on the 2-core machine), which outweighs the slower
arithmetic up to ``cpu_eval.NUMPY_MAX_PAIRS`` query-item pairs; ``evaluate`` below
``engines.KERNEL_MIN_PAIRS`` has a numpy path of its own (through torch), which this does not replace.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hashbench.platform.errors import HashbenchError

MAX_BITS = 32767          # the numba kernels' 2 * distance + 1 must fit a uint16 buffer
_CHUNK_ITEMS = 2 ** 21    # query x item pairs per chunk (distance, relevance and order temporaries)


def pack_codes(codes01: np.ndarray) -> np.ndarray:
    """(n, bits) {0,1} codes -> (n, ceil(bits / 64)) ``uint64`` words (zero padded)."""
    return _pack_bits(codes01, 8).view(np.uint64)


def _pack_bits(bits01: np.ndarray, word_bytes: int) -> np.ndarray:
    packed = np.packbits(np.asarray(bits01, dtype=np.uint8), axis=1)
    width = max(1, -(-packed.shape[1] // word_bytes)) * word_bytes
    out = np.zeros((packed.shape[0], width), dtype=np.uint8)
    out[:, :packed.shape[1]] = packed
    return out


def _class_ids(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(n, 1) uint32 rank of each label among the sorted ``classes``; ``classes.size`` if absent."""
    ids = np.full(labels.shape, classes.size, dtype=np.int64)
    if classes.size:
        pos = np.searchsorted(classes, labels).clip(max=classes.size - 1)
        ids = np.where(classes[pos] == labels, pos, classes.size)
    return ids.astype(np.uint32).reshape(-1, 1)


class PackedCodes:
    """Database codes and labels packed once; queries are packed per call.

    codes01: (N, bits) {0,1}; labels: (N,) class ids or (N, C) multi-hot, as numpy arrays.
    """

    def __init__(self, codes01: np.ndarray, labels: np.ndarray):
        codes01 = np.asarray(codes01)
        if codes01.ndim != 2:
            raise HashbenchError(f"codes01: expected shape (N, bits), got {codes01.shape}")
        self.n, self.bits = codes01.shape
        if not 0 < self.bits <= MAX_BITS:
            raise HashbenchError(f"codes01: {self.bits} bits per code; the kernels handle 1..{MAX_BITS}")
        self.db_t = np.ascontiguousarray(pack_codes(codes01).T)
        labels = np.asarray(labels)
        if labels.ndim not in (1, 2) or labels.shape[0] != self.n:
            raise HashbenchError(f"labels: expected shape ({self.n},) or ({self.n}, C), got {labels.shape}")
        self.multi = labels.ndim == 2
        self.label_shape = labels.shape[1:]
        if self.multi:                      # bitmasks: relevant when two rows share a set bit
            dl = _pack_bits(labels != 0, 4).view(np.uint32)
        else:                               # compact class ids
            self.classes, inv = np.unique(labels, return_inverse=True)
            if self.classes.size >= 2 ** 32 - 1:
                raise HashbenchError(f"labels: {self.classes.size} classes; at most 2**32 - 2")
            dl = inv.astype(np.uint32).reshape(-1, 1)
        self.dl_t = np.ascontiguousarray(dl.T)

    def _queries(self, q01: np.ndarray, q_labels: np.ndarray):
        q01 = np.asarray(q01)
        if q01.ndim != 2 or q01.shape[1] != self.bits:
            raise HashbenchError(f"q01: expected shape (queries, {self.bits}), got {q01.shape}")
        q_labels = np.asarray(q_labels)
        if q_labels.shape != (q01.shape[0],) + self.label_shape:
            raise HashbenchError(f"q_labels: expected shape {(q01.shape[0],) + self.label_shape}, got {q_labels.shape}")
        if self.multi:
            ql = _pack_bits(q_labels != 0, 4).view(np.uint32)
        else:
            ql = _class_ids(q_labels, self.classes)
        return np.ascontiguousarray(pack_codes(q01)), np.ascontiguousarray(ql)

    def _cutoffs(self, cutoffs, n_queries: int) -> np.ndarray:
        cutoffs = np.array(cutoffs, dtype=np.int64, order="C")      # a writable copy: one numba signature
        if cutoffs.ndim != 2 or cutoffs.shape[0] != n_queries:
            raise HashbenchError(f"cutoffs: expected shape ({n_queries}, m), got {cutoffs.shape}")
        return cutoffs


class NumpyDatabase(PackedCodes):
    """:class:`~hashbench.platform.evaluation.cpu_kernels.PackedDatabase`'s methods in numpy."""

    def histograms(self, q01: np.ndarray, q_labels: np.ndarray):
        """(q, bits+1) int64 counts of all / relevant database items at each Hamming distance."""
        qw, ql = self._queries(q01, q_labels)
        return self._run(qw, ql, np.zeros((qw.shape[0], 0), dtype=np.int64), -1)[2:]

    def ranked_sums(self, q01: np.ndarray, q_labels: np.ndarray, cutoffs: np.ndarray, self_start: int = -1):
        """``hits, S`` (q, m) float64 at the cut-offs ``cutoffs`` (q, m) of the ranking by (Hamming
        distance, database index), and the histograms ``n, r`` (q, bits+1) int64. ``self_start >= 0``
        (same-set retrieval): query ``i`` is database item ``self_start + i``, left out of both."""
        qw, ql = self._queries(q01, q_labels)
        return self._run(qw, ql, self._cutoffs(cutoffs, qw.shape[0]), int(self_start))

    def _run(self, qw, ql, cutoffs, self_start):
        nq, width = qw.shape[0], self.bits + 1
        out = (np.zeros(cutoffs.shape), np.zeros(cutoffs.shape),
               np.zeros((nq, width), dtype=np.int64), np.zeros((nq, width), dtype=np.int64))
        rows = max(1, _CHUNK_ITEMS // max(self.n, 1))
        starts = range(0, nq, rows)
        work = lambda s: self._chunk(qw, ql, cutoffs, self_start, s, min(s + rows, nq), out)  # noqa: E731
        threads = min(len(starts), os.cpu_count() or 1)
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, starts))
        else:
            for s in starts:
                work(s)
        return out

    def _chunk(self, qw, ql, cutoffs, self_start, s, e, out):
        hits, sums, n_out, r_out = out
        width = self.bits + 1
        # distances; the own item (same set) gets level ``bits + 1``, past every real one
        dist = np.bitwise_count(qw[s:e, 0, None] ^ self.db_t[0])
        if self.db_t.shape[0] > 1:                                # more than 64 bits: up to 32768
            dist = dist.astype(np.uint16)
            for w in range(1, self.db_t.shape[0]):
                dist += np.bitwise_count(qw[s:e, w, None] ^ self.db_t[w])
        if self.multi:
            rel = (self.dl_t[0] & ql[s:e, 0, None]) != 0
            for w in range(1, self.dl_t.shape[0]):
                rel |= (self.dl_t[w] & ql[s:e, w, None]) != 0
        else:
            rel = self.dl_t[0] == ql[s:e, 0, None]
        if self_start >= 0:
            own = np.arange(self_start + s, self_start + e)
            dist[np.arange(e - s), own] = width
            rel[np.arange(e - s), own] = False
        level = dist.astype(np.uint8 if 2 * width + 1 <= 255 else np.uint32) * 2 + rel
        for i in range(e - s):
            counts = np.bincount(level[i], minlength=2 * width + 2)[:2 * width].reshape(width, 2)
            r_out[s + i] = counts[:, 1]
            n_out[s + i] = counts[:, 0] + counts[:, 1]
            cut = cutoffs[s + i]
            if not cut.size or cut.max() == 0:
                continue
            kmax = int(cut.max())
            order = np.argsort(dist[i], kind="stable")[:kmax]      # (distance, index); own item last
            pos = np.flatnonzero(rel[i][order])                   # 0-based ranks of the relevant items
            prec_sum = np.cumsum(np.arange(1, pos.size + 1) / (pos + 1.0))
            found = np.searchsorted(pos, cut)                      # relevant items ranked before each cut-off
            hits[s + i] = found
            sums[s + i] = np.where(found > 0, prec_sum[np.maximum(found - 1, 0)] if pos.size else 0.0, 0.0)
