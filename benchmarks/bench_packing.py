#!/usr/bin/env python
"""Trials per hour of one sweep at one trial per GPU and with several trials sharing a GPU.

Runs ``hashbench sweep CONFIG --gpus-per-worker SHARE --name packing-SHARE`` once per share (each
its own local Ray session) and reads the trials' rows back from the leaderboard. Two rates per run:
over the whole command (Ray start-up and shutdown included) and over the span from the first trial's
start to the last trial's end (the sweep proper). The config should turn ASHA off (``asha: false``)
so that every run does the same work. With ``--gpu-util`` it samples ``nvidia-smi`` every 0.5 s
during each run and reports how busy the GPU was (mean utilisation over the trial span). With
``--mps`` each sweep runs under an NVIDIA MPS daemon it starts itself (``hashbench sweep --mps``) and
its ``[mps]`` lines (client processes, control log) are printed.

After the rates, one row per (share, method): trials, the median trial wall time (``finished_at -
started_at`` of its leaderboard row, whole seconds, from after the model build to the row) and the
medians of the phase times its run directory's ``metrics.json`` records (``timings``: data load,
model build, training epochs, validation, final test phase, file writes, total), to show where a
packed trial's time goes.

    python benchmarks/bench_packing.py --shares 1,0.25,0.125 [--config configs/gpu_packing.yaml] [--mps]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from statistics import median

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
    p.add_argument("--mps", action="store_true", help="run each sweep under NVIDIA MPS (hashbench sweep --mps)")
    args = p.parse_args(argv)

    from hashbench.platform.leaderboard import read_leaderboard

    rows, phases = [], []
    for share in args.shares.split(","):
        name = f"packing-{share.replace('.', '')}{args.tag}"
        cmd = [sys.executable, "-m", "hashbench", "sweep", args.config, "--gpus-per-worker", share,
               "--name", name, "--leaderboard", args.leaderboard] + (["--mps"] if args.mps else [])
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
        phases.extend((share, *r) for r in method_phases(done.to_dicts() if done.height else []))
        print(f"share {share}: {done.height} trials completed of {mine.height} rows, command {wall:.1f} s, "
              f"trial span {span:.1f} s, GPU busy {busy:.0f} %", flush=True)
        for line in proc.stdout.splitlines():
            if line.startswith("[mps]"):
                print(f"share {share}: {line}", flush=True)
    report(rows, phases)
    return 0


def report(rows: list, phases: list) -> None:
    """The rates table (one row per share, ratio to the 1-GPU run where there is one) and the per-method medians."""
    first = next((r for r in rows if float(r[0]) == 1), rows[0] if rows else None)  # the 1-GPU run, else the first
    base = first[1] * 3600 / first[4] if first and first[4] == first[4] else None
    print()
    print(f"| GPU per trial | trials | command s | trials/h (command) | trial span s | trials/h (span) | "
          f"vs {first[0] if first else 1} GPU/trial (span) | GPU busy % (span) |")
    print("|---|---|---|---|---|---|---|---|")
    for share, n, _, wall, span, busy in rows:
        rate_c, rate_s = n * 3600 / wall, n * 3600 / span
        ratio = f"{rate_s / base:.2f}x" if base else "-"
        print(f"| {share} | {n} | {wall:.1f} | {rate_c:.0f} | {span:.1f} | {rate_s:.0f} | {ratio} | {busy:.0f} |")
    print()
    print("Medians per trial, s. wall: the row's finished_at - started_at (whole seconds; started_at is taken "
          "after the model is built); the rest: the run's metrics.json timings (total_s: load to last file)")
    print()
    print("| GPU per trial | method | trials | trial wall s | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---|" + "---|" * len(PHASES))
    for share, method, n, wall, meds, _ in phases:
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in meds)
        print(f"| {share} | {method} | {n} | {wall:.1f} | {cells} |")
    print()
    print("Per epoch (medians over the trials, s): epoch 0 pays cuDNN autotuning, warm-up and the CUDA-graph "
          "capture; graph = epochs whose step ran as a CUDA graph / all epochs; threads = torch threads")
    print()
    print("| GPU per trial | method | epoch 0 train s | later epochs train s | graph | capture s | threads |")
    print("|---|---|---|---|---|---|---|")
    for share, method, _, _, _, ep in phases:
        cells = " | ".join("-" if v is None else (v if isinstance(v, str) else f"{v:.3f}") for v in ep)
        print(f"| {share} | {method} | {cells} |")


#: metrics.json timings: data load (0 when cached), model build, epochs, validation, final test phase, files, all
PHASES = ("load_s", "build_s", "train_s", "val_s", "final_s", "write_s", "total_s")


def method_phases(rows: list) -> list:
    """``[(method, trials, median wall s, [median of each PHASES or None])]`` from completed leaderboard rows
    (dicts), one trial counted once (a method with extra readouts writes several rows per trial); the
    phases from each trial's ``<run_dir>/metrics.json`` where it is readable."""
    trials: dict = {}
    for r in rows:
        trials.setdefault(r["method"], {}).setdefault(r["trial_id"], r)
    out = []
    for method in sorted(trials):
        walls, timings = [], {k: [] for k in PHASES}
        ep0, later, graphs, captures, threads = [], [], [], [], set()
        for r in trials[method].values():
            walls.append(_ts(r["finished_at"]) - _ts(r["started_at"]))
            try:
                with open(os.path.join(r["run_dir"], "metrics.json")) as f:
                    m = json.load(f)
            except (OSError, ValueError, TypeError):
                m = {}
            t = m.get("timings") or {}
            for k in PHASES:
                if isinstance(t.get(k), (int, float)):
                    timings[k].append(float(t[k]))
            hist = [h for h in (m.get("history") or []) if isinstance(h, dict)]
            if hist:
                ep0.append(float(hist[0].get("train_s", 0.0)))
                later.extend(float(h.get("train_s", 0.0)) for h in hist[1:])
                graphs.extend(bool(h.get("cuda_graph")) for h in hist)
                threads.update(h.get("torch_threads") for h in hist)
            if isinstance(t.get("graph_capture_s"), (int, float)):
                captures.append(float(t["graph_capture_s"]))
        epochs = [median(ep0) if ep0 else None, median(later) if later else None,
                  f"{sum(graphs)}/{len(graphs)}" if graphs else None, median(captures) if captures else None,
                  ",".join(str(x) for x in sorted(threads, key=str)) or None]
        out.append((method, len(walls), median(walls),
                    [median(v) if v else None for v in (timings[k] for k in PHASES)], epochs))
    return out


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
