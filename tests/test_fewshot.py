"""Few-shot protocol: subset selection, the metrics vs direct computations, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hashbench.platform.data import load_dataset, write_store
from hashbench.platform.errors import HashbenchError
from hashbench.platform.fewshot import (FewShotConfig, embedding_metrics, fewshot_indices, run_fewshot,
                                        summarize, write_subset_store)


def _store(root, n_per_class=(14, 9, 3), size=12, multi=False):
    """3 classes with a class-dependent brightness; split: 60% train, 20% val, 20% test per class."""
    rng = np.random.default_rng(0)
    images, labels, split = [], [], []
    for c, n in enumerate(n_per_class):
        base = 40 + 80 * c
        images.append(np.clip(base + rng.integers(-20, 20, (n, 1, size, size)), 0, 255))
        labels += [c] * n
        cut = np.array([0] * (n - 2 * max(1, n // 5)) + [1] * max(1, n // 5) + [2] * max(1, n // 5))
        split.append(cut)
    images = np.concatenate(images).astype(np.uint8)
    labels = np.eye(3, dtype=np.uint8)[labels]
    if multi:
        labels[0, 1] = 1
    return write_store(root / "toy", images, labels, np.concatenate(split), class_names=["a", "b", "c"])


def test_fewshot_indices_take_n_per_class_from_train_only(data_home):
    ds = _store(data_home)
    train = set(ds.indices("train").tolist())
    y = np.asarray(ds.labels).argmax(1)
    idx = fewshot_indices(ds, 4, seed=1)
    assert set(idx.tolist()) <= train
    counts = np.bincount(y[idx], minlength=3)
    train_counts = np.bincount(y[ds.indices("train")], minlength=3)
    assert counts.tolist() == np.minimum(4, train_counts).tolist()  # a class with fewer gives all it has
    assert np.array_equal(idx, fewshot_indices(ds, 4, seed=1))
    assert not np.array_equal(idx, fewshot_indices(ds, 4, seed=2))


def test_subset_store_keeps_val_and_test(data_home, tmp_path):
    ds = _store(data_home)
    idx = fewshot_indices(ds, 2, seed=0)
    sub = write_subset_store(ds, idx, str(tmp_path / "sub"))
    assert len(sub.indices("train")) == len(idx)
    assert np.array_equal(np.asarray(sub.images[sub.indices("test")]), np.asarray(ds.images[ds.indices("test")]))
    assert np.array_equal(np.asarray(sub.images[sub.indices("train")]), np.asarray(ds.images[idx]))
    assert len(sub.indices("val")) == len(ds.indices("val"))


def test_multi_label_data_is_refused(data_home):
    with pytest.raises(HashbenchError, match="multi-label"):
        fewshot_indices(_store(data_home, multi=True), 2, 0)


def test_metrics_against_direct_computations():
    train = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0], [0.0, 10.0], [1.0, 10.0]])
    train_y = np.array([0, 0, 1, 1, 2, 2])
    test = np.array([[0.5, 0.5], [9.5, 0.5], [0.5, 9.5], [9.0, 0.0]])
    test_y = np.array([0, 1, 2, 2])  # the last one sits in class 1's cluster: misclassified by 1-NN
    m = embedding_metrics(train, train_y, test, test_y, knn_k=1)
    # balanced accuracy = mean per-class recall: class 0 1/1, class 1 1/1, class 2 1/2
    assert m["bac"] == pytest.approx((1 + 1 + 0.5) / 3)
    # silhouette by its definition, with loops
    d = np.linalg.norm(test[:, None] - test[None], axis=2)
    s = []
    for i in range(len(test)):
        own = [j for j in range(len(test)) if test_y[j] == test_y[i] and j != i]
        if not own:
            s.append(0.0)
            continue
        a = np.mean(d[i, own])
        b = min(np.mean(d[i, test_y == c]) for c in set(test_y) if c != test_y[i])
        s.append((b - a) / max(a, b))
    assert m["silhouette"] == pytest.approx(np.mean(s))
    # Davies-Bouldin by its definition
    cents = {c: test[test_y == c].mean(0) for c in set(test_y)}
    spread = {c: np.mean(np.linalg.norm(test[test_y == c] - cents[c], axis=1)) for c in cents}
    db = np.mean([max((spread[i] + spread[j]) / np.linalg.norm(cents[i] - cents[j]) for j in cents if j != i)
                  for i in cents])
    assert m["davies_bouldin"] == pytest.approx(db)


def test_summary_is_mean_and_sample_sd():
    rows = [{"bac": 0.5, "silhouette": 0.1, "davies_bouldin": 2.0},
            {"bac": 0.7, "silhouette": 0.3, "davies_bouldin": 1.0}]
    s = summarize(rows)
    assert s["bac"]["mean"] == pytest.approx(0.6)
    assert s["bac"]["sd"] == pytest.approx(math.sqrt(((0.1) ** 2 * 2) / 1))
    assert summarize(rows[:1])["silhouette"]["sd"] == 0.0


def test_bad_config_values():
    with pytest.raises(HashbenchError, match="shots"):
        FewShotConfig(method="constellation", dataset="x", shots=0)
    with pytest.raises(HashbenchError, match="repeats"):
        FewShotConfig(method="constellation", dataset="x", repeats=1.5)


@pytest.mark.timeout(120)
def test_end_to_end_two_repeats(data_home, tmp_path):
    ds = _store(data_home, n_per_class=(20, 20, 20))
    cfg = FewShotConfig(method="constellation", dataset=str(ds.path), bits=8, shots=4, repeats=2, epochs=1,
                        batch_size=8, params={"arch": "resnet18", "width": 4, "spc": 2, "K": 2},
                        augment={"enabled": False}, device="cpu", out_dir=str(tmp_path / "fs"), knn_k=3)
    res = run_fewshot(cfg)
    assert [r["repeat"] for r in res["repeats"]] == [0, 1]
    assert all(r["n_train"] == 12 for r in res["repeats"])
    for r in res["repeats"]:
        assert 0 <= r["bac"] <= 1 and -1 <= r["silhouette"] <= 1 and r["davies_bouldin"] > 0
        codes = np.load(f"{r['run_dir']}/codes.npz")
        assert codes["db_codes"].shape == (12, 8)
        assert codes["query_codes"].shape[0] == len(ds.indices("test"))  # the same test set every time
    on_disk = json.loads((tmp_path / "fs" / cfg.name / "fewshot.json").read_text())
    for m, v in summarize(res["repeats"]).items():
        assert on_disk["summary"][m] == pytest.approx(v)
        vals = [r[m] for r in res["repeats"]]
        assert v["mean"] == pytest.approx(np.mean(vals)) and v["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert not any(p.name.startswith(".subset-") for p in (tmp_path / "fs" / cfg.name).iterdir())
    with pytest.raises(HashbenchError, match="already holds"):
        run_fewshot(cfg)
    assert load_dataset(str(ds.path)).fingerprint == ds.fingerprint


def test_cli_parses_and_scopes_params():
    import argparse

    from hashbench.platform.cli import fewshot_cmd
    from hashbench.platform.cli.train_cmd import parse_pairs

    parser = argparse.ArgumentParser()
    fewshot_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["fewshot", "constellation", "triplet", "--dataset", "d", "--set", "spc=5",
                              "--set", "constellation:K=7", "--augment", "enabled=false"])
    assert args.methods == ["constellation", "triplet"] and args.shots == 20 and args.repeats == 10
    assert fewshot_cmd._params(args.params, "constellation") == {"spc": "5", "K": "7"}
    assert fewshot_cmd._params(args.params, "triplet") == {"spc": "5"}
    assert parse_pairs(args.augment, "--augment") == {"enabled": "false"}
    with pytest.raises(HashbenchError, match="KEY=VALUE"):
        fewshot_cmd._params(["nonsense"], "triplet")
    a = FewShotConfig(method="constellation", dataset="d", params={"K": "7"})
    b = FewShotConfig(method="constellation", dataset="d", params={"K": "5"})
    assert a.name != b.name and "K=7" in a.name
