"""Leaderboard storage at sweep scale: concurrent writers + compaction, and read times.

    python benchmarks/bench_leaderboard.py [--writers 8] [--rows 1000] [--read-rows 10000] [--dir DIR]

Part 1: ``--writers`` processes each write ``--rows`` rows (one ``append_row`` per row, as trials do;
every 10th row is written a second time, as a resumed trial would) while another process runs
``compact`` over and over; then the leaderboard is read and checked against the keys the writers
wrote: rows found, lost, duplicated (also physically, across files, before the final compaction).
Part 2: ``--read-rows`` single-row files are read (one file per trial: what sweeps leave before
compaction), compacted, and read again; also ``hashbench leaderboard`` on the compacted directory.
Rows carry realistic JSON columns (a ~2 KB metrics_json with a PR curve, a config_json). Set
``POLARS_MAX_THREADS=2`` to see a 2-core machine. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_row(sweep: str, trial: str, value: float) -> dict:
    curve = {"x": "hamming_radius", "at": list(range(33)), "precision": [round(1 - i / 40, 4) for i in range(33)],
             "recall": [round(i / 33, 4) for i in range(33)]}
    metrics = {"val_mAP@100": value, "test_mAP@100": value / 2, "pr_curve": curve,
               **{f"test_P@{k}": value for k in (1, 5, 10, 100, 1000)}}
    config = {"method": "dch", "dataset": "pneumoniamnist", "bits": 32, "epochs": 20, "batch_size": 64,
              "hp": {"lr": 1e-3, "gamma": 20.0, "weight_decay": 5e-4}, "seed": 0, "augment": {"enabled": True}}
    return {"sweep_id": sweep, "trial_id": trial, "run_id": f"{sweep}-{trial}", "status": "completed",
            "method": "dch", "family": "dch", "dataset": "pneumoniamnist", "dataset_fingerprint": "f" * 64,
            "splits": json.dumps({"train": 4708, "val": 524, "test": 624}), "code_type": "binary", "bits": 32,
            "storage_bits": 32, "distance": "hamming", "metric_convention": "hits", "tie_policy": "tie-aware",
            "no_hit_policy": "include", "val_mAP@100": value, "test_mAP@100": value / 2,
            "metrics_json": json.dumps(metrics), "protocol_json": json.dumps({"distance": "hamming"}),
            "params_json": json.dumps(config["hp"]), "seed": 0, "epochs": 20, "time_train_s": 12.5,
            "time_total_s": 14.0, "device": "cpu", "hashbench_commit": "0123456789ab", "torch_version": "2.13.0",
            "ray_version": "2.60.0", "run_dir": f"/mnt/shared/hashbench/runs/{sweep}-{trial}",
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:10:00+00:00", "role": "trial",
            "config_json": json.dumps(config)}


def writer(directory: str, w: int, rows: int) -> None:
    from hashbench.platform.leaderboard import append_row

    for i in range(rows):
        append_row(directory, make_row("bench", f"w{w}-{i}", 0.25))
        if i % 10 == 0:  # written again (a resumed trial): must replace, not duplicate
            append_row(directory, make_row("bench", f"w{w}-{i}", 0.75))


def compactor(directory: str, stop, counter) -> None:
    import warnings

    from hashbench.platform.leaderboard import compact

    warnings.simplefilter("ignore")
    while not stop.is_set():
        if compact(directory).path is not None:
            with counter.get_lock():
                counter.value += 1


def physical_rows(directory: Path) -> tuple[int, int]:
    """(rows stored in all files together, distinct keys among them), before de-duplication."""
    import polars as pl

    files = [str(p) for p in directory.glob("*.parquet")]
    df = pl.concat([pl.read_parquet(f, columns=["sweep_id", "trial_id"]) for f in files]) if files else None
    return (0, 0) if df is None else (df.height, df.unique().height)


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1000, help="rows per writer")
    ap.add_argument("--read-rows", type=int, default=10000, help="rows of the read-time part")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    args = ap.parse_args()

    import polars as pl

    from hashbench.platform.leaderboard import append_row, compact, read_leaderboard

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-lb-"))
    table = []
    try:
        # ---- part 1: writers and a compaction at the same time --------------------------------------
        lb = work / "concurrent"
        lb.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        stop, counter = ctx.Event(), ctx.Value("i", 0)
        comp = ctx.Process(target=compactor, args=(str(lb), stop, counter))
        ws = [ctx.Process(target=writer, args=(str(lb), w, args.rows)) for w in range(args.writers)]
        t0 = time.perf_counter()
        comp.start()
        for p in ws:
            p.start()
        for p in ws:
            p.join()
        write_s = time.perf_counter() - t0
        stop.set()
        comp.join()
        if any(p.exitcode for p in [*ws, comp]):
            print("a writer or the compactor failed", file=sys.stderr)
            return 1
        stored, distinct = physical_rows(lb)
        files_before = len(list(lb.glob("*.parquet")))
        df = read_leaderboard(lb)
        want = {f"w{w}-{i}": (0.75 if i % 10 == 0 else 0.25) for w in range(args.writers) for i in range(args.rows)}
        got = df["trial_id"].to_list()
        values = dict(zip(got, df["val_mAP@100"].to_list()))
        lost = len(set(want) - set(got))
        dup = len(got) - len(set(got))
        stale = sum(1 for k, v in want.items() if k in values and values[k] != v)
        read_mixed_s, _ = timed(lambda: read_leaderboard(lb))
        compact(lb)
        read_final_s, final = timed(lambda: read_leaderboard(lb))
        table += [
            ("concurrent", f"{args.writers} writers x {args.rows} rows (+10% rewritten), compaction running",
             f"{write_s:.1f} s", f"{counter.value} compactions during the writes"),
            ("concurrent", "rows read / expected", f"{df.height} / {len(want)}",
             f"lost {lost}, duplicated {dup}, stale values {stale}"),
            ("concurrent", f"files after the writes ({stored} stored rows, {distinct} keys)", f"{files_before}",
             f"read {read_mixed_s:.3f} s"),
            ("concurrent", "after a final compaction", f"{len(list(lb.glob('*.parquet')))} file(s)",
             f"{final.height} rows, read {read_final_s:.3f} s"),
        ]
        ok = lost == 0 and dup == 0 and stale == 0 and df.height == len(want) and final.height == len(want)

        # ---- part 2: read time of N one-row files, then compacted -------------------------------------
        lb2 = work / "read"
        t0 = time.perf_counter()
        for i in range(args.read_rows):
            append_row(lb2, make_row("read", f"t{i}", i / args.read_rows))
        write2_s = time.perf_counter() - t0
        singles_s, df2 = timed(lambda: read_leaderboard(lb2), repeat=1)
        t0 = time.perf_counter()
        result = compact(lb2)
        compact_s = time.perf_counter() - t0
        compacted_s, df3 = timed(lambda: read_leaderboard(lb2))
        size_mb = sum(p.stat().st_size for p in lb2.glob("*.parquet")) / 1e6
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-c", "import sys; from hashbench.platform.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", "leaderboard", "--dir", str(lb2), "--format", "csv"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        cli_s = time.perf_counter() - t0
        table += [
            ("read", f"{args.read_rows} one-row files written (one append_row each)", f"{write2_s:.1f} s",
             f"{write2_s / args.read_rows * 1e3:.2f} ms per row"),
            ("read", f"read {args.read_rows} one-row files", f"{singles_s:.2f} s", f"{df2.height} rows"),
            ("read", "compact", f"{compact_s:.2f} s", f"{result.merged} files -> 1 ({size_mb:.1f} MB)"),
            ("read", "read the compacted leaderboard (best of 3)", f"{compacted_s:.3f} s", f"{df3.height} rows"),
            ("read", "`hashbench leaderboard --dir` (whole process)", f"{cli_s:.2f} s",
             f"exit {cli.returncode}"),
        ]
        ok = ok and df2.height == df3.height == args.read_rows and df3.sort("trial_id").equals(df2.sort("trial_id"))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    threads = os.environ.get("POLARS_MAX_THREADS", f"{pl.thread_pool_size()} (default)")
    print(f"leaderboard storage benchmark: {os.cpu_count()} CPUs, POLARS_MAX_THREADS={threads}, polars {pl.__version__}")
    w = max(len(r[1]) for r in table)
    print(f"| part | {'what':<{w}} | result | notes |")
    print(f"|---|{'-' * (w + 2)}|---|---|")
    for part, what, res, note in table:
        print(f"| {part} | {what:<{w}} | {res} | {note} |")
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
