"""Speed of ``hashbench.platform.evaluation.evaluate``: new path, old path and a numpy reference.

The reference is the common deep-hashing mAP@k code written from its definition: per query, Hamming
distances from the +-1 product, ``argsort`` (stable, i.e. ties by database index), AP over the hits
in the top k (the "hits" convention; no-hit queries count 0). Our numbers under the same tie policy
(``ties="index"``) must be identical; the default tie-aware policy is timed too.

    python benchmarks/bench_eval.py [--device cpu|cuda] [--quick] [--ref-queries 100] [--huge] [--repeat 1]
    python benchmarks/bench_eval.py --device cuda --check      # fused == torch on every protocol

New and old path per device: on CUDA the fused Triton kernels (``engine="fused"``, what ``auto``
picks) and the torch engine (``engine="torch"``); on the CPU ``auto`` with the numba kernels and the
numpy path (faiss / radix argsort, ``HASHBENCH_EVAL_NUMBA=0``). ``--huge`` adds 100k x 10M (GPU).
Both paths must give the same numbers (column ``same``; within 1e-9).

Synthetic 64-bit codes: 10 classes, each code is its class centre with 30% of the bits flipped.
The reference is timed on ``--ref-queries`` queries and extrapolated when it would take too long
(the table says so). ``--repeat N`` (CPU) times every cell, the reference's included, as the fastest
of N calls. The one-time cost of numba's kernels (import, then compile or load from the
cache) and of compiling the Triton kernels is printed separately and kept out of the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The reference's matrix-vector products run on one BLAS thread: it is no slower (memory-bound), and
# OpenBLAS threads left spinning after it would take the cores from the next measured call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hashbench.platform.evaluation import engines, evaluate  # noqa: E402


def make_codes(n: int, bits: int, classes: int, rng: np.random.Generator, centres: np.ndarray,
               block: int = 1 << 20):
    labels = rng.integers(0, classes, n)
    codes = np.empty((n, bits), dtype=np.uint8)
    for s in range(0, n, block):                     # bounded temporaries for 10M codes
        flips = rng.random((min(block, n - s), bits)) < 0.3
        codes[s:s + block] = centres[labels[s:s + block]] ^ flips
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


def check(device: str, nq: int = 300, ndb: int = 30000, settings=None) -> int:
    """The new path against the old one on the device: every convention x tie policy x no-hit
    policy, 8-1024 bits, single- and multi-label, full histograms and thresholded ones."""
    rng = np.random.default_rng(7)
    print(f"equality check on {device}: engine 'fused' vs 'torch' (every metric, |difference| <= 1e-9)")
    print("| bits | labels | queries x db | evaluations | max abs difference | differing keys | fused s | torch s |")
    print("|---|---|---|---|---|---|---|---|")
    bad = 0
    for bits, multi in settings or [(8, False), (64, False), (64, True), (100, False), (1024, True)]:
        q = torch.from_numpy(rng.integers(0, 2, (nq, bits)).astype(np.uint8)).to(device)
        db = torch.from_numpy(rng.integers(0, 2, (ndb, bits)).astype(np.uint8)).to(device)
        db[ndb // 300:ndb // 300 + 40] = q[0]                # exact duplicates: distance 0 ties
        if bits >= 64:                                        # near codes so that low levels are populated
            m = ndb // 15
            db[m:3 * m] = q[torch.arange(2 * m, device=device) % nq] ^ (
                torch.rand(2 * m, bits, device=device) < 0.1).to(torch.uint8)
        if multi:
            ql = torch.rand(nq, 24, device=device) < 0.08
            dl = torch.rand(ndb, 24, device=device) < 0.08
        else:
            ql = torch.randint(0, 12, (nq,), device=device)      # class 11 is absent from the database
            dl = torch.randint(0, 11, (ndb,), device=device)
        worst, keys, n_eval, tf, tt = 0.0, set(), 0, 0.0, 0.0
        for conv in ("hits", "min-k-r", "r"):
            for ties in ("tie-aware", "index"):
                for excl in (False, True):
                    for extra in ({"ks": (1, 10, 100, 1000, "all"), "map_at_r": True, "pr_curve": True},
                                  {"ks": (10, 100, 1000), "map_at_r": False, "hamming_radius": 2}):
                        kw = dict(convention=conv, ties=ties, exclude_no_hit=excl, **extra)
                        t0 = time.perf_counter()
                        a = evaluate(q, db, ql, dl, engine="fused", **kw)
                        t1 = time.perf_counter()
                        b = evaluate(q, db, ql, dl, engine="torch", **kw)
                        tf, tt = tf + t1 - t0, tt + time.perf_counter() - t1
                        n_eval += 1
                        if a["protocol"]["no_hit_queries"] != b["protocol"]["no_hit_queries"]:
                            keys.add("no_hit_queries")
                        for key, va in a.items():
                            vb = b[key]
                            if key == "pr_curve":
                                va = va["precision"] + va["recall"]
                                vb = vb["precision"] + vb["recall"]
                            if isinstance(va, list):
                                diff = max(abs(x - y) for x, y in zip(va, vb))
                            elif isinstance(va, (int, float)):
                                diff = abs(va - vb)
                            else:
                                continue
                            worst = max(worst, diff)
                            if diff > 1e-9:
                                keys.add(key)
        bad += bool(keys)
        print(f"| {bits} | {'multi' if multi else 'single'} | {nq} x {ndb} | {n_eval} | {worst:.2e} | "
              f"{', '.join(sorted(keys)) or '-'} | {tf:.2f} | {tt:.2f} |", flush=True)
    from hashbench.platform.evaluation import fused_engine
    if fused_engine.LAST_ERROR:
        print(f"FUSED KERNEL FAILURES (fell back to torch): {fused_engine.LAST_ERROR}")
        bad += 1
    print("equality check: " + ("PASSED" if not bad else "FAILED"))
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--ref-queries", type=int, default=100,
                    help="queries the reference is timed on when it would take too long (extrapolated)")
    ap.add_argument("--engine", default="auto", help="new path (default auto: fused on CUDA, numba on CPU)")
    ap.add_argument("--old-engine", default=None,
                    help="old path (default: torch on CUDA; on CPU the numpy path, 'numpy')")
    ap.add_argument("--repeat", type=int, default=1,
                    help="CPU: time every cell, the reference's included, as the fastest of this many calls "
                         "(a shared machine's load moves single calls by up to 2x)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--skip-large", action="store_true", help="leave out the 10k x 1M case")
    ap.add_argument("--skip-small", action="store_true", help="leave out the 1k x 59k cases")
    ap.add_argument("--huge", action="store_true", help="add 100k x 10M (GPU); the old path only with --huge-old")
    ap.add_argument("--only-huge", action="store_true", help="only the 100k x 10M case")
    ap.add_argument("--huge-old", action="store_true", help="also time the old path at 100k x 10M")
    ap.add_argument("--check", action="store_true", help="fused == torch on every protocol, then exit")
    ap.add_argument("--protocols", action="store_true",
                    help="print mAP@10/100/1000 of a fixed 16-bit case under every protocol, then exit")
    args = ap.parse_args()
    if args.protocols:
        protocol_table()
        return
    if args.check:
        sys.exit(check(args.device))
    bits, classes = args.bits, 10
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (classes, bits)).astype(bool)
    cases = [(1000, 59000, "all"), (1000, 59000, 1000), (10000, 1000000, 1000)]
    if args.quick:
        cases = [(200, 5900, "all"), (200, 5900, 1000), (1000, 100000, 1000)]
    if args.skip_large:
        cases = cases[:2]
    if args.skip_small:
        cases = cases[2:]
    if args.huge or args.only_huge:
        cases = ([] if args.only_huge else cases) + [(100000, 10000000, 1000)]
    old = args.old_engine or ("torch" if args.device == "cuda" else "numpy")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={args.device} torch threads={torch.get_num_threads()} new={args.engine} old={old} "
          f"bits={bits} load average={load:.1f} (torch {torch.__version__}, numpy {np.__version__})")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    def run_eval(engine, *a, **kw):
        if engine != "numpy":
            return evaluate(*a, engine=engine, **kw)
        saved, engines.CPU_KERNELS = engines.CPU_KERNELS, False
        try:
            return evaluate(*a, engine="auto", **kw)
        finally:
            engines.CPU_KERNELS = saved

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
    if args.device == "cuda":
        t0 = time.perf_counter()
        w = [torch.from_numpy(x).cuda() for x in make_codes(70000, bits, classes, rng, centres)]
        for ties in ("index", "tie-aware"):
            for extra in ({"ks": (100,), "map_at_r": False, "hamming_radius": None}, {"ks": ("all",)}):
                run_eval(args.engine, w[0][:64], w[0], w[1][:64], w[1], ties=ties, **extra)
        torch.cuda.synchronize()
        from hashbench.platform.evaluation import fused_engine
        state = "FAILED, fell back to torch: " + "; ".join(fused_engine.LAST_ERROR) if fused_engine.LAST_ERROR else "ok"
        print(f"kernel compile / warm-up {time.perf_counter() - t0:.2f} s (not in the table); fused kernels: {state}")
    print("| queries x db | k | reference (numpy) s | new index s | old index s | speed-up new/ref | new tie-aware s "
          "| old tie-aware s | mAP reference | mAP new (index) | mAP new (tie-aware) | same |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for nq, ndb, k in cases:
        q, ql = make_codes(nq, bits, classes, rng, centres)
        db, dl = make_codes(ndb, bits, classes, rng, centres)
        topk = ndb if k == "all" else k
        nref = nq if nq * ndb <= 59_000_000 else min(nq, args.ref_queries)
        t_ref, m_ref = timed(lambda: reference_map(q[:nref], db, ql[:nref], dl, topk), "cpu",
                             1 if args.device == "cuda" else args.repeat)
        t_ref_full = t_ref * nq / nref
        if args.device == "cuda":
            tq, tdb = torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda()
            tql, tdl = torch.from_numpy(ql).cuda(), torch.from_numpy(dl).cuda()
        else:
            tq, tdb, tql, tdl = q, db, ql, dl
        kw = dict(ks=(k,), convention="hits", map_at_r=False, hamming_radius=None, device=args.device)
        huge = nq * ndb > 10 ** 11
        repeat = 1 if huge else 3 if args.device == "cuda" else args.repeat
        out, times = {}, {}
        for path, engine in (("new", args.engine), ("old", old)):
            if path == "old" and huge and not args.huge_old:
                continue
            for ties in ("index", "tie-aware"):
                fn = lambda: run_eval(engine, tq, tdb, tql, tdl, ties=ties, **kw)  # noqa: E731
                if args.device == "cuda":     # warm-up (kernel variants, allocator); 1024 queries at 10M
                    run_eval(engine, tq[:1024], tdb, tql[:1024], tdl, ties=ties, **kw) if huge else fn()
                times[path, ties], out[path, ties] = timed(fn, args.device, repeat)
                print(f"  {nq} x {ndb} k={k} {path} path ({engine}), {ties}: {times[path, ties]:.4f} s, "
                      f"mAP@{k} {out[path, ties][f'mAP@{k}']:.9f}", flush=True)
        key = f"mAP@{k}"
        same = all(abs(out["new", t][key] - out["old", t][key]) < 1e-9 for t in ("index", "tie-aware")
                   if ("old", t) in out)
        if nref < nq:   # compare on the queries the reference ran on
            sub = evaluate(q[:nref], db, ql[:nref], dl, ties="index", **{**kw, "device": "cpu", "engine": "auto"})
            m_cmp = sub[key]
            ref_note = f"{t_ref_full:.1f} (timed on {nref} queries, x{nq // nref})"
        else:
            m_cmp = out["new", "index"][key]
            ref_note = f"{t_ref_full:.2f}"
        agree = abs(m_cmp - m_ref) < 1e-9
        if args.device == "cuda":   # the GPU's tie-aware number against the CPU engine on the same queries
            nchk = min(nq, nref)
            g = evaluate(tq[:nchk], tdb, tql[:nchk], tdl, ties="tie-aware", engine=args.engine, **kw)[key]
            c = evaluate(q[:nchk], db, ql[:nchk], dl, ties="tie-aware", **{**kw, "device": "cpu", "engine": "auto"})[key]
            agree = agree and abs(g - c) < 1e-9
            print(f"tie-aware {key} on {nchk} queries: GPU {g:.9f}, CPU {c:.9f}", flush=True)
        fmt = lambda path, ties: f"{times[path, ties]:.3f}" if (path, ties) in times else "-"  # noqa: E731
        print(f"| {nq} x {ndb} | {k} | {ref_note} | {fmt('new', 'index')} | {fmt('old', 'index')} | "
              f"{t_ref_full / times['new', 'index']:.0f}x | {fmt('new', 'tie-aware')} | {fmt('old', 'tie-aware')} | "
              f"{m_ref:.6f} | {m_cmp:.6f} | {out['new', 'tie-aware'][key]:.6f} | "
              f"{'yes' if agree and same else 'NO'} |", flush=True)
        del tq, tdb, tql, tdl
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
