#!/usr/bin/env python
"""Where a sweep trial's time goes: per-trial phase times of a real sweep, as a table.

Runs ``hashbench.platform.sweep.run_sweep`` on a local Ray with one study of N trials (ASHA off, one
trial at a time by default, so each trial's wall time is its own) and prints, per trial:

| phase | measured where |
|---|---|
| sched | Ray/Tune: from the previous trial's end (the first: from the start of the experiment) to this trial's function starting (scheduling, actor start or reuse) |
| import | the trial function's imports (hashbench, torch: paid once per process) |
| config | the trial's TrainConfig (validation, dataset metadata) |
| setup, load, build | inside ``fit``: thread set-up; dataset load + transfer to the device; model, loss, optimizer |
| graph | CUDA-graph capture of the training step (GPU only) |
| train | the training epochs (the work; not fixed cost) |
| val | validation encoding + mAP@100, all epochs |
| ckpt | per-epoch reports to Tune, with the checkpoints written |
| final | finalize, encode database and queries, test evaluation (every readout) |
| write | the run directory's files (codes, model, config, metrics) |
| row | the leaderboard row(s) |
| tail | the final report reaching the driver and Tune ending the trial |
| wall | the trial's wall time; fixed = wall - train |

    python benchmarks/bench_trial.py [--device cpu|cuda] [--method dch] [--trials 6] [--epochs 1]
                                     [--dataset pneumoniamnist] [--subset quick|full] [--concurrent 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHASES = ("sched", "import", "config", "setup", "load", "build", "graph", "train", "val", "ckpt", "final",
          "write", "row", "tail", "wall", "fixed")


def _clock_callback():
    from ray.tune import Callback

    class Clock(Callback):
        """Driver-side times of each trial: start of the experiment, trial end, final result."""

        def __init__(self):
            self.t_setup, self.ends, self.results = None, {}, {}

        def setup(self, **info):
            self.t_setup = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ends[trial.trial_id] = time.time()
            self.results[trial.trial_id] = dict(trial.last_result or {})

    return Clock()


def _from_run_dir(r: dict, run_dir: str) -> dict:
    """A code version without phase reports: the training time from the run's metrics.json."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            timings = json.load(f)["timings"]
    except (OSError, KeyError, ValueError):
        return r
    return {**r, "phase_train_s": timings.get("train_s", 0.0), "phase_val_s": timings.get("val_s", 0.0)}


def phase_table(clock, runs_dir: str = "", sweep_id: str = "") -> list:
    """One dict of phase seconds per trial, in the order the trials ended."""
    rows, prev_end = [], clock.t_setup
    for tid, end in sorted(clock.ends.items(), key=lambda kv: kv[1]):
        r = clock.results[tid]
        if "phase_train_s" not in r:
            r = _from_run_dir(r, os.path.join(runs_dir, f"{sweep_id}-{tid}"))
        t_enter = r.get("t_enter", float("nan"))
        inner = {"import": r.get("phase_import_s", 0.0), "config": r.get("phase_config_s", 0.0),
                 "setup": r.get("phase_setup_s", 0.0), "load": r.get("phase_load_s", 0.0),
                 "build": r.get("phase_build_s", 0.0), "graph": r.get("phase_graph_capture_s", 0.0),
                 "train": r.get("phase_train_s", 0.0), "val": r.get("phase_val_s", 0.0),
                 "ckpt": r.get("phase_checkpoint_s", 0.0), "final": r.get("phase_final_s", 0.0),
                 "write": r.get("phase_write_s", 0.0), "row": r.get("phase_row_s", 0.0)}
        inner["train"] -= inner["graph"]  # capture happens inside the first epoch's steps
        fit_total = r.get("phase_total_s", 0.0)  # fit: setup .. write (train includes the capture)
        until_row = inner["import"] + inner["config"] + fit_total + inner["row"]
        row = {"trial": tid, "sched": t_enter - prev_end, **inner, "tail": end - t_enter - until_row,
               "wall": end - prev_end}
        row["fixed"] = row["wall"] - inner["train"]
        rows.append(row)
        prev_end = end
    return rows


def render(rows: list) -> str:
    head = "| trial | " + " | ".join(PHASES) + " |"
    lines = [head, "|" + "---|" * (len(PHASES) + 1)]
    for r in rows:
        lines.append(f"| {r['trial']} | " + " | ".join(f"{r[p]:.2f}" for p in PHASES) + " |")
    if len(rows) > 1:
        warm = rows[1:]
        mean = {p: sum(r[p] for r in warm) / len(warm) for p in PHASES}
        lines.append("| **warm mean** | " + " | ".join(f"**{mean[p]:.2f}**" for p in PHASES) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--method", default="dch")
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--subset", choices=("quick", "full"), default=None,
                   help="quick: the quickstart's seeded subset of the built-in store (default on cpu); full: as is")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--concurrent", type=int, default=1, help="trials at once (1: each trial's time is its own)")
    p.add_argument("--gpus-per-trial", type=float, default=1.0)
    p.add_argument("--checkpoint-interval", type=float, default=None,
                   help="the sweep's checkpoint_interval_s (default: the sweep default)")
    p.add_argument("--out", default=None, help="working directory (default: a temporary one, removed)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from hashbench.platform.sweep import parse_text
    from hashbench.platform.sweep.driver import run_sweep

    work = os.path.abspath(args.out or tempfile.mkdtemp(prefix="bench-trial-"))
    os.makedirs(work, exist_ok=True)
    dataset = args.dataset
    subset = args.subset or ("quick" if args.device == "cpu" else "full")
    if subset == "quick":
        from hashbench.platform.cli.quickstart_cmd import SUBSETS, _subset

        if dataset not in SUBSETS:
            p.error(f"--subset quick: no quickstart subset of {dataset!r} ({', '.join(SUBSETS)})")
        dataset = _subset(dataset, os.path.join(work, "data", f"{dataset}-quick"))
    gpus = args.gpus_per_trial if args.device == "cuda" else 0
    text = textwrap.dedent(f"""\
        name: bench-trial-{int(time.time())}
        methods: {{{args.method}: {{trials: {args.trials}}}}}
        datasets: [{dataset}]
        bits: [{args.bits}]
        epochs: {args.epochs}
        asha: false
        resources: {{cpus_per_worker: 1, gpus_per_worker: {gpus}, max_concurrent: {args.concurrent}}}
        train: {{augment: {{enabled: false}}, device: {args.device}}}
        storage: {work}/sweeps
        leaderboard: {work}/leaderboard
        out_dir: {work}/runs
        """)
    if args.checkpoint_interval is not None:
        text += f"checkpoint_interval_s: {args.checkpoint_interval}\n"
    cfg = parse_text(text, "bench_trial")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=None if args.device == "cuda" else 0,
             log_to_driver=False, configure_logging=False)
    ray_s = time.perf_counter() - t0
    clock = _clock_callback()
    t1 = time.perf_counter()
    import inspect

    if "callbacks" in inspect.signature(run_sweep).parameters:
        summary = run_sweep(cfg, emit=lambda line: None, callbacks=[clock])
    else:  # an older hashbench (a baseline measurement): add the clock to every RunConfig
        from ray import tune

        plain = tune.RunConfig

        class WithClock(plain):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=[*(callbacks or []), clock], **kw)

        tune.RunConfig = WithClock
        summary = run_sweep(cfg, emit=lambda line: None)
        tune.RunConfig = plain
    sweep_s = time.perf_counter() - t1
    ray.shutdown()
    rows = phase_table(clock, cfg.out_dir, cfg.name)
    print(f"bench_trial: {args.method} on {os.path.basename(dataset)} ({subset}), {args.bits} bits, "
          f"{args.epochs} epoch(s), {len(rows)} trials, {args.concurrent} at a time, device {args.device}; "
          f"ray.init {ray_s:.1f} s, sweep {sweep_s:.1f} s ({summary.counts})")
    print(render(rows))
    if len(rows) > 1:
        warm = rows[1:]
        fixed = sum(r["fixed"] for r in warm) / len(warm)
        span = max(clock.ends.values()) - clock.t_setup
        print(f"\nfixed cost per trial (wall - train): first {rows[0]['fixed']:.2f} s, warm mean {fixed:.2f} s; "
              f"{len(rows) * 3600 / span:.0f} trials/h over the experiment ({span:.1f} s)")
    if getattr(summary, "disk", None) is not None:
        from hashbench.platform.sweep.driver import format_disk

        print(format_disk(summary.disk))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "ray_init_s": ray_s, "sweep_s": sweep_s,
                       "disk": getattr(summary, "disk", None)}, f, indent=2)
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
