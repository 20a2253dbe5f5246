"""Exact (and approximate) ranking engines with one interface.

An engine is built once per evaluation from the database and answers, for a chunk of queries:

* ``ranking(q, K)`` -> ``(ids, dist)``, (nq, K): the K nearest database items ordered by
  distance, ties by ascending database index (faiss's order);
* ``histograms(q, rel)`` -> per-query counts of all / relevant items at each Hamming distance
  (what every tie-aware metric needs);
* ``distances(q)`` -> (nq, N) distances to the whole database.

torch: Hamming through a +-1 matrix product (float16 on CUDA, exact for up to 2048 bits; float32
on CPU); top-k rankings and ``truncated_histograms`` (tie-aware cut-offs) by locating the k-th
distance level with a few counting passes, no sort of the whole row (:mod:`level_select`); full
rankings by ``sort`` on the unique key ``dist * N + index``.
faiss: ``IndexBinaryFlat`` (counting search) / ``IndexFlatL2`` / ``IndexFlatIP`` (faiss-gpu for
float codes when installed and the device is CUDA); long Hamming rankings and histograms come from
numpy kernels (XOR + popcount, stable radix ``argsort``, ``bincount``) in the same order. For exact
Hamming evaluation on the CPU, ``ranked_sums`` and ``label_histograms`` run the numba kernels of
:mod:`hashbench.platform.evaluation.cpu_kernels` (no sort, no (queries, N) temporary) when
:meth:`FaissEngine.kernels_usable` says so; otherwise callers keep the numpy path.
"""

from __future__ import annotations

import importlib
import os
import warnings

import numpy as np
import torch

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation.inputs import Prepared
from hashbench.platform.evaluation.level_select import level_histograms, level_ranking, maybe_compiled

APPROXIMATE = ("faiss-hnsw", "faiss-ivf")
ENGINES = ("auto", "torch", "faiss") + APPROXIMATE

# numba CPU kernels: off with HASHBENCH_EVAL_NUMBA=0 (or by setting this flag, as the tests do);
# below KERNEL_MIN_PAIRS query-item pairs the numpy path is used, as it beats loading the compiled
# kernels (about 0.3 s once per process from numba's cache, several seconds the very first time).
CPU_KERNELS = os.environ.get("HASHBENCH_EVAL_NUMBA", "1") != "0"
KERNEL_MIN_PAIRS = 2 ** 24
_kernels: dict = {}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(engine: str, device: torch.device) -> str:
    if engine not in ENGINES:
        raise HashbenchError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "faiss" if device.type == "cpu" and faiss_available() else "torch"
    if engine != "torch" and not faiss_available():
        raise HashbenchError(f"engine={engine!r} needs faiss; install faiss-cpu (or faiss-gpu) or use "
                             f"engine='torch'")
    return engine


class TorchEngine:
    """Brute-force search with torch on the evaluation device."""

    name = "torch"

    def __init__(self, prep: Prepared):
        self.distance = prep.distance
        self.n = prep.db.shape[0]
        self.device = prep.db.device
        if prep.binary:
            self.bits = prep.dim
            dtype = torch.float16 if self.device.type == "cuda" and self.bits <= 2048 else torch.float32
            self.dtype = dtype
            self.db = prep.db.to(dtype) * 2 - 1
        else:
            self.db = prep.db
            self.db_sq = (prep.db * prep.db).sum(1)
        key_max = (max(getattr(self, "bits", 0), 1) + 1) * self.n
        self.key_dtype = torch.int32 if key_max < 2 ** 31 else torch.int64
        self.arange = torch.arange(self.n, device=self.device, dtype=self.key_dtype)

    def _products(self, q: torch.Tensor) -> torch.Tensor:
        """(nq, N) +-1 products of binary queries with the database: distance = (bits - product) / 2."""
        return (q.to(self.dtype) * 2 - 1) @ self.db.T

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        if self.distance == "hamming":
            return ((self.bits - self._products(q)) * 0.5).to(torch.int32)
        ip = q @ self.db.T
        if self.distance == "cosine":
            return 1 - ip
        return ((q * q).sum(1, keepdim=True) + self.db_sq - 2 * ip).clamp_min_(0)

    def histograms(self, q: torch.Tensor, rel: torch.Tensor):
        """(q, bits+1) float64 counts of all / relevant items at each Hamming distance."""
        return hamming_histograms(self.distances(q), rel, self.bits)

    def truncated_histograms(self, q: torch.Tensor, rel_of, k: int):
        """Histograms exact for every distance up to the k-th smallest one (later buckets are 0):
        enough for any cut-off <= k. One matrix product and a few counting passes over it, no sort
        and no ``topk`` (see :mod:`level_select`). ``rel_of`` gives relevance (``rel_of.pairs``)."""
        return level_histograms(self._products(q), self.bits, k, rel_of.pairs,
                                lambda d, thr: boundary_counts(d, thr, rel_of))

    def ranking(self, q: torch.Tensor, k: int, with_dist: bool = True):
        if self.distance == "hamming" and k < self.n:
            ids, dist = level_ranking(self._products(q), self.bits, k)
            return ids, dist.to(torch.int32)
        d = self.distances(q)
        if self.distance == "hamming":   # the whole database: one sort on the unique key
            key, ids = torch.sort(d.to(self.key_dtype) * self.n + self.arange, dim=1)
            return ids, (key // self.n).to(torch.int32)
        vals, ids = torch.sort(d, dim=1, stable=True)
        return ids[:, :k], vals[:, :k]


def _boundary_counts_single(dot, thr, q_labels, db_labels):
    at = dot == thr
    return at.sum(1), (at & (db_labels[None, :] == q_labels[:, None])).sum(1)


def boundary_counts(dot: torch.Tensor, thr: torch.Tensor, rel_of):
    """Per query: items whose product equals ``thr`` and how many of them are relevant.

    With class-id labels on a large CUDA matrix this is one fused reduction (``torch.compile``; it
    reads the product matrix once instead of five eager passes; see ``level_select.maybe_compiled``
    for the fallback and HASHBENCH_EVAL_COMPILE)."""
    labels = getattr(rel_of, "labels", None)
    if labels is not None:
        return maybe_compiled("boundary count", _boundary_counts_single, dot)(dot, thr, *labels)
    at = dot == thr
    return at.sum(1), (at & rel_of(None)).sum(1)


def cpu_kernels():
    """The :mod:`~hashbench.platform.evaluation.cpu_kernels` module, or None when numba cannot be
    imported (warned once); imported on first use so that numba loads only when needed."""
    if "module" not in _kernels:
        try:
            module = importlib.import_module("hashbench.platform.evaluation.cpu_kernels")
        except Exception as exc:  # noqa: BLE001 - no numba (or a broken one): the numpy path is exact too
            warnings.warn(f"numba CPU kernels unavailable ({type(exc).__name__}: {exc}); using numpy")
            module = None
        _kernels["module"] = module
    return _kernels["module"]


def _popcount_u8(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x]


class FaissEngine:
    """faiss flat (exact) or approximate indexes; results moved to the evaluation device."""

    def __init__(self, prep: Prepared, kind: str = "faiss", *, hnsw_m: int = 32, nlist: int | None = None,
                 nprobe: int = 8):
        import faiss

        self.name = kind
        self.distance = prep.distance
        self.n = prep.db.shape[0]
        self.device = prep.db.device
        self.approximate = kind in APPROXIMATE
        db = prep.db.cpu().numpy()
        self._db01, self._db_labels, self._packed = db, prep.db_labels, None
        if prep.binary:
            self.bits = prep.dim
            self.db_packed = np.packbits(db, axis=1)
            nbits = self.db_packed.shape[1] * 8
            if kind == "faiss-hnsw":
                index = faiss.IndexBinaryHNSW(nbits, hnsw_m)
            elif kind == "faiss-ivf":
                nl = nlist or max(1, int(np.sqrt(self.n)))
                index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(nbits), nbits, nl)
                index.train(self.db_packed)
                index.nprobe = nprobe
            else:
                index = faiss.IndexBinaryFlat(nbits)
                index.use_heap = False     # counting search: ~4x faster, same (distance, index) order
            index.add(self.db_packed)
            width = self.db_packed.shape[1]
            self._words = self.db_packed.view(np.uint64) if width % 8 == 0 else None
        else:
            dim = db.shape[1]
            metric = faiss.METRIC_INNER_PRODUCT if self.distance == "cosine" else faiss.METRIC_L2
            if kind == "faiss-hnsw":
                index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
            elif kind == "faiss-ivf":
                nl = nlist or max(1, int(np.sqrt(self.n)))
                quantizer = faiss.IndexFlat(dim, metric)
                index = faiss.IndexIVFFlat(quantizer, dim, nl, metric)
                index.train(db)
                index.nprobe = nprobe
            else:
                index = faiss.IndexFlat(dim, metric)
                if self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
                    self._res = faiss.StandardGpuResources()
                    index = faiss.index_cpu_to_gpu(self._res, self.device.index or 0, index)
            index.add(db)
        self.index = index

    def ranking(self, q: torch.Tensor, k: int, with_dist: bool = True):
        qn = q.cpu().numpy()
        if self.distance == "hamming" and not self.approximate and k * 8 >= self.n:
            # long rankings: a stable radix argsort of the popcount distances beats faiss's counting
            # search; both order by (distance, index)
            d = self._distances_np(qn)
            ids = np.argsort(d, axis=1, kind="stable")[:, :k]
            dist = torch.from_numpy(np.take_along_axis(d, ids, 1)) if with_dist else None
            return torch.from_numpy(ids).to(self.device), dist
        if self.distance == "hamming":
            qn = np.packbits(qn, axis=1)
        dist, ids = self.index.search(qn, k)
        if self.distance == "cosine":
            dist = 1 - dist
        ids_t = torch.from_numpy(ids).to(self.device)
        return ids_t, torch.from_numpy(dist).to(self.device)

    def _distances_np(self, q01: np.ndarray) -> np.ndarray:
        """(q, N) Hamming distances by XOR + popcount (uint8 up to 255 bits, else uint16)."""
        qp = np.packbits(q01, axis=1)
        if self._words is not None:
            x = qp.view(np.uint64)[:, None, :] ^ self._words[None, :, :]
        else:
            x = qp[:, None, :] ^ self.db_packed[None, :, :]
        cnt = _popcount_u8(x)
        if cnt.shape[2] == 1:
            return cnt[..., 0]
        return cnt.sum(2, dtype=np.uint8 if self.bits < 256 else np.uint16)

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        if self.distance != "hamming":
            raise NotImplementedError("full float distance matrices come from ranking(q, N)")
        return torch.from_numpy(self._distances_np(q.cpu().numpy())).to(self.device)

    def histograms(self, q: torch.Tensor, rel: torch.Tensor):
        """(q, bits+1) float64 counts of all / relevant items per distance (numpy bincount)."""
        d = self._distances_np(q.cpu().numpy())
        nq, width = d.shape[0], self.bits + 1
        dtype = np.uint16 if nq * 2 * width < 2 ** 16 else np.int64
        key = d.astype(dtype)
        key += (np.arange(nq, dtype=dtype) * (2 * width))[:, None]
        key += rel.cpu().numpy().view(np.uint8) * dtype(width)
        c = np.bincount(key.ravel(), minlength=nq * 2 * width).reshape(nq, 2, width)
        c = torch.from_numpy(c).to(self.device, torch.float64)
        return c.sum(1), c[:, 1]

    def kernels_usable(self, n_queries: int) -> bool:
        """Whether :meth:`ranked_sums` / :meth:`label_histograms` can serve ``n_queries`` queries:
        exact Hamming search on the CPU, ``CPU_KERNELS`` on, numba importable, and at least
        ``KERNEL_MIN_PAIRS`` query-item pairs."""
        if self.distance != "hamming" or self.approximate or self.device.type != "cpu" or not CPU_KERNELS:
            return False
        if n_queries * self.n < KERNEL_MIN_PAIRS:
            return False
        module = cpu_kernels()
        return module is not None and self.bits <= module.MAX_BITS

    def _kernel_db(self):
        if self._packed is None:
            self._packed = cpu_kernels().PackedDatabase(self._db01, self._db_labels.cpu().numpy())
        return self._packed

    def ranked_sums(self, q: torch.Tensor, q_labels: torch.Tensor, cutoffs: torch.Tensor):
        """numba: ``hits, S, ap_hits`` (q, m) float64 of the ranking by (distance, index) at per-query
        ``cutoffs`` (q, m) - what ``metrics.ranked_sums`` gives for ``ranking(q, N)`` - and the
        histograms ``n, r`` (q, bits+1) of :meth:`label_histograms`, which come for free."""
        hits, s, n, r = self._kernel_db().ranked_sums(q.cpu().numpy(), q_labels.cpu().numpy(),
                                                       cutoffs.cpu().numpy())
        ap = np.divide(s, hits, out=np.zeros_like(s), where=hits > 0)
        return tuple(torch.from_numpy(x).to(self.device, torch.float64) for x in (hits, s, ap, n, r))

    def label_histograms(self, q: torch.Tensor, q_labels: torch.Tensor):
        """numba: (q, bits+1) float64 counts of all / relevant items per distance, relevance taken
        from the labels (no (q, N) relevance matrix)."""
        n, r = self._kernel_db().histograms(q.cpu().numpy(), q_labels.cpu().numpy())
        return torch.from_numpy(n).to(self.device, torch.float64), torch.from_numpy(r).to(self.device, torch.float64)


def hamming_histograms(d: torch.Tensor, rel: torch.Tensor, bits: int):
    """Per-query counts of all / relevant items at each Hamming distance 0..bits: (q, bits+1) float64."""
    q, width = d.shape[0], bits + 1
    key = d.to(torch.int64 if q * width * 2 >= 2 ** 31 else torch.int32)
    key = (key + torch.arange(q, device=d.device, dtype=key.dtype)[:, None] * (2 * width)) + rel * width
    c = torch.bincount(key.reshape(-1), minlength=q * width * 2).view(q, 2, width).to(torch.float64)
    return c.sum(1), c[:, 1]


def build_engine(name: str, prep: Prepared):
    return TorchEngine(prep) if name == "torch" else FaissEngine(prep, name)
