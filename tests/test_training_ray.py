"""The training loop on Ray Train (TorchTrainer, Train V2): DDP over 2 CPU workers, and a worker
killed mid-run that resumes from its last checkpoint. Two TorchTrainer fits in all (~20 s each).

Ray workers import methods from the hashbench package only, so these tests use ``drh-nq`` (a real
method) at its smallest (depth 18, width 2) on an 8-px synthetic store.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hashbench.platform.training import FAIL_ENV, TrainConfig, run_training


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(0)
    n, size = 60, 8
    y = np.arange(n) % 2
    img = rng.integers(0, 80, size=(n, 1, size, size)).astype(np.uint8)
    img[y == 1, :, :4, :] += 150
    split = np.array([0] * 40 + [1] * 10 + [2] * 10, np.int8)
    path = tmp_path_factory.mktemp("ray-store") / "tiny"
    return str(write_store(path, img, y, split, class_names=["a", "b"]).path)


def _cfg(store, tmp_path, **kw):
    base = dict(method="drh-nq", dataset=store, bits=8, epochs=2, batch_size=16,
                params={"depth": 18, "width": 2}, out_dir=str(tmp_path / "runs"), eval_ks=(10, 100))
    return TrainConfig(**{**base, **kw})


@pytest.mark.timeout(180)
def test_ddp_over_two_cpu_workers(ray_session, store, tmp_path):
    epochs = []
    res = run_training(_cfg(store, tmp_path, workers=2), on_epoch=epochs.append)
    assert res.epochs_run == 2 and [r["epoch"] for r in res.history] == [0, 1]
    assert res.device == "2x cpu" and res.resumed_from is None
    assert 0.0 <= res.metrics["test_mAP@100"] <= 1.0 and "val_mAP@100" in res.metrics
    assert set(os.listdir(res.run_dir)) == {"config.json", "metrics.json", "codes.npz", "model.pt"}
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    assert codes["db_codes"].shape == (40, 8) and codes["query_codes"].shape == (10, 8)
    # each of 2 workers took 8 of every 16-item global batch: 40 // 16 = 2 steps x 16 images
    assert res.history[0]["train_images_per_s"] * res.history[0]["train_s"] == pytest.approx(32)
    assert [m["epoch"] for m in epochs if not m.get("done")] == [0, 1] and epochs[-1]["done"]


@pytest.mark.timeout(240)
def test_killed_worker_resumes_from_its_last_checkpoint(ray_session, store, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ENV, "1:kill")          # SIGKILL the worker at the start of epoch 1, once
    monkeypatch.setenv("HASHBENCH_TESTING", "1")    # the fault hook's test-only switch (forwarded to workers)
    cfg = _cfg(store, tmp_path, epochs=3, max_failures=1)
    res = run_training(cfg)
    assert res.resumed_from == 1                     # the retry started from epoch 0's checkpoint
    assert res.epochs_run == 3 and [r["epoch"] for r in res.history] == [0, 1, 2]
    assert os.path.isfile(os.path.join(res.run_dir, "metrics.json"))
    assert os.path.isdir(os.path.join(cfg.out_dir, "_ray", cfg.run_id))
