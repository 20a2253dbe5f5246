"""Exact (and approximate) ranking engines with one interface.

An engine is built once per evaluation from the database and answers, for a chunk of queries:

* ``ranking(q, K)`` -> ``(ids, dist)``, (nq, K): the K nearest database items ordered by
  distance, ties by ascending database index (faiss's order);
* ``histograms(q, rel)`` -> per-query counts of all / relevant items at each Hamming distance
  (what every tie-aware metric needs);
* ``distances(q)`` -> (nq, N) distances to the whole database.

torch: float codes by :func:`float_ranking` (exact (float64 distance, index) order); Hamming through
a +-1 matrix product (float16 on CUDA, exact for up to 2048 bits; float32 on CPU); top-k rankings and
``truncated_histograms`` (tie-aware cut-offs) by locating the k-th distance level with a few counting
passes, no sort of the whole row (:mod:`level_select`); full rankings by ``sort`` on the unique key
``dist * N + index``.
faiss: ``IndexBinaryFlat`` (counting search) for Hamming codes; HNSW / IVF indexes (approximate); exact
float rankings by :func:`float_ranking` on the CPU, like the torch engine (faiss's float32 ``IndexFlat``
reorders near-ties, see docs/metrics.md "Exact float order"); long Hamming rankings and histograms come from
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
ENGINES = ("auto", "torch", "fused", "faiss") + APPROXIMATE
# fused Triton kernels (fused_engine.py) for engine="auto" on CUDA: off with HASHBENCH_EVAL_FUSED=0
FUSED = os.environ.get("HASHBENCH_EVAL_FUSED", "1") != "0"

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
        if device.type == "cuda":
            return "fused" if FUSED and _fused_available(device) else "torch"
        return "faiss" if faiss_available() else "torch"
    if engine == "fused":
        if not _fused_available(device):
            raise HashbenchError(f"engine='fused' needs Triton and CUDA tensors (device {device}); use "
                                 f"engine='torch' or 'auto'")
        return engine
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
            self.db_norm = float(prep.db.to(torch.float64).norm(dim=1).max())
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
        if self.distance != "hamming":   # exact order: float32 candidates, near-ties re-ranked in float64
            return float_ranking(q, self.db, k, self.distance, db_norm_max=self.db_norm)
        d = self.distances(q)            # the whole database: one sort on the unique key
        key, ids = torch.sort(d.to(self.key_dtype) * self.n + self.arange, dim=1)
        return ids, (key // self.n).to(torch.int32)


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
        self._db01, self._db_labels, self._packed, self._db_t = db, prep.db_labels, None, None
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
            else:                       # exact float search: float_ranking (float64), no faiss index
                index = None
            if index is not None:
                index.add(db)
        self.index = index

    def ranking(self, q: torch.Tensor, k: int, with_dist: bool = True):
        if self.distance != "hamming" and not self.approximate:
            ids, dist = self._float_ranking(q, k)
            return ids.to(self.device), dist.to(self.device)
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

    def _float_ranking(self, q: torch.Tensor, k: int):
        """Exact float top-k: :func:`float_ranking` (float64 distances on the CPU), the same function
        and order as the torch engine. faiss's ``IndexFlat`` ranks by float32 distances whose rounding
        reorders near-ties, so it serves only the approximate indexes."""
        if self._db_t is None:
            self._db_t = torch.from_numpy(self._db01)
            self._db_norm = float(self._db_t.to(F64).norm(dim=1).max())
        return float_ranking(q.cpu(), self._db_t, k, self.distance, db_norm_max=self._db_norm)

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

    def ranked_sums(self, q: torch.Tensor, q_labels: torch.Tensor, cutoffs: torch.Tensor, self_start: int = -1):
        """numba: ``hits, S, ap_hits`` (q, m) float64 of the ranking by (distance, index) at per-query
        ``cutoffs`` (q, m) - what ``metrics.ranked_sums`` gives for ``ranking(q, N)`` - and the
        histograms ``n, r`` (q, bits+1) of :meth:`label_histograms`, which come for free.
        ``self_start >= 0``: same-set, query i is item ``self_start + i`` and is left out."""
        hits, s, n, r = self._kernel_db().ranked_sums(q.cpu().numpy(), q_labels.cpu().numpy(),
                                                       cutoffs.cpu().numpy(), self_start)
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


# ------------------------------------------------------------------ exact order of float distances
#: unit roundoff of float32 and float64
U32, U64 = 2.0 ** -24, 2.0 ** -53
#: elements of the (pairs, dim) float64 temporaries of :func:`exact_pair_distances`
PAIR_BUDGET = 2 ** 24
F64 = torch.float64


def matmul_input_unit(device: torch.device) -> float:
    """Relative rounding of the inputs of a float32 matrix product on ``device``: 0 (true float32),
    2^-11 (TF32, or ``float32_matmul_precision('high')``) or 2^-8 (bf16, ``'medium'``)."""
    if device.type != "cuda":
        return 0.0
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0 ** -8
    if precision == "high" or torch.backends.cuda.matmul.allow_tf32:
        return 2.0 ** -11
    return 0.0


def float_tolerance(q: torch.Tensor, db_norm_max: float, unit: float = U32, unit_in: float = 0.0) -> torch.Tensor:
    """(nq, 1) float64 bound on ``|approximate - exact|`` for every database item, where the
    approximate distance was computed in floating point with unit roundoff ``unit`` (matrix-product
    inputs rounded with ``unit_in``) as ``||q||^2 + ||d||^2 - 2 q.d`` or a direct sum of squared
    differences (L2), or ``1 - q.d`` (cosine, unit vectors).

    Each of these has error at most ``gamma (||q|| + ||d||)^2`` with ``gamma = n u / (1 - n u) + 2 u_in``
    for sums of ``n = dim + 4`` rounded terms (the textbook bound of a floating-point dot product in any
    summation order, plus the norms and the final additions); the bound below doubles it.
    """
    n = q.shape[1] + 4
    gamma = n * unit / (1 - n * unit) + 2 * unit_in
    qn = q.to(F64).norm(dim=1, keepdim=True)
    return 2 * gamma * (qn + float(db_norm_max)) ** 2


def exact_pair_distances(q: torch.Tensor, db: torch.Tensor, rows: torch.Tensor, items: torch.Tensor,
                         distance: str) -> torch.Tensor:
    """float64 distances of the pairs (query ``rows[p]``, database item ``items[p]``), computed per pair
    from the float32 codes: ``sum((q - d)^2)`` (l2) or ``1 - sum(q d)`` (cosine). Each pair is reduced
    on its own, so a pair's value depends only on its two vectors (duplicates tie exactly); these values
    define the exact float order, (distance, database index)."""
    out = torch.empty(rows.shape[0], dtype=F64, device=rows.device)
    step = max(1, PAIR_BUDGET // max(1, q.shape[1]))
    for s in range(0, rows.shape[0], step):
        qv = q[rows[s:s + step]].to(F64)
        dv = db[items[s:s + step]].to(F64)
        out[s:s + step] = ((qv - dv) ** 2).sum(1) if distance == "l2" else 1 - (qv * dv).sum(1)
    return out


def resolve_near_ties(q: torch.Tensor, db: torch.Tensor, ids: torch.Tensor, d: torch.Tensor,
                      tol: torch.Tensor, distance: str):
    """Put candidates sorted by approximate distances into the exact order (float64 distance, index).

    ``ids, d`` (nq, C): candidates in ascending ``d`` (any order among equal values); ``tol`` (nq, 1):
    a bound on ``|d - exact|`` (:func:`float_tolerance`). Two neighbours more than ``2 tol`` apart are
    already in exact order, so only *runs* of neighbours closer than that are re-ranked: their members
    get :func:`exact_pair_distances` and each run is sorted in place by (exact distance, index).
    Returns ``ids`` and float64 distances (exact for run members, ``d`` elsewhere: an item outside a
    run equals no other item's distance). Reusable by any search that produces approximate sorted
    candidates containing the exact top-k (see :func:`float_ranking`).
    """
    d = d.to(F64)
    if ids.shape[1] < 2:
        return ids, d
    close = (d[:, 1:] - d[:, :-1]) <= 2 * tol
    if not bool(close.any()):
        return ids, d
    member = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    member[:, 1:] |= close
    member[:, :-1] |= close
    new = torch.ones(ids.shape, dtype=torch.int64, device=ids.device)
    new[:, 1:] = (~close).to(torch.int64)
    run = torch.cumsum(new, 1)
    rows, cols = member.nonzero(as_tuple=True)                  # row-major: runs in ranking order
    item = ids[rows, cols]
    exact = exact_pair_distances(q, db, rows, item, distance)
    key = rows * (ids.shape[1] + 1) + run[rows, cols]           # one key per run, increasing along rows
    order = torch.sort(item, stable=True).indices
    order = order[torch.sort(exact[order], stable=True).indices]
    order = order[torch.sort(key[order], stable=True).indices]  # (run, exact distance, index)
    ids, d = ids.clone(), d.clone()
    ids[rows, cols] = item[order]
    d[rows, cols] = exact[order]
    return ids, d


def float_distances64(q: torch.Tensor, db: torch.Tensor, distance: str) -> torch.Tensor:
    """(nq, N) float64 distances from one float64 matrix product: ``||q||^2 + ||d||^2 - 2 q.d`` (l2) or
    ``1 - q.d`` (cosine); within :func:`float_tolerance` with ``U64`` of the exact values."""
    q64, db64 = q.to(F64), db.to(F64)
    dot = q64 @ db64.T
    if distance == "cosine":
        return 1 - dot
    return (q64 * q64).sum(1, keepdim=True) + (db64 * db64).sum(1) - 2 * dot


def float_ranking(q: torch.Tensor, db: torch.Tensor, k: int, distance: str, d: torch.Tensor | None = None,
                  unit: float = U64, db_norm_max: float | None = None):
    """The exact top-``k`` (``k = N``: the whole ranking) of float codes in the order (float64 distance,
    database index): ``(ids, dist)``, dist float64.

    ``d`` (nq, N): approximate distances with unit roundoff ``unit`` (default: :func:`float_distances64`
    computes them). Candidates: the ``c`` smallest (``topk``), ``c`` grown from ``k + max(16, k/4)`` until
    every row's ``c``-th lies more than ``2 tol`` past its k-th (then they contain the exact top-k, since
    ``|d - exact| <= tol``), or the whole sorted row for ``k = N``;
    then :func:`resolve_near_ties` re-ranks the runs of near-equal neighbours by the per-pair float64
    distances. With float64 ``d`` the runs are, in practice, only exact duplicates; with float32 ``d``
    (pass ``unit=U32``, e.g. from a fast float32 search) most of the band is re-ranked. Both engines call
    this, so they return identical ids, independent of BLAS summation order or faiss's float32 ranking.
    """
    n = db.shape[0]
    if db_norm_max is None:
        db_norm_max = float(db.to(F64).norm(dim=1).max())
    if d is None:
        d = float_distances64(q, db, distance)
    unit_in = matmul_input_unit(d.device) if d.dtype == torch.float32 else 0.0
    tol = float_tolerance(q, db_norm_max, unit, unit_in)
    if k >= n:
        vals, ids = torch.sort(d, dim=1, stable=True)
    else:                 # grow c until every row's c-th candidate lies more than 2 tol past its k-th
        c = min(n, k + max(16, k // 4))
        while True:
            vals, ids = torch.topk(d, c, dim=1, largest=False, sorted=True)
            if c == n or bool((vals[:, c - 1:].to(F64) > vals[:, k - 1:k].to(F64) + 2 * tol).all()):
                break
            c = min(n, 4 * c)
    ids, vals = resolve_near_ties(q, db, ids, vals, tol, distance)
    return ids[:, :k], vals[:, :k]


def _fused_available(device: torch.device) -> bool:
    from hashbench.platform.evaluation.fused_engine import available

    return available(device)


def build_engine(name: str, prep: Prepared):
    if name == "fused":
        from hashbench.platform.evaluation.fused_engine import FusedEngine

        return FusedEngine(prep)
    return TorchEngine(prep) if name == "torch" else FaissEngine(prep, name)
