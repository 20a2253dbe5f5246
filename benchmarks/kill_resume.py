#!/usr/bin/env python
"""The driver-kill experiment of issue 17: ``kill -9`` a sweep's driver, ``--resume`` it, check the rows.

Two kills of the same sweep (a tiny synthetic store; a searched dch study and two fixed studies, ASHA off,
checkpoints every epoch): one while the first trials run (a run directory exists, no row yet), one
after some rows were written. Then ``hashbench sweep --resume`` to the end, and the checks: one row per
trial (no duplicates), every row's times consistent (``started_at <= finished_at``,
``time_total_s >= time_train_s``), no run directory without a row. Ray runs under its own temporary
directory; what the killed driver leaves of it is ended by process id.

    python benchmarks/kill_resume.py [--work DIR] [--bits 8,16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _store(path: str) -> str:
    import numpy as np

    from hashbench.platform.data import write_store

    rng = np.random.default_rng(0)
    n = 80
    labels = np.arange(n) % 2
    images = (rng.integers(0, 60, (n, 1, 16, 16)) + 150 * labels[:, None, None, None]).astype(np.uint8)
    split = np.array([0] * 48 + [1] * 16 + [2] * 16, np.int8)
    return str(write_store(path, images, labels, split, class_names=["dark", "bright"]).path)


def _rows(lb: str) -> int:
    from hashbench.platform.leaderboard import read_leaderboard

    return read_leaderboard(lb).height if os.path.isdir(lb) else 0


def _end_leftovers(marker: str) -> int:
    """SIGKILL every process whose command line or environment names ``marker`` (this run's Ray dir)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker.encode() in cmd or f"RAY_TMPDIR={marker}".encode() in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
                n += 1
            except OSError:
                pass
    return n


def _run(cmd: list, env: dict, kill_when=None, timeout: float = 600) -> tuple:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t0 = time.time()
    killed = False
    while proc.poll() is None and time.time() - t0 < timeout:
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    out = proc.communicate()[0]
    return proc.returncode, killed, out, time.time() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    p.add_argument("--bits", default="8", help="code lengths, comma-separated (8,16: two searched dch studies, "
                                               "run together in one experiment)")
    args = p.parse_args(argv)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="kill-resume-"))
    os.makedirs(work, exist_ok=True)
    store = _store(os.path.join(work, "tiny"))
    cfg = os.path.join(work, "sweep.yaml")
    with open(cfg, "w") as f:
        f.write(textwrap.dedent(f"""\
            name: kill
            methods:
              dch: {{search: {{lr: [0.05, 1.0]}}, params: {{grid: 4}}, trials: 6}}
              lsh: {{}}
              itq: {{}}
            datasets: [{store}]
            bits: [{args.bits}]
            epochs: 3
            asha: false
            checkpoint_interval_s: 0
            train: {{batch_size: 16, augment: {{enabled: false}}}}
            storage: {work}/sweeps
            leaderboard: {work}/lb
            out_dir: {work}/runs
            """))
    ray_dir = os.path.join(work, "ray")
    os.makedirs(ray_dir, exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "RAY_USAGE_STATS_ENABLED": "0"}
    lb, runs = os.path.join(work, "lb"), os.path.join(work, "runs")
    sweep = [sys.executable, "-m", "hashbench", "sweep", cfg]

    def first_search_trial_running():  # a trial of the search experiment (ids without "_") not finished yet
        if not os.path.isdir(runs):
            return False
        return any(n.startswith("kill-") and "_" not in n and not os.path.exists(os.path.join(runs, n, "metrics.json"))
                   for n in os.listdir(runs))

    _, killed1, _, t1 = _run(sweep, env, kill_when=first_search_trial_running)
    left1 = _end_leftovers(ray_dir)
    rows1 = _rows(lb)
    print(f"kill 1 (the first search trials running): killed={killed1} after {t1:.1f} s, rows {rows1}, "
          f"{left1} leftover Ray processes ended", flush=True)
    _, killed2, out2, t2 = _run(sweep + ["--resume"], env, kill_when=lambda: _rows(lb) >= rows1 + 2)
    left2 = _end_leftovers(ray_dir)
    rows2 = _rows(lb)
    print(f"kill 2 (after rows were written): killed={killed2} after {t2:.1f} s, rows {rows2}, "
          f"{left2} leftover Ray processes ended", flush=True)
    rc, _, out, t3 = _run(sweep + ["--resume"], env)
    _end_leftovers(ray_dir)
    print(f"resume to the end: exit {rc} in {t3:.1f} s")
    print("\n".join(line for line in (out2 + out).splitlines() if "resum" in line or "finished in" in line
                    or "disk use" in line or "kept" in line))

    import polars as pl

    from hashbench.platform.leaderboard import read_leaderboard

    df = read_leaderboard(lb)
    done = df.filter(pl.col("status") == "completed")
    dirs = {n for n in os.listdir(runs) if n.startswith("kill-")}
    with_rows = {os.path.basename(p) for p in df["run_dir"]}
    checks = {
        "rows": df.height,
        "trials (distinct trial ids)": df["trial_id"].n_unique(),
        "duplicated trial rows": df.height - df["trial_id"].n_unique(),
        "rows with started_at > finished_at": int((df["started_at"] > df["finished_at"]).sum()),
        "completed rows with time_total_s < time_train_s": int((done["time_total_s"] < done["time_train_s"]).sum()),
        "run directories without a row": len(dirs - with_rows),
        "statuses": dict(zip(*df["status"].value_counts().to_dict(as_series=False).values())),
    }
    for k, v in checks.items():
        print(f"  {k}: {v}")
    ok = (rc == 0 and checks["duplicated trial rows"] == 0 and checks["run directories without a row"] == 0
          and checks["rows with started_at > finished_at"] == 0
          and checks["completed rows with time_total_s < time_train_s"] == 0 and df.height >= 8)
    print("OK" if ok else "FAILED")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
