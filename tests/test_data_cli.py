"""``hashbench data list|prepare|info`` and their --help."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashbench.platform.cli import main


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "list", "--help"],
                                  ["data", "prepare", "--help"], ["data", "info", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: hashbench data" in capsys.readouterr().out


def test_list_shows_builtins_and_prepared(tmp_path, data_home, capsys):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((6, 4, 4), np.uint8),
             train_labels=np.array([[0], [1]] * 3), val_images=np.zeros((2, 4, 4), np.uint8),
             val_labels=np.array([[0], [1]]), test_images=np.zeros((2, 4, 4), np.uint8),
             test_labels=np.array([[1], [0]]))
    assert main(["data", "prepare", "tiny", "--format", "medmnist", "--source",
                 str(tmp_path / "x.npz"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["counts"]["train"]["items"] == 6 and meta["path"] == str(data_home / "tiny")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "pneumoniamnist" in out and "5856" in out and "4708/524/624" in out
    assert "busi" in out and "tiny" in out and "prepared" in out
    assert main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["tiny"]["items"] == 10 and rows["busi"]["masks"] and rows["busi"]["builtin"]


def test_info(capsys):
    assert main(["data", "info", "busi", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shapes"]["images"] == [780, 1, 64, 64] and d["shapes"]["masks"] == [780, 64, 64]
    assert sum(d["counts"][s]["classes"]["malignant"] for s in ("train", "val", "test")) == 210
    assert main(["data", "info", "pneumoniamnist"]) == 0
    out = capsys.readouterr().out
    assert "pneumonia" in out and "CC BY 4.0" in out and "fingerprint" in out
    assert main(["data", "info", "no_such_data"]) == 2
    assert "dataset 'no_such_data' not found" in capsys.readouterr().err


def test_builtin_name_refused(tmp_path, data_home, capsys):
    assert main(["data", "prepare", "busi", "--format", "folder", "--source", str(tmp_path)]) == 2
    assert "is a built-in dataset; choose another name" in capsys.readouterr().err
