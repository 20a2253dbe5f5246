"""The prepared store: write/load round trip, fingerprint, atomic writes, pickling, built-ins."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from hashbench.platform.data import compute_fingerprint, list_datasets, load_dataset, write_store
from hashbench.platform.data.store import BUILTIN_ROOT
from hashbench.platform.errors import HashbenchError


def toy(n=12, size=8, channels=1, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    labels = np.arange(n) % classes
    split = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])[:n]
    return images, labels, split


def test_round_trip_memory_mapped(tmp_path):
    images, labels, split = toy()
    masks = (images[:, 0] > 128).astype(np.uint8)
    ds = write_store(tmp_path / "toy", images, labels, split, class_names=["a", "b", "c"],
                     masks=masks, groups=np.arange(12) // 2, license="CC0", attribution="me")
    again = load_dataset(tmp_path / "toy")
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.images, images)
    np.testing.assert_array_equal(again.labels, np.eye(3, dtype=np.uint8)[labels])
    np.testing.assert_array_equal(again.masks, masks)
    assert again.groups.dtype == np.int64 and again.split.dtype == np.int8
    assert (again.num_classes, again.channels, again.image_size) == (3, 1, 8)
    assert again.has_masks and not again.multi_label and again.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(again.indices("val"), [6, 7, 8])
    assert again.indices("test").dtype == np.int64
    counts = again.meta["counts"]
    assert counts["train"]["items"] == 6 and counts["test"]["classes"] == {"a": 1, "b": 1, "c": 1}
    assert again.meta["license"] == "CC0" and ds.fingerprint == again.fingerprint
    with pytest.raises(HashbenchError, match="unknown split 'dev'"):
        again.indices("dev")


def test_fingerprint_is_content_hash(tmp_path):
    images, labels, split = toy()
    a = write_store(tmp_path / "a", images, labels, split, class_names=["a", "b", "c"])
    b = write_store(tmp_path / "b", images, labels, split, class_names=["a", "b", "c"], name="other")
    assert a.fingerprint == b.fingerprint  # names and timestamps do not enter
    # independent recomputation: sha256 over dtype/shape/bytes of each array then the names
    h = hashlib.sha256()
    onehot = np.eye(3, dtype=np.uint8)[labels]
    for key, arr in (("images", images), ("labels", onehot), ("split", split.astype(np.int8))):
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    h.update(b"masks:none;groups:none;")
    h.update(json.dumps(["a", "b", "c"]).encode())
    assert a.fingerprint == h.hexdigest()
    images2 = images.copy()
    images2[0, 0, 0, 0] ^= 1
    assert compute_fingerprint({"images": images2, "labels": onehot, "split": split.astype(np.int8)},
                               ["a", "b", "c"]) != a.fingerprint
    c = write_store(tmp_path / "c", images, labels, split, class_names=["a", "b", "z"])
    assert c.fingerprint != a.fingerprint


def test_a_store_that_appears_while_writing_is_not_replaced(tmp_path, monkeypatch):
    images, labels, split = toy()
    real_save = np.save

    def save_and_race(path, arr, **kw):   # another writer finishes "s" while this one writes
        (tmp_path / "s").mkdir(exist_ok=True)
        real_save(path, arr, **kw)

    monkeypatch.setattr(np, "save", save_and_race)
    with pytest.raises(HashbenchError) as exc:
        write_store(tmp_path / "s", images, labels, split, class_names=["a", "b", "c"], name="toy")
    assert str(exc.value) == f"{tmp_path / 's'}: a dataset named 'toy' already exists; pass overwrite=True to replace it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"] and not any((tmp_path / "s").iterdir())


def test_exists_overwrite_and_no_leftovers(tmp_path):
    images, labels, split = toy()
    write_store(tmp_path / "s", images, labels, split, class_names=["a", "b", "c"])
    with pytest.raises(HashbenchError) as exc:   # the Python keyword, not the CLI's --overwrite
        write_store(tmp_path / "s", images, labels, split, class_names=["a", "b", "c"])
    assert str(exc.value) == f"{tmp_path / 's'}: a dataset named 's' already exists; pass overwrite=True to replace it"
    new = write_store(tmp_path / "s", images[::-1].copy(), labels, split, class_names=["a", "b", "c"],
                      overwrite=True)
    np.testing.assert_array_equal(load_dataset(tmp_path / "s").images, images[::-1])
    assert new.path == tmp_path / "s"
    with pytest.raises(HashbenchError, match="labels: class ids must lie in"):
        write_store(tmp_path / "bad", images, labels + 5, split, class_names=["a", "b", "c"])
    with pytest.raises(HashbenchError, match="masks: expected"):
        write_store(tmp_path / "bad", images, labels, split, class_names=["a", "b", "c"],
                    masks=np.zeros((12, 4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or half-written dirs


def test_pickle_by_path_and_materialized(tmp_path):
    images, labels, split = toy(n=12, size=32, channels=3)
    ds = write_store(tmp_path / "p", images, labels, split, class_names=["a", "b", "c"])
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # a path and a fingerprint, not 36 KB of pixels
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.images, images)
    mem = ds.materialize()
    assert mem.path is None and not isinstance(mem.images, np.memmap)
    blob2 = pickle.dumps(mem)
    assert len(blob2) > images.nbytes
    np.testing.assert_array_equal(pickle.loads(blob2).labels, ds.labels)
    write_store(tmp_path / "p", images[::-1].copy(), labels, split, class_names=["a", "b", "c"],
                overwrite=True)
    with pytest.raises(HashbenchError, match="store changed since it was pickled"):
        pickle.loads(blob)


def test_names_resolve_builtin_first(data_home):
    images, labels, split = toy()
    write_store(data_home / "mine", images, labels, split, class_names=["a", "b", "c"])
    assert load_dataset("mine").path == data_home / "mine"
    write_store(data_home / "busi", images, labels, split, class_names=["a", "b", "c"])
    assert load_dataset("busi").path == BUILTIN_ROOT / "busi"
    rows = {(r["name"], r["builtin"]): r for r in list_datasets()}
    assert rows[("mine", False)]["items"] == 12 and rows[("busi", False)]["shadowed"]
    with pytest.raises(HashbenchError, match="dataset 'nope' not found"):
        load_dataset("nope")


def test_builtin_pneumoniamnist():
    ds = load_dataset("pneumoniamnist")
    assert ds.images.shape == (5856, 1, 28, 28) and ds.class_names == ["normal", "pneumonia"]
    sizes = [len(ds.indices(s)) for s in ("train", "val", "test")]
    assert sizes == [4708, 524, 624]  # the official MedMNIST v2 split sizes
    labels = np.asarray(ds.labels)
    assert (labels.sum(1) == 1).all() and "CC BY 4.0" in ds.meta["license"]
    assert "MedMNIST" in ds.meta["attribution"]
    assert ds.fingerprint == compute_fingerprint(
        {"images": np.asarray(ds.images), "labels": labels, "split": np.asarray(ds.split)},
        ds.class_names)


def test_builtin_busi():
    ds = load_dataset("busi")
    assert ds.images.shape == (780, 1, 64, 64) and ds.masks.shape == (780, 64, 64)
    assert ds.class_names == ["benign", "malignant", "normal"] and "CC0" in ds.meta["license"]
    labels = np.asarray(ds.labels).argmax(1)
    assert np.bincount(labels).tolist() == [437, 210, 133]
    masked = np.asarray(ds.masks).reshape(780, -1).any(1)
    assert masked[labels != 2].all() and not masked[labels == 2].any()  # normal: empty masks
    for code, ratio in ((0, 0.7), (1, 0.1), (2, 0.2)):  # stratified 70/10/20 per class
        per_class = np.bincount(labels[np.asarray(ds.split) == code], minlength=3)
        assert np.abs(per_class - ratio * np.array([437, 210, 133])).max() <= 1


def test_builtin_files_are_small():
    files = [f for f in BUILTIN_ROOT.rglob("*") if f.is_file()]
    assert len(files) >= 9
    assert max(f.stat().st_size for f in files) < 5 * 1024 * 1024


@pytest.mark.timeout(120)
def test_ray_worker_receives_store(ray_session, tmp_path):
    ray = ray_session
    images, labels, split = toy(n=12, size=8)
    ds = write_store(tmp_path / "r", images, labels, split, class_names=["a", "b", "c"])

    @ray.remote
    def train_sum(d):
        return int(np.asarray(d.images)[d.indices("train")].astype(np.int64).sum()), d.fingerprint

    want = int(images[:6].astype(np.int64).sum())
    assert ray.get(train_sum.remote(ds)) == (want, ds.fingerprint)  # by path (shared storage)
    ref = ray.put(ds.materialize())  # through the object store (arrays travel)
    assert ray.get(train_sum.remote(ref)) == (want, ds.fingerprint)
