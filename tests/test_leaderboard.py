"""The Parquet leaderboard: atomic one-file-per-row appends, schema versions, best runs, seed CIs."""

from __future__ import annotations

import json
import math
import os
import threading
import warnings

import polars as pl
import pytest

from hashbench.platform import leaderboard as lb
from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError


def _row(method="dch", dataset="pneumoniamnist", bits=16, val=0.5, test=0.4, trial="t1", sweep="s",
         role="trial", status="completed", seed=0, params=None, finished="2026-01-01T00:00:00+00:00"):
    return {"sweep_id": sweep, "trial_id": trial, "run_id": f"{sweep}-{trial}", "status": status,
            "method": method, "family": method, "dataset": dataset, "bits": bits, "code_type": "binary",
            "storage_bits": bits, "val_mAP@100": val, "test_mAP@100": test, "seed": seed, "epochs": 1,
            "params_json": json.dumps(params or {"lr": 0.1}, sort_keys=True), "role": role,
            "finished_at": finished}


def test_append_and_read_round_trip(tmp_path):
    path = lb.append_row(tmp_path, _row())
    assert path.name.startswith("row-") and path.suffix == ".parquet" and path.is_file()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left
    df = lb.read_leaderboard(tmp_path)
    assert df.columns == list(lb.SCHEMA) and df.height == 1
    r = df.row(0, named=True)
    assert r["schema_version"] == lb.SCHEMA_VERSION and r["method"] == "dch" and r["bits"] == 16
    assert r["test_mAP@100"] == pytest.approx(0.4) and len(r["row_id"]) == 32
    assert r["test_mAP@10"] is None  # absent metrics are nulls, not zeros


def test_schema_has_every_architecture_column():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")).read()
    section = text[text.index("Schema version 1 columns"):]
    section = section.split("\n## ")[0]
    names = [c for c in section.split("`")[1::2]]
    assert len(names) >= 45
    assert [c for c in names if c not in lb.SCHEMA] == []


def test_same_trial_written_twice_keeps_one_row(tmp_path):
    lb.append_row(tmp_path, _row(val=0.1))
    lb.append_row(tmp_path, _row(val=0.9))
    df = lb.read_leaderboard(tmp_path)
    assert df.height == 1 and df["val_mAP@100"][0] == pytest.approx(0.9)


def test_concurrent_appends_lose_nothing(tmp_path):
    threads = [threading.Thread(target=lb.append_row, args=(tmp_path, _row(trial=f"t{i}", val=i / 40)))
               for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    df = lb.read_leaderboard(tmp_path)
    assert df.height == 40 and sorted(df["trial_id"].to_list()) == sorted(f"t{i}" for i in range(40))


def test_corrupt_and_partial_files_are_skipped_with_their_names(tmp_path):
    good = lb.append_row(tmp_path, _row())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "half.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / ".tmp-x.parquet.part").write_bytes(b"in flight")  # a temporary file is not a row
    with pytest.warns(UserWarning) as rec:
        df = lb.read_leaderboard(tmp_path)
    msg = " ".join(str(w.message) for w in rec)  # one warning per skipped file
    assert len(rec) == 2 and df.height == 1 and "broken.parquet" in msg and "half.parquet" in msg and ".tmp-x" not in msg


def test_newer_schema_file_is_skipped_not_fatal(tmp_path):
    """A newer hashbench's file is skipped with a warning naming it (tests/test_leaderboard_storage.py)."""
    path = lb.append_row(tmp_path, _row())
    frame = pl.read_parquet(path).with_columns(pl.lit(lb.SCHEMA_VERSION + 1).alias("schema_version"),
                                               pl.lit("future").alias("trial_id"))
    frame.write_parquet(tmp_path / "future.parquet")
    with pytest.warns(UserWarning, match=r"future\.parquet: written by a newer hashbench.*upgrade hashbench"):
        df = lb.read_leaderboard(tmp_path)
    assert df["trial_id"].to_list() == ["t1"]


def test_older_schema_is_upgraded_in_memory(tmp_path, monkeypatch):
    """The documented upgrade path: UPGRADES[v] maps a version-v frame to version v+1."""
    path = lb.append_row(tmp_path, _row())
    old = pl.read_parquet(path).rename({"device": "hardware"}).with_columns(
        pl.lit(0).cast(pl.Int64).alias("schema_version"))
    old.write_parquet(path)
    with pytest.warns(UserWarning, match="version 0 has no upgrade"):  # skipped, by name, not fatal
        assert lb.read_leaderboard(tmp_path).height == 0
    monkeypatch.setitem(lb.UPGRADES, 0, lambda f: f.rename({"hardware": "device"}))
    df = lb.read_leaderboard(tmp_path)
    assert df.height == 1 and df["schema_version"][0] == lb.SCHEMA_VERSION


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(HashbenchError, match="unknown columns \\['bogus'\\]"):
        lb.append_row(tmp_path, {**_row(), "bogus": 1})
    assert list(tmp_path.iterdir()) == []


def test_best_runs_per_group_on_validation_not_test(tmp_path):
    rows = [_row(trial="a", val=0.5, test=0.9), _row(trial="b", val=0.7, test=0.1),
            _row(trial="c", val=0.9, test=0.2, status="stopped"),          # not finished: not eligible
            _row(trial="d", val=0.99, test=0.3, role="seed"),              # seed re-runs are not trials
            _row(trial="e", bits=32, val=0.2, test=0.2),
            _row(trial="f", method="drh", val=0.3, test=0.3)]
    for r in rows:
        lb.append_row(tmp_path, r)
    best = lb.best_runs(lb.read_leaderboard(tmp_path))
    got = {(r["method"], r["bits"]): r["trial_id"] for r in best.iter_rows(named=True)}
    assert got == {("dch", 16): "b", ("dch", 32): "e", ("drh", 16): "f"}


def test_best_runs_tie_goes_to_the_earlier_row(tmp_path):
    lb.append_row(tmp_path, _row(trial="late", val=0.5, finished="2026-01-02T00:00:00+00:00"))
    lb.append_row(tmp_path, _row(trial="early", val=0.5, finished="2026-01-01T00:00:00+00:00"))
    assert lb.best_runs(lb.read_leaderboard(tmp_path))["trial_id"].to_list() == ["early"]


def test_mean_ci_matches_a_hand_computed_t_interval():
    vals = [0.50, 0.52, 0.54, 0.56]           # mean 0.53, sd = sqrt(0.0020/3)
    mean, half, n = lb.mean_ci(vals)
    sd = math.sqrt(sum((v - 0.53) ** 2 for v in vals) / 3)
    assert n == 4 and mean == pytest.approx(0.53)
    assert half == pytest.approx(3.182446305284263 * sd / 2)  # t_{0.975, 3} from tables
    assert math.isnan(lb.mean_ci([0.5])[1]) and lb.mean_ci([])[2] == 0


def test_seed_summary_and_view(tmp_path):
    p = {"lr": 0.2}
    lb.append_row(tmp_path, _row(trial="best", val=0.8, test=0.50, params=p, seed=0))
    lb.append_row(tmp_path, _row(trial="other", val=0.1, test=0.9, params={"lr": 1.0}))
    for i, t in enumerate([0.52, 0.54]):
        lb.append_row(tmp_path, _row(trial=f"seed{i}", role="seed", val=0.7, test=t, params=p, seed=i + 1))
    df = lb.read_leaderboard(tmp_path)
    view = lb.leaderboard_view(df)
    assert view.height == 1
    r = view.row(0, named=True)
    mean, half, n = lb.mean_ci([0.50, 0.52, 0.54])
    assert r["n_seeds"] == 3 and r["test_mAP@100_mean"] == pytest.approx(mean)
    assert r["test_mAP@100_ci95"] == pytest.approx(half) and r["test_mAP@100"] == pytest.approx(0.5)
    assert lb.leaderboard_view(df, all_runs=True).height == 4


def test_leaderboard_cli_formats_and_filters(tmp_path, capsys):
    measured = {"metric_convention": "hits", "tie_policy": "tie-aware", "no_hit_policy": "count-as-zero"}
    lb.append_row(tmp_path, {**_row(trial="a", val=0.5, test=0.4), **measured})
    lb.append_row(tmp_path, {**_row(trial="b", method="drh", bits=32, val=0.6, test=0.3), **measured})
    assert main(["leaderboard", "--dir", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {(d["entry"], d["bits"], d["storage_bits"]) for d in data} == {("dch", 16, 16), ("drh", 32, 32)}
    assert main(["leaderboard", "--dir", str(tmp_path), "--method", "drh", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("protocol,dataset,storage_bits,bits,entry,readout") and len(out) == 2
    assert out[1].startswith("common,pneumoniamnist,32,32,drh,sign,")
    assert main(["leaderboard", "--dir", str(tmp_path), "--bits", "16", "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| protocol | dataset | storage_bits | bits | entry |") and "| dch |" in md[2]
    assert len(md) == 5 and md[4].startswith("compared at equal storage")
    row = lb.read_leaderboard(tmp_path).filter(pl.col("bits") == 16).row(0, named=True)
    assert md[3].startswith("protocol common: ") and f"mAP convention {row['metric_convention']}" in md[3]
    assert f"ties {row['tie_policy']}" in md[3] and "queries = test split" in md[3]
    assert main(["leaderboard", "--dir", str(tmp_path), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert r"\begin{tabular}" in tex and r"test\_mAP@100" in tex
    assert main(["leaderboard", "--dir", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
