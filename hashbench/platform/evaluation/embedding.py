"""Embedding-quality metrics of the constellation-loss paper: silhouette, Davies-Bouldin, and kNN
balanced accuracy. Vectorised torch; distances are Euclidean unless stated."""

from __future__ import annotations

import torch

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation.inputs import as_tensor

F64 = torch.float64


def _embeddings_and_classes(x, labels, name: str = "embeddings"):
    x = as_tensor(x, name)
    y = as_tensor(labels, "labels")
    if x.dim() != 2 or x.shape[0] == 0:
        raise HashbenchError(f"{name}: expected a non-empty 2-D array (n, dim), got shape {tuple(x.shape)}")
    x = x.to(F64)
    if not bool(torch.isfinite(x).all()):
        raise HashbenchError(f"{name}: NaN or inf values; all values must be finite")
    y = _class_ids(y, x.shape[0], "labels")
    classes, inv = torch.unique(y, return_inverse=True)
    if classes.numel() < 2 or classes.numel() >= x.shape[0]:
        raise HashbenchError(f"labels: need between 2 and n-1 distinct classes, got {classes.numel()} "
                             f"for {x.shape[0]} samples")
    return x, inv.to(x.device), classes.numel()


def _class_ids(y: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if y.shape[0] != n:
        raise HashbenchError(f"{name}: {y.shape[0]} labels for {n} samples; counts must match")
    if y.dim() == 2:
        if not bool((y.sum(1) == 1).all()):
            raise HashbenchError(f"{name}: multi-hot labels with other than one class per row; this metric "
                                 f"needs single-label data")
        return y.argmax(1)
    if y.dim() != 1:
        raise HashbenchError(f"{name}: expected class ids (n,), got shape {tuple(y.shape)}")
    return y.to(torch.int64)


def silhouette_score(embeddings, labels, chunk: int = 2048) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) with Euclidean distance.

    s(i) = (b - a) / max(a, b), a = mean distance to the other members of i's cluster, b = the
    smallest mean distance to another cluster; s(i) = 0 for members of singleton clusters.
    """
    x, cls, c = _embeddings_and_classes(embeddings, labels)
    onehot = torch.nn.functional.one_hot(cls, c).to(F64)
    sizes = onehot.sum(0)
    out = []
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s:s + chunk], x)                 # (b, n)
        sums = d @ onehot                                  # (b, c) distance sums per cluster
        own = cls[s:s + chunk]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        mean_other = sums / sizes
        mean_other.scatter_(1, own[:, None], float("inf"))
        b = mean_other.min(1).values
        sil = torch.where(own_size > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-300), 0.0)
        out.append(sil)
    return float(torch.cat(out).mean())


def davies_bouldin_score(embeddings, labels) -> float:
    """Davies-Bouldin index (1979): mean over clusters of max_j (S_i + S_j) / ||c_i - c_j||, with S_i
    the mean Euclidean distance of cluster i's members to its centroid. Lower is better."""
    x, cls, c = _embeddings_and_classes(embeddings, labels)
    onehot = torch.nn.functional.one_hot(cls, c).to(F64)
    sizes = onehot.sum(0)
    centroids = (onehot.T @ x) / sizes[:, None]
    scatter = (onehot.T @ (x - centroids[cls]).norm(dim=1)) / sizes
    sep = torch.cdist(centroids, centroids)
    ratio = (scatter[:, None] + scatter[None, :]) / sep
    ratio = torch.where(sep > 0, ratio, torch.where(scatter[:, None] + scatter[None, :] > 0, float("inf"), 0.0))
    ratio.fill_diagonal_(float("-inf"))
    return float(ratio.max(1).values.mean())


def balanced_accuracy_from_ranking(ids: torch.Tensor, query_labels: torch.Tensor,
                                   db_labels: torch.Tensor) -> float:
    """kNN classification by majority vote of the ranked neighbours ``ids`` (q, k); vote ties go to
    the smallest class id. Balanced accuracy = mean over the query classes of per-class recall."""
    qy = _class_ids(query_labels, query_labels.shape[0], "query_labels")
    dy = _class_ids(db_labels, db_labels.shape[0], "db_labels")
    classes, inv = torch.unique(torch.cat([qy, dy]), return_inverse=True)
    q_inv, d_inv = inv[:qy.shape[0]], inv[qy.shape[0]:]
    votes = torch.zeros(ids.shape[0], classes.numel(), device=ids.device, dtype=torch.int64)
    votes.scatter_add_(1, d_inv[ids], torch.ones_like(ids))
    pred = votes.argmax(1)   # first maximum = smallest class id
    correct = (pred == q_inv).to(F64)
    present = torch.unique(q_inv)
    recall = torch.zeros(classes.numel(), dtype=F64, device=ids.device).scatter_add_(0, q_inv, correct)
    count = torch.bincount(q_inv, minlength=classes.numel()).to(F64)
    return float((recall[present] / count[present]).mean())


def knn_balanced_accuracy(query_embeddings, db_embeddings, query_labels, db_labels, *, k: int = 5,
                          distance: str = "l2", engine: str = "auto", device=None) -> float:
    """Balanced accuracy of a k-nearest-neighbour classifier (ties in distance by database index)."""
    from hashbench.platform.evaluation.core import evaluate

    res = evaluate(query_embeddings, db_embeddings, query_labels, db_labels, distance=distance, ks=(1,),
                   ties="index", engine=engine, device=device, map_at_r=False, hamming_radius=None, knn_k=k)
    return res["kNN-balanced-accuracy"]
