"""`hashbench dashboard` as a real server: started, stopped by a signal, nothing left listening.

:func:`served` is the one way tests start a dashboard server (also used by the browser test): it
always stops it, even when the test fails, by SIGTERM to the command, then SIGKILL to its process
group and to every streamlit process it started, and it waits for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

import test_dashboard_fixture as F


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; empty where /proc has no children files)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    log: Path

    def children(self) -> list[int]:
        return descendants(self.proc.pid)


def wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"hashbench dashboard exited with {server.proc.returncode}: "
                                 f"{server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer at {server.url} within {timeout} s")


def stop(server: Server, kids: list[int], timeout: float = 20) -> None:
    """SIGTERM, wait; then SIGKILL the process group and the recorded children; always reap."""
    proc = server.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def served(leaderboard: Path, tmp_path: Path, env: dict | None = None):
    """``hashbench dashboard --leaderboard LB`` on a free port, healthy; stopped on exit, whatever happens."""
    port = free_port()
    log = tmp_path / f"dashboard-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hashbench", "dashboard", "--leaderboard", str(leaderboard),
                                 "--port", str(port)], env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", port, log)
    kids: list[int] = []
    try:
        wait_healthy(server, 90)
        kids = server.children()
        yield server
    finally:
        kids = list(dict.fromkeys(kids + (server.children() if proc.poll() is None else [])))
        stop(server, kids)


@pytest.mark.timeout(150)
def test_sigterm_stops_streamlit_and_closes_the_port(tmp_path):
    fx = F.build(tmp_path / "fixture")
    with served(fx.leaderboard, tmp_path, {"HASHBENCH_DATA": str(fx.data_home)}) as server:
        kids = server.children()
        assert kids and port_open(server.port)
        assert any(b"streamlit" in Path(f"/proc/{k}/cmdline").read_bytes() for k in kids)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=30)
        took = time.monotonic() - t0
        assert rc == 128 + signal.SIGTERM
        assert not [k for k in kids if alive(k)], "streamlit outlived hashbench dashboard"
        assert not port_open(server.port)
    print(f"\nSIGTERM to exit with streamlit gone and the port closed: {took:.1f} s")


@pytest.mark.timeout(60)
def test_serve_kills_a_child_that_ignores_the_signal(tmp_path):
    """The grace period ends in SIGKILL: a child that ignores SIGTERM does not outlive serve()."""
    marker = tmp_path / "pid"
    child = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c",
                             f"import sys; from hashbench.platform.cli.dashboard_cmd import serve; "
                             f"sys.exit(serve([sys.executable, '-c', {child!r}], grace=1.0) - 128)"])
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(marker.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == signal.SIGTERM  # serve returned 128 + SIGTERM
        assert not alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if marker.exists() and marker.read_text() and alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)
