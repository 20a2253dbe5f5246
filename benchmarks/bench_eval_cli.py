"""End-to-end wall time of ``hashbench eval`` (a fresh process per call: imports, numba load and all),
before and after the torch-free CPU path, in one run.

    python benchmarks/bench_eval_cli.py [--queries 1000] [--db 59000] [--bits 64] [--runs 5]
                                        [--before 102b3ec] [--ties tie-aware,index]

"before" is the package as of a git commit (default 102b3ec, the last commit before the change),
extracted with ``git archive`` into a temporary directory and run from there (``PYTHONPATH`` puts it
ahead of the installed package; the script checks which copy each process imported); "after" is this
working tree. The two are called alternately, ``--runs`` times each per tie policy, after one untimed
call each (which compiles numba's kernels for the extracted copy, once); the table gives the median
and the fastest call, and the median CPU time (user + system of all threads: less sensitive than wall
time to other jobs on a shared machine). A second table splits one call of each with ``python -X importtime``: all
imports, the first import of torch / numba / scipy / numpy / faiss, and the rest (reading the file,
numba loading its cached kernels, the arithmetic). The outputs of before and after are compared: the text output
must be the same bytes, and the ``--json`` numbers are reported as the largest absolute difference
(cpu_eval.py says why the last bits may differ).

The codes are the CalcTopMap-style set of ``bench_eval.py``: 64-bit codes, 10 classes, each code its
class centre with 30% of the bits flipped, single-label; 1000 queries x 59000 database items.

Figures of 2026-12-02 (2-core CPU shared with other jobs, load average 2-4), and the "before" measured
by hand before the change (median 6.56 s per call, of which about 2.4 s importing torch and numba):
benchmarks/results/2026-12-02/eval_cli_cpu.md. Figures of 2026-12-06 (numpy histograms for tie-aware calls,
the shorter rank pass): benchmarks/results/2026-12-06/eval_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("torch", "numba", "scipy", "numpy", "faiss")


def make_file(path: str, n_q: int, n_db: int, bits: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (10, bits)).astype(np.uint8)

    def codes(n):
        labels = rng.integers(0, 10, n)
        return (centres[labels] ^ (rng.random((n, bits)) < 0.3)).astype(np.uint8), labels

    q, ql = codes(n_q)
    db, dl = codes(n_db)
    np.savez(path, query_codes=q, db_codes=db, query_labels=ql, db_labels=dl)


def extract(commit: str, dest: str) -> None:
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "hashbench"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def call(code_dir: str, args: list, importtime: bool = False, cpu: list | None = None):
    """One ``python -m hashbench eval`` from ``code_dir``: (seconds, stdout, stderr); its CPU time
    (user + system, all threads) is appended to ``cpu`` when given."""
    env = dict(os.environ, PYTHONPATH=code_dir)
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "hashbench", "eval"] + args
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=code_dir, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    if cpu is not None:
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
    return seconds, out.stdout, out.stderr


def which_copy(code_dir: str) -> str:
    env = dict(os.environ, PYTHONPATH=code_dir)
    return subprocess.run([sys.executable, "-c", "import hashbench; print(hashbench.__file__)"], env=env,
                          cwd=code_dir, capture_output=True, text=True, check=True).stdout.strip()


def import_breakdown(stderr: str) -> dict:
    """From an ``-X importtime`` log, seconds: ``all`` (the top-level imports: every import), and per
    package in PACKAGES the cumulative time of its own line (where it was first imported; a package
    imported inside another one counts in both)."""
    out = {"all": 0.0}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)$", line)
        if not m:
            continue
        seconds, indent, name = int(m.group(1)) / 1e6, m.group(2), m.group(3)
        if not indent:
            out["all"] += seconds
        if name in PACKAGES:
            out[name] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--db", type=int, default=59000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", default="102b3ec", help="git commit of the 'before' package")
    ap.add_argument("--ties", default="tie-aware,index")
    opts = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        codes = os.path.join(tmp, "codes.npz")
        make_file(codes, opts.queries, opts.db, opts.bits)
        before_dir = os.path.join(tmp, "before")
        os.makedirs(before_dir)
        extract(opts.before, before_dir)
        dirs = {"before": before_dir, "after": ROOT}
        for label, d in dirs.items():
            path = which_copy(d)
            if not path.startswith(os.path.realpath(d)) and not path.startswith(d):
                sys.exit(f"{label}: imported {path}, not the copy in {d}")
        print(f"hashbench eval, {opts.queries} queries x {opts.db} database items, {opts.bits} bits, "
              f"single-label (10 classes); before = commit {opts.before}, after = {ROOT}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n")
        rows, splits = [], []
        for ties in opts.ties.split(","):
            args = ["--codes", codes, "--ties", ties]
            outs = {label: call(d, args)[1] for label, d in dirs.items()}          # untimed: warm caches
            jsons = {label: json.loads(call(d, args + ["--json"])[1]) for label, d in dirs.items()}
            same_text = outs["before"] == outs["after"]
            diff = max(abs(jsons["before"][k] - jsons["after"][k]) for k in jsons["before"] if k != "protocol")
            same_protocol = jsons["before"]["protocol"] == jsons["after"]["protocol"]
            times = {label: [] for label in dirs}
            cpu = {label: [] for label in dirs}
            for _ in range(opts.runs):
                for label, d in dirs.items():
                    times[label].append(call(d, args, cpu=cpu[label])[0])
            med = {label: statistics.median(t) for label, t in times.items()}
            cpu_med = {label: statistics.median(t) for label, t in cpu.items()}
            rows.append((ties, med["before"], min(times["before"]), med["after"], min(times["after"]),
                         med["before"] / med["after"], cpu_med["before"], cpu_med["after"],
                         same_text, same_protocol, diff))
            for label, d in dirs.items():
                seconds, _, err = call(d, args, importtime=True)
                tops = import_breakdown(err)
                splits.append((ties, label, seconds, tops))
        print("| ties | before: wall median (min) s | after: wall median (min) s | speed-up (wall medians) "
              "| CPU s before / after (medians) | text output same | protocol same | max abs diff of --json numbers |")
        print("|---|---|---|---|---|---|---|---|")
        for ties, bm, bmin, am, amin, speed, cb, ca, same, proto, diff in rows:
            print(f"| {ties} | {bm:.2f} ({bmin:.2f}) | {am:.2f} ({amin:.2f}) | {speed:.1f}x | {cb:.2f} / {ca:.2f} "
                  f"| {same} | {proto} | {diff:.1e} |")
        print("\nOne call under `python -X importtime` (seconds): all imports, the first import of some "
              "packages (nested ones count in both), the rest (reading the file, loading numba's cached "
              "kernels, the arithmetic):\n")
        print("| ties | code | wall | all imports | " + " | ".join(PACKAGES) + " | rest |")
        print("|---|---|---|---|" + "---|" * (len(PACKAGES) + 1))
        for ties, label, seconds, tops in splits:
            print(f"| {ties} | {label} | {seconds:.2f} | {tops['all']:.2f} | "
                  + " | ".join(f"{tops.get(n, 0.0):.2f}" for n in PACKAGES) + f" | {seconds - tops['all']:.2f} |")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
