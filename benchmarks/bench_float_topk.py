#!/usr/bin/env python
"""Exact float top-k (L2 / cosine) on the GPU: the tiled path beside the whole-matrix path.

``engine="fused"`` ranks float embeddings with :func:`fused_float.tiled_float_ranking`: one matrix
product per tile of the database and a running top-k merge, never the (queries, N) matrix; the torch
engine (the old path) computes each query chunk's whole (chunk, N) distance matrix. Both return the
exact (float64 distance, database index) order. One table row per cut-off ``k``: seconds for all
queries, queries per second, the largest temporary, and whether both paths return the same ids for
every query (and the same as a float64 brute force on ``--check`` queries).

Published reference (no faiss-gpu on these machines): ann-benchmarks.com lists faiss-gpu-bf (exact
brute force, batch mode) on sift-128-euclidean (1M x 128 float32, 10k queries, k = 10) at 24,472
queries per second, recall 1.0 (their GPU, not an H100); the default case here has that shape.

    python benchmarks/bench_float_topk.py --device cuda                       # 10k x 1M x 128, k = 10, 100, 1000
    python benchmarks/bench_float_topk.py --device cpu --queries 64 --db 4000 --dim 16 --ks 10   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hashbench.platform.evaluation import engines as E
from hashbench.platform.evaluation.fused_float import TILE, tiled_float_ranking

#: faiss-gpu-bf on sift-128-euclidean (k = 10, batch mode), ann-benchmarks.com
PUBLISHED_QPS = 24472


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev, repeat):
    """(median seconds, last result) of ``repeat`` calls after one untimed call."""
    out = fn()
    times = []
    for _ in range(repeat):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def _chunks(q, step, rank):
    ids = [rank(q[s:s + step]) for s in range(0, q.shape[0], step)]
    return torch.cat(ids)


def brute_force_ids(q, db, k, distance):
    """Top-k ids of a float64 brute force, ties by database index (a stable sort of the distances)."""
    d = E.float_distances64(q, db, distance)
    return torch.sort(d, dim=1, stable=True).indices[:, :k]


def _bad(msg: str) -> int:
    print(f"bench_float_topk: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--db", type=int, default=1000000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ks", default="10,100,1000", help="comma-separated cut-offs")
    ap.add_argument("--distance", default="l2", choices=["l2", "cosine"])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per path (median)")
    ap.add_argument("--check", type=int, default=100, help="queries checked against a float64 brute force")
    ap.add_argument("--query-chunk", type=int, default=None,
                    help="queries per call (default: evaluate()'s chunk, 2^30 / N on CUDA)")
    ap.add_argument("--skip-old", action="store_true", help="leave out the whole-matrix path")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        return _bad("--device cuda but CUDA is not available; use --device cpu")
    dev = torch.device(a.device)
    try:
        ks = [int(k) for k in a.ks.split(",")]
    except ValueError:
        ks = [0]
    if any(k <= 0 or k > a.db for k in ks):
        return _bad(f"--ks {a.ks}: expected comma-separated integers in 1..--db ({a.db})")
    g = torch.Generator(device=dev).manual_seed(a.seed)
    db = torch.randn(a.db, a.dim, device=dev, generator=g)
    q = torch.randn(a.queries, a.dim, device=dev, generator=g)
    if a.distance == "cosine":
        db, q = torch.nn.functional.normalize(db, dim=1), torch.nn.functional.normalize(q, dim=1)
    step = a.query_chunk or max(1, (2 ** 30 if dev.type == "cuda" else 2 ** 22) // a.db)
    norm = float(db.to(torch.float64).norm(dim=1).max())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"float top-k: {a.queries} queries x {a.db} items x {a.dim} dims, {a.distance}, float32, device {name}; "
          f"query chunk {step}, tile {TILE}; torch {torch.__version__}")
    print("| k | tiled s | tiled queries/s | tiled largest temporary MB | whole-matrix s | whole-matrix largest "
          "temporary MB | speed-up | same ids (all queries) | = float64 brute force |")
    print("|---|---|---|---|---|---|---|---|---|")
    check = q[: min(a.check, a.queries)]
    for k in ks:
        c = min(a.db, k + max(16, k // 4))
        new_s, new_ids = _timed(lambda: _chunks(q, step, lambda x: tiled_float_ranking(
            x, db, k, a.distance, norm)[0]), dev, a.repeat)
        new_mb = min(step, a.queries) * (min(TILE, a.db) + 2 * c) * 4 / 2 ** 20
        if a.skip_old:
            old_s, same = None, "-"
            old_mb = "-"
        else:
            old_s, old_ids = _timed(lambda: _chunks(q, step, lambda x: E.float_ranking(
                x, db, k, a.distance, db_norm_max=norm)[0]), dev, a.repeat)
            old_mb = f"{min(step, a.queries) * a.db * 4 / 2 ** 20:.0f}"
            same = "yes" if torch.equal(new_ids, old_ids) else "NO"
        ref = brute_force_ids(check.to(torch.float64), db.to(torch.float64), k, a.distance)
        exact = "yes" if torch.equal(new_ids[: check.shape[0]], ref) else "NO"
        old_txt = f"{old_s:.4f}" if old_s is not None else "-"
        speed = f"{old_s / new_s:.2f}x" if old_s is not None else "-"
        print(f"| {k} | {new_s:.4f} | {a.queries / new_s:,.0f} | {new_mb:.0f} | {old_txt} | {old_mb} | {speed} | "
              f"{same} | {exact} ({check.shape[0]} queries) |")
    if 10 in ks and a.dim == 128 and a.db == 1000000 and a.queries == 10000 and a.distance == "l2":
        print(f"\npublished: faiss-gpu-bf, sift-128-euclidean, k = 10: {PUBLISHED_QPS:,} queries/s (ann-benchmarks.com)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
