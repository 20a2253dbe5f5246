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
    assert set(os.listdir(res.run_dir)) == {"config.json", "metrics.json", "codes.npz", "per_query.npz",
                                           "model.pt"}
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


# --- the trial fast path's fixed costs (issue 13); no Ray needed ---------------------------------------

def test_final_codes_are_those_of_the_saved_weights(store, tmp_path):
    """The final phase reuses the database codes of the best epoch's validation: they must equal a fresh
    encoding of the saved model (built again from model.pt, outside the loop) bit for bit."""
    import torch

    from hashbench.platform.data import load_dataset
    from hashbench.platform.registry import ModelContext
    from hashbench.platform.training import run_local

    cfg = _cfg(store, tmp_path, method="dch", params={"lr": 0.05}, epochs=3)
    res = run_local(cfg)
    # this seed's validation peaks at epoch 1 of 0..2, so the saved weights are not the last epoch's:
    # codes reused from the wrong epoch would differ below
    assert res.best_epoch == 1 and res.epochs_run == 3, [h["val_mAP@100"] for h in res.history]
    ds = load_dataset(store)
    ctx = ModelContext(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes, bits=8,
                       multi_label=ds.multi_label)
    model = cfg.method_spec.build_model(ctx, cfg.hp)
    model.load_state_dict(torch.load(os.path.join(res.run_dir, "model.pt"), weights_only=True))
    model.eval()
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    for split, key in (("train", "db_codes"), ("test", "query_codes")):
        x = torch.from_numpy(np.asarray(ds.images[ds.indices(split)])).float() / 255.0
        with torch.no_grad():
            z = model.encode(x)
        np.testing.assert_array_equal(np.where(z.numpy() >= 0, 1, -1).astype(np.int8), codes[key])
    assert res.timings["total_s"] >= res.timings["train_s"] and res.started_at
    for phase in ("load_s", "build_s", "checkpoint_s", "final_s", "write_s"):
        assert res.timings[phase] >= 0.0, phase


def test_split_cache_is_per_store_and_bounded(store, tmp_path):
    from hashbench.platform.data import load_dataset, write_store
    from hashbench.platform.training import loop

    loop._SPLITS.clear()
    ds = load_dataset(store)
    a = loop.cached_split(ds, "train", "cpu")
    assert loop.cached_split(load_dataset(store), "train", "cpu") is a          # same store: no second load
    assert loop.cached_split(ds, "val", "cpu") is not a and len(loop._SPLITS) == 2
    torch_a = a.images.clone()
    rng = np.random.default_rng(1)
    others = []
    for i in range(2):  # two more stores: the first one is dropped (at most CACHED_DATASETS per process)
        path = write_store(tmp_path / f"s{i}", rng.integers(0, 255, (12, 1, 8, 8), dtype=np.uint8),
                           np.arange(12) % 2, np.array([0] * 6 + [1] * 3 + [2] * 3), class_names=["a", "b"]).path
        others.append(loop.cached_split(load_dataset(path), "train", "cpu"))
    assert {k[1] for k in loop._SPLITS} == {str(load_dataset(p).path) for p in (tmp_path / "s0", tmp_path / "s1")}
    assert loop.cached_split(ds, "train", "cpu") is not a                       # reloaded, equal content
    np.testing.assert_array_equal(loop.cached_split(ds, "train", "cpu").images.numpy(), torch_a.numpy())
    loop._SPLITS.clear()


def test_tune_session_checkpoint_policy():
    from hashbench.platform.sweep.session import TuneSession

    every = TuneSession("cpu", checkpoint_interval_s=0)
    assert [every.wants_checkpoint(e, last=False) for e in range(3)] == [True, True, True]
    assert every.wants_checkpoint(3, last=True) is False        # the test follows the last epoch at once
    rare = TuneSession("cpu", checkpoint_interval_s=3600)
    assert not any(rare.wants_checkpoint(e, last=e == 4) for e in range(5))
    assert TuneSession("cpu").final_checkpoint is False          # the run directory holds the final files
