"""Where the time of the fused Hamming evaluation goes (issue 14): timings, launches, kernels, host syncs.

Builds bench_eval.py's large case (its ``make_codes``: 10 classes, 30% of the bits flipped; default
10k queries x 1M codes, 64 bits) and evaluates mAP@k (``convention="hits"``, no MAP@R, no radius: the
keyword arguments bench_eval.py times) with ``engine="fused"``, tie-aware and with index ties. Per
evaluation it prints:

* wall ms: median (min, max) of ``--repeat`` calls after ``--warmup`` calls, CUDA-synchronised;
* the kernel launches of one call (from a wrapper around ``_hist_kernel`` / ``_list_kernel``): which
  pass (threshold sample, thresholded full pass, the ``short`` re-pass at ``T = bits``, top-k list),
  grid, database items per program, and the pairs the threshold took (sum of the histogram counts,
  or of the list counters: the number of atomics) against all pairs of the pass;
* one call under ``torch.profiler`` (CPU + CUDA activities): GPU kernels (and memcpy / memset) by total
  time, ``_hist_kernel`` split by pass, with calls, total ms and % of the profiled call's wall time;
  GPU busy time against wall time (the difference is host work, launches and syncs); the CPU-side ops
  by self time (``cudaStreamSynchronize``, ``aten::unique`` ... show there);
* the host synchronisations of one call (CUDA): every line of hashbench that made torch synchronise
  (``torch.cuda.set_sync_debug_mode("warn")``), with counts.

    python benchmarks/fused_profile.py --device cuda [--queries 10000 --db 1000000 --bits 64 --k 1000]
    TRITON_INTERPRET=1 HASHBENCH_FUSED_SAMPLE=256 python benchmarks/fused_profile.py --device cpu \\
        --queries 8 --db 2048           # the same on the CPU in Triton's interpreter (CPU activity only)
    python benchmarks/fused_profile.py --device cuda --time-only --label BQ=64 --ref /tmp/ref.json
        # one markdown row (benchmarks/fused_tune.sh): tie-aware ms, index ms, pairs taken, same mAP as
        # the first row (whose mAPs --ref stores)

The tunables (``HASHBENCH_FUSED_BQ`` / ``_BN`` / ``_WARPS`` / ``_CHUNK`` / ``_SAMPLE``, the list kernel's
``_LIST_BQ`` / ``_LIST_BN`` / ``_LIST_WARPS``, the opt-in ``_ONEPASS`` / ``_ROOM``) are read when
``fused_triton`` is imported: one process per setting. ``--cache FILE.npz`` keeps the generated case
for later processes.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import statistics
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
import bench_eval  # noqa: E402  (puts the project root on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hashbench.platform.evaluation import evaluate, fused_engine  # noqa: E402

EVALS = ("tie-aware", "index")
PKG = os.path.join(os.path.dirname(HERE), "hashbench") + os.sep       # HERE is a real path


# ---------------------------------------------------------------- the case
def build_case(nq: int, ndb: int, bits: int, seed: int, cache: str | None):
    """Queries and database as bench_eval.py makes them (its generator), optionally cached in ``cache``."""
    key = np.array([nq, ndb, bits, seed])
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            if np.array_equal(z["key"], key):
                return z["q"], z["ql"], z["db"], z["dl"], "loaded from " + cache
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (10, bits)).astype(bool)
    q, ql = bench_eval.make_codes(nq, bits, 10, rng, centres)
    db, dl = bench_eval.make_codes(ndb, bits, 10, rng, centres)
    if cache:
        tmp = cache + ".tmp.npz"
        np.savez(tmp, key=key, q=q, ql=ql, db=db, dl=dl)
        os.replace(tmp, cache)
    return q, ql, db, dl, "generated (bench_eval.make_codes)"


# ---------------------------------------------------------------- kernel launches
class Launches:
    """Wraps the module's ``_hist_kernel`` / ``_list_kernel`` so that every launch is noted (pass, grid,
    sizes); with ``count`` the counter tensors are kept to sum afterwards (that run is not timed)."""

    def __init__(self, ft, n_db: int):
        self.ft, self.count, self.rows, self.n_db = ft, False, [], n_db
        self._state = None
        self._orig = {name: getattr(ft, name) for name in ("_hist_kernel", "_list_kernel")}

    def __enter__(self):
        for name, kern in self._orig.items():
            setattr(self.ft, name, _Proxy(kern, name, self))
        return self

    def __exit__(self, *exc):
        for name, kern in self._orig.items():
            setattr(self.ft, name, kern)

    def reset(self, count: bool = False):
        self.rows, self.count, self._state = [], count, None

    def note(self, name, grid, args):
        grid = tuple(int(g) for g in grid)
        if name == "_hist_kernel":
            db_w, hist, nq, n, tiles = args[1], args[5], int(args[6]), int(args[7]), int(args[8])
            if n != self.n_db:
                label, self._state = "sample (all pairs, no labels)", "sampled"
            elif self._state == "sampled":
                label, self._state = "full, thresholded", "full"
            elif self._state == "full":
                label, self._state = "short re-pass (T = bits)", None
            else:
                label = "full, every level"
            counter = hist
        else:
            counter, nq, n, tiles = args[3], int(args[5]), int(args[6]), int(args[7])
            label = f"top-k list (row length {int(args[8])})"
        self.rows.append({"kernel": name, "pass": label, "grid": grid, "nq": nq, "n": n, "tiles": tiles,
                          "counter": counter if self.count else None})

    def table(self, bn: int) -> list[str]:
        out = ["| # | kernel | pass | grid | programs | items per program | queries x items | pairs taken | taken % |",
               "|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rows):
            pairs = r["nq"] * r["n"]
            taken = int(r["counter"].sum()) if r["counter"] is not None else None
            tk = f"{taken:,}" if taken is not None else "-"
            pct = f"{100 * taken / max(1, pairs):.3f}" if taken is not None else "-"
            out.append(f"| {i} | {r['kernel']} | {r['pass']} | {r['grid']} | {r['grid'][0] * r['grid'][1]:,} | "
                       f"{r['tiles'] * bn:,} | {r['nq']:,} x {r['n']:,} = {pairs:,} | {tk} | {pct} |")
        return out


class _Proxy:
    def __init__(self, kern, name, rec):
        self.kern, self.name, self.rec = kern, name, rec

    def __getitem__(self, grid):
        launcher = self.kern[grid]

        def launch(*args, **kw):
            self.rec.note(self.name, grid, args)
            with torch.profiler.record_function(f"launch {self.name} [{self.rec.rows[-1]['pass']}]"):
                return launcher(*args, **kw)
        return launch


# ---------------------------------------------------------------- profiler tables
def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def kernel_table(prof, hist_labels: list[str], wall_us: float, runs: int) -> list[str]:
    """GPU activity (kernels, memcpy, memset) by total time per evaluation; ``_hist_kernel`` split by
    pass (its launches in start order, labelled as the wrapper saw them)."""
    from torch.autograd import DeviceType

    dev = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    if not dev:
        return ["(no CUDA activity recorded)"]
    hist = [e for e in dev if "_hist_kernel" in e.name]
    labels = hist_labels if len(hist_labels) == len(hist) else [""] * len(hist)
    if len(hist_labels) != len(hist):
        print(f"  note: {len(hist)} _hist_kernel events against {len(hist_labels)} launches seen; pass labels left off")
    lab = {id(e): f"_hist_kernel [{l}]" if l else "_hist_kernel" for e, l in zip(hist, labels)}
    groups: dict[str, list[float]] = {}
    for e in dev:
        name = lab.get(id(e), e.name)
        name = name if len(name) <= 90 else name[:87] + "..."
        groups.setdefault(name, []).append(e.time_range.end - e.time_range.start)
    # busy: the union of the activity intervals
    busy, end = 0.0, -1.0
    for e in dev:
        s, f = e.time_range.start, e.time_range.end
        if f > end:
            busy += f - max(s, end)
            end = f
    out = [f"GPU busy {_ms(busy / runs)} ms of {_ms(wall_us)} ms wall per call "
           f"({100 * busy / runs / max(wall_us, 1e-9):.0f} %; the rest: host work, launches, syncs)",
           "| GPU activity | calls | total ms | mean ms | % of the call's wall |", "|---|---|---|---|---|"]
    for name, ts in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        tot = sum(ts) / runs
        out.append(f"| {name.replace('|', '/')} | {len(ts) / runs:g} | {_ms(tot)} | {_ms(sum(ts) / len(ts))} | "
                   f"{100 * tot / max(wall_us, 1e-9):.1f} |")
    return out


def cpu_table(prof, runs: int, top: int) -> list[str]:
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    out = ["| CPU op (host side) | calls | self CPU ms | CPU total ms |", "|---|---|---|---|"]
    for e in rows:
        name = e.key if len(e.key) <= 70 else e.key[:67] + "..."
        out.append(f"| {name.replace('|', '/')} | {e.count / runs:g} | {_ms(e.self_cpu_time_total / runs)} | "
                   f"{_ms(e.cpu_time_total / runs)} |")
    return out


# ---------------------------------------------------------------- host synchronisations
def sync_site(stack) -> str:
    """``path:line  code`` of the innermost frame inside the hashbench package (else the innermost frame)."""
    stack = [f for f in stack if not f.filename.endswith("warnings.py")]
    frames = [f for f in stack if os.path.realpath(f.filename).startswith(PKG)] or stack
    f = frames[-1]
    name = os.path.relpath(os.path.realpath(f.filename), os.path.dirname(PKG.rstrip(os.sep)))
    return f"{name}:{f.lineno} `{(linecache.getline(f.filename, f.lineno) or '').strip()}`"


def sync_sites(fn) -> list[str]:
    """Run ``fn`` with torch's sync debug mode on warn; the lines of hashbench that synchronised."""
    sites: dict[str, int] = {}

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            key = sync_site(traceback.extract_stack()[:-1])
            sites[key] = sites.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        old = warnings.showwarning
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = old
    out = ["| host sync site | syncs per call |", "|---|---|"]
    out += [f"| {k.replace('|', '/')} | {v} |" for k, v in sorted(sites.items(), key=lambda kv: -kv[1])]
    return out if sites else ["(no synchronising call reported)"]


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--db", type=int, default=1000000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per evaluation (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation, allocator)")
    ap.add_argument("--prof-runs", type=int, default=1, help="calls under the profiler (tables per call)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: Triton's interpreter (set TRITON_INTERPRET=1; tiny sizes only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="npz file keeping the generated case between processes")
    ap.add_argument("--top", type=int, default=15, help="rows of the CPU-side op table")
    ap.add_argument("--time-only", action="store_true",
                    help="only the timings, as one markdown row (benchmarks/fused_tune.sh)")
    ap.add_argument("--label", default="", help="--time-only: the row's first cell")
    ap.add_argument("--ref", default=None,
                    help="--time-only: JSON of reference mAPs; written when missing, else compared (1e-9)")
    args = ap.parse_args()

    from hashbench.platform.evaluation import fused_triton as FT
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here (on the CPU: TRITON_INTERPRET=1 ... --device cpu)")
        return 2
    if args.device == "cpu" and not FT.INTERPRET:
        print("--device cpu runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        return 2
    cuda = args.device == "cuda"
    dev = torch.device(args.device)
    tun = (f"BQ={FT.BQ} BN={FT.BN} WARPS={FT.WARPS} CHUNK={FT.CHUNK} SAMPLE={FT.SAMPLE}"
           + f" LIST_BQ={FT.LIST_BQ} LIST_BN={FT.LIST_BN} LIST_WARPS={FT.LIST_WARPS}"
           + (f" ONEPASS=1 ROOM={FT.ROOM}" if FT.ONEPASS else ""))

    t0 = time.perf_counter()
    q, ql, db, dl, how = build_case(args.queries, args.db, args.bits, args.seed, args.cache)
    tq, tql, tdb, tdl = (torch.from_numpy(x).to(dev) for x in (q, ql, db, dl))
    t_data = time.perf_counter() - t0

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def call(ties):
        return evaluate(tq, tdb, tql, tdl, ks=(args.k,), convention="hits", ties=ties, map_at_r=False,
                        hamming_radius=None, device=args.device, engine="fused")

    key = f"mAP@{args.k}"
    rec = Launches(FT, args.db)
    if not args.time_only:
        print(f"fused evaluation profile: {args.queries} queries x {args.db} codes, {args.bits} bits, mAP@{args.k}, "
              f"device {torch.cuda.get_device_name() if cuda else 'cpu (Triton interpreter)'}; torch {torch.__version__}")
        print(f"tunables: {tun}; case {how} in {t_data:.1f} s")
    res, wall = {}, {}
    with rec:
        with warnings.catch_warnings(record=True) as caught:   # the engine's fallback warnings
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            for ties in EVALS:
                for _ in range(args.warmup):
                    call(ties)
            sync()
            t_warm = time.perf_counter() - t0
            for ties in EVALS:
                times = []
                for _ in range(args.repeat):
                    sync()
                    t1 = time.perf_counter()
                    out = call(ties)
                    sync()
                    times.append((time.perf_counter() - t1) * 1000)
                res[ties], wall[ties] = out, times
        # a kernel that failed (hardware popcount, or both: the torch engine answered) would time the wrong path
        failed = sorted({str(w.message).splitlines()[0][:200] for w in caught if str(w.message).startswith("fused")})
        failed += [f"fell back to torch after: {e}" for e in sorted(set(fused_engine.LAST_ERROR))]
        for msg in failed:
            print(f"WARNING: {msg}", file=sys.stderr if args.time_only else sys.stdout)
        rec.reset(count=True)                    # pairs the threshold took (tie-aware call; not timed)
        call("tie-aware")
        taken = [r for r in rec.rows if r["pass"].startswith("full")]
        taken_pct = (100 * sum(int(r["counter"].sum()) for r in taken) / max(1, sum(r["nq"] * r["n"] for r in taken))
                     if taken else float("nan"))

        if args.time_only:
            m = {t: res[t][key] for t in EVALS}
            if args.ref and os.path.exists(args.ref):
                with open(args.ref) as f:
                    ref = json.load(f)
                same = "yes" if all(abs(m[t] - ref[t]) <= 1e-9 for t in EVALS) else "NO"
            else:
                if args.ref:
                    with open(args.ref, "w") as f:
                        json.dump(m, f)
                same = "ref"
            if failed:
                same += " (FUSED KERNEL FAILED, times are of a fallback: " + "; ".join(failed).replace("|", "/")[:300] + ")"
            med = {t: statistics.median(wall[t]) for t in EVALS}
            print(f"| {args.label or tun} | {med['tie-aware']:.2f} | {med['index']:.2f} | {taken_pct:.3f} | "
                  f"{m['tie-aware']:.9f} | {m['index']:.9f} | {same} |", flush=True)
            return 0

        print(f"warm-up ({args.warmup} call(s) per evaluation, compilation included): {t_warm:.2f} s")
        print("\n| evaluation | wall ms median | min | max | calls | mAP |\n|---|---|---|---|---|---|")
        for ties in EVALS:
            ts = wall[ties]
            print(f"| {ties} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | {len(ts)} | "
                  f"{res[ties][key]:.9f} |")
        print(f"\npairs taken by the threshold in the tie-aware call's full pass(es): {taken_pct:.3f} % of all pairs")

        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        for ties in EVALS:
            print(f"\n## {ties} mAP@{args.k}")
            rec.reset(count=True)
            call(ties)
            print(f"kernel launches of one call ({tun}):")
            print("\n".join(rec.table(FT.BN)))
            rec.reset(count=False)
            walls = []
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(args.prof_runs):
                    sync()
                    t1 = time.perf_counter()
                    call(ties)
                    sync()
                    walls.append((time.perf_counter() - t1) * 1e6)
            wall_us = sum(walls) / len(walls)
            hist_labels = [r["pass"] for r in rec.rows if r["kernel"] == "_hist_kernel"]
            print(f"\nunder torch.profiler ({args.prof_runs} call(s); wall {_ms(wall_us)} ms per call, profiler "
                  f"overhead included):")
            if cuda:
                print("\n".join(kernel_table(prof, hist_labels, wall_us, args.prof_runs)))
            print()
            print("\n".join(cpu_table(prof, args.prof_runs, args.top)))
            print("\nhost synchronisations of one call (torch.cuda.set_sync_debug_mode):")
            if cuda:
                try:
                    print("\n".join(sync_sites(lambda: call(ties))))
                except Exception as exc:  # noqa: BLE001 - diagnostics only; the tables above stand
                    print(f"(sync debug mode failed: {type(exc).__name__}: {exc})")
            else:
                print("(CUDA only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
