"""Exact (and approximate) ranking engines with one interface.

An engine is built once per evaluation from the database and answers, for a chunk of queries:

* ``ranking(q, K)`` -> ``(ids, dist)``, (nq, K): the K nearest database items ordered by
  distance, ties by ascending database index (faiss's order);
* ``distances(q)`` -> (nq, N) distances to the whole database (Hamming: int32).

torch: Hamming through a +-1 matrix product (float16 on CUDA, exact for up to 2048 bits; float32
on CPU), ranking by ``topk`` / ``sort`` on the unique key ``dist * N + index``.
faiss: ``IndexBinaryFlat`` / ``IndexFlatL2`` / ``IndexFlatIP`` (faiss-gpu when installed and the
device is CUDA); full Hamming distance matrices come from a numpy popcount kernel.
"""

from __future__ import annotations

import numpy as np
import torch

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation.inputs import Prepared

APPROXIMATE = ("faiss-hnsw", "faiss-ivf")
ENGINES = ("auto", "torch", "faiss") + APPROXIMATE


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

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        if self.distance == "hamming":
            dot = (q.to(self.dtype) * 2 - 1) @ self.db.T
            return ((self.bits - dot) * 0.5).to(torch.int32)
        ip = q @ self.db.T
        if self.distance == "cosine":
            return 1 - ip
        return ((q * q).sum(1, keepdim=True) + self.db_sq - 2 * ip).clamp_min_(0)

    def ranking(self, q: torch.Tensor, k: int):
        d = self.distances(q)
        if self.distance == "hamming":
            key = d.to(self.key_dtype) * self.n + self.arange
            if k < self.n:
                key, ids = torch.topk(key, k, dim=1, largest=False, sorted=True)
            else:
                key, ids = torch.sort(key, dim=1)
            return ids, (key // self.n).to(torch.int32)
        vals, ids = torch.sort(d, dim=1, stable=True)
        return ids[:, :k], vals[:, :k]


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

    def ranking(self, q: torch.Tensor, k: int):
        qn = q.cpu().numpy()
        if self.distance == "hamming":
            qn = np.packbits(qn, axis=1)
        dist, ids = self.index.search(qn, k)
        if self.distance == "cosine":
            dist = 1 - dist
        ids_t = torch.from_numpy(ids).to(self.device)
        return ids_t, torch.from_numpy(dist).to(self.device)

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        if self.distance != "hamming":
            raise NotImplementedError("full float distance matrices come from ranking(q, N)")
        qp = np.packbits(q.cpu().numpy(), axis=1)
        if self._words is not None:
            x = qp.view(np.uint64)[:, None, :] ^ self._words[None, :, :]
        else:
            x = qp[:, None, :] ^ self.db_packed[None, :, :]
        cnt = _popcount_u8(x)
        d = cnt[..., 0] if cnt.shape[2] == 1 else cnt.sum(2, dtype=np.int32)
        return torch.from_numpy(np.ascontiguousarray(d)).to(self.device)


def build_engine(name: str, prep: Prepared):
    return TorchEngine(prep) if name == "torch" else FaissEngine(prep, name)
