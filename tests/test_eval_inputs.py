"""Bad inputs to evaluate() and `hashbench eval`: a HashbenchError naming the problem, CLI exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation import evaluate

rng = np.random.default_rng(0)
Q, D = rng.integers(0, 2, (4, 8)), rng.integers(0, 2, (10, 8))
QL, DL = rng.integers(0, 3, 4), rng.integers(0, 3, 10)


@pytest.mark.parametrize("kwargs, args, message", [
    ({}, (Q, D[:, :6], QL, DL), "6"),                                            # dimension mismatch
    ({}, (Q, D, QL[:3], DL), "3 labels for 4 codes"),                            # label count
    ({}, (Q, D, QL, DL[:9]), "9 labels for 10 codes"),
    ({}, (Q * 3, D, QL, DL), "-1/+1 or all 0/1"),                                # non-binary
    ({}, (np.where(Q > 0, 1, -1) * np.r_[[[1] * 8] * 3, [[0] + [1] * 7]], D, QL, DL), "mix"),
    ({"distance": "l2"}, (np.full((4, 8), np.nan), D.astype(float), QL, DL), "NaN or inf"),
    ({"distance": "l2"}, (Q.astype(float), np.full((10, 8), np.inf), QL, DL), "NaN or inf"),
    ({}, (np.full((4, 8), np.nan), D, QL, DL), "NaN or inf"),
    ({"ks": [0]}, (Q, D, QL, DL), "k must be >= 1"),
    ({"ks": [-5, 10]}, (Q, D, QL, DL), "k must be >= 1"),
    ({"ks": ["ten"]}, (Q, D, QL, DL), "'ten'"),
    ({}, (Q, D[:0], QL, DL[:0]), "empty database"),
    ({}, (Q[:0], D, QL[:0], DL), "no queries"),
    ({"convention": "map"}, (Q, D, QL, DL), "convention"),
    ({"ties": "random"}, (Q, D, QL, DL), "ties"),
    ({"engine": "annoy"}, (Q, D, QL, DL), "engine"),
    ({"engine": "faiss-hnsw"}, (Q, D, QL, DL), "ties='index'"),
    ({"distance": "manhattan"}, (Q, D, QL, DL), "distance"),
    ({"bits": 8}, (Q, D, QL, DL), "bit-packed uint8"),
    ({"bits": 12}, (np.zeros((4, 1), np.uint8), np.zeros((10, 1), np.uint8), QL, DL), "needs 2 packed bytes"),
    ({}, (np.full((4, 2), 255, np.uint8), np.zeros((10, 2), np.uint8), QL, DL), "pass bits="),
    ({}, (Q, D, np.eye(3)[QL], DL), "disagree"),
    ({}, (Q, D, QL + 0.5, DL), "integers"),
    ({"distance": "cosine"}, (np.zeros((4, 8)), D.astype(float), QL, DL), "all zeros"),
    ({"device": "cuda:7"} if not __import__("torch").cuda.is_available() else {"device": "bogus"},
     (Q, D, QL, DL), "device"),
])
def test_bad_input_raises_clear_error(kwargs, args, message):
    with pytest.raises(HashbenchError, match=None) as info:
        evaluate(*args, **kwargs)
    assert message in str(info.value), str(info.value)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_cli_json_output(tmp_path, capsys):
    f = _write(tmp_path / "c.npz", query_codes=Q, db_codes=D, query_labels=QL, db_labels=DL)
    assert main(["eval", "--codes", f, "--k", "3,all", "--ties", "index", "--convention", "r", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = evaluate(Q, D, QL, DL, ks=[3, "all"], ties="index", convention="r")
    for key in ("mAP@3", "mAP@all", "P@3", "P@H<=2", "MAP@R", "R-precision"):
        assert out[key] == pytest.approx(ref[key])
    assert out["protocol"]["convention"] == "r" and out["protocol"]["ties"] == "index"


def test_cli_packed_codes_with_bits(tmp_path, capsys):
    packed = {"query_codes": np.packbits(Q.astype(np.uint8), axis=1),
              "db_codes": np.packbits(D.astype(np.uint8), axis=1)}
    f = _write(tmp_path / "p.npz", **packed, query_labels=QL, db_labels=DL, bits=np.int64(8))
    assert main(["eval", "--codes", f, "--json", "--k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mAP@5"] == pytest.approx(evaluate(Q, D, QL, DL, ks=[5])["mAP@5"])
    assert main(["eval", "--codes", f, "--k", "5"]) == 0       # the table form
    assert "mAP@5" in capsys.readouterr().out


@pytest.mark.parametrize("arrays, argv, message", [
    ({"query_codes": Q, "db_codes": D, "query_labels": QL}, [], "lacks db_labels"),
    ({"query_codes": Q, "db_codes": D, "query_labels": QL, "db_labels": DL}, ["--k", "0"], "k must be >= 1"),
    ({"query_codes": Q * 2, "db_codes": D, "query_labels": QL, "db_labels": DL}, [], "0/1"),
    ({"query_codes": Q, "db_codes": D, "query_labels": QL, "db_labels": DL[:4]}, [], "4 labels for 10"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, arrays, argv, message):
    f = _write(tmp_path / "bad.npz", **arrays)
    assert main(["eval", "--codes", f, *argv]) == 2
    err = capsys.readouterr().err
    assert "hashbench eval: error:" in err and message in err


def test_cli_missing_or_corrupt_file(tmp_path, capsys):
    assert main(["eval", "--codes", str(tmp_path / "none.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["eval", "--codes", str(bad)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
