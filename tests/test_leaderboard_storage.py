"""The leaderboard's storage layer: one-to-one file names, newest row per key, compaction that never
loses or duplicates a row (beside writers and other compactions), old files readable, a newer-schema
file skipped by name instead of blocking every reader."""

from __future__ import annotations

import json
import os
import threading
import time

import polars as pl
import pytest

from hashbench.platform import leaderboard as lb
from hashbench.platform import leaderboard_store as store
from hashbench.platform.cli import main


def _row(trial="t1", sweep="s", val=0.5, **kw):
    row = {"sweep_id": sweep, "trial_id": trial, "run_id": f"{sweep}-{trial}", "status": "completed",
           "method": "dch", "family": "dch", "dataset": "pneumoniamnist", "bits": 16, "code_type": "binary",
           "storage_bits": 16, "val_mAP@100": val, "test_mAP@100": val / 2, "seed": 0, "epochs": 1,
           "params_json": json.dumps({"lr": 0.1}), "role": "trial", "finished_at": "2026-01-01T00:00:00+00:00"}
    row.update(kw)
    return row


def _pairs(df: pl.DataFrame) -> list:
    return sorted(zip(df["sweep_id"].to_list(), df["trial_id"].to_list()))


def _parquet(directory) -> list:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".parquet")


def test_file_names_are_one_to_one(tmp_path):
    """Issue 17 item 8: (a__b, c) and (a, b__c) used to map to one file, so one row replaced the other."""
    p1 = lb.append_row(tmp_path, _row(sweep="a__b", trial="c", val=0.1))
    p2 = lb.append_row(tmp_path, _row(sweep="a", trial="b__c", val=0.2))
    assert p1 != p2 and p1.name.split("-")[1] != p2.name.split("-")[1]  # different key hashes
    assert _pairs(lb.read_leaderboard(tmp_path)) == [("a", "b__c"), ("a__b", "c")]
    # keys with separators, slashes and non-ASCII text stay distinct and round-trip
    odd = [("x/y", "z"), ("x", "y/z"), ("ü", "é"), ("run", "a b")]
    for s, t in odd:
        lb.append_row(tmp_path, _row(sweep=s, trial=t))
    assert _pairs(lb.read_leaderboard(tmp_path)) == sorted([("a", "b__c"), ("a__b", "c"), *odd])
    assert lb.row_key({"sweep_id": "a__b", "trial_id": "c"}) != lb.row_key({"sweep_id": "a", "trial_id": "b__c"})


def test_writing_a_key_again_replaces_its_row_and_file(tmp_path):
    lb.append_row(tmp_path, _row(val=0.1))
    newest = lb.append_row(tmp_path, _row(val=0.9))
    assert _parquet(tmp_path) == [newest.name]  # the writer removed its key's older file
    df = lb.read_leaderboard(tmp_path)
    assert df.height == 1 and df["val_mAP@100"][0] == pytest.approx(0.9)


def test_compaction_merges_into_one_file_keeping_every_row(tmp_path):
    for i in range(30):
        lb.append_row(tmp_path, _row(trial=f"t{i}", val=i / 30))
    before = lb.read_leaderboard(tmp_path).sort("trial_id")
    result = lb.compact(tmp_path)
    files = _parquet(tmp_path)
    assert len(files) == 1 and files[0].startswith("compacted-") and result.merged == 30 and result.rows == 30
    after = lb.read_leaderboard(tmp_path).sort("trial_id")
    assert after.equals(before)  # the same rows, values and row ids
    assert lb.compact(tmp_path).path is None  # nothing left to merge
    assert _parquet(tmp_path) == files


def test_row_written_again_after_compaction_replaces_the_compacted_copy(tmp_path):
    for i in range(5):
        lb.append_row(tmp_path, _row(trial=f"t{i}", val=0.1))
    lb.compact(tmp_path)
    lb.append_row(tmp_path, _row(trial="t2", val=0.8))  # e.g. a trial re-run on --resume
    df = lb.read_leaderboard(tmp_path)
    assert df.height == 5 and df.filter(pl.col("trial_id") == "t2")["val_mAP@100"][0] == pytest.approx(0.8)
    lb.compact(tmp_path)
    df = lb.read_leaderboard(tmp_path)
    assert len(_parquet(tmp_path)) == 1 and df.height == 5
    assert dict(zip(df["trial_id"], df["val_mAP@100"])) == {"t0": 0.1, "t1": 0.1, "t2": 0.8, "t3": 0.1, "t4": 0.1}


def test_has_row_and_row_path_see_compacted_rows(tmp_path):
    lb.append_row(tmp_path, _row(trial="t1"))
    assert lb.has_row(tmp_path, {"sweep_id": "s", "trial_id": "t1"})
    assert not lb.has_row(tmp_path, {"sweep_id": "s", "trial_id": "t9"})
    lb.compact(tmp_path)
    assert lb.has_row(tmp_path, {"sweep_id": "s", "trial_id": "t1"})
    assert os.path.exists(lb.row_path(tmp_path, {"sweep_id": "s", "trial_id": "t1"}))
    assert not os.path.exists(lb.row_path(tmp_path, {"sweep_id": "s", "trial_id": "t9"}))


def test_files_of_older_versions_stay_readable_and_are_replaced_by_newer_writes(tmp_path):
    """A file named the old way (``<sweep>__<trial>.parquet``, no write stamp) is read; a newer write of
    its key wins over it; compaction merges it."""
    old = lb._frame([{**_row(trial="t1", val=0.3), "schema_version": lb.SCHEMA_VERSION, "row_id": "a" * 32}])
    old.write_parquet(tmp_path / "s__t1.parquet")
    os.utime(tmp_path / "s__t1.parquet", ns=(time.time_ns() - 10**9,) * 2)
    lb._frame([{**_row(trial="t2", val=0.4), "schema_version": lb.SCHEMA_VERSION,
                "row_id": "b" * 32}]).write_parquet(tmp_path / "s__t2.parquet")
    assert _pairs(lb.read_leaderboard(tmp_path)) == [("s", "t1"), ("s", "t2")]
    lb.append_row(tmp_path, _row(trial="t1", val=0.9))
    df = lb.read_leaderboard(tmp_path)
    assert dict(zip(df["trial_id"], df["val_mAP@100"])) == {"t1": 0.9, "t2": 0.4}
    lb.compact(tmp_path)
    assert not (tmp_path / "s__t1.parquet").exists() and len(_parquet(tmp_path)) == 1
    df = lb.read_leaderboard(tmp_path)
    assert dict(zip(df["trial_id"], df["val_mAP@100"])) == {"t1": 0.9, "t2": 0.4}


def test_newer_schema_file_is_skipped_with_its_name_and_the_rest_shown(tmp_path, capsys):
    """Issue 17 item 7: one newer-schema file used to block every reader (CLI, dashboard, reproduce)."""
    lb.append_row(tmp_path, _row(trial="t1"))
    lb.append_row(tmp_path, _row(trial="t2"))
    pl.DataFrame({"schema_version": [lb.SCHEMA_VERSION + 1], "method": ["x"], "new_col": [1]}).write_parquet(
        tmp_path / "from-the-future.parquet")
    with pytest.warns(store.LeaderboardWarning) as rec:
        df = lb.read_leaderboard(tmp_path)
    assert _pairs(df) == [("s", "t1"), ("s", "t2")]
    assert len(rec) == 1 and "from-the-future.parquet: written by a newer hashbench" in str(rec[0].message)
    assert f"schema version {lb.SCHEMA_VERSION + 1}" in str(rec[0].message)
    # the CLI shows the rows and one clean warning line naming the file
    assert main(["leaderboard", "--dir", str(tmp_path), "--all-runs", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") >= 2 and "t1" in out and "t2" in out
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and lines[0].startswith("hashbench leaderboard: warning: leaderboard ")
    assert "from-the-future.parquet" in lines[0] and "UserWarning" not in err and ".py:" not in err
    # compaction merges the readable rows and leaves the newer file for a newer hashbench
    with pytest.warns(store.LeaderboardWarning):
        lb.compact(tmp_path)
    assert (tmp_path / "from-the-future.parquet").exists() and len(_parquet(tmp_path)) == 2


def test_cli_prints_one_clean_line_per_skipped_file(tmp_path, capsys):
    good = lb.append_row(tmp_path, _row())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "half.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["leaderboard", "--dir", str(tmp_path), "--all-runs"]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [ln for ln in err if ln.startswith("hashbench leaderboard: warning: ")]
    assert len(warned) == 2 and any("broken.parquet" in w for w in warned) and any("half.parquet" in w for w in warned)
    assert not [ln for ln in err if "Warning:" in ln or ".py:" in ln]


def test_compact_cli(tmp_path, capsys):
    for i in range(3):
        lb.append_row(tmp_path, _row(trial=f"t{i}"))
    assert main(["leaderboard", "compact", "--dir", str(tmp_path)]) == 0
    assert "compacted 3 file(s)" in capsys.readouterr().out and len(_parquet(tmp_path)) == 1
    assert main(["leaderboard", "--dir", str(tmp_path), "compact"]) == 0  # --dir before the action too
    assert "nothing to compact (3 row(s)" in capsys.readouterr().out
    assert main(["leaderboard", "compact", "--dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_writers_readers_and_two_compactions_racing_lose_and_duplicate_nothing(tmp_path):
    """4 writers x 60 rows (every 5th key written twice), two compaction loops and a reader, all at once.

    Reference: the set of keys the writers finished writing before a read started must be in that
    read (nothing lost), and no read shows a key twice (nothing duplicated); the final read is
    exactly every key, with the second write's value where a key was written twice."""
    writers, per_writer = 4, 60
    done: set = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list = []

    def write(w):
        try:
            for i in range(per_writer):
                key = f"w{w}-{i}"
                lb.append_row(tmp_path, _row(trial=key, val=0.25))
                if i % 5 == 0:
                    lb.append_row(tmp_path, _row(trial=key, val=0.75))
                with lock:
                    done.add(key)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def compact_loop():
        try:
            while not stop.is_set():
                lb.compact(tmp_path)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    reads = []

    def read_loop():
        try:
            while not stop.is_set():
                with lock:
                    before = set(done)
                df = lb.read_leaderboard(tmp_path)
                keys = df["trial_id"].to_list()
                reads.append((before, keys))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    side = [threading.Thread(target=f) for f in (compact_loop, compact_loop, read_loop)]
    ws = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in side + ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in side:
        t.join()
    assert not errors, errors
    assert reads, "the reader never ran"
    for before, keys in reads:
        assert len(keys) == len(set(keys)), "a read showed a row twice"
        assert before <= set(keys), f"a read lost rows: {sorted(before - set(keys))[:5]}"
    df = lb.read_leaderboard(tmp_path)
    want = {f"w{w}-{i}": (0.75 if i % 5 == 0 else 0.25) for w in range(writers) for i in range(per_writer)}
    assert dict(zip(df["trial_id"], df["val_mAP@100"])) == want and df.height == len(want)
    lb.compact(tmp_path)
    assert len(_parquet(tmp_path)) == 1 and lb.read_leaderboard(tmp_path).height == len(want)
