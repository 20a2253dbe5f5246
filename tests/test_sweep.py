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
    cfg = _config(tmp_path, tiny_store, checkpoint_interval_s=0)  # checkpoint every epoch but the last
    assert main(["sweep", cfg]) == 0
    out = capsys.readouterr().out
    # the trials' epoch-0 checkpoints were removed when each trial ended (and --resume below still works)
    assert not list((tmp_path / "sweeps").rglob("checkpoint_*"))
    # the searched dch study and the single-trial lsh study run as one experiment (docs/sweeps.md)
    assert "4 trials" in out and "[search] 4 trial(s) of 2 studies" in out
    assert "[dch-tiny-8b] 3 trial(s)" in out and "[lsh-tiny-8b] 1 trial(s)" in out
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
    best_dch = view.filter(pl.col("entry") == "dch").row(0, named=True)
    seed_dch = seeds.filter(pl.col("method") == "dch").row(0, named=True)
    trial = df.filter(pl.col("run_id") == best_dch["run_id"]).row(0, named=True)
    assert json.loads(seed_dch["params_json"]) == json.loads(trial["params_json"])

    # reproduce the best lsh run: same data, same seed -> the same metrics on the same machine
    lsh = view.filter(pl.col("entry") == "lsh").row(0, named=True)
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


# --- ASHA never stops a trial that trained to its end (issue 17.1) -------------------------------------

def _scheduler_for(epochs: int, grace: int = 1, rf: float = 2):
    from hashbench.platform.sweep.config import SweepConfig
    from hashbench.platform.sweep.driver import make_scheduler

    cfg = SweepConfig(name="t", source="t.yaml", studies=[], asha={"grace_period": grace, "reduction_factor": rf})
    return make_scheduler(cfg, epochs)


def test_asha_rungs_lie_strictly_below_the_last_epoch():
    assert _scheduler_for(1) is None                      # nothing could be stopped before the last epoch
    assert _scheduler_for(3, grace=3) is None             # grace 3 of 3 epochs: likewise
    # hand-computed rungs grace * rf**k below `epochs` (Tune's training_iteration = epochs reported)
    for epochs, grace, rf, rungs in ((2, 1, 2, [1]), (4, 1, 2, [2, 1]), (5, 1, 2, [4, 2, 1]), (9, 1, 3, [3, 1]),
                                     (8, 2, 2, [4, 2])):
        sched = _scheduler_for(epochs, grace, rf)
        assert [m for m, _ in sched._brackets[0]._rungs] == rungs, (epochs, grace, rf)


def test_asha_continues_on_a_last_epoch_report_and_the_final_report():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler_for(3)                              # rungs at 1 and 2 epochs
    sched.set_search_properties("val_mAP@100", "max")
    good, bad, patient = (SimpleNamespace(trial_id=t) for t in ("good", "bad", "patient"))
    for t in (good, bad, patient):
        sched.on_trial_add(None, t)
    r = lambda it, v, **kw: {"training_iteration": it, "val_mAP@100": v, **kw}  # noqa: E731
    assert sched.on_trial_result(None, good, r(1, 0.9)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, bad, r(1, 0.1)) == TrialScheduler.STOP       # below the rung's median
    # early stopping (patience) ended this run at epoch 1: its test evaluation follows, never stopped
    assert sched.on_trial_result(None, patient, r(1, 0.05, last_epoch=True)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, patient, r(2, 0.05, finished=True)) == TrialScheduler.CONTINUE


# --- resume keeps what finished (issue 17.2) ------------------------------------------------------------

def test_finished_run_is_recognised_and_its_missing_row_written_once(tiny_store, tmp_path):
    """A run that finished before the driver died: its row is written from the run directory, with the
    run's own start time, exactly once."""
    from hashbench.platform.sweep.driver import finished_run
    from hashbench.platform.training import TrainConfig, run_local

    cfg = TrainConfig(method="lsh", dataset=str(tiny_store), bits=8, epochs=1, out_dir=str(tmp_path / "runs"),
                      run_name="s-3be92a24")
    res = run_local(cfg)
    lb = tmp_path / "lb"
    assert finished_run(str(tmp_path / "runs" / "nope"), str(lb), sweep_id="s", trial_id="x", role="trial") is None
    got = finished_run(res.run_dir, str(lb), sweep_id="s", trial_id="3be92a24", role="trial")
    assert got.metrics["test_mAP@100"] == res.metrics["test_mAP@100"]
    row = read_leaderboard(lb).row(0, named=True)
    assert row["started_at"] == res.started_at and row["run_id"] == "s-3be92a24" and row["status"] == "completed"
    assert row["finished_at"] >= row["started_at"] and row["time_total_s"] >= row["time_train_s"]
    finished_run(res.run_dir, str(lb), sweep_id="s", trial_id="3be92a24", role="trial")
    again = read_leaderboard(lb)
    assert again.height == 1 and again["row_id"][0] == row["row_id"]  # not written twice


def test_remove_checkpoints_leaves_the_rest_of_the_trial_directory(tmp_path):
    from hashbench.platform.sweep.driver import remove_checkpoints

    trial = tmp_path / "exp" / "_trial_0"
    for d in ("checkpoint_000000", "checkpoint_000003", "logs"):
        (trial / d).mkdir(parents=True)
        (trial / d / "state.pt").write_bytes(b"x" * 10)
    (trial / "result.json").write_text("{}")
    (trial / "checkpoint_notes.txt").write_text("a file, not a checkpoint directory")
    remove_checkpoints(str(trial))
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_notes.txt", "logs", "result.json"]
    remove_checkpoints(str(tmp_path / "missing"))   # nothing there: no error
    remove_checkpoints(None)


def _mark_running(experiment_dir, trial_id: str) -> None:
    """Edit Tune's newest saved experiment state as if the driver died while ``trial_id`` was RUNNING."""
    import glob

    path = sorted(glob.glob(str(experiment_dir / "experiment_state-*.json")))[-1]
    with open(path) as f:
        state = json.load(f)
    hits = 0
    for entry in state["trial_data"]:
        if f'"trial_id": "{trial_id}"' in entry[0]:
            assert '"status": "TERMINATED"' in entry[0]
            entry[0] = entry[0].replace('"status": "TERMINATED"', '"status": "RUNNING"')
            hits += 1
    assert hits == 1
    with open(path, "w") as f:
        json.dump(state, f)


@pytest.mark.timeout(420)
def test_one_epoch_asha_trials_are_all_tested_and_resume_keeps_finished_trials(ray_session, tiny_store, tmp_path,
                                                                               capsys):
    import os
    import shutil

    cfg = _config(tmp_path, tiny_store)
    text = open(cfg).read()
    assert "epochs: 2\n" in text and "asha: {grace_period: 1, reduction_factor: 2}\n" in text
    with open(cfg, "w") as f:  # one epoch under the default ASHA (grace 1, reduction 2)
        f.write(text.replace("epochs: 2\n", "epochs: 1\n").replace("asha: {grace_period: 1, reduction_factor: 2}\n", ""))
    assert main(["sweep", cfg]) == 0
    out = capsys.readouterr().out
    df = read_leaderboard(tmp_path / "lb")
    # 17.1: every trial reached its last (only) epoch, so every trial was tested
    assert df.height == 4 and (df["status"] == "completed").all() and df["test_mAP@100"].is_not_null().all()
    assert "trials/h" in out and "queued" in out and "disk use:" in out
    # finished trials keep no Tune checkpoints; their run directories keep model and codes
    assert not list((tmp_path / "sweeps").rglob("checkpoint_*"))
    for run_dir in df["run_dir"]:
        assert {"model.pt", "codes.npz", "metrics.json"} <= set(os.listdir(run_dir))

    # the driver "died" after the lsh trial wrote its row but before Tune saved it as finished
    lsh = df.filter(pl.col("method") == "lsh").row(0, named=True)
    _mark_running(tmp_path / "sweeps" / "t" / "search", lsh["trial_id"])
    metrics_mtime = os.path.getmtime(os.path.join(lsh["run_dir"], "metrics.json"))
    # ... and two trials Tune never saved: one unfinished (only config.json), one finished without a row
    runs = tmp_path / "runs"
    (runs / "t-0badf00d").mkdir()
    shutil.copy(os.path.join(lsh["run_dir"], "config.json"), runs / "t-0badf00d" / "config.json")
    shutil.copytree(lsh["run_dir"], runs / "t-0badf00e")
    assert main(["sweep", cfg, "--resume"]) == 0
    out = capsys.readouterr().out
    again = read_leaderboard(tmp_path / "lb")
    kept = again.filter(pl.col("trial_id") == lsh["trial_id"])
    assert kept.height == 1 and kept.row(0, named=True)["row_id"] == lsh["row_id"]  # the row was not replaced
    assert kept["started_at"][0] == lsh["started_at"]
    assert os.path.getmtime(os.path.join(lsh["run_dir"], "metrics.json")) == metrics_mtime  # not trained again
    assert "finished before the resume: kept" in out
    assert not (runs / "t-0badf00d").exists()                                  # unfinished orphan removed
    recorded = again.filter(pl.col("trial_id") == "0badf00e")                  # finished orphan recorded
    assert recorded.height == 1 and recorded["status"][0] == "completed"
    assert again.height == 5 and again["trial_id"].n_unique() == 5
    assert (again["time_total_s"] >= again["time_train_s"]).all()
    with_rows = {os.path.basename(p) for p in again["run_dir"]}
    assert {p.name for p in runs.iterdir() if p.name.startswith("t-")} == with_rows   # no run dir without a row


def test_new_sweep_refuses_run_directories_left_by_an_earlier_sweep_of_that_name(tiny_store, tmp_path, capsys):
    """A fresh sweep (no Tune state) whose out_dir holds finished runs of a sweep with the same name would
    adopt them as its own forgotten trials (rows that this sweep never ran): refused before Ray starts,
    nothing written."""
    cfg = _config(tmp_path, tiny_store)
    old = tmp_path / "runs" / "t-7e95a38c"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text("{}")
    (tmp_path / "runs" / "other-1234abcd").mkdir()          # another sweep's run: no reason to refuse
    assert main(["sweep", cfg]) == 2
    err = capsys.readouterr().err
    assert "1 run directory of an earlier sweep named 't'" in err and "t-7e95a38c" in err and "runs" in err
    assert not (tmp_path / "lb").exists() and not (tmp_path / "sweeps").exists()
    old.rename(tmp_path / "runs" / "u-7e95a38c")             # gone: the same command passes the check
    from hashbench.platform.sweep.driver import _sweep_run_dirs
    assert _sweep_run_dirs(str(tmp_path / "runs"), "t") == {}
