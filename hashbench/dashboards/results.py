"""Reading the leaderboard for the dashboard: cached, refreshed when files change, never raising.

The dashboard is read-only. :func:`load` returns a :class:`Loaded` record with the rows, the files
that were skipped (corrupt or partial) and, when nothing can be shown, a message saying what to run
to fill the leaderboard. Streamlit's cache is keyed on the directory listing (name, size, mtime of
every Parquet file), so a trial that finishes while the page is open appears on the next rerun.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import streamlit as st

FILL_HINT = ("Fill it with `hashbench quickstart` (a small sweep of every method on the built-in data, "
             "about 5 minutes on a 2-core CPU) or `hashbench sweep configs/<config>.yaml`, then reload this page.")


@dataclass
class Loaded:
    """What the dashboard read from a leaderboard directory."""

    directory: Path
    rows: pl.DataFrame
    skipped: list[str] = field(default_factory=list)  # reader warnings (files it skipped)
    problem: str | None = None  # set when no view can be drawn

    @property
    def ok(self) -> bool:
        return self.problem is None


def listing(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime_ns) of every Parquet file under ``directory``: the cache key."""
    if not directory.is_dir():
        return ()
    out = []
    for path in sorted(directory.rglob("*.parquet")):
        if path.name.startswith("."):  # a temporary file being written
            continue
        try:
            st_ = path.stat()
        except OSError:  # removed while listing
            continue
        out.append((str(path.relative_to(directory)), st_.st_size, st_.st_mtime_ns))
    return tuple(out)


@st.cache_data(show_spinner="Reading the leaderboard…", max_entries=8)
def _read(directory: str, files: tuple[tuple[str, int, int], ...]) -> tuple[pl.DataFrame, list[str]]:
    """Read the leaderboard (``files`` is only the cache key); return the rows and the warnings."""
    from hashbench.platform.leaderboard import read_leaderboard

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_leaderboard(directory)
    return rows, [str(w.message) for w in caught]


def load(directory: str | os.PathLike) -> Loaded:
    """Read the leaderboard at ``directory``; problems become a message, never an exception."""
    directory = Path(directory).expanduser()
    empty = pl.DataFrame()
    if not directory.exists():
        return Loaded(directory, empty, problem=f"No leaderboard at `{directory}` yet. {FILL_HINT}")
    if not directory.is_dir():
        return Loaded(directory, empty, problem=f"`{directory}` is a file, not a leaderboard directory. "
                                                f"Pass the directory with `hashbench dashboard --leaderboard DIR`.")
    files = listing(directory)
    if not files:
        return Loaded(directory, empty, problem=f"The leaderboard `{directory}` is empty (no Parquet files). "
                                                f"{FILL_HINT}")
    try:
        rows, skipped = _read(str(directory), files)
    except Exception as exc:  # any reader failure must become a message in the page
        return Loaded(directory, empty, problem=f"The leaderboard `{directory}` could not be read: {exc}")
    problem = None
    if rows.height == 0:
        problem = f"No readable rows in `{directory}` ({len(files)} file(s)). {FILL_HINT}"
    return Loaded(directory, rows, skipped, problem)


# ---------------------------------------------------------------------------------------------
# Best configurations and seeds


def completed(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows of runs that reached their test evaluation."""
    return rows.filter(pl.col("status") == "completed")


def metric_columns(rows: pl.DataFrame) -> list[str]:
    """The numeric ``test_*`` metric columns, in schema order."""
    return [c for c in rows.columns if c.startswith("test_") and rows.schema[c].is_numeric()]


def best(rows: pl.DataFrame, metrics: list[str], axis: str = "storage") -> pl.DataFrame:
    """The best configuration per (protocol, dataset, entry, storage_bits) -- or, with ``axis="bits"``,
    per (protocol, dataset, entry, bits) -- with each metric's mean and 95 % CI.

    The configuration is the completed search trial with the highest validation mAP@100
    (``leaderboard.best_runs``, the choice ``hashbench leaderboard`` shows). Where it was re-trained
    with more seeds (``--seeds N``), ``m`` is the mean over the seeds and ``m ±`` the half-width of
    the 95 % Student-t confidence interval (``leaderboard.seed_summary``); otherwise ``m`` is the
    trial's value and ``m ±`` is null. ``seeds`` counts the runs behind ``m``.
    """
    from hashbench.platform.leaderboard import SEED_KEY, best_runs, seed_summary

    chosen = best_runs(rows, axis=axis)
    key = list(SEED_KEY)
    summary = seed_summary(rows, metrics).rename({"n_seeds": "seeds"})
    out = chosen.join(summary, on=key, how="left").with_columns(pl.col("seeds").fill_null(1))
    for m in metrics:
        several = pl.col("seeds") > 1
        out = out.with_columns(pl.when(several).then(pl.col(f"{m}_mean")).otherwise(pl.col(m)).alias(m),
                               pl.when(several).then(pl.col(f"{m}_ci95")).alias(f"{m} ±"))
    return out.drop([f"{m}_{s}" for m in metrics for s in ("mean", "ci95")])


def decode_params(rows: pl.DataFrame) -> pl.DataFrame:
    """The ``params_json`` column decoded into one column per hyper-parameter (``hp.<name>``)."""
    decoded = [json.loads(s) if s else {} for s in rows["params_json"].to_list()]
    names = sorted({k for d in decoded for k in d})
    cols = {f"hp.{n}": [d.get(n) for d in decoded] for n in names}
    return pl.DataFrame({k: _column(v) for k, v in cols.items()}) if cols else pl.DataFrame()


def _column(values: list) -> pl.Series:
    """A polars series of hyper-parameter values: numeric when all are numbers, else strings."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pl.Series(values, dtype=pl.Float64)
    return pl.Series([None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                      for v in values], dtype=pl.String)


#: where the dashboard may read run directories (``os.pathsep``-separated); default: the leaderboard's parent
RUNS_ENV = "HASHBENCH_RUNS"


def runs_roots(leaderboard: Path) -> list[Path]:
    """The configured runs roots: ``$HASHBENCH_RUNS`` (``os.pathsep``-separated folders), else the
    leaderboard's parent folder, which holds the runs in every layout hashbench writes (the quickstart's
    ``hashbench-quickstart/{leaderboard,runs}``, a sweep config's ``leaderboard`` / ``out_dir`` defaults,
    ``configs/full.yaml``'s ``/mnt/shared/hashbench/{leaderboard,runs}``)."""
    env = os.environ.get(RUNS_ENV, "")
    roots = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return [r.resolve() for r in (roots or [Path(leaderboard).expanduser().resolve().parent])]


def resolve_run_dir(run_dir: str, leaderboard: Path) -> Path | None:
    """The run directory as recorded, else relative to the leaderboard or its parent; None if absent.

    A leaderboard row is data, not an instruction: a recorded ``run_dir`` is followed only when it
    lies inside a runs root (:func:`runs_roots`, after resolving ``..`` and symbolic links), so a row
    cannot make the dashboard read ``codes.npz`` from anywhere else on the machine.
    """
    p = Path(run_dir).expanduser()
    roots = runs_roots(leaderboard)
    for cand in (p, leaderboard / p, leaderboard.parent / p):
        real = cand.resolve()
        if not any(real == r or real.is_relative_to(r) for r in roots):
            continue
        if (real / "codes.npz").is_file():
            return real
    return None

