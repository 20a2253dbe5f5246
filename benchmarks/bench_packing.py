#!/usr/bin/env python
"""Trials per hour of one sweep at one trial per GPU and with several trials sharing a GPU.

Runs ``hashbench sweep CONFIG --gpus-per-worker SHARE --name packing-SHARE`` once per share (each
its own local Ray session) and reads the trials' rows back from the leaderboard. Two rates per run:
over the whole command (Ray start-up and shutdown included) and over the span from the first trial's
start to the last trial's end (the sweep proper). The config should turn ASHA off (``asha: false``)
so that every run does the same work. With ``--gpu-util`` it samples ``nvidia-smi`` every 0.5 s
during each run and reports how busy the GPU was (mean utilisation over the trial span).

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
    p.add_argument("--gpu-util", action="store_true", help="sample nvidia-smi: GPU busy %% per run")
    args = p.parse_args(argv)

    from hashbench.platform.leaderboard import read_leaderboard

    rows = []
    for share in args.shares.split(","):
        name = f"packing-{share.replace('.', '')}{args.tag}"
        cmd = [sys.executable, "-m", "hashbench", "sweep", args.config, "--gpus-per-worker", share,
               "--name", name, "--leaderboard", args.leaderboard]
        smi = None
        if args.gpu_util:
            smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                                    "-lms", "500"], stdout=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        samples = []
        if smi is not None:
            smi.terminate()
            samples = _util_samples(smi.communicate()[0])
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            print(f"share {share}: the sweep failed (exit {proc.returncode})")
            return 1
        lb = read_leaderboard(args.leaderboard)
        mine = lb.filter(lb["sweep_id"].str.contains(name)) if lb.height else lb
        done = mine.filter(mine["status"] == "completed") if mine.height else mine
        span = (max(_ts(v) for v in done["finished_at"]) - min(_ts(v) for v in done["started_at"])) if done.height else float("nan")
        busy = float("nan")
        if samples and done.height:
            lo, hi = min(_ts(v) for v in done["started_at"]), max(_ts(v) for v in done["finished_at"])
            inside = [u for t, u in samples if lo <= t <= hi] or [u for _, u in samples]
            busy = sum(inside) / len(inside)
        rows.append((share, done.height, mine.height, wall, span, busy))
        print(f"share {share}: {done.height} trials completed of {mine.height} rows, command {wall:.1f} s, "
              f"trial span {span:.1f} s, GPU busy {busy:.0f} %", flush=True)
    print()
    print("| GPU per trial | trials | command s | trials/h (command) | trial span s | trials/h (span) | vs 1 GPU/trial (span) | GPU busy % (span) |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][1] * 3600 / rows[0][4] if rows and rows[0][4] == rows[0][4] else None
    for share, n, _, wall, span, busy in rows:
        rate_c, rate_s = n * 3600 / wall, n * 3600 / span
        ratio = f"{rate_s / base:.2f}x" if base else "-"
        print(f"| {share} | {n} | {wall:.1f} | {rate_c:.0f} | {span:.1f} | {rate_s:.0f} | {ratio} | {busy:.0f} |")
    return 0


def _util_samples(text: str) -> list:
    """``(unix time, GPU utilisation %)`` from ``nvidia-smi --query-gpu=timestamp,utilization.gpu`` lines
    (the mean over the GPUs of one sample time)."""
    by_time: dict = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").astimezone().timestamp()
            by_time.setdefault(t, []).append(float(parts[1]))
        except ValueError:
            continue
    return sorted((t, sum(v) / len(v)) for t, v in by_time.items())


if __name__ == "__main__":
    sys.exit(main())
