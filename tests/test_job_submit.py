"""CI's path: start a Ray head, `ray job submit --working-dir .` a tiny sweep, check its leaderboard rows.

The head is private to this test: its own ports and --temp-dir, and RAY_ADDRESS never exported to
this process, so the shared ``ray_session`` of the other tests (``ray.init(address="local")``) never
attaches to it. It is started with ``--block`` in a process group of its own and stopped by
signalling that group: ``ray stop`` would stop every Ray on the machine, the shared session included.

It is not exposed to the network (issue 17): token authentication stays on (a fresh random token in
a 0600 file, ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH`` for the head and for the ``ray job``
client), and every server binds the loopback interface: ``--node-ip-address=127.0.0.1`` together with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's single-machine mode: without it Ray 2.60 replaces
127.0.0.1 by the machine's address and the GCS and raylets listen on every interface). The test
checks both: each TCP socket the head's processes listen on is a loopback address, and the job API
answers 401 without the token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
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


def _wait_http(url: str, timeout: float, token: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _status_without_token(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _head_pids(proc: subprocess.Popen, temp_dir: Path) -> list:
    """Processes of the head: its session (start_new_session) or naming its temp dir."""
    pids = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            session = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()[3]
            cmd = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if session == str(proc.pid) or str(temp_dir) in cmd:
            pids.append(int(pid_dir.name))
    return pids


def _is_loopback(hex_addr: str) -> bool:
    """/proc/net/tcp{,6} local address: 127.x.x.x, ::1 or ::ffff:127.x.x.x."""
    if len(hex_addr) == 8:
        return hex_addr.endswith("7F")
    return hex_addr == "00000000000000000000000001000000" or (
        hex_addr.startswith("0000000000000000FFFF0000") and hex_addr.endswith("7F"))


def _listening(pids: list) -> list:
    """(address, port, process) of every listening TCP socket of ``pids`` (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                addr, port = f[1].split(":")
                try:
                    name = Path(f"/proc/{inodes[f[9]]}/cmdline").read_bytes().split(b"\0")[0].decode()[-40:]
                except OSError:
                    name = "?"
                out.append((addr, int(port, 16), name))
    return out


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


@pytest.mark.timeout(500)
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
    token = secrets.token_hex(32)
    token_file = temp_dir / "auth_token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # single-machine mode: 127.0.0.1 stays 127.0.0.1
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}"],
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_http(f"{address}/api/version", timeout=180, token=token)
        assert _status_without_token(f"{address}/api/jobs/") == 401  # token auth is on
        time.sleep(3)  # let the agents open their ports
        exposed = [s for s in _listening(_head_pids(head, temp_dir)) if not _is_loopback(s[0])]
        assert exposed == [], f"head servers listening beyond loopback: {exposed}"
        submit = subprocess.run(
            ["ray", "job", "submit", f"--address={address}", f"--working-dir={ROOT}",
             f"--runtime-env-json={json.dumps({'excludes': EXCLUDES})}", "--",
             "hashbench", "sweep", str(config)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        exposed = [s for s in _listening(_head_pids(head, temp_dir)) if not _is_loopback(s[0])]
        assert exposed == [], f"servers (job workers included) listening beyond loopback: {exposed}"
        assert "succeeded" in log and "sweep 'ci' finished" in log, log[-4000:]
        df = read_leaderboard(work / "lb")
        assert df.height == 2 and sorted(df["method"].to_list()) == ["itq", "lsh"]
        assert (df["status"] == "completed").all() and (df["sweep_id"] == "ci").all()
        assert df["test_mAP@100"].is_not_null().all()
    finally:
        _stop_group(head, temp_dir)
        assert "RAY_ADDRESS" not in os.environ
    print(f"job submit test: {time.time() - t0:.1f} s")
