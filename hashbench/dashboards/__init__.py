"""Streamlit dashboards over the Parquet leaderboard (``hashbench dashboard``)."""

from __future__ import annotations

import os
from pathlib import Path

#: Where the leaderboard is looked for when neither --leaderboard nor $HASHBENCH_LEADERBOARD says.
DEFAULT_LEADERBOARD = "leaderboard"


def app_path() -> Path:
    """The Streamlit script (``streamlit run`` takes a file)."""
    return Path(__file__).with_name("app.py")


def leaderboard_dir(given: str | os.PathLike | None = None) -> Path:
    """``given``, else ``$HASHBENCH_LEADERBOARD``, else :data:`DEFAULT_LEADERBOARD`."""
    return Path(given or os.environ.get("HASHBENCH_LEADERBOARD") or DEFAULT_LEADERBOARD).expanduser()
