"""The leaderboard's storage layer: one file per written row, compaction, and a reader that never blocks.

A leaderboard is a directory of Parquet files. ``hashbench.platform.leaderboard`` re-exports what is
public here (:func:`append_row`, :func:`read_leaderboard`, :func:`compact`, :func:`row_path`,
:func:`has_row`, :func:`row_key`); it owns the schema (``SCHEMA``, ``SCHEMA_VERSION``, ``UPGRADES``).

Files
    ``row-<key hash>-<stamp>-<random>.parquet``
        One row, as written by one trial. Written to a hidden temporary name in the same directory,
        fsynced, then renamed into place (``os.replace``): a reader never sees half a file. The name
        is unique per write (never overwritten), so a file, once visible, never changes until it is
        deleted. The key hash is a sha256 of the row's key (below), so two different keys never
        share a file name (the old ``<sweep>__<trial>.parquet`` names mapped ``a__b``/``c`` and
        ``a``/``b__c`` to one file).
    ``compacted-<stamp>-<random>.parquet``
        Many rows, written by :func:`compact` in the same atomic way.
    anything else ending in ``.parquet`` (not hidden)
        Read as rows too: files of older hashbench versions (``<sweep>__<trial>.parquet``) stay
        readable.

Every file written here carries a storage column ``_written_ns`` (when the row was written,
``time.time_ns()``), which is not part of the schema. A row's *key* is ``(sweep_id, trial_id)``,
else ``run_id``, plus its readout when the row is an extra readout of a run (``entry != method``).
When several files hold rows of one key (a trial written again on ``--resume``, or a row written
again after a compaction copied it), readers keep the most recently written one (largest
``_written_ns``; for old files without the column, the file's mtime).

Compaction merges every readable file into one new compacted file, then deletes exactly the files
it read. It needs no lock and stays correct when writers and other compactions run at the same time:
a file is deleted only after the merged file holding its rows (or newer rows of the same keys) is
durably in place; files written after the compaction listed the directory are not touched and win
by their newer stamp; two racing compactions may each write a merged file holding the same rows,
which readers de-duplicate by key and the next compaction merges. A reader that finds a listed file
gone (deleted by a compaction after it listed) lists again, so it always sees every row.

Files a reader cannot use are skipped with one warning per file naming it: corrupt or partial
files, files without a single schema version, and files written by a newer hashbench (a newer
schema version): the rest of the leaderboard is still shown. Compaction leaves such files alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import polars as pl

from hashbench.platform.errors import HashbenchError, HashbenchWarning

STAMP = "_written_ns"          # storage column: when the row was written (newest wins on read)
ROW_PREFIX = "row-"
COMPACT_PREFIX = "compacted-"
BATCH = 512                    # files read by one polars call on the fast path
RELIST_ATTEMPTS = 20           # a reader lists again when a compaction deleted a listed file


class LeaderboardWarning(HashbenchWarning):
    """A leaderboard file was skipped (one warning per file, naming it)."""


def _lb():
    from hashbench.platform import leaderboard

    return leaderboard


# --- keys and file names -------------------------------------------------------------------------------

def _extra(row: dict) -> str:
    """The readout of an extra readout row (its own key beside the run's primary row), else ''."""
    entry, method = row.get("entry"), row.get("method")
    if entry and method and entry != method:
        return str(row.get("readout") or entry)
    return ""


def row_key(row: dict) -> str:
    """The key that identifies ``row`` in a leaderboard: writing the same key again replaces the row.

    A JSON list, so distinct ``(sweep_id, trial_id)`` pairs give distinct keys whatever characters
    they hold. Raises HashbenchError for a row with neither (sweep_id, trial_id) nor run_id.
    """
    if row.get("sweep_id") and row.get("trial_id"):
        parts = ["trial", str(row["sweep_id"]), str(row["trial_id"]), _extra(row)]
    elif row.get("run_id"):
        parts = ["run", str(row["run_id"]), "", _extra(row)]
    else:
        raise HashbenchError("a leaderboard row needs a sweep_id and trial_id, or a run_id")
    return json.dumps(parts, ensure_ascii=False)


def key_hash(key: str) -> str:
    """128 bits of sha256 of the key, in hex (the file-name part that makes names one-to-one)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _key_expr() -> pl.Expr:
    """The same key as :func:`row_key`, as a polars expression over a frame of rows (null: no key)."""
    s, t, r = (pl.col(c).fill_null("") for c in ("sweep_id", "trial_id", "run_id"))
    cols = _lb().SCHEMA
    if "entry" in cols and "method" in cols and "readout" in cols:
        extra = (pl.when(pl.col("entry").is_not_null() & pl.col("method").is_not_null()
                         & (pl.col("entry") != pl.col("method")) & (pl.col("entry") != ""))
                 .then(pl.coalesce(pl.col("readout"), pl.col("entry"))).otherwise(pl.lit("")))
    else:
        extra = pl.lit("")
    trial = pl.concat_list([pl.lit("trial"), s, t, extra])
    run = pl.concat_list([pl.lit("run"), r, pl.lit(""), extra])
    return (pl.when((s != "") & (t != "")).then(trial).when(r != "").then(run)
            .otherwise(pl.lit(None, pl.List(pl.String))))


def _single_name(key: str, stamp: int) -> str:
    return f"{ROW_PREFIX}{key_hash(key)}-{stamp:020d}-{secrets.token_hex(4)}.parquet"


def _parse_single(name: str) -> Optional[tuple[str, int]]:
    """(key hash, stamp) of a file written by :func:`append_row`, else None."""
    if not (name.startswith(ROW_PREFIX) and name.endswith(".parquet")):
        return None
    parts = name[len(ROW_PREFIX):-len(".parquet")].split("-")
    if len(parts) != 3 or len(parts[0]) != 32 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _stamp() -> int:
    return time.time_ns()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(directory: Path, name: str, frame: pl.DataFrame) -> Path:
    """Write ``frame`` to ``directory/name`` through a hidden temporary file and a rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet.part", dir=directory)
    except OSError as exc:
        raise HashbenchError(f"leaderboard directory {directory}: not writable ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            frame.write_parquet(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; dashboards of other users read leaderboards
        os.replace(tmp, directory / name)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return directory / name


# --- writing -------------------------------------------------------------------------------------------

def append_row(directory: str | os.PathLike, row: dict) -> Path:
    """Write ``row`` as one new Parquet file in ``directory`` (atomically); returns its path.

    Writing a row whose key (:func:`row_key`) is already stored replaces it: readers keep the most
    recently written row of each key, and this writer removes its own key's older single-row files.
    """
    lb = _lb()
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HashbenchError(f"leaderboard directory {directory}: cannot create it ({exc.strerror})") from None
    import uuid

    row = {"schema_version": lb.SCHEMA_VERSION, "row_id": uuid.uuid4().hex, **row}
    key = row_key(row)
    stamp = _stamp()
    frame = lb._frame([row]).with_columns(pl.lit(stamp, pl.Int64).alias(STAMP))
    dest = _write_atomic(directory, _single_name(key, stamp), frame)
    # older single-row files of this key are now shadowed: remove them (a compaction may have
    # merged and removed them already; it never removes a file it did not read)
    h = key_hash(key)
    for old in directory.glob(f"{ROW_PREFIX}{h}-*.parquet"):
        parsed = _parse_single(old.name)
        if old != dest and parsed is not None and parsed[1] < stamp:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
    return dest


# --- reading -------------------------------------------------------------------------------------------

def list_files(directory: str | os.PathLike) -> list[Path]:
    """The Parquet files of a leaderboard directory (recursively), hidden (temporary) files excluded."""
    directory = Path(directory)
    out = []
    for path in directory.rglob("*.parquet"):
        rel = path.relative_to(directory).parts
        if any(p.startswith(".") for p in rel):
            continue
        out.append(path)
    return sorted(out)


@dataclass
class _Batch:
    frames: list = field(default_factory=list)      # frames over SCHEMA + STAMP
    read: list = field(default_factory=list)        # files whose rows are in ``frames``
    skipped: list = field(default_factory=list)     # (path, reason)
    vanished: list = field(default_factory=list)    # listed, then gone (a compaction removed them)


def _fits_fast_path(frame: pl.DataFrame) -> bool:
    lb = _lb()
    if STAMP not in frame.columns or any(c not in frame.columns for c in lb.SCHEMA):
        return False
    if frame.height == 0:
        return True
    versions = frame["schema_version"]
    return versions.null_count() == 0 and bool((versions == lb.SCHEMA_VERSION).all())


def _select(frame: pl.DataFrame) -> pl.DataFrame:
    lb = _lb()
    return frame.select([*(pl.col(c).cast(t) for c, t in lb.SCHEMA.items()), pl.col(STAMP).cast(pl.Int64)])


def _read_one(path: Path, out: _Batch) -> None:
    lb = _lb()
    try:
        mtime = path.stat().st_mtime_ns
        frame = pl.read_parquet(path, glob=False)
    except FileNotFoundError:
        out.vanished.append(path)
        return
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, by name
        out.skipped.append((path, f"unreadable or corrupt Parquet ({type(exc).__name__})"))
        return
    if "schema_version" not in frame.columns:
        out.skipped.append((path, "no schema_version column; not a leaderboard file"))
        return
    versions = frame["schema_version"].unique().to_list()
    if len(versions) != 1 or versions[0] is None:
        out.skipped.append((path, "no single schema_version"))
        return
    version = int(versions[0])
    if version > lb.SCHEMA_VERSION:
        out.skipped.append((path, f"written by a newer hashbench (leaderboard schema version {version}; this "
                                  f"hashbench reads versions up to {lb.SCHEMA_VERSION}); upgrade hashbench "
                                  f"to see its rows"))
        return
    try:
        frame = lb._upgrade(frame, version, path)
    except HashbenchError as exc:
        out.skipped.append((path, str(exc)))
        return
    missing = [c for c in lb.SCHEMA if c not in frame.columns]
    if missing:
        out.skipped.append((path, f"missing columns {missing}"))
        return
    if STAMP not in frame.columns:  # a file of an older hashbench: its mtime orders it
        frame = frame.with_columns(pl.lit(mtime, pl.Int64).alias(STAMP))
    try:
        out.frames.append(_select(frame))
    except Exception as exc:  # noqa: BLE001
        out.skipped.append((path, f"bad column types ({type(exc).__name__})"))
        return
    out.read.append(path)


def _read_files(paths: list[Path]) -> _Batch:
    """Read ``paths``: whole batches in one polars call where every file is of the current format,
    file by file (upgrades, per-file errors) otherwise."""
    out = _Batch()
    for i in range(0, len(paths), BATCH):
        chunk = paths[i:i + BATCH]
        try:
            frame = pl.scan_parquet([str(p) for p in chunk], glob=False).collect()
            fast = _fits_fast_path(frame)
        except Exception:  # noqa: BLE001 - a corrupt, vanished, older or newer file: read one by one
            fast = False
        if fast:
            out.frames.append(_select(frame))
            out.read.extend(chunk)
            continue
        for path in chunk:
            _read_one(path, out)
    return out


def _read_consistent(directory: Path) -> tuple[_Batch, int]:
    """Read every file, listing again while files vanish under us (a compaction replaced them)."""
    for attempt in range(RELIST_ATTEMPTS):
        batch = _read_files(list_files(directory))
        if not batch.vanished:
            return batch, attempt
        time.sleep(0.01 * (attempt + 1))
    batch.skipped += [(p, "removed while being read, again and again (compactions running without pause?); "
                          "read the leaderboard again") for p in batch.vanished]
    return batch, RELIST_ATTEMPTS


def _newest_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key, the most recently written (ties: the later file in listing order)."""
    if frame.height == 0:
        return frame
    keyed = frame.with_columns(_key_expr().alias("_key"), pl.int_range(pl.len()).alias("_pos"))
    no_key = keyed.filter(pl.col("_key").is_null())
    newest = (keyed.filter(pl.col("_key").is_not_null())
              .sort([STAMP, "_pos"]).unique(subset=["_key"], keep="last"))
    return pl.concat([newest, no_key]).sort("_pos").drop(["_key", "_pos"])


def _warn_skipped(directory: Path, skipped: list) -> None:
    for path, reason in skipped:
        warnings.warn(f"leaderboard {directory}: skipped {path}: {reason}", LeaderboardWarning, stacklevel=3)


def read_frame(directory: str | os.PathLike, *, warn: bool = True) -> pl.DataFrame:
    """Every current row (newest per key) over ``SCHEMA`` plus the ``_written_ns`` storage column."""
    lb = _lb()
    directory = Path(directory)
    empty = pl.DataFrame(schema={**lb.SCHEMA, STAMP: pl.Int64})
    if not directory.exists():
        return empty
    if not directory.is_dir():
        raise HashbenchError(f"leaderboard directory {directory}: not a directory")
    batch, _ = _read_consistent(directory)
    if warn:
        _warn_skipped(directory, batch.skipped)
    if not batch.frames:
        return empty
    return _newest_per_key(pl.concat(batch.frames, how="vertical"))


def read_leaderboard(directory: str | os.PathLike) -> pl.DataFrame:
    """Every row in ``directory`` as one frame over ``SCHEMA`` (empty frame if there are none).

    One row per key (the most recently written). Files of an older schema are upgraded in memory;
    corrupt or partial files and files written by a newer hashbench are skipped with one
    :class:`LeaderboardWarning` each, naming the file; the other files' rows are returned.
    """
    return read_frame(directory).drop(STAMP)


def find_row_file(directory: str | os.PathLike, row: dict) -> Optional[Path]:
    """A file in ``directory`` that holds the current row of ``row``'s key, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    key = row_key(row)
    singles = sorted(directory.glob(f"{ROW_PREFIX}{key_hash(key)}-*.parquet"))
    if singles:
        return singles[-1]
    others = [p for p in list_files(directory) if _parse_single(p.name) is None]
    wanted = ("sweep_id", "trial_id", "run_id", "entry", "method", "readout")
    for path in reversed(others):  # compacted files and files of older versions: read the key columns only
        try:
            present = [c for c in wanted if c in pl.read_parquet_schema(path)]
            frame = pl.read_parquet(path, columns=present, glob=False)
            missing = [pl.lit(None, pl.String).alias(c) for c in wanted if c not in present]
            keys = frame.with_columns(missing).select(_key_expr().alias("_key"))["_key"]
        except Exception:  # noqa: BLE001 - unreadable or gone: it holds no row we can use
            continue
        if any(json.dumps(list(k), ensure_ascii=False) == key for k in keys.to_list() if k is not None):
            return path
    return None


def has_row(directory: str | os.PathLike, row: dict) -> bool:
    """Whether ``directory`` holds a row with ``row``'s key (sweep_id + trial_id, or run_id)."""
    return find_row_file(directory, row) is not None


def row_path(directory: str | os.PathLike, row: dict) -> Path:
    """Where ``row``'s key is stored in ``directory``: the file holding it, else where a write would go.

    ``os.path.exists(row_path(d, row))`` is true exactly when the row is stored, also after a
    compaction merged it into a compacted file.
    """
    found = find_row_file(directory, row)
    return found if found is not None else Path(directory) / _single_name(row_key(row), _stamp())


# --- compaction ----------------------------------------------------------------------------------------

@dataclass
class Compaction:
    """What :func:`compact` did."""

    directory: Path
    path: Optional[Path]          # the merged file (None: nothing to merge)
    rows: int                     # rows in the merged file
    merged: int                   # files merged into it (and then removed)
    skipped: list                 # files left alone (unreadable, newer schema), with the reason
    seconds: float

    def line(self) -> str:
        if self.path is None:
            return (f"leaderboard {self.directory}: nothing to compact ({self.rows} row(s) already in "
                    f"{self.merged} file(s))")
        return (f"leaderboard {self.directory}: compacted {self.merged} file(s) into {self.path.name} "
                f"({self.rows} row(s)) in {self.seconds:.2f} s"
                + (f"; left {len(self.skipped)} unreadable or newer file(s) alone" if self.skipped else ""))


def compact(directory: str | os.PathLike) -> Compaction:
    """Merge every readable file of the leaderboard ``directory`` into one compacted file.

    Only files directly in ``directory`` are merged (files in sub-directories are read by readers
    but left where they are).

    The merged file holds one row per key (the most recently written) and is written atomically
    before any merged file is removed; only the files this call read are removed. Safe while trials
    write rows and while other compactions run (see the module docstring). Unreadable files and
    files of a newer schema are left in place (with a warning each). Returns a :class:`Compaction`.
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    if not directory.is_dir():
        raise HashbenchError(f"leaderboard directory {directory}: no such directory")
    batch = _read_files([p for p in list_files(directory) if p.parent == directory])
    _warn_skipped(directory, batch.skipped)
    frame = (_newest_per_key(pl.concat(batch.frames, how="vertical")) if batch.frames
             else pl.DataFrame(schema={**_lb().SCHEMA, STAMP: pl.Int64}))
    already = len(batch.read) == 1 and batch.read[0].name.startswith(COMPACT_PREFIX)
    if not batch.read or already:
        return Compaction(directory, None, frame.height, len(batch.read), batch.skipped,
                          time.perf_counter() - t0)
    name = f"{COMPACT_PREFIX}{_stamp():020d}-{secrets.token_hex(4)}.parquet"
    dest = _write_atomic(directory, name, frame)
    for path in batch.read:  # only now: every row they held is in ``dest`` (or newer in a file we kept)
        if path == dest:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another compaction (or the row's writer) removed it first
            pass
    return Compaction(directory, dest, frame.height, len(batch.read), batch.skipped, time.perf_counter() - t0)


def compact_quietly(directory: str | os.PathLike, emit=None) -> Optional[Compaction]:
    """:func:`compact` for the end of a sweep: never raises (the sweep's rows are already written)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LeaderboardWarning)
            result = compact(directory)
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the rows are safe without it
        if emit is not None:
            emit(f"leaderboard {directory}: not compacted ({type(exc).__name__}: {exc}); "
                 f"run `hashbench leaderboard compact --dir {directory}` later")
        return None
    if emit is not None:
        emit(result.line())
    return result


__all__ = ["STAMP", "Compaction", "LeaderboardWarning", "append_row", "compact", "compact_quietly", "find_row_file",
           "has_row", "key_hash", "list_files", "read_frame", "read_leaderboard", "row_key", "row_path"]
