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


def _silhouette_loop(x, y):
    """Silhouette by its definition (Rousseeuw 1987), loops over items; a singleton cluster scores 0."""
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    s = []
    for i in range(len(x)):
        own = [j for j in range(len(x)) if y[j] == y[i] and j != i]
        if not own:
            s.append(0.0)
            continue
        a = np.mean(d[i, own])
        b = min(np.mean(d[i, y == c]) for c in set(y.tolist()) if c != y[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def _davies_bouldin_loop(x, y):
    """Davies-Bouldin by its definition: mean over clusters of the worst (S_i + S_j) / ‖c_i − c_j‖."""
    cents = {c: x[y == c].mean(0) for c in set(y.tolist())}
    spread = {c: np.mean(np.linalg.norm(x[y == c] - cents[c], axis=1)) for c in cents}
    return float(np.mean([max((spread[i] + spread[j]) / np.linalg.norm(cents[i] - cents[j])
                               for j in cents if j != i) for i in cents]))


def _bac_knn_loop(train, train_y, test, test_y, k):
    """k-NN by brute force (Euclidean, stable order; a tied vote goes to the smaller class, as
    scikit-learn's mode), then balanced accuracy = mean over classes of the per-class recall."""
    pred = []
    for q in test:
        order = sorted(range(len(train)), key=lambda j: (float(np.linalg.norm(train[j] - q)), j))[:k]
        votes = {}
        for j in order:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0) + 1
        pred.append(min(c for c, v in votes.items() if v == max(votes.values())))
    recalls = [np.mean([p == c for p, t in zip(pred, test_y) if t == c]) for c in sorted(set(test_y.tolist()))]
    return float(np.mean(recalls))


def test_metrics_against_direct_computations():
    train = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0], [0.0, 10.0], [1.0, 10.0]])
    train_y = np.array([0, 0, 1, 1, 2, 2])
    test = np.array([[0.5, 0.5], [9.5, 0.5], [0.5, 9.5], [9.0, 0.0]])
    test_y = np.array([0, 1, 2, 2])  # the last one sits in class 1's cluster: misclassified by 1-NN
    m = embedding_metrics(train, train_y, test, test_y, knn_k=1)
    # balanced accuracy = mean per-class recall: class 0 1/1, class 1 1/1, class 2 1/2
    assert m["bac"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["silhouette"] == pytest.approx(_silhouette_loop(test, test_y))
    assert m["davies_bouldin"] == pytest.approx(_davies_bouldin_loop(test, test_y))


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
                        device="cpu", out_dir=str(tmp_path / "fs"), knn_k=3)
    assert cfg.augment == {"enabled": False}                            # the paper: no augmentation
    res = run_fewshot(cfg)
    assert [r["repeat"] for r in res["repeats"]] == [0, 1]
    assert all(r["n_train"] == 12 and r["n_val"] == 12 for r in res["repeats"])
    y = np.asarray(ds.labels).argmax(1)
    for r in res["repeats"]:
        codes = np.load(f"{r['run_dir']}/codes.npz")
        assert codes["db_codes"].shape == (12, 8)
        # positions in the repeat's store: its train split is the draw, its test split the original's
        dy = y[fewshot_indices(ds, 4, r["seed"])][codes["db_index"]]
        qy = y[ds.indices("test")][codes["query_index"] - 24]              # after 12 train + 12 val items
        np.testing.assert_array_equal(dy, codes["db_labels"].argmax(1))
        np.testing.assert_array_equal(qy, codes["query_labels"].argmax(1))
        assert len(qy) == len(ds.indices("test"))                        # the same test set every time
        # each metric recomputed from the saved embeddings by brute force, not by scikit-learn
        db, q = codes["db_codes"].astype(np.float64), codes["query_codes"].astype(np.float64)
        assert r["bac"] == pytest.approx(_bac_knn_loop(db, dy, q, qy, 3))
        assert r["silhouette"] == pytest.approx(_silhouette_loop(q, qy), abs=1e-6)
        assert r["davies_bouldin"] == pytest.approx(_davies_bouldin_loop(q, qy), rel=1e-6)
    on_disk = json.loads((tmp_path / "fs" / cfg.name / "fewshot.json").read_text())
    for m, v in summarize(res["repeats"]).items():
        assert on_disk["summary"][m] == pytest.approx(v)
        vals = [r[m] for r in res["repeats"]]
        assert v["mean"] == pytest.approx(sum(vals) / 2)
        assert v["sd"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))   # sample sd of two values
    assert not any(p.name.startswith(".subset-") for p in (tmp_path / "fs" / cfg.name).iterdir())
    with pytest.raises(HashbenchError, match="already holds"):
        run_fewshot(cfg)
    assert load_dataset(str(ds.path)).fingerprint == ds.fingerprint


@pytest.mark.timeout(120)
@pytest.mark.parametrize("selection", ["none", "fewshot-val"])
def test_no_repeat_selects_on_the_full_labelled_val_split(data_home, tmp_path, monkeypatch, selection):
    """Each repeat's store holds a few-shot draw of the val split (shots per class, the same budget):
    with 4 val items per class and shots = 2, a repeat sees 6 val labels, not the 12 of the full split,
    and by default it keeps its last epoch (no selection at all)."""
    import hashbench.platform.training as training

    ds = _store(data_home, n_per_class=(20, 20, 20))
    full_val = ds.indices("val")
    assert len(full_val) == 12
    seen = []
    real = training.run_local

    def spy(tc, *a, **kw):
        sub = load_dataset(tc.dataset)
        val = sub.indices("val")
        seen.append((tc.restore_best, tc.augment["enabled"], len(val),
                     np.bincount(np.asarray(sub.labels[val]).argmax(1), minlength=3).tolist(),
                     {bytes(np.asarray(sub.images[i])) for i in val}))
        return real(tc, *a, **kw)

    monkeypatch.setattr(training, "run_local", spy)
    cfg = FewShotConfig(method="constellation", dataset=str(ds.path), bits=8, shots=2, repeats=2, epochs=2,
                        batch_size=6, params={"arch": "resnet18", "width": 4, "spc": 2, "K": 2},
                        device="cpu", out_dir=str(tmp_path / "fs"), knn_k=1, selection=selection)
    res = run_fewshot(cfg)
    full_images = {bytes(np.asarray(ds.images[i])) for i in full_val}
    for restore, augmented, n_val, per_class, images in seen:
        assert restore is (selection == "fewshot-val")
        assert not augmented
        assert n_val == 6 and per_class == [2, 2, 2]                     # the budget, not the full split
        assert images <= full_images
    assert seen[0][4] != seen[1][4]                                     # each repeat draws its own
    if selection == "none":
        assert all(r["epochs"] == 2 for r in res["repeats"])
    with pytest.raises(HashbenchError, match="selection"):
        FewShotConfig(method="constellation", dataset="d", selection="best")


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
