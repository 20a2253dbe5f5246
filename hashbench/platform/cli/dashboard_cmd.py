"""``hashbench dashboard``: open the Streamlit dashboard over a leaderboard directory (read-only).

Streamlit runs as a child process. SIGTERM, SIGINT and SIGHUP sent to ``hashbench dashboard`` are
forwarded to it and the command waits for it to exit (killing it after ``STOP_GRACE_S``), so
stopping the command never leaves a server listening. On Linux the child is also asked to get
SIGTERM should this process die without forwarding (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from hashbench.platform.errors import HashbenchError

#: seconds the child gets to exit after a forwarded signal before it is killed
STOP_GRACE_S = 10.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def add_parser(sub) -> None:
    p = sub.add_parser("dashboard", help="browse the leaderboard in a Streamlit dashboard",
                       description="Start the Streamlit dashboard (leaderboard, code-length plots, curves, "
                                   "retrieval gallery, sweeps, speed) over a leaderboard directory. "
                                   "Read-only; bound to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--leaderboard", "--dir", dest="leaderboard", metavar="DIR",
                   help="leaderboard directory (default: $HASHBENCH_LEADERBOARD, else the most recently "
                        "written one: the quickstart's, a sweep's or train's; see docs/dashboard.md)")
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the dashboard to the network)")
    p.set_defaults(func=run)


def command(leaderboard: Path, port: int, host: str) -> list[str]:
    """The ``streamlit run`` command line for the app."""
    from hashbench.dashboards import app_path

    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--client.toolbarMode", "minimal",
            "--", "--leaderboard", str(leaderboard)]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, Linux only
        pass


def serve(cmd: list[str], grace: float = STOP_GRACE_S) -> int:
    """Run ``cmd`` as a child; forward FORWARDED signals to it and wait for it (kill after ``grace``).

    Returns the child's exit status, or 128 + the signal number when a signal stopped it.
    """
    proc = subprocess.Popen(cmd, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    got: list[int] = []

    def forward(signum, _frame) -> None:
        got.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    deadline = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if got and deadline is None:
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    rc = proc.wait()
                    break
    finally:
        if proc.poll() is None:  # an exception in this process: never leave the server behind
            proc.kill()
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + got[0] if got else rc


def run(args) -> int:
    if not 1 <= args.port <= 65535:
        raise HashbenchError(f"--port {args.port}: must be between 1 and 65535")
    if not args.host.strip():
        raise HashbenchError("--host: empty; give an address such as 127.0.0.1 or 0.0.0.0")
    from hashbench.platform.defaults import find_leaderboard

    leaderboard, how = find_leaderboard(args.leaderboard)
    leaderboard = leaderboard.resolve()
    if leaderboard.exists() and not leaderboard.is_dir():
        raise HashbenchError(f"--leaderboard {leaderboard}: is a file; give the leaderboard directory")
    if not leaderboard.exists():
        print(f"hashbench dashboard: no leaderboard at {leaderboard} yet; the page will say how to fill it",
              file=sys.stderr)
    why = "" if how == "given" else f" ({how}; --leaderboard DIR chooses another)"
    print(f"hashbench dashboard: serving {leaderboard}{why} at http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    return serve(command(leaderboard, args.port, args.host))
