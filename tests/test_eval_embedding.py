"""Embedding metrics (silhouette, Davies-Bouldin, kNN balanced accuracy) and approximate engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score as sk_db
from sklearn.metrics import silhouette_score as sk_sil

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation import (davies_bouldin_score, evaluate, knn_balanced_accuracy,
                                           silhouette_score)


def _blobs(seed=0, n=60, dim=5, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)) + 2.0 * y[:, None]
    return x.astype(np.float32), y


def test_silhouette_matches_sklearn_and_loops():
    x, y = _blobs()
    y[0] = 7                                   # a singleton cluster: s = 0 by definition
    assert silhouette_score(x, y, chunk=7) == pytest.approx(sk_sil(x, y), abs=1e-6)
    # plain loops on a tiny case
    pts = [(0.0, 0.0), (0.0, 1.0), (4.0, 0.0), (5.0, 0.0)]
    lab = [0, 0, 1, 1]
    s = []
    for i, p in enumerate(pts):
        dist = [math.dist(p, o) for o in pts]
        a = np.mean([dist[j] for j in range(4) if lab[j] == lab[i] and j != i])
        b = np.mean([dist[j] for j in range(4) if lab[j] != lab[i]])
        s.append((b - a) / max(a, b))
    assert silhouette_score(np.array(pts), np.array(lab)) == pytest.approx(np.mean(s))


def test_davies_bouldin_matches_sklearn():
    x, y = _blobs(1)
    assert davies_bouldin_score(x, y) == pytest.approx(sk_db(x, y), rel=1e-6)
    # two clusters, hand-checked: S = (0.5, 0.5), centroid distance 4 -> DB = 1/4
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0], [5.0, 0.0]])
    assert davies_bouldin_score(pts, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


def test_knn_balanced_accuracy_against_loops():
    rng = np.random.default_rng(2)
    db = rng.normal(size=(40, 3))
    dl = rng.integers(0, 3, 40)
    q = rng.normal(size=(25, 3))
    ql = np.r_[np.zeros(20, int), np.ones(4, int), [2]]        # imbalanced query classes
    k = 5
    preds = []
    for i in range(len(q)):
        order = sorted(range(len(db)), key=lambda j: (float(np.sum((q[i] - db[j]) ** 2)), j))[:k]
        votes = [sum(dl[j] == c for j in order) for c in range(3)]
        preds.append(int(np.argmax(votes)))
    recalls = [np.mean([p == c for p, t in zip(preds, ql) if t == c]) for c in range(3)]
    ref = float(np.mean(recalls))
    assert knn_balanced_accuracy(q, db, ql, dl, k=k) == pytest.approx(ref)
    res = evaluate(q, db, ql, dl, distance="l2", ks=[5], knn_k=k, engine="torch")
    assert res["kNN-balanced-accuracy"] == pytest.approx(ref)


def test_embedding_metric_bad_inputs():
    x, y = _blobs()
    with pytest.raises(HashbenchError, match="distinct classes"):
        silhouette_score(x, np.zeros(len(x)))
    with pytest.raises(HashbenchError, match="counts must match"):
        davies_bouldin_score(x, y[:-1])
    with pytest.raises(HashbenchError, match="finite"):
        silhouette_score(np.full_like(x, np.nan), y)
    with pytest.raises(HashbenchError, match="single-label"):
        knn_balanced_accuracy(x, x, np.ones((len(x), 2)), np.ones((len(x), 2)), k=3)


@pytest.mark.parametrize("engine", ["faiss-hnsw", "faiss-ivf"])
@pytest.mark.parametrize("distance", ["hamming", "l2"])
def test_approximate_engines_report_recall(engine, distance):
    rng = np.random.default_rng(3)
    if distance == "hamming":
        q, db = rng.integers(0, 2, (30, 32)), rng.integers(0, 2, (400, 32))
    else:
        q, db = rng.normal(size=(30, 8)), rng.normal(size=(400, 8))
    ql, dl = rng.integers(0, 3, 30), rng.integers(0, 3, 400)
    res = evaluate(q, db, ql, dl, distance=distance, ks=[10], ties="index", engine=engine, map_at_r=False)
    rec = res["recall_vs_exact"]
    assert rec["k"] == 10 and 0.3 <= rec["recall"] <= 1.0
    assert res["protocol"]["engine"] == engine
