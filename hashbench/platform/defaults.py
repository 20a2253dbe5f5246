"""Where things go when no flag says: the per-user hashbench home and the most recent leaderboard.

``hashbench quickstart``, ``sweep`` and ``train`` each write their leaderboard where their options
say (``hashbench-quickstart/leaderboard``, the config's ``leaderboard``, ``--leaderboard``) and then
record that directory in ``$HASHBENCH_HOME/recent-leaderboards.json`` (default home
``~/.cache/hashbench``). ``hashbench leaderboard``, ``dashboard`` and ``reproduce`` given no
``--leaderboard`` use ``$HASHBENCH_LEADERBOARD`` when set, else the candidate with the newest row
file among the recorded directories, ``./leaderboard`` and ``./hashbench-quickstart/leaderboard``
(:func:`find_leaderboard`), and say which one they chose.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

#: what ``train`` and ``sweep`` configs use when nothing else is given; looked for in the working directory
LOCAL_LEADERBOARD = "leaderboard"
#: the quickstart's leaderboard, relative to the directory it was run from
QUICKSTART_LEADERBOARD = os.path.join("hashbench-quickstart", "leaderboard")
RECENT_FILE = "recent-leaderboards.json"
RECENT_KEEP = 20


def home() -> Path:
    """``$HASHBENCH_HOME``, else ``$XDG_CACHE_HOME/hashbench``, else ``~/.cache/hashbench``."""
    env = os.environ.get("HASHBENCH_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hashbench"


def recent_leaderboards() -> list[Path]:
    """The leaderboard directories recorded by :func:`remember_leaderboard`, newest first."""
    try:
        with open(home() / RECENT_FILE) as f:
            paths = json.load(f)
    except (OSError, ValueError):
        return []
    return [Path(p) for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def remember_leaderboard(directory: str | os.PathLike) -> None:
    """Record ``directory`` as the most recently written leaderboard (best effort, atomic, never raises)."""
    path = str(Path(directory).expanduser().resolve())
    paths = [path] + [str(p) for p in recent_leaderboards() if str(p) != path]
    try:
        root = home()
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-recent-", dir=root)
        with os.fdopen(fd, "w") as f:
            json.dump(paths[:RECENT_KEEP], f, indent=1)
        os.replace(tmp, root / RECENT_FILE)
    except OSError:
        pass  # a read-only home must not fail a finished run


def _newest_row(directory: Path) -> Optional[float]:
    """The newest modification time of a row file under ``directory`` (None: no rows)."""
    newest = None
    try:
        for entry in directory.rglob("*.parquet"):
            if entry.name.startswith("."):
                continue
            try:
                t = entry.stat().st_mtime
            except OSError:
                continue
            newest = t if newest is None or t > newest else newest
    except OSError:
        return None
    return newest


def leaderboard_candidates(cwd: str | os.PathLike | None = None) -> list[Path]:
    """Where a leaderboard is looked for: the recorded ones, then ``./leaderboard`` and the quickstart's."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    out: list[Path] = []
    for p in [*recent_leaderboards(), base / LOCAL_LEADERBOARD, base / QUICKSTART_LEADERBOARD]:
        p = p.resolve()
        if p not in out:
            out.append(p)
    return out


def find_leaderboard(given: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None
                     ) -> tuple[Path, str]:
    """The leaderboard directory to read and why: ``(path, how)``.

    ``given`` (a flag) wins, then ``$HASHBENCH_LEADERBOARD``, then the candidate of
    :func:`leaderboard_candidates` holding the newest row file; with none, ``./leaderboard``
    (which does not exist; callers say how to fill it).
    """
    if given:
        return Path(given).expanduser(), "given"
    env = os.environ.get("HASHBENCH_LEADERBOARD")
    if env:
        return Path(env).expanduser(), "$HASHBENCH_LEADERBOARD"
    found = [(t, p) for p in leaderboard_candidates(cwd) if p.is_dir() and (t := _newest_row(p)) is not None]
    if found:
        return max(found, key=lambda tp: tp[0])[1], "most recent"
    base = Path(cwd) if cwd is not None else Path.cwd()
    return base / LOCAL_LEADERBOARD, "default"
