"""``hashbench dashboard``: open the Streamlit dashboard over a leaderboard directory (read-only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hashbench.platform.errors import HashbenchError


def add_parser(sub) -> None:
    p = sub.add_parser("dashboard", help="browse the leaderboard in a Streamlit dashboard",
                       description="Start the Streamlit dashboard (leaderboard, code-length plots, curves, "
                                   "retrieval gallery, sweeps, speed) over a leaderboard directory. "
                                   "Read-only; bound to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--leaderboard", metavar="DIR",
                   help="leaderboard directory (default: $HASHBENCH_LEADERBOARD, else ./leaderboard)")
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
            "--server.runOnSave", "false", "--", "--leaderboard", str(leaderboard)]


def run(args) -> int:
    if not 1 <= args.port <= 65535:
        raise HashbenchError(f"--port {args.port}: must be between 1 and 65535")
    if not args.host.strip():
        raise HashbenchError("--host: empty; give an address such as 127.0.0.1 or 0.0.0.0")
    from hashbench.dashboards import leaderboard_dir

    leaderboard = leaderboard_dir(args.leaderboard).resolve()
    if leaderboard.exists() and not leaderboard.is_dir():
        raise HashbenchError(f"--leaderboard {leaderboard}: is a file; give the leaderboard directory")
    if not leaderboard.exists():
        print(f"hashbench dashboard: no leaderboard at {leaderboard} yet; the page will say how to fill it",
              file=sys.stderr)
    print(f"hashbench dashboard: serving {leaderboard} at http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    return subprocess.call(command(leaderboard, args.port, args.host))
