#!/usr/bin/env python
"""Trials per hour of one sweep at one trial per GPU and with several trials sharing a GPU.

Runs ``hashbench sweep CONFIG --gpus-per-worker SHARE --name packing-SHARE`` once per share (each
its own local Ray session) and reads the trials' rows back from the leaderboard. Two rates per run:
over the whole command (Ray start-up and shutdown included) and over the span from the first trial's
start to the last trial's end (the sweep proper). The config should turn ASHA off (``asha: false``)
so that every run does the same work.

    python benchmarks/bench_packing.py --shares 1,0.25,0.125 [--config configs/gpu_packing.yaml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/gpu_packing.yaml")
    p.add_argument("--shares", default="1,0.25,0.125", help="GPU per trial, comma-separated")
    p.add_argument("--leaderboard", default="runs/gpu-packing/leaderboard")
    p.add_argument("--tag", default="", help="suffix of the sweep names (e.g. the GPU count)")
    args = p.parse_args(argv)

    from hashbench.platform.leaderboard import read_leaderboard

    rows = []
    for share in args.shares.split(","):
        name = f"packing-{share.replace('.', '')}{args.tag}"
        cmd = [sys.executable, "-m", "hashbench", "sweep", args.config, "--gpus-per-worker", share,
               "--name", name, "--leaderboard", args.leaderboard]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            print(f"share {share}: the sweep failed (exit {proc.returncode})")
            return 1
        lb = read_leaderboard(args.leaderboard)
        mine = lb.filter(lb["sweep_id"].str.contains(name)) if lb.height else lb
        done = mine.filter(mine["status"] == "completed") if mine.height else mine
        span = (max(_ts(v) for v in done["finished_at"]) - min(_ts(v) for v in done["started_at"])) if done.height else float("nan")
        rows.append((share, done.height, mine.height, wall, span))
        print(f"share {share}: {done.height} trials completed of {mine.height} rows, command {wall:.1f} s, "
              f"trial span {span:.1f} s", flush=True)
    print()
    print("| GPU per trial | trials | command s | trials/h (command) | trial span s | trials/h (span) | vs 1 GPU/trial (span) |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0][1] * 3600 / rows[0][4] if rows and rows[0][4] == rows[0][4] else None
    for share, n, _, wall, span in rows:
        rate_c, rate_s = n * 3600 / wall, n * 3600 / span
        ratio = f"{rate_s / base:.2f}x" if base else "-"
        print(f"| {share} | {n} | {wall:.1f} | {rate_c:.0f} | {span:.1f} | {rate_s:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
