"""Exact float top-k (L2 / cosine) by tiles of the database: never the whole (queries, N) matrix.

:func:`tiled_float_ranking` walks the database in tiles of ``tile`` items. Per tile it computes the
float32 distances of the query chunk with one matrix product (the formula of
``TorchEngine.distances``), keeps the tile's ``c`` smallest (``topk``) and merges them with the
running ``c`` best (another ``topk`` over the ``2c`` values), so memory is ``queries x (tile + 2c)``.
``c`` starts at ``k + max(16, k / 4)``; when some query's ``c``-th candidate is not more than
``2 tol`` past its k-th (``tol`` bounds the float32 error, :func:`engines.float_tolerance`), the
candidates might miss an item of the exact top-k and ``c`` grows 4x (a new sweep). Otherwise the
candidates hold every item within ``2 tol`` of the k-th distance, and
:func:`engines.resolve_near_ties` puts them in the exact order (float64 distance, database index) -
the same ids the torch and faiss engines return.
"""

from __future__ import annotations

import torch

from hashbench.platform.evaluation import engines as E

#: database items per tile
TILE = 1 << 16


def _tile_distances(q: torch.Tensor, q_sq: torch.Tensor, db: torch.Tensor, db_sq: torch.Tensor, distance: str):
    ip = q @ db.T
    if distance == "cosine":
        return 1 - ip
    return (q_sq + db_sq - 2 * ip).clamp_min_(0)


def tiled_candidates(q: torch.Tensor, db: torch.Tensor, c: int, distance: str, tile: int | None = None):
    """The ``c`` smallest float32 distances of each query and their ids, ascending: (nq, c) each."""
    n, tile = db.shape[0], tile or TILE
    q_sq = (q * q).sum(1, keepdim=True)
    best_d = best_i = None
    for s in range(0, n, tile):
        part = db[s:s + tile]
        d = _tile_distances(q, q_sq, part, (part * part).sum(1), distance)
        m = min(c, d.shape[1])
        vals, idx = torch.topk(d, m, dim=1, largest=False, sorted=False)
        idx = idx + s
        if best_d is not None:
            vals, idx = torch.cat([best_d, vals], 1), torch.cat([best_i, idx], 1)
            m = min(c, vals.shape[1])
            vals, pick = torch.topk(vals, m, dim=1, largest=False, sorted=False)
            idx = idx.gather(1, pick)
        best_d, best_i = vals, idx
    vals, order = torch.sort(best_d, dim=1)
    return vals, best_i.gather(1, order)


def tiled_float_ranking(q: torch.Tensor, db: torch.Tensor, k: int, distance: str, db_norm_max: float,
                        tile: int | None = None):
    """The exact top-``k`` of float codes, (float64 distance, index) order: ``(ids, dist)`` (nq, k)."""
    n = db.shape[0]
    k = min(int(k), n)
    tol = E.float_tolerance(q, db_norm_max, E.U32, E.matmul_input_unit(q.device))
    c = min(n, k + max(16, k // 4))
    while True:
        d, ids = tiled_candidates(q, db, c, distance, tile)
        d = d.to(torch.float64)
        if c == n or bool((d[:, c - 1:] > d[:, k - 1:k] + 2 * tol).all()):
            break
        c = min(n, 4 * c)
    ids, d = E.resolve_near_ties(q, db, ids, d, tol, distance)
    return ids[:, :k], d[:, :k]
