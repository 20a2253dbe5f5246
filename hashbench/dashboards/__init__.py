"""Streamlit dashboards over the Parquet leaderboard (``hashbench dashboard``)."""

from __future__ import annotations

import os
from pathlib import Path


def app_path() -> Path:
    """The Streamlit script (``streamlit run`` takes a file)."""
    return Path(__file__).with_name("app.py")


def leaderboard_dir(given: str | os.PathLike | None = None) -> Path:
    """``given``, else ``$HASHBENCH_LEADERBOARD``, else the most recently written leaderboard
    (``hashbench.platform.defaults.find_leaderboard``), else ``./leaderboard``."""
    from hashbench.platform.defaults import find_leaderboard

    return find_leaderboard(given)[0]
