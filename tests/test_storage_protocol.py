"""Equal storage, readouts (one training -> several leaderboard rows) and the papers' own protocols.

Independent references: storage sizes computed by hand; readout metrics recomputed from the saved
model weights (a second, separate encoding) or from brute-force numpy loops over the saved codes;
leaderboard groups checked on hand-built rows whose winners are known.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hashbench.platform import leaderboard as lb
from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import ModelContext, Readout, get_method
from hashbench.platform.training import TrainConfig, run_local
from hashbench.platform.training.loop import storage_bits
from test_training import make_store  # the tiny separable store (3 classes, 8 px)

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("dch", "drh", "jtanet", "ynet", "constellation")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(make_store(tmp_path_factory.mktemp("stores") / "tiny").path)


# --------------------------------------------------------------------------- storage bits

def test_storage_bits_per_code_type():
    assert lb.storage_bits_of("binary", 64) == 64                       # one bit per hash bit
    assert lb.storage_bits_of("float", 16) == 512                       # 16 float32 values
    assert lb.storage_bits_of("float", 128) == 4096
    assert storage_bits(torch.zeros(3, 16, dtype=torch.int8), "binary", 16) == 16
    assert storage_bits(torch.zeros(3, 16, dtype=torch.float32), "float", 16) == 16 * 32
    assert storage_bits(torch.zeros(3, 16, dtype=torch.float16), "float", 16) == 16 * 16   # a quantised run


def _fake_result(method, bits, store, **extra):
    cfg = {"method": method, "dataset": store, "bits": bits, "seed": 0, "epochs": 1, "params": {},
           "run_name": f"{method}-run"}
    return {"run_id": f"{method}-run", "config": cfg, "metrics": {"val_mAP@100": 0.5, "test_mAP@100": 0.4},
            "protocol": {"convention": "hits", "ties": "tie-aware", "no_hit": "count-as-zero"}, **extra}


@pytest.mark.parametrize("method, bits, code_type, storage", [
    ("dch", 16, "binary", 16), ("constellation", 16, "float", 512), ("jtanet", 128, "float", 4096)])
def test_rows_record_storage_bits(store, method, bits, code_type, storage):
    row = lb.row_from_result(_fake_result(method, bits, store))
    assert (row["code_type"], row["bits"], row["storage_bits"]) == (code_type, bits, storage)
    assert (row["protocol"], row["entry"]) == ("common", method)
    assert row["readout"] == ("sign" if code_type == "binary" else "float")


@pytest.mark.parametrize("method, dims", [("jtanet", 512), ("jtanet", 1024), ("constellation", 128)])
def test_float_methods_run_at_their_papers_embedding_sizes(store, method, dims):
    cfg = TrainConfig(method=method, dataset=store, bits=dims, params={"K": 2} if method == "constellation" else {})
    net = get_method(method).build_model(ModelContext(in_channels=1, image_size=8, num_classes=3, bits=dims), cfg.hp)
    net.eval()
    with torch.no_grad():
        assert net.encode(torch.rand(2, 1, 8, 8)).shape == (2, dims)
    assert lb.storage_bits_of("float", dims) == 32 * dims


# --------------------------------------------------------------------------- readouts in the registry

def test_readouts_are_declared_per_method():
    jt, drh = get_method("jtanet"), get_method("drh")
    assert [(r.name, r.code_type, r.distance) for r in jt.all_readouts()] == \
        [("float", "float", "l2"), ("sign", "binary", "hamming")]
    assert [jt.entry(r) for r in jt.all_readouts()] == ["jtanet", "jtanet-sign"]
    assert [(r.name, r.code_type, r.distance, drh.entry(r)) for r in drh.all_readouts()] == \
        [("sign", "binary", "hamming", "drh"), ("float", "float", "l2", "drh-nb")]
    assert get_method("dch").readouts == ()
    with pytest.raises(HashbenchError, match="float readout of 'drh'"):
        get_method("drh-nb")                                    # retired: says what replaced it


def test_bad_readouts_are_refused():
    with pytest.raises(ValueError, match="hamming"):
        Readout("sign", "binary", "l2")
    with pytest.raises(ValueError, match="code_type"):
        Readout("x", "ternary", "l2")
    import dataclasses

    with pytest.raises(ValueError, match="repeat"):            # a readout named like the primary one
        dataclasses.replace(get_method("dch"), readouts=(Readout("sign", "binary", "hamming"),))


# --------------------------------------------------------------------------- one training, two rows

@pytest.mark.timeout(300)
def test_also_binary_run_writes_a_float_and_a_sign_row_linked_by_run_id(store, tmp_path):
    cfg = TrainConfig(method="jtanet", dataset=store, bits=6, epochs=1, batch_size=16, device="cpu",
                      out_dir=str(tmp_path / "runs"), eval_ks=(10, 100))
    res = run_local(cfg)
    rows = lb.rows_from_result(res, sweep_id="s", trial_id="t1")
    assert [(r["entry"], r["readout"], r["code_type"], r["distance"], r["storage_bits"]) for r in rows] == \
        [("jtanet", "float", "float", "l2", 6 * 32), ("jtanet-sign", "sign", "binary", "hamming", 6)]
    assert rows[0]["run_id"] == rows[1]["run_id"] == res.run_id and rows[0]["row_id"] != rows[1]["row_id"]
    # the sign row's numbers: brute-force precision@10 (index order) of sign(float codes) by Hamming
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    q, db = np.where(codes["query_codes"] >= 0, 1, -1), np.where(codes["db_codes"] >= 0, 1, -1)
    ql, dl = codes["query_labels"].argmax(1), codes["db_labels"].argmax(1)
    ham = (q.shape[1] - q @ db.T) // 2
    p10 = np.mean([np.mean(dl[np.argsort(h, kind="stable")[:10]] == y) for h, y in zip(ham, ql)])
    cfg_index = TrainConfig(method="jtanet", dataset=store, bits=6, epochs=1, batch_size=16, device="cpu",
                            out_dir=str(tmp_path / "runs2"), eval_ks=(10, 100), evaluation={"ties": "index"})
    res_i = run_local(cfg_index)                     # same seed, same model: the index-tie numbers
    codes_i = np.load(os.path.join(res_i.run_dir, "codes.npz"))
    np.testing.assert_array_equal(codes_i["db_codes"], codes["db_codes"])
    sign_i = lb.rows_from_result(res_i)[1]
    assert json.loads(sign_i["metrics_json"])["test_P@10"] == pytest.approx(p10)
    assert sign_i["tie_policy"] == "index"
    # both rows stored, keys unique per (trial, readout); writing them again keeps two rows
    for _ in range(2):
        for r in rows:
            lb.append_row(tmp_path / "lb", r)
    df = lb.read_leaderboard(tmp_path / "lb")
    assert df.height == 2 and df["run_id"].n_unique() == 1 and sorted(df["entry"]) == ["jtanet", "jtanet-sign"]
    assert lb.find_row(df.sort("entry", descending=True), res.run_id)["entry"] == "jtanet"   # reproduce's row


@pytest.mark.timeout(300)
def test_drh_nb_is_the_float_readout_of_one_drh_training(store, tmp_path):
    from hashbench.platform.data import load_dataset
    from hashbench.platform.evaluation import evaluate

    cfg = TrainConfig(method="drh", dataset=store, bits=8, epochs=1, batch_size=16, device="cpu",
                      params={"depth": 18, "width": 2}, out_dir=str(tmp_path / "runs"), eval_ks=(10, 100))
    res = run_local(cfg)
    assert os.listdir(tmp_path / "runs") == [res.run_id]                 # one training
    rows = lb.rows_from_result(res)
    assert [(r["entry"], r["readout"], r["code_type"], r["distance"], r["storage_bits"]) for r in rows] == \
        [("drh", "sign", "binary", "hamming", 8), ("drh-nb", "float", "float", "l2", 256)]
    assert rows[0]["run_id"] == rows[1]["run_id"] == res.run_id
    # DRH-NB's numbers from a separate encoding of the saved weights: tanh outputs h, by L2
    ds = load_dataset(store)
    model = get_method("drh").build_model(ModelContext(in_channels=1, image_size=8, num_classes=3, bits=8), cfg.hp)
    model.load_state_dict(torch.load(os.path.join(res.run_dir, "model.pt"), weights_only=True))
    model.eval()

    def h(split):
        idx = ds.indices(split)
        with torch.no_grad():
            return model.encode(torch.as_tensor(np.asarray(ds.images[idx]), dtype=torch.float32) / 255).numpy()

    y = np.asarray(ds.labels).argmax(1)
    ref = evaluate(h("test"), h("train"), y[ds.indices("test")], y[ds.indices("train")], distance="l2",
                   ks=(10, 100))
    assert rows[1]["test_mAP@100"] == pytest.approx(ref["mAP@100"], abs=1e-6)
    assert rows[1]["test_mAP@10"] == pytest.approx(ref["mAP@10"], abs=1e-6)
    sign = evaluate(np.where(h("test") >= 0, 1, -1), np.where(h("train") >= 0, 1, -1), y[ds.indices("test")],
                    y[ds.indices("train")], distance="hamming", ks=(10, 100))
    assert rows[0]["test_mAP@100"] == pytest.approx(sign["mAP@100"], abs=1e-6)


# --------------------------------------------------------------------------- grouping by axis

def _row(entry, bits, storage, val, test, *, method=None, protocol="common", trial=None, code_type="binary"):
    return {"sweep_id": "s", "trial_id": trial or f"{entry}-{bits}-{val}", "run_id": f"r-{entry}-{bits}-{val}",
            "status": "completed", "method": method or entry, "family": "f", "dataset": "d", "bits": bits,
            "storage_bits": storage, "code_type": code_type, "val_mAP@100": val, "test_mAP@100": test,
            "seed": 0, "epochs": 1, "params_json": "{}", "role": "trial", "protocol": protocol, "entry": entry,
            "readout": "sign" if code_type == "binary" else "float", "finished_at": "2026-01-01T00:00:00+00:00",
            "metric_convention": "hits", "tie_policy": "tie-aware", "no_hit_policy": "count-as-zero"}


@pytest.fixture()
def board(tmp_path):
    rows = [_row("dch", 64, 64, 0.50, 0.41), _row("dch", 64, 64, 0.60, 0.42),          # best dch@64: val 0.6
            _row("dch", 512, 512, 0.70, 0.43),
            _row("jtanet", 2, 64, 0.55, 0.44, code_type="float"),                        # 2 dims = 64 bits
            _row("jtanet", 16, 512, 0.65, 0.45, code_type="float"),                      # 16 dims = 512 bits
            _row("jtanet-sign", 64, 64, 0.52, 0.46, method="jtanet"),
            _row("dch", 64, 64, 0.90, 0.99, protocol="paper:dch")]                      # never mixed in
    for r in rows:
        lb.append_row(tmp_path, r)
    return tmp_path


def test_storage_axis_groups_and_orders_rows_at_equal_storage(board):
    best = lb.best_runs(lb.read_leaderboard(board), axis="storage")
    got = [(r["protocol"], r["storage_bits"], r["entry"], r["bits"], r["val_mAP@100"])
           for r in best.iter_rows(named=True)]
    assert got == [("common", 64, "dch", 64, 0.60), ("common", 64, "jtanet", 2, 0.55),
                   ("common", 64, "jtanet-sign", 64, 0.52), ("common", 512, "dch", 512, 0.70),
                   ("common", 512, "jtanet", 16, 0.65), ("paper:dch", 64, "dch", 64, 0.90)]


def test_bits_axis_orders_by_code_length(board):
    best = lb.best_runs(lb.read_leaderboard(board), axis="bits")
    got = [(r["protocol"], r["bits"], r["entry"]) for r in best.iter_rows(named=True)]
    assert got == [("common", 2, "jtanet"), ("common", 16, "jtanet"), ("common", 64, "dch"),
                   ("common", 64, "jtanet-sign"), ("common", 512, "dch"), ("paper:dch", 64, "dch")]


def test_leaderboard_cli_axis_shows_both_columns(board, capsys):
    assert main(["leaderboard", "--dir", str(board), "--format", "csv"]) == 0          # default: storage
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("protocol,dataset,storage_bits,bits,entry,readout,")
    assert [line.split(",")[2:5] for line in out[1:4]] == [["64", "64", "dch"], ["64", "2", "jtanet"],
                                                           ["64", "64", "jtanet-sign"]]
    assert main(["leaderboard", "--dir", str(board), "--axis", "bits", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("protocol,dataset,bits,storage_bits,entry,readout,")
    assert main(["leaderboard", "--dir", str(board), "--protocol", "paper:dch", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("paper:dch,d,64,64,dch,")
    assert main(["leaderboard", "--dir", str(board), "--method", "jtanet", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4                            # jtanet: float + sign


def test_unknown_axis_is_refused(board, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", "--dir", str(board), "--axis", "volume"])
    assert exc.value.code == 2 and "volume" in capsys.readouterr().err
    with pytest.raises(HashbenchError, match="axis 'volume': expected one of storage, bits"):
        lb.best_runs(lb.read_leaderboard(board), axis="volume")


def test_schema_1_rows_upgrade_to_common_protocol_and_own_readout(tmp_path):
    v1 = {c: t for c, t in lb.SCHEMA.items() if c not in ("protocol", "readout", "entry")}
    frame = pl.DataFrame([{**{c: None for c in v1}, "schema_version": 1, "row_id": "a" * 32, "sweep_id": "s",
                           "trial_id": "t", "run_id": "r", "status": "completed", "method": "drh-nb",
                           "code_type": "float", "bits": 16, "storage_bits": 512, "role": "trial"}],
                         schema=v1, orient="row")
    frame.write_parquet(tmp_path / "old.parquet")
    row = lb.read_leaderboard(tmp_path).row(0, named=True)
    assert (row["schema_version"], row["protocol"], row["readout"], row["entry"]) == (2, "common", "float", "drh-nb")


# --------------------------------------------------------------------------- paper protocols

def _paper(name):
    from hashbench.platform.sweep.config import load_config

    return load_config(ROOT / "configs" / "papers" / f"{name}.yaml", check_data=False)


@pytest.mark.parametrize("name", PAPERS)
def test_paper_configs_load_and_state_their_protocol(name):
    from hashbench.platform.training.config import resolve_evaluation

    cfg = _paper(name)
    assert cfg.train["protocol"] == f"paper:{name}" and cfg.asha is None
    ev = resolve_evaluation(cfg.train["evaluation"])
    assert ev["ties"] == "index"                           # comparable with published tables
    assert all(s.trials == 1 for s in cfg.studies)


def test_paper_configs_hold_the_papers_numbers():
    dch, drh, jt, yn, co = (_paper(n) for n in PAPERS)
    assert sorted(s.bits for s in dch.studies) == [8, 16, 32, 64] and {s.epochs for s in dch.studies} == {200}
    assert dch.train["evaluation"]["hamming_radii"] == [0, 1, 2, 3, 4]
    assert dch.train["evaluation"]["pr_ranks"] == [300, 6000, 300] and {10, 1000} <= set(dch.train["eval_ks"])
    assert dch.train["augment"] == {"enabled": False} and dch.train["restore_best"] is False
    assert ("drh", 64) in {(s.method, s.bits) for s in drh.studies} and drh.train["eval_ks"] == ["all"]
    assert sorted(s.bits for s in jt.studies) == [2 ** i for i in range(1, 11)]
    assert jt.train["eval_ks"] == list(range(5, 101, 5)) and {s.epochs for s in jt.studies} == {50}
    assert sorted(s.bits for s in yn.studies if s.method == "ynet") == [36, 64, 128, 256]
    assert yn.train["eval_ks"] == [5, 10, 20, 50] and {s.epochs for s in yn.studies} == {500}
    assert {s.bits for s in co.studies} == {128} and co.train["evaluation"]["embedding"] is True
    assert co.train["evaluation"]["knn_k"] == 5 and {s.epochs for s in co.studies} == {30}


def test_set_overrides_epochs_of_every_study(store):
    from hashbench.platform.sweep.config import apply_overrides

    cfg = apply_overrides(_paper("ynet"), {"epochs": "2"})
    assert {s.epochs for s in cfg.studies} == {2}
    cut = apply_overrides(_paper("ynet"), {"epochs": "1", "bits": "64"})
    assert sorted(s.method for s in cut.studies) == ["ynet", "ynet-ce", "ynet-no-fpn", "ynet-no-rmac"]
    assert [s.bits for s in apply_overrides(_paper("ynet"), {"methods": "ynet"}).studies] == [36, 64, 128, 256]
    for bad, needle in [({"epochs": "0"}, "integer >= 1"), ({"epochs": "x"}, "integer >= 1"),
                        ({"bits": "7"}, "no study with these values; its bits values: 36, 64, 128, 256"),
                        ({"datasets": "no-such-data"}, "dataset 'no-such-data' not found"),
                        ({"methods": "dch"}, "no study with these values; its method values: ynet, ynet-ce"),
                        ({"lr": "1"}, "valid keys: epochs, trials, seeds, bits, datasets, methods")]:
        with pytest.raises(HashbenchError, match=needle):
            apply_overrides(cfg, bad)
    moved = apply_overrides(_paper("dch"), {"datasets": store, "bits": "8,16"})
    assert [(s.method, s.dataset, s.bits) for s in moved.studies] == [("dch", store, 8), ("dch", store, 16)]


def test_cli_set_datasets_needs_only_the_new_store(store, data_home, capsys):
    """`hashbench sweep configs/papers/dch.yaml --set datasets=D` runs on D although the config's own
    store (bccd128) is not prepared; without the override the missing store is refused."""
    paper = str(ROOT / "configs" / "papers" / "dch.yaml")
    assert main(["sweep", paper, "--check", "--set", f"datasets={store}", "--set", "bits=8,16"]) == 0
    assert "2 studies, 2 trials" in capsys.readouterr().out
    assert main(["sweep", paper, "--check"]) == 2
    assert "dataset 'bccd128' not found" in capsys.readouterr().err
    assert main(["sweep", paper, "--check", "--set", "datasets=no-such-data"]) == 2
    assert "dataset 'no-such-data' not found" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_paper_protocol_run_records_protocol_radii_and_rank_curve(store, tmp_path):
    """The DCH paper config on a tiny store: protocol recorded, P@H<=r for r = 0..4 by brute force,
    the rank-based PR curve, fixed epochs without best-epoch restore."""
    from hashbench.platform.sweep.config import parse_text, train_config

    text = (ROOT / "configs" / "papers" / "dch.yaml").read_text().replace("[bccd128]", json.dumps([store]))
    cfg = parse_text(text.replace("bits: [8, 16, 32, 64]", "bits: [8]"), "dch.yaml")
    (study,) = cfg.studies
    tcfg = train_config(cfg, study, {}, run_name="paper-dch-t")
    tcfg.epochs, tcfg.out_dir, tcfg.device, tcfg.batch_size = 2, str(tmp_path / "runs"), "cpu", 16
    assert (tcfg.protocol, tcfg.restore_best, tcfg.augment["enabled"]) == ("paper:dch", False, False)
    res = run_local(tcfg)
    (row,) = lb.rows_from_result(res)
    assert row["protocol"] == "paper:dch" and row["tie_policy"] == "index"
    metrics = json.loads(row["metrics_json"])
    assert metrics["val_mAP@100"] == pytest.approx(res.history[-1]["val_mAP@100"])   # the last epoch's
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    q, db = codes["query_codes"].astype(int), codes["db_codes"].astype(int)
    ql, dl = codes["query_labels"].argmax(1), codes["db_labels"].argmax(1)
    ham = (q.shape[1] - q @ db.T) // 2
    for r in range(5):
        within = ham <= r
        prec = [np.mean(dl[w] == y) if w.any() else 0.0 for w, y in zip(within, ql)]
        assert metrics[f"test_P@H<={r}"] == pytest.approx(np.mean(prec)), r
    curve = metrics["pr_curve_ranks"]
    assert curve["k"] == list(range(300, 6001, 300))
    assert curve["recall"][0] == pytest.approx(1.0)       # 300 > the 48-item database: everything returned


@pytest.mark.parametrize("kw, needle", [
    (dict(protocol="paper:nope"), "protocol 'paper:nope': expected 'common' or 'paper:<method id>'"),
    (dict(protocol="mine"), "protocol 'mine'"),
    (dict(restore_best="no"), "restore_best"),
    (dict(evaluation={"ties": "random"}), "evaluation 'ties': 'random' is not one of tie-aware, index"),
    (dict(evaluation={"hamming_radii": [-1]}), "hamming_radii"),
    (dict(evaluation={"pr_ranks": [300, 6000]}), r"\[start, stop, step\]"),
    (dict(evaluation={"pr_ranks": [600, 300, 100]}), "below start"),
    (dict(evaluation={"radius": 2}), "unknown evaluation option 'radius'"),
])
def test_bad_protocol_settings_are_refused(store, kw, needle):
    with pytest.raises(HashbenchError, match=needle):
        TrainConfig(method="dch", dataset=store, bits=8, **kw)


def test_bad_protocol_in_a_sweep_config_names_file_and_line(store):
    from hashbench.platform.sweep.config import parse_text

    text = f"name: x\nprotocol: paper:nope\nmethods: [dch]\ndatasets: [{store}]\nbits: [8]\n"
    with pytest.raises(HashbenchError, match=r"p\.yaml:2: protocol: protocol 'paper:nope'"):
        parse_text(text, "p.yaml", check_data=False)


def test_train_eval_ks_flag(capsys):
    from hashbench.platform.cli.train_cmd import parse_eval_ks

    assert parse_eval_ks("5,10, 20,all") == {"eval_ks": (5, 10, 20, "all")}
    assert parse_eval_ks(None) == {}
    assert main(["train", "dch", "--dataset", "x", "--bits", "8", "--eval-ks", "5,ten"]) == 2
    assert "--eval-ks '5,ten': 'ten' is not a positive integer" in capsys.readouterr().err


# --------------------------------------------------------------------------- the dashboard's axis

@pytest.mark.timeout(120)
def test_dashboard_compares_at_equal_storage_by_default_and_toggles_to_bits(board, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from hashbench.dashboards import app_path

    monkeypatch.setenv("HASHBENCH_LEADERBOARD", str(board))
    at = AppTest.from_file(str(app_path()), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="lb_metrics").set_value(["test_mAP@100"]).run()
    table = at.dataframe[0].value
    assert list(table.columns[:7]) == ["protocol", "dataset", "storage_bits", "bits", "entry", "readout", "code_type"]
    got = list(zip(table["protocol"], table["storage_bits"], table["entry"], table["bits"]))
    # equal storage: 64 bits = 64-bit dch = 2-d jtanet = 64-d jtanet-sign; sorted by storage, then test mAP
    assert got == [("common", 64, "jtanet-sign", 64), ("common", 64, "jtanet", 2), ("common", 64, "dch", 64),
                   ("common", 512, "jtanet", 16), ("common", 512, "dch", 512), ("paper:dch", 64, "dch", 64)]
    at.radio(key="lb_axis").set_value("Equal code length (bits / dimensions)").run()
    table = at.dataframe[0].value
    assert list(table.columns[:4]) == ["protocol", "dataset", "bits", "storage_bits"]
    assert list(zip(table["bits"], table["entry"]))[:4] == [(2, "jtanet"), (16, "jtanet"), (64, "jtanet-sign"),
                                                            (64, "dch")]
    at.radio(key="view").set_value("Across code lengths").run()
    lines = json.loads(at.get("plotly_chart")[0].proto.spec)
    xs = {t["name"]: t["x"] for t in lines["data"]}
    assert xs == {"dch": [64, 512], "jtanet": [64, 512], "jtanet-sign": [64], "dch [paper:dch]": [64]}
