"""The hashbench dashboard (Streamlit): ``hashbench dashboard [--leaderboard DIR]`` starts it.

Read-only over the Parquet leaderboard. The directory comes from ``-- --leaderboard DIR`` after
``streamlit run app.py`` (what ``hashbench dashboard`` passes), else ``$HASHBENCH_LEADERBOARD``,
else the default leaderboard directory. Every problem is shown in the page, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

from hashbench.dashboards import leaderboard_dir, results
from hashbench.dashboards.views import compare, curves, gallery_view, leaderboard, lengths, speed, sweep
from hashbench.platform.errors import HashbenchError

VIEWS = {
    "Leaderboard": leaderboard.render,
    "Across code lengths": lengths.render,
    "Curves": curves.render,
    "Retrieval gallery": gallery_view.render,
    "Sweep": sweep.render,
    "Speed": speed.render,
    "Compare": compare.render,
}


def script_args() -> list[str]:
    """The arguments after ``streamlit run app.py --`` (none when the app runs under AppTest)."""
    if sys.argv and Path(sys.argv[0]).resolve() == Path(__file__).resolve():
        return sys.argv[1:]
    return []


def given_dir() -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--leaderboard")
    return parser.parse_known_args(script_args())[0].leaderboard


def main() -> None:
    st.set_page_config(page_title="hashbench", page_icon="🔎", layout="wide")
    data = results.load(leaderboard_dir(given_dir()))
    st.sidebar.title("hashbench")
    view = st.sidebar.radio("View", list(VIEWS), key="view")
    st.sidebar.caption(f"Leaderboard: `{data.directory}` · {data.rows.height} row(s). "
                       "New trials appear on the next interaction (or press R).")
    for message in data.skipped:
        st.warning(f"Some leaderboard files were skipped: {message}")
    if not data.ok:
        st.info(data.problem)
        return
    try:
        VIEWS[view](data)
    except HashbenchError as exc:
        st.error(str(exc))
    except Exception as exc:  # a view must never show a traceback to a reviewer
        st.error(f"The {view} view could not be drawn: {type(exc).__name__}: {exc}. "
                 "Please report it with the leaderboard that caused it.")


main()
