"""One configuration and seed through every entry point gives the same test metrics on CPU.

`hashbench train` (Ray Train), `hashbench train --local` (in this process, which runs with 2 torch
threads here), a one-trial `hashbench sweep` (a Tune trial) and `hashbench reproduce` of the first
run. The reference is the Ray Train run: every other path must match it exactly, which holds only
because the thread count is part of the recorded configuration (``torch_threads``) and every path
applies it. Also: `train` writes a ``run__<run_id>`` leaderboard row, and `leaderboard` / `dashboard`
given no directory find the most recently written leaderboard.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hashbench.platform.cli import main
from hashbench.platform.leaderboard import read_leaderboard

TRAIN = ["dch", "--bits", "8", "--epochs", "2", "--batch-size", "16", "--set", "grid=4",
         "--augment", "enabled=false", "--seed", "3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four classes of noisy 16x16 grey images, overlapping in brightness (test mAP well below 1):
    48 train, 16 val, 16 test."""
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(4)
    n = 80
    labels = np.arange(n) % 4
    images = (rng.integers(0, 160, (n, 1, 16, 16)) + 25 * labels[:, None, None, None]).astype(np.uint8)
    split = np.array([0] * 48 + [1] * 16 + [2] * 16, np.int8)
    return write_store(tmp_path_factory.mktemp("data") / "entry", images, labels, split,
                       class_names=["a", "b", "c", "d"]).path


def _json_out(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def _threads_used(run_dir: str) -> set:
    """The torch thread counts in effect while each epoch of the run trained (its history)."""
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return {row["torch_threads"] for row in json.load(f)["history"]}


def _test_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HASHBENCH_LEADERBOARD", raising=False)
    return tmp_path / "home"


@pytest.mark.timeout(600)
def test_train_local_sweep_and_reproduce_agree_exactly(ray_session, store, tmp_path, capsys, home, monkeypatch):
    import torch

    lb, runs = tmp_path / "lb", tmp_path / "runs"
    common = ["--dataset", str(store), "--out", str(runs), "--leaderboard", str(lb), "--json"]

    # 1. Ray Train (a TorchTrainer worker, which Ray gives OMP_NUM_THREADS=1)
    assert main(["train", *TRAIN, *common, "--run-name", "via-ray"]) == 0
    ray_run = _json_out(capsys.readouterr().out)
    reference = _test_metrics(ray_run["metrics"])
    assert len(reference) >= 8 and ray_run["config"]["torch_threads"] == 1
    assert 0.3 < reference["test_mAP@100"] < 0.95  # a result that can differ, not a saturated one
    # library output went to the run's log (empty here: the test's Ray session keeps worker logs),
    # and its row was written to the leaderboard
    assert ray_run["log"] == str(runs / "via-ray" / "train.log") and os.path.isfile(ray_run["log"])
    assert Path(ray_run["leaderboard_row"]).parent == lb and Path(ray_run["leaderboard_row"]).is_file()

    # 2. in this process, which has 2 torch threads: the run uses the recorded 1, then gives 2 back
    torch.set_num_threads(2)
    assert main(["train", *TRAIN, *common, "--run-name", "via-local", "--local"]) == 0
    local = _json_out(capsys.readouterr().out)
    assert torch.get_num_threads() == 2
    assert _threads_used(local["run_dir"]) == {1}  # the recorded count, not this process's 2
    assert _threads_used(ray_run["run_dir"]) == {1}
    assert _test_metrics(local["metrics"]) == reference
    assert local["metrics"]["val_mAP@100"] == ray_run["metrics"]["val_mAP@100"]

    # 3. a one-trial sweep of the same configuration (a Tune function trial running the loop itself)
    config = tmp_path / "one.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: one
        methods:
          dch: {{params: {{grid: 4}}}}
        datasets: [{store}]
        bits: [8]
        trials: 1
        epochs: 2
        seed: 3
        asha: false
        train: {{batch_size: 16, augment: {{enabled: false}}}}
        storage: {tmp_path / 'sweeps'}
        leaderboard: {lb}
        out_dir: {runs}
        """))
    assert main(["sweep", str(config)]) == 0
    capsys.readouterr()
    rows = read_leaderboard(lb)
    trial = rows.filter(pl.col("sweep_id") == "one").row(0, named=True)
    assert trial["status"] == "completed" and json.loads(trial["config_json"])["torch_threads"] == 1
    assert _test_metrics(json.loads(trial["metrics_json"])) == reference
    assert _threads_used(trial["run_dir"]) == {1}

    # 4. reproduce the Ray run from its row (re-trained in this process, still with 2 threads here)
    assert main(["reproduce", "via-ray", "--leaderboard", str(lb), "--out", str(tmp_path / "re"), "--json",
                 "--tolerance", "0"]) == 0
    rep = _json_out(capsys.readouterr().out)
    assert rep["max_abs_test_diff"] == 0.0
    assert torch.get_num_threads() == 2 and _threads_used(rep["run_dir"]) == {1}
    assert {m["metric"]: m["reproduced"] for m in rep["metrics"] if m["metric"] in reference} == reference

    # the train rows are in the leaderboard (keyed by run id, no sweep id) beside the trial's
    assert sorted(set(rows["run_id"].to_list())) == sorted(["via-ray", "via-local", trial["run_id"]])
    assert set(rows.filter(pl.col("run_id") == "via-ray")["sweep_id"].to_list()) == {""}
    assert set(rows.filter(pl.col("run_id") == "via-ray")["status"].to_list()) == {"completed"}

    # `leaderboard` with no directory, run elsewhere: the most recently written one ($HASHBENCH_HOME records it)
    monkeypatch.chdir(tmp_path / "re")
    assert main(["leaderboard", "--all-runs"]) == 0
    out, err = capsys.readouterr()
    assert f"leaderboard: {lb.resolve()} (most recent" in err and "via-local" in out
    assert "convention None" not in out


@pytest.mark.timeout(60)
def test_find_leaderboard_prefers_the_newest_and_explains(tmp_path, monkeypatch, home):
    from hashbench.platform.defaults import find_leaderboard, remember_leaderboard
    from hashbench.platform.leaderboard import append_row

    monkeypatch.chdir(tmp_path)
    assert find_leaderboard() == (tmp_path / "leaderboard", "default")  # nothing anywhere
    assert find_leaderboard("x/lb") == (Path("x/lb"), "given")

    row = {"run_id": "r", "method": "dch", "dataset": "d", "bits": 8, "status": "completed", "role": "trial"}
    quick = tmp_path / "hashbench-quickstart" / "leaderboard"
    append_row(quick, row)
    assert find_leaderboard() == (quick, "most recent")  # the quickstart's, discovered in ./

    other = tmp_path / "elsewhere" / "lb"
    append_row(other, row)
    os.utime(next(other.glob("*.parquet")), (2e9, 2e9))  # newer than the quickstart's row
    assert find_leaderboard()[0] == quick  # not recorded: not a candidate
    remember_leaderboard(other)
    assert find_leaderboard() == (other.resolve(), "most recent")
    assert json.loads((home / "recent-leaderboards.json").read_text()) == [str(other.resolve())]

    monkeypatch.setenv("HASHBENCH_LEADERBOARD", str(tmp_path / "env"))
    assert find_leaderboard() == (tmp_path / "env", "$HASHBENCH_LEADERBOARD")


def test_one_flag_name_everywhere(tmp_path, capsys, home):
    """--leaderboard everywhere, --dir kept as its alias; --help shows 95% (argparse escaping)."""
    from hashbench.platform.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("leaderboard", "reproduce", "dashboard", "train", "sweep"):
        flags = {s for a in sub[name]._actions for s in a.option_strings}
        assert "--leaderboard" in flags, name
    for name in ("leaderboard", "reproduce", "dashboard", "train"):
        flags = {s for a in sub[name]._actions for s in a.option_strings}
        assert "--dir" in flags, name
    assert main(["leaderboard", "--leaderboard", str(tmp_path / "none")]) == 2
    assert f"leaderboard directory {tmp_path / 'none'}: no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["leaderboard", "--help"])
    text = capsys.readouterr().out
    assert "95% CI" in text and "95%%" not in text
