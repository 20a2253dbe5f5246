"""CI's path: start a Ray head, `ray job submit --working-dir .` a tiny sweep, check its leaderboard rows.

The head is private to this test: its own ports and --temp-dir, token auth off (RAY_AUTH_MODE=disabled,
tests only), and RAY_ADDRESS never exported to this process, so the shared ``ray_session`` of the
other tests (``ray.init(address="local")``) never attaches to it. It is started with ``--block`` in a
process group of its own and stopped by signalling that group: ``ray stop`` would stop every Ray on
the machine, the shared session included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hashbench.platform.leaderboard import read_leaderboard

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", ".gpu", ".gpudata", "runs", "leaderboard", "hashbench-quickstart",
            "**/__pycache__", "*.egg-info", ".pytest_cache"]


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop_group(proc: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM the head's process group (``ray start --block`` stops what it started), then SIGKILL
    whatever is left of it, and any process still naming this head's temp dir."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmd and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.timeout(400)
def test_ray_job_submit_tiny_sweep(tmp_path_factory):
    from hashbench.platform.data import write_store

    t0 = time.time()
    work = tmp_path_factory.mktemp("job")
    temp_dir = tmp_path_factory.mktemp("r")  # short: Ray's socket paths must stay < 108 chars
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = (rng.integers(0, 60, (64, 1, 16, 16)) + 150 * labels[:, None, None, None]).astype(np.uint8)
    write_store(work / "tiny", images, labels, np.array([0] * 40 + [1] * 12 + [2] * 12), class_names=["a", "b"])
    config = work / "ci.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: ci
        methods: [lsh, itq]
        datasets: [{work / 'tiny'}]
        bits: [8]
        trials: 1
        epochs: 1
        train: {{batch_size: 16, augment: {{enabled: false}}}}
        storage: {work / 'sweeps'}
        leaderboard: {work / 'lb'}
        out_dir: {work / 'runs'}
        """))

    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}"],
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_http(f"{address}/api/version", timeout=90)
        submit = subprocess.run(
            ["ray", "job", "submit", f"--address={address}", f"--working-dir={ROOT}",
             f"--runtime-env-json={json.dumps({'excludes': EXCLUDES})}", "--",
             "hashbench", "sweep", str(config)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        assert "succeeded" in log and "sweep 'ci' finished" in log, log[-4000:]
        df = read_leaderboard(work / "lb")
        assert df.height == 2 and sorted(df["method"].to_list()) == ["itq", "lsh"]
        assert (df["status"] == "completed").all() and (df["sweep_id"] == "ci").all()
        assert df["test_mAP@100"].is_not_null().all()
    finally:
        _stop_group(head, temp_dir)
        assert "RAY_ADDRESS" not in os.environ
    print(f"job submit test: {time.time() - t0:.1f} s")
