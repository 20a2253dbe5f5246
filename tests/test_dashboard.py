"""The dashboard through Streamlit's AppTest, on the fixture leaderboard of test_dashboard_fixture.

Expected values are computed here from the rows the fixture wrote (plain Python loops), never by
the dashboard's own helpers.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from scipy.stats import t as student_t

import test_dashboard_fixture as F
from hashbench.dashboards import app_path
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> F.Fixture:
    return F.build(tmp_path_factory.mktemp("dash"))


@pytest.fixture()
def app(fx, monkeypatch):
    """A function: run the app on a leaderboard directory (default: the fixture), optionally on a view."""
    monkeypatch.setenv("HASHBENCH_DATA", str(fx.data_home))

    def start(view: str | None = None, directory: Path | None = None) -> AppTest:
        monkeypatch.setenv("HASHBENCH_LEADERBOARD", str(directory or fx.leaderboard))
        at = AppTest.from_file(str(app_path()), default_timeout=60).run()
        if view:
            at.radio(key="view").set_value(view).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return start


@pytest.fixture()
def media(monkeypatch) -> list[tuple[bytes, str]]:
    """Every file the app hands to the browser (download data, images): (bytes, mimetype)."""
    seen: list[tuple[bytes, str]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        seen.append((path_or_data if isinstance(path_or_data, bytes) else str(path_or_data).encode(), mimetype))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return seen


def spec(at: AppTest, i: int) -> dict:
    return json.loads(at.get("plotly_chart")[i].proto.spec)


def expected_best(rows: list[dict], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(method, dataset, bits) → (mean, CI half-width or nan, seeds) of the best-on-validation trial."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["status"] == "completed" and r["role"] == "trial":
            key = (r["method"], r["dataset"], r["bits"])
            if key not in best or r["val_mAP@100"] > best[key]["val_mAP@100"]:
                best[key] = r
    out = {}
    for key, b in best.items():
        vals = [r[metric] for r in rows if r["status"] == "completed" and r["params_json"] == b["params_json"]
                and (r["method"], r["dataset"], r["bits"]) == key]
        if len(vals) > 1:
            half = student_t.ppf(0.975, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
            out[key] = (statistics.fmean(vals), half, len(vals))
        else:
            out[key] = (b[metric], math.nan, 1)
    return out


def close(a, b, tol=1e-9) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) <= tol


# ---------------------------------------------------------------------------------------------- 1


def test_leaderboard_best_configurations_with_ci_and_protocol(app, fx):
    at = app()
    table = at.dataframe[0].value
    want = expected_best(fx.rows, "test_mAP@100")
    assert len(table) == len(want) == 12  # 3 methods × 2 datasets × 2 code lengths
    for _, r in table.iterrows():
        mean, half, n = want[(r["entry"], r["dataset"], r["bits"])]
        assert close(r["test_mAP@100"], mean) and close(r["test_mAP@100 ±"], half) and r["seeds"] == n
        assert r["protocol"] == "common" and r["storage_bits"] == r["bits"] * (1 if r["code_type"] == "binary" else 32)
        assert r["evaluation"] == ("hits · tie-aware · no-hit include" if r["code_type"] == "binary"
                                 else "hits · index · no-hit include")
        assert json.loads(r["params_json"])["lr"] == 1e-3  # trial 1 wins on validation everywhere
    seeded = table[table["seeds"] > 1]
    assert sorted(zip(seeded["entry"], seeded["dataset"], seeded["bits"])) == sorted(F.SEEDED)
    # with seeds 0, 1, 2 adding 0, .01, .02: mean = trial + .01, half-width = t(.975, 2) * .01 / sqrt(3)
    assert seeded["test_mAP@100 ±"].tolist() == pytest.approx([4.302652729911275 * 0.01 / math.sqrt(3)] * 2)
    assert "test_P@H<=2" in table.columns and table[table["code_type"] == "float"]["test_P@H<=2"].isna().all()


def test_leaderboard_filters_and_all_runs(app, fx):
    at = app()
    at.multiselect(key="lb_dataset").set_value(["derm"])
    at.multiselect(key="lb_bits").set_value([16])
    at.radio(key="lb_mode").set_value("All runs").run()
    table = at.dataframe[0].value
    want = [r for r in fx.rows if r["dataset"] == "derm" and r["bits"] == 16]
    assert len(table) == len(want) == 3 * 3 + 2 + 1  # 3 methods × 3 trials, 2 seed re-runs, 1 stopped
    assert sorted(table["run_id"]) == sorted(r["run_id"] for r in want)
    assert set(table["status"]) == {"completed", "stopped"}
    by_id = {r["run_id"]: r for r in want}
    assert all(close(v, by_id[i]["test_mAP@100"]) for i, v in zip(table["run_id"], table["test_mAP@100"]))
    at.multiselect(key="lb_entry").set_value(["drh"])
    at.multiselect(key="lb_bits").set_value([32])
    at.run()
    assert sorted(at.dataframe[0].value["status"]) == ["completed"] * 3 + ["error"]
    at.multiselect(key="lb_code_type").set_value(["float"]).run()
    assert at.info[0].value == "No rows match these filters."


def test_leaderboard_csv_download_is_the_table(app, media):
    at = app()
    assert at.get("download_button")[0].label == "Download CSV"
    csv = [data for data, mime in media if mime == "text/csv"]
    assert len(csv) == 1
    downloaded = pl.read_csv(io.BytesIO(csv[0]))
    shown = at.dataframe[0].value
    assert downloaded.columns == list(shown.columns) and downloaded.height == len(shown)
    assert downloaded["run_id"].to_list() == shown["run_id"].tolist()
    assert np.allclose(downloaded["test_mAP@100"].to_numpy(), shown["test_mAP@100"].to_numpy())


def test_corrupt_file_is_named_and_the_rest_shown(app, fx):
    at = app()
    assert any(str(fx.corrupt) in w.value for w in at.warning)
    assert len(at.dataframe[0].value) == 12


# ---------------------------------------------------------------------------------------------- 2


def test_across_code_lengths_lines_heatmap_and_equal_storage(app, fx):
    at = app("Across code lengths")
    want = expected_best(fx.rows, "test_mAP@100")
    storage = spec(at, 0)                                   # default: equal storage, x = storage_bits
    for trace in storage["data"]:
        code_type = F.METHODS[trace["name"]]
        assert trace["x"] == [b if code_type == "binary" else 32 * b for b in F.BITS[code_type]]
    assert storage["layout"]["xaxis"]["type"] == "log"
    at.radio(key="len_axis").set_value("Equal code length (bits / dimensions)").run()
    lines, heat = spec(at, 0), spec(at, 1)
    datasets = sorted(F.DATASETS)
    assert [a["text"] for a in lines["layout"]["annotations"]] == datasets  # one panel per dataset
    assert len(lines["data"]) == len(F.METHODS) * len(datasets)
    for trace in lines["data"]:
        ds = datasets[int(trace.get("xaxis", "x")[1:] or 1) - 1]
        bits = list(F.BITS[F.METHODS[trace["name"]]])
        assert trace["x"] == bits
        assert trace["y"] == pytest.approx([want[(trace["name"], ds, b)][0] for b in bits])
        errs = [want[(trace["name"], ds, b)][1] for b in bits]
        assert [e is None for e in trace["error_y"]["array"]] == [math.isnan(e) for e in errs]
        assert [e for e in trace["error_y"]["array"] if e is not None] == pytest.approx(
            [e for e in errs if not math.isnan(e)])
    assert sum(t["showlegend"] for t in lines["data"]) == len(F.METHODS)  # one legend entry per method

    # heat map: by default at the code length every method has (16), then at 8 (only the float method)
    hm = heat["data"][0]
    assert hm["y"] == sorted(F.METHODS) and hm["x"] == datasets
    assert hm["z"] == [[pytest.approx(want[(m, d, 16)][0]) for d in datasets] for m in sorted(F.METHODS)]
    assert hm["text"][1][1] == f"{want[('dch', 'derm', 16)][0]:.4f} ± {want[('dch', 'derm', 16)][1]:.4f}"
    at.selectbox(key="len_bits").set_value(8).run()
    hm = spec(at, 1)["data"][0]
    assert hm["y"] == ["constellation"]
    assert hm["z"] == [[pytest.approx(want[("constellation", d, 8)][0]) for d in datasets]]

    at.selectbox(key="len_k").set_value("test_mAP@10").run()
    want10 = expected_best(fx.rows, "test_mAP@10")
    trace = spec(at, 0)["data"][0]
    assert trace["y"] == pytest.approx([want10[(trace["name"], "chest", b)][0] for b in trace["x"]])


# ---------------------------------------------------------------------------------------------- 3


def test_curves_pr_and_hamming_radius(app, fx):
    at = app("Curves")
    at.selectbox(key="cur_dataset").set_value("derm").run()
    at.selectbox(key="cur_bits").set_value(16).run()
    pr, radius = spec(at, 0), spec(at, 1)
    best = {}
    for r in fx.rows:  # the best search trial per method (trial 1, seed 0)
        if (r["dataset"], r["bits"], r["status"], r["role"]) == ("derm", 16, "completed", "trial"):
            if r["method"] not in best or r["val_mAP@100"] > best[r["method"]]["val_mAP@100"]:
                best[r["method"]] = r
    assert [t["name"] for t in pr["data"]] == sorted(best)
    for trace in pr["data"]:
        curve = json.loads(best[trace["name"]]["metrics_json"])["pr_curve"]
        assert trace["x"] == curve["recall"] and trace["y"] == curve["precision"]
    want = expected_best(fx.rows, "test_P@H<=2")
    bars = radius["data"][0]
    assert bars["x"] == ["dch", "drh"]  # the float method has no P@H<=2
    assert bars["y"] == pytest.approx([want[(m, "derm", 16)][0] for m in bars["x"]])
    assert bars["error_y"]["array"][0] == pytest.approx(want[("dch", "derm", 16)][1])
    assert bars["error_y"]["array"][1] is None
    assert any("constellation" in c.value for c in at.caption)


# ---------------------------------------------------------------------------------------------- 4


def brute_top_k(codes_file: Path, method: str, q: int, k: int):
    """Reference ranking: plain loops over the database, ties by ascending position."""
    z = np.load(codes_file)
    qc, db = z["query_codes"], z["db_codes"]
    if method == "drh":
        qc, db = np.unpackbits(qc, axis=1), np.unpackbits(db, axis=1)
    dist = []
    for i in range(len(db)):
        if F.METHODS[method] == "binary":
            dist.append(sum(int(a > 0) != int(b > 0) for a, b in zip(qc[q], db[i])))
        else:
            dist.append(sum((float(a) - float(b)) ** 2 for a, b in zip(qc[q], db[i])))
    order = sorted(range(len(db)), key=lambda i: (dist[i], i))[:k]
    ql, dl = z["query_labels"], z["db_labels"]
    same = [bool((ql[q] == dl[i]).all()) if ql.ndim == 1 else bool((ql[q] & dl[i]).any()) for i in order]
    return [int(z["db_index"][i]) for i in order], [dist[i] for i in order], same, int(z["query_index"][q])


@pytest.mark.parametrize("method,bits", [("dch", 16), ("drh", 32), ("constellation", 8)])
def test_gallery_ranks_like_brute_force_and_marks_hits(app, fx, media, method, bits):
    at = app("Retrieval gallery")
    at.selectbox(key="gal_dataset").set_value("derm").run()
    at.selectbox(key="gal_method").set_value(method).run()
    at.selectbox(key="gal_bits").set_value(bits).run()
    run_id = f"{method}-derm-{bits}-t1-s0"
    at.selectbox(key="gal_run").set_value(run_id).run()
    at.slider(key="gal_k").set_value(5).run()
    q = int(np.random.default_rng(0).integers(F.N_Q))  # the first random draw
    ids, dist, same, qid = brute_top_k(Path(fx.leaderboard.parent / "runs" / run_id / "codes.npz"), method, q, 5)
    table = at.dataframe[0].value
    assert table["dataset id"].tolist() == ids
    assert table["distance"].tolist() == pytest.approx(dist, rel=1e-4, abs=1e-4)
    assert table["correct"].tolist() == same
    assert at.get("image")[0].captions[0].startswith(f"Query {qid} (")

    # the figure: query tile, then one tile per result framed green (hit) or red (miss)
    png = [data for data, mime in media if mime == "image/png"][-1]
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    tile = img.shape[0]  # square tiles, as high as the figure
    gap = 3 * max(3, (112 // F.SIZE) * F.SIZE // 20)
    for j, ok in enumerate(same):
        x0 = tile + gap + j * (tile + gap // 3)
        assert tuple(img[1, x0 + 1]) == ((46, 160, 67) if ok else (214, 39, 40))

    at.radio(key="gal_mode").set_value("By id").run()
    z = np.load(fx.leaderboard.parent / "runs" / run_id / "codes.npz")
    at.number_input(key="gal_id").set_value(int(z["query_index"][3])).run()
    assert at.dataframe[0].value["dataset id"].tolist() == brute_top_k(
        fx.leaderboard.parent / "runs" / run_id / "codes.npz", method, 3, 5)[0]
    at.number_input(key="gal_id").set_value(0).run()  # item 0 is in the database, not a query
    assert any("not a test query" in w.value for w in at.warning)


def test_gallery_lists_only_runs_with_codes(app, fx):
    at = app("Retrieval gallery")
    assert at.selectbox(key="gal_dataset").options == ["derm"]  # chest runs have no codes on disk
    missing = sum(1 for r in fx.rows if r["dataset"] == "chest")
    assert any(c.value.startswith(f"{missing} run(s) whose codes.npz") for c in at.caption)


# ---------------------------------------------------------------------------------------------- 5


def ranks(x: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for p in range(i, j + 1):
            out[order[p]] = (i + j) / 2 + 1
        i = j + 1
    return out


def test_sweep_parallel_scatter_best_and_importance(app, fx):
    at = app("Sweep")
    studies = sorted({(r["method"], r["dataset"], r["bits"]) for r in fx.rows if r["role"] == "trial"})
    assert at.selectbox(key="sw_study").options == [f"{m} · {d} · {b} bits" for m, d, b in studies]
    at.selectbox(key="sw_study").set_value("dch · derm · 16 bits").run()
    trials = sorted((r for r in fx.rows if (r["method"], r["dataset"], r["bits"], r["role"]) ==
                     ("dch", "derm", 16, "trial")), key=lambda r: r["trial_id"])
    assert len(trials) == 4  # three completed trials and the stopped one
    lrs = [json.loads(r["params_json"])["lr"] for r in trials]
    opts = [json.loads(r["params_json"])["optimizer"] for r in trials]
    vals = [r["val_mAP@100"] for r in trials]

    best = at.dataframe[0].value
    top = max(trials, key=lambda r: r["val_mAP@100"])
    assert best["trial_id"].tolist() == [top["trial_id"]] and best["hp.lr"].tolist() == [1e-3]

    dims = spec(at, 0)["data"][0]["dimensions"]
    assert [d["label"] for d in dims] == ["log10 lr", "optimizer", "val_mAP@100"]  # margin never varies
    assert dims[0]["values"] == pytest.approx([math.log10(v) for v in lrs])
    assert dims[1]["ticktext"] == ["adam", "sgd"] and dims[1]["values"] == [["adam", "sgd"].index(o) for o in opts]
    assert dims[2]["values"] == pytest.approx(vals)
    scatter = spec(at, 1)["data"]
    assert [t["x"] for t in scatter] == [pytest.approx(lrs), opts]
    assert scatter[0]["y"] == pytest.approx(vals)

    imp = at.dataframe[1].value.set_index("parameter")
    rx, ry = ranks(lrs), ranks(vals)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    mean = statistics.fmean(vals)
    groups = {o: [v for v, oo in zip(vals, opts) if oo == o] for o in set(opts)}
    eta2 = (sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in groups.values())
            / sum((v - mean) ** 2 for v in vals))
    assert imp.loc["lr", "rho"] == pytest.approx(rho) and imp.loc["lr", "explained"] == pytest.approx(rho ** 2)
    assert imp.loc["optimizer", "explained"] == pytest.approx(eta2)
    assert list(imp.index) == sorted(["lr", "optimizer"], key=lambda p: -imp.loc[p, "explained"])


# ---------------------------------------------------------------------------------------------- 6


def test_speed_tradeoff_and_training_throughput(app, fx):
    at = app("Speed")
    at.selectbox(key="spd_dataset").set_value("derm").run()
    tradeoff, train = spec(at, 0), spec(at, 1)
    done = [r for r in fx.rows if r["status"] == "completed"]
    for trace in tradeoff["data"]:
        want = sorted((r["queries_per_s"], r["test_mAP@100"]) for r in done
                      if r["method"] == trace["name"] and r["dataset"] == "derm")
        assert np.allclose(sorted(zip(trace["x"], trace["y"])), want)
    assert [t["name"] for t in tradeoff["data"]] == sorted(F.METHODS)
    assert tradeoff["layout"]["xaxis"]["type"] == "log"
    bars = train["data"]
    assert [b["name"] for b in bars] == ["cpu"]
    assert bars[0]["x"] == sorted(F.METHODS)
    assert bars[0]["y"] == pytest.approx([statistics.fmean(r["train_images_per_s"] for r in done if r["method"] == m)
                                          for m in sorted(F.METHODS)])


# ---------------------------------------------------------------------------------------------- 7


def test_missing_empty_unreadable_and_newer_leaderboards_explain_themselves(app, tmp_path):
    at = app(directory=tmp_path / "nowhere")
    assert "No leaderboard at" in at.info[0].value and "hashbench quickstart" in at.info[0].value
    (tmp_path / "empty").mkdir()
    at = app(directory=tmp_path / "empty")
    assert "is empty" in at.info[0].value and "hashbench sweep" in at.info[0].value
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(b"garbage")
    at = app(directory=bad)
    assert "a.parquet" in at.warning[0].value and "No readable rows" in at.info[0].value
    newer = tmp_path / "newer"
    newer.mkdir()
    pl.DataFrame({"schema_version": [99], "method": ["x"]}).write_parquet(newer / "n.parquet")
    at = app(directory=newer)  # a newer hashbench's file is skipped by name, not fatal (issue 17)
    assert "n.parquet" in at.warning[0].value and "newer hashbench" in at.warning[0].value
    assert "No readable rows" in at.info[0].value
    for view in ["Across code lengths", "Curves", "Retrieval gallery", "Sweep", "Speed"]:
        at.radio(key="view").set_value(view).run()
        assert not at.exception and "No readable rows" in at.info[0].value


def test_new_files_appear_on_the_next_rerun(app, fx, tmp_path):
    from hashbench.platform.leaderboard import append_row

    lb = tmp_path / "lb"
    append_row(lb, fx.rows[0])
    at = app(directory=lb)
    at.radio(key="lb_mode").set_value("All runs").run()
    assert len(at.dataframe[0].value) == 1
    append_row(lb, fx.rows[1])
    at.run()
    assert sorted(at.dataframe[0].value["run_id"]) == sorted([fx.rows[0]["run_id"], fx.rows[1]["run_id"]])


def test_gallery_error_becomes_a_message(app, fx, tmp_path, monkeypatch):
    """A broken codes.npz shows the reader's message in the page, not a traceback."""
    from hashbench.platform.leaderboard import append_row

    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "codes.npz", query_codes=np.zeros((2, 8)))
    append_row(tmp_path / "lb", {**fx.rows[0], "run_dir": str(run)})
    at = app("Retrieval gallery", directory=tmp_path / "lb")
    assert "missing db_codes" in at.error[0].value and "codes.npz" in at.error[0].value


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_dashboard_starts_streamlit_on_localhost(monkeypatch, tmp_path, capsys):
    from hashbench.platform.cli import dashboard_cmd, main

    calls = []
    monkeypatch.setattr(dashboard_cmd, "serve", lambda cmd: calls.append(cmd) or 0)
    assert main(["dashboard", "--leaderboard", str(tmp_path), "--port", "8611"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(app_path())
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8611"
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"  # no "Deploy" button
    assert cmd[cmd.index("--") + 1:] == ["--leaderboard", str(tmp_path.resolve())]
    assert main(["dashboard", "--leaderboard", str(tmp_path), "--host", "0.0.0.0"]) == 0
    assert calls[1][calls[1].index("--server.address") + 1] == "0.0.0.0"
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["dashboard", "--leaderboard", str(tmp_path / "file")]) == 2
    assert len(calls) == 2


# ------------------------------------------------------------------ 4: the quickstart's own data layout


def quick_layout(root: Path) -> tuple[Path, object]:
    """A quickstart-like directory: data/busi-quick (a store named like the quickstart's subset, absent
    from $HASHBENCH_DATA), runs/r1/codes.npz, leaderboard/ with one row recording the store's path."""
    from hashbench.platform.data import write_store
    from hashbench.platform.leaderboard import append_row

    rng = np.random.default_rng(5)
    n = F.N_DB + F.N_VAL + F.N_Q
    store = write_store(root / "data" / "busi-quick", rng.integers(0, 256, (n, 1, F.SIZE, F.SIZE), dtype=np.uint8),
                        np.arange(n) % F.CLASSES, np.array([0] * F.N_DB + [1] * F.N_VAL + [2] * F.N_Q, np.int8),
                        class_names=["benign", "malignant", "normal"], name="busi-quick")
    run_dir = root / "runs" / "qs-r1"
    F.write_codes(run_dir, "dch", 16, store, 3)
    row = F.scored(F.base_row("dch", "busi-quick", 16), 0.7, 0.6, 0)
    row.update(sweep_id="quickstart-x", trial_id="t1", run_id="qs-r1", run_dir=str(run_dir), status="completed",
               role="trial", params_json="{}", dataset_fingerprint=store.fingerprint,
               config_json=json.dumps({"method": "dch", "dataset": str(store.path),
                                       "dataset_path": str(Path(store.path).resolve())}))
    append_row(root / "leaderboard", row)
    return root / "leaderboard", store


def test_gallery_finds_the_quickstart_subset_by_its_recorded_path(app, tmp_path):
    from hashbench.platform.data import list_datasets

    lb, store = quick_layout(tmp_path / "qs")
    assert "busi-quick" not in [d["name"] for d in list_datasets()]  # a lookup by name alone fails
    at = app("Retrieval gallery", directory=lb)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="gal_dataset").value == "busi-quick"
    z = np.load(tmp_path / "qs" / "runs" / "qs-r1" / "codes.npz")
    q = int(np.random.default_rng(0).integers(F.N_Q))
    labels = ["benign", "malignant", "normal"]
    qid = int(z["query_index"][q])
    assert at.get("image")[0].captions[0].startswith(f"Query {qid} ({labels[qid % F.CLASSES]})")

    # the data deleted: one clear message naming the dataset and where it was looked for
    import shutil

    shutil.rmtree(tmp_path / "qs" / "data")
    _open_cache_clear()
    at = app("Retrieval gallery", directory=lb)
    msg = at.error[0].value
    assert "'busi-quick'" in msg and "no longer on disk" in msg and str(store.path) in msg
    assert "hashbench quickstart" in msg


def _open_cache_clear() -> None:
    from hashbench.dashboards.views import gallery_view

    gallery_view._open.clear()


def test_resolve_dataset_order_fingerprint_and_moved_directory(tmp_path, monkeypatch):
    from hashbench.dashboards.gallery import dataset_candidates, resolve_dataset
    from hashbench.platform.data import write_store
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import read_leaderboard

    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path / "empty"))
    lb, store = quick_layout(tmp_path / "qs")
    row = read_leaderboard(lb).row(0, named=True)
    here = str(tmp_path / "qs" / "data" / "busi-quick")  # recorded path = the path beside the leaderboard here
    assert dataset_candidates(row, lb) == [here, "busi-quick"]
    assert dataset_candidates(row, tmp_path / "lb2") == [here, str(tmp_path / "data" / "busi-quick"), "busi-quick"]
    ds, warning = resolve_dataset(row, lb)
    assert Path(ds.path).resolve() == Path(store.path).resolve() and warning is None

    # the whole quickstart directory moved: the recorded path is gone, data/<name> beside the leaderboard is found
    (tmp_path / "qs").rename(tmp_path / "moved")
    ds, warning = resolve_dataset(row, tmp_path / "moved" / "leaderboard")
    assert Path(ds.path) == tmp_path / "moved" / "data" / "busi-quick" and warning is None

    # a store of that name in $HASHBENCH_DATA with other content: used only with a warning
    rng = np.random.default_rng(9)
    write_store(tmp_path / "empty" / "busi-quick", rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8),
                np.arange(12) % 2, np.array([0] * 6 + [1] * 3 + [2] * 3, np.int8), class_names=["a", "b"],
                name="busi-quick")
    ds, warning = resolve_dataset(row, tmp_path / "elsewhere" / "leaderboard")
    assert Path(ds.path) == tmp_path / "empty" / "busi-quick"
    assert "differs from the one this run used" in warning and row["dataset_fingerprint"][:12] in warning
    # a matching store later in the order wins over a mismatching earlier one
    ds, warning = resolve_dataset(row, tmp_path / "moved" / "leaderboard")
    assert warning is None and Path(ds.path) == tmp_path / "moved" / "data" / "busi-quick"

    (tmp_path / "empty" / "busi-quick" / "meta.json").unlink()
    with pytest.raises(HashbenchError, match="'busi-quick'.*no longer on disk; looked in: "):
        resolve_dataset(row, tmp_path / "elsewhere" / "leaderboard")


def test_one_seed_one_code_length_distinct_colours_and_readable_log_ticks(app, tmp_path):
    from hashbench.dashboards.views.common import PALETTE, colours, log_ticks

    lb, _ = quick_layout(tmp_path / "qs")
    at = app(directory=lb)
    table = at.dataframe[0].value
    assert len(table) == 1 and not [c for c in table.columns if c.endswith(" ±")] and "seeds" not in table.columns

    at = app("Across code lengths", directory=lb)
    axis = spec(at, 0)["layout"]["xaxis"]
    assert axis["type"] == "log" and axis["tickvals"] == [16] and axis["ticktext"] == ["16"]
    assert axis["range"][0] < math.log10(16) < axis["range"][1]  # the single length sits inside the axis

    at = app("Speed", directory=lb)
    axis = spec(at, 0)["layout"]["xaxis"]
    qps = 5000.0 / 2  # the fixture's queries_per_s at 16 bits, seed 0
    assert axis["type"] == "log" and min(axis["tickvals"]) <= qps <= max(axis["tickvals"])
    assert axis["ticktext"] == [f"{v:,.0f}" for v in axis["tickvals"]]

    names = [f"method-{i:02d}" for i in range(40)]
    assert len(set(colours(names).values())) == 40 and len(set(PALETTE)) == len(PALETTE) == 74
    assert log_ticks([1500, 80_000]) == ([2e3, 5e3, 1e4, 2e4, 5e4, 1e5],
                                         ["2,000", "5,000", "10,000", "20,000", "50,000", "100,000"])
    assert log_ticks([300, 4e6])[1] == ["1,000", "10,000", "100,000", "1,000,000"]  # many decades: powers of 10
    assert log_ticks([]) == ([], [])


def test_sweep_view_counts_trials_not_readouts_and_shows_the_studys_parameters(app, tmp_path):
    from hashbench.platform.leaderboard import append_row, read_leaderboard

    lb, _ = quick_layout(tmp_path / "qs")
    row = read_leaderboard(lb).row(0, named=True)
    extra = {k: v for k, v in row.items() if not k.startswith("_")}
    # the same trial's extra readout (another row of one training), and another method's trial with its own hp
    append_row(lb, {**extra, "row_id": "r2", "entry": "dch-float", "readout": "float", "code_type": "float",
                    "storage_bits": 512})
    append_row(lb, {**extra, "row_id": "r3", "trial_id": "t2", "run_id": "qs-r2", "method": "lsh", "entry": "lsh",
                    "params_json": json.dumps({"anchors": 64})})
    at = app("Sweep", directory=lb)
    assert at.selectbox(key="sw_study").options[0].startswith("dch · busi-quick · 16 bits")
    assert any(c.value.startswith("1 trial(s) with a validation score") for c in at.caption)
    best = at.dataframe[0].value
    assert not [c for c in best.columns if c.startswith("hp.")]  # dch's trial has no hp; lsh's anchors not shown
