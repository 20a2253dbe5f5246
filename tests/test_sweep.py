"""A real sweep on the shared Ray session: Optuna + ASHA trials, one row per trial, resume, seeds, reproduce."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import polars as pl
import pytest

from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.leaderboard import leaderboard_view, read_leaderboard


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Two classes of 16x16 grey images told apart by brightness: 48 train, 16 val, 16 test."""
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(0)
    n = 80
    labels = np.arange(n) % 2
    images = (rng.integers(0, 60, (n, 1, 16, 16)) + 150 * labels[:, None, None, None]).astype(np.uint8)
    split = np.array([0] * 48 + [1] * 16 + [2] * 16, np.int8)
    path = tmp_path_factory.mktemp("data") / "tiny"
    write_store(path, images, labels, split, class_names=["dark", "bright"])
    return path


def _config(tmp_path, store, **extra) -> str:
    text = textwrap.dedent(f"""\
        name: t
        methods:
          dch:
            search: {{lr: [0.05, 1.0]}}
            params: {{grid: 4}}
          lsh: {{}}
        datasets: [{store}]
        bits: [8]
        trials: 3
        epochs: 2
        asha: {{grace_period: 1, reduction_factor: 2}}
        train: {{batch_size: 16, augment: {{enabled: false}}}}
        storage: {tmp_path / 'sweeps'}
        leaderboard: {tmp_path / 'lb'}
        out_dir: {tmp_path / 'runs'}
        """)
    for k, v in extra.items():
        text += f"{k}: {v}\n"
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.timeout(420)
def test_sweep_rows_resume_seeds_and_reproduce(ray_session, tiny_store, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_store)
    assert main(["sweep", cfg]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "[dch-tiny-8b] 3 trial(s)" in out and "[fixed] 1 trial(s)" in out
    df = read_leaderboard(tmp_path / "lb")
    # exactly one row per finished trial: 3 searched dch trials + 1 lsh trial
    assert df.height == 4 and df["trial_id"].n_unique() == 4 and df["run_id"].n_unique() == 4
    assert sorted(df["method"].to_list()) == ["dch", "dch", "dch", "lsh"]
    assert set(df["status"]) <= {"completed", "stopped"} and (df["role"] == "trial").all()
    done = df.filter(pl.col("status") == "completed")
    assert done.height >= 2 and done["test_mAP@100"].is_not_null().all()
    lrs = [json.loads(p)["lr"] for p in df.filter(pl.col("method") == "dch")["params_json"]]
    assert all(0.05 <= lr <= 1.0 for lr in lrs) and len(set(lrs)) == 3  # Optuna sampled 3 distinct values
    assert (df["dataset_fingerprint"].str.len_chars() == 64).all() and (df["bits"] == 8).all()
    for col in ("metric_convention", "tie_policy", "no_hit_policy", "started_at", "hashbench_commit",
                "torch_version", "ray_version", "config_json", "time_total_s", "train_images_per_s"):
        assert done[col].is_not_null().all(), col
    assert json.loads(done["splits"][0]) == {"train": 48, "val": 16, "test": 16}

    # running it again without --resume is refused; --resume of the finished sweep adds nothing
    assert main(["sweep", cfg]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["sweep", cfg, "--resume"]) == 0
    again = read_leaderboard(tmp_path / "lb")
    assert again.height == 4 and sorted(again["row_id"]) == sorted(df["row_id"])

    # --seeds re-trains the best configuration of each study: one more row per study, role "seed"
    assert main(["sweep", cfg, "--resume", "--seeds", "1"]) == 0
    seeded = read_leaderboard(tmp_path / "lb")
    seeds = seeded.filter(pl.col("role") == "seed")
    assert seeded.height == 6 and seeds.height == 2 and sorted(seeds["seed"].to_list()) == [1, 1]
    view = leaderboard_view(seeded)
    assert view.height == 2 and (view["n_seeds"] == 2).all()
    best_dch = view.filter(pl.col("method") == "dch").row(0, named=True)
    seed_dch = seeds.filter(pl.col("method") == "dch").row(0, named=True)
    trial = df.filter(pl.col("run_id") == best_dch["run_id"]).row(0, named=True)
    assert json.loads(seed_dch["params_json"]) == json.loads(trial["params_json"])

    # reproduce the best lsh run: same data, same seed -> the same metrics on the same machine
    lsh = view.filter(pl.col("method") == "lsh").row(0, named=True)
    capsys.readouterr()
    assert main(["reproduce", lsh["run_id"], "--dir", str(tmp_path / "lb"), "--out", str(tmp_path / "re"),
                 "--json", "--tolerance", "1e-6"]) == 0
    out = capsys.readouterr().out
    rep = json.loads(out[out.index("\n{") + 1:])
    assert rep["max_abs_test_diff"] <= 1e-6 and any(m["metric"] == "test_mAP@100" for m in rep["metrics"])
    assert read_leaderboard(tmp_path / "lb").height == 6  # reproduce adds no row


def test_reproduce_refuses_changed_data(tmp_path, capsys):
    from hashbench.platform.cli.reproduce_cmd import reproduce_config
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(1)
    store = tmp_path / "d"
    write_store(store, rng.integers(0, 255, (12, 1, 16, 16), dtype=np.uint8), np.arange(12) % 2,
                np.array([0] * 6 + [1] * 3 + [2] * 3), class_names=["a", "b"])
    row = {"run_id": "r1", "dataset": "d", "dataset_fingerprint": "0" * 64,
           "config_json": json.dumps({"method": "lsh", "dataset": str(store), "bits": 8})}
    with pytest.raises(HashbenchError, match="has fingerprint .* but run 'r1' was trained on 0000"):
        reproduce_config(row)
    assert main(["reproduce", "nope", "--dir", str(tmp_path / "lb")]) == 2
    assert "no leaderboard row with run id 'nope'" in capsys.readouterr().err


def test_tune_reports_never_say_done():
    """Tune ends a trial at once when a report says done: the loop's flag must reach Tune renamed."""
    from hashbench.platform.sweep.session import for_tune

    assert for_tune({"epoch": 2, "done": True, "val_mAP@100": 0.5}) == {"epoch": 2, "finished": True,
                                                                        "val_mAP@100": 0.5}


@pytest.mark.timeout(120)
def test_resources_no_node_can_give_leave_nothing_behind(ray_session, tiny_store, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_store, resources="{gpus_per_worker: 1}")
    assert main(["sweep", cfg]) == 2
    err = capsys.readouterr().err
    assert "asks for 1 CPU and 1 GPU, which no node of the cluster can ever give" in err and "0 GPU" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no storage, leaderboard, runs
