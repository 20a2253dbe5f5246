"""Speed of ``hashbench.platform.evaluation.evaluate`` against a numpy reference.

The reference is the common deep-hashing mAP@k code written from its definition: per query, Hamming
distances from the +-1 product, ``argsort`` (stable, i.e. ties by database index), AP over the hits
in the top k (the "hits" convention; no-hit queries count 0). Our numbers under the same tie policy
(``ties="index"``) must be identical; the default tie-aware policy is timed too.

    python benchmarks/bench_eval.py [--device cpu|cuda] [--quick] [--ref-queries 100]

Synthetic 64-bit codes: 10 classes, each code is its class centre with 30% of the bits flipped.
On CPU the reference is timed on ``--ref-queries`` queries and extrapolated (the table says so).
The one-time cost of numba's kernels (import, then compile or load from the cache) is printed
separately and kept out of the table, like the faiss import; HASHBENCH_EVAL_NUMBA=0 times the numpy path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hashbench.platform.evaluation import engines, evaluate  # noqa: E402


def make_codes(n: int, bits: int, classes: int, rng: np.random.Generator, centres: np.ndarray):
    labels = rng.integers(0, classes, n)
    flips = rng.random((n, bits)) < 0.3
    codes = (centres[labels] ^ flips).astype(np.uint8)
    return codes, labels


def reference_map(q01: np.ndarray, db01: np.ndarray, ql: np.ndarray, dl: np.ndarray, topk: int) -> float:
    """Common deep-hashing mAP@topk (per-query loop, numpy), ties by database index."""
    bits = q01.shape[1]
    qb = q01.astype(np.float32) * 2 - 1
    rb = db01.astype(np.float32) * 2 - 1
    total = 0.0
    for i in range(qb.shape[0]):
        gnd = (dl == ql[i]).astype(np.float32)
        hamm = 0.5 * (bits - rb @ qb[i])
        ind = np.argsort(hamm, kind="stable")
        tgnd = gnd[ind][:topk]
        tsum = int(tgnd.sum())
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.flatnonzero(tgnd) + 1.0
        total += float(np.mean(count / tindex))
    return total / qb.shape[0]


def timed(fn, device: str, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def protocol_table() -> None:
    """mAP@10/100/1000 of one fixed seeded 16-bit case under every convention and tie policy."""
    rng = np.random.default_rng(16)
    centres = rng.integers(0, 2, (10, 16)).astype(bool)
    q, ql = make_codes(1000, 16, 10, rng, centres)
    db, dl = make_codes(20000, 16, 10, rng, centres)
    print("16-bit codes, 10 classes, 30% bit flips, seed 16: 1000 queries x 20000 database items")
    print("| convention | ties | no-hit | mAP@10 | mAP@100 | mAP@1000 |")
    print("|---|---|---|---|---|---|")
    for conv in ("hits", "min-k-r", "r"):
        for ties in ("index", "tie-aware"):
            for excl in (False, True):
                res = evaluate(q, db, ql, dl, ks=(10, 100, 1000), convention=conv, ties=ties,
                               exclude_no_hit=excl, map_at_r=False, hamming_radius=None)
                print(f"| {conv} | {ties} | {res['protocol']['no_hit']} | {res['mAP@10']:.4f} | "
                      f"{res['mAP@100']:.4f} | {res['mAP@1000']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--ref-queries", type=int, default=100,
                    help="queries the reference is timed on when it would take too long (extrapolated)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--skip-large", action="store_true", help="leave out the 10k x 1M case")
    ap.add_argument("--protocols", action="store_true",
                    help="print mAP@10/100/1000 of a fixed 16-bit case under every protocol, then exit")
    args = ap.parse_args()
    if args.protocols:
        protocol_table()
        return
    bits, classes = args.bits, 10
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (classes, bits)).astype(bool)
    cases = [(1000, 59000, "all"), (1000, 59000, 1000), (10000, 1000000, 1000)]
    if args.quick:
        cases = [(200, 5900, "all"), (200, 5900, 1000), (1000, 100000, 1000)]
    if args.skip_large:
        cases = cases[:2]
    print(f"device={args.device} torch threads={torch.get_num_threads()} engine={args.engine} "
          f"bits={bits} (torch {torch.__version__}, numpy {np.__version__})")
    print("| queries x db | k | reference (numpy) s | ours index-ties s | speed-up | ours tie-aware s "
          "| mAP reference | mAP ours (index) | mAP ours (tie-aware) | agree |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    warm = make_codes(50, bits, classes, rng, centres)
    for ties in ("index", "tie-aware"):   # one-time imports (faiss) and CUDA context out of the timings
        evaluate(warm[0], warm[0], warm[1], warm[1], ks=(10,), ties=ties, device=args.device, engine=args.engine)
    if args.device == "cpu" and engines.CPU_KERNELS:   # numba: imported, compiled or loaded once per process
        t0 = time.perf_counter()
        kernels = engines.cpu_kernels()
        if kernels is not None:
            kernels.warm_up()
        print(f"numba CPU kernels {'on' if kernels else 'unavailable'}: one-time import + compile / cache load "
              f"{time.perf_counter() - t0:.2f} s, not in the table")
    for nq, ndb, k in cases:
        q, ql = make_codes(nq, bits, classes, rng, centres)
        db, dl = make_codes(ndb, bits, classes, rng, centres)
        topk = ndb if k == "all" else k
        nref = nq if nq * ndb <= 59_000_000 else min(nq, args.ref_queries)
        t_ref, m_ref = timed(lambda: reference_map(q[:nref], db, ql[:nref], dl, topk), "cpu")
        t_ref_full = t_ref * nq / nref
        if args.device == "cuda":
            tq, tdb = torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda()
            tql, tdl = torch.from_numpy(ql).cuda(), torch.from_numpy(dl).cuda()
        else:
            tq, tdb, tql, tdl = q, db, ql, dl
        kw = dict(ks=(k,), convention="hits", map_at_r=False, hamming_radius=None, engine=args.engine,
                  device=args.device)
        run_idx = lambda: evaluate(tq, tdb, tql, tdl, ties="index", **kw)  # noqa: E731
        run_tie = lambda: evaluate(tq, tdb, tql, tdl, ties="tie-aware", **kw)  # noqa: E731
        repeat = 3 if args.device == "cuda" else 1
        if args.device == "cuda":
            run_idx(), run_tie()      # warm-up (CUDA context, kernels)
        t_idx, r_idx = timed(run_idx, args.device, repeat)
        t_tie, r_tie = timed(run_tie, args.device, repeat)
        key = f"mAP@{k}"
        if nref < nq:   # compare on the queries the reference ran on
            sub = evaluate(q[:nref], db, ql[:nref], dl, ties="index", **{**kw, "device": "cpu", "engine": "auto"})
            m_cmp = sub[key]
            ref_note = f"{t_ref_full:.1f} (timed on {nref} queries, x{nq // nref})"
        else:
            m_cmp = r_idx[key]
            ref_note = f"{t_ref_full:.2f}"
        agree = abs(m_cmp - m_ref) < 1e-9
        if args.device == "cuda":   # the GPU's tie-aware number against the CPU engine on the same queries
            nchk = min(nq, nref)
            sub_kw = {**kw, "engine": "auto"}
            g = evaluate(tq[:nchk], tdb, tql[:nchk], tdl, ties="tie-aware", **sub_kw)[key]
            c = evaluate(q[:nchk], db, ql[:nchk], dl, ties="tie-aware", **{**sub_kw, "device": "cpu"})[key]
            agree = agree and abs(g - c) < 1e-9
            print(f"tie-aware {key} on {nchk} queries: GPU {g:.9f}, CPU {c:.9f}", flush=True)
        print(f"| {nq} x {ndb} | {k} | {ref_note} | {t_idx:.3f} | {t_ref_full / t_idx:.0f}x | {t_tie:.3f} | "
              f"{m_ref:.6f} | {m_cmp:.6f} | {r_tie[key]:.6f} | {'yes' if agree else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
