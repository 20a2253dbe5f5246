"""The few-shot protocol of Medela & Picon (2020), for any registered method.

Train on ``shots`` samples per class drawn from the train split, ``repeats`` times
with different samples (repeat r draws with seed ``seed + r``, so every method
sees the same subsets), always with the same val and test splits. After each run
the embeddings of the few-shot train images and of the test images go to a
k-nearest-neighbour classifier (fitted on the train embeddings, Euclidean), which
predicts the test classes: balanced accuracy. The class clusters of the test
embeddings are scored with the silhouette and the Davies–Bouldin index. The
result is the mean ± standard deviation over the repeats (scikit-learn's
metrics, as in the paper).

```python
from hashbench.platform.fewshot import FewShotConfig, run_fewshot
res = run_fewshot(FewShotConfig(method="constellation", dataset="chula_rbc12", bits=128))
res["summary"]["bac"]["mean"], res["summary"]["bac"]["sd"]
```

Each repeat is one normal training run (``hashbench.platform.training.run_local``) on a
temporary store holding the subset, a few-shot draw of the val split (``shots`` per class,
the same label budget; the full labelled val split never enters a repeat) and the test split;
its run directory stays in ``out_dir/<name>/repeat-<r>`` and the table in
``out_dir/<name>/fewshot.json``. By default (``selection="none"``) each repeat trains the fixed
number of epochs and is evaluated with its last epoch's weights (the paper selects nothing);
``selection="fewshot-val"`` restores the epoch with the best mAP@100 on the few-shot val draw.
No augmentation unless asked for (the paper used none).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from hashbench.platform.errors import HashbenchError

METRICS = ("bac", "silhouette", "davies_bouldin")
SELECTIONS = ("none", "fewshot-val")
#: the paper trains without augmentation: an empty ``augment`` means this, not the platform default
FEWSHOT_AUGMENT = {"enabled": False}


@dataclass
class FewShotConfig:
    """One few-shot experiment; ``params``/``epochs``/``batch_size``/``augment`` go to each TrainConfig.

    ``augment``: empty (default) = no augmentation (``FEWSHOT_AUGMENT``); otherwise the platform's
    augmentation options (``TrainConfig.augment``). ``selection``: ``none`` (fixed epochs, last
    epoch's weights) or ``fewshot-val`` (best epoch by mAP@100 on the few-shot val draw).
    """

    method: str
    dataset: str
    bits: int = 128
    shots: int = 20
    repeats: int = 10
    knn_k: int = 5
    seed: int = 0
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    params: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    device: Optional[str] = None
    out_dir: str = "runs/fewshot"
    name: Optional[str] = None
    selection: str = "none"

    def __post_init__(self):
        for key, low in (("shots", 1), ("repeats", 1), ("knn_k", 1), ("bits", 1), ("seed", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise HashbenchError(f"few-shot {key} must be an integer >= {low}, got {v!r}")
        if self.selection not in SELECTIONS:
            raise HashbenchError(f"few-shot selection {self.selection!r}: expected one of {', '.join(SELECTIONS)}")
        if not isinstance(self.augment, dict):
            raise HashbenchError(f"few-shot augment must be a mapping of options, got {self.augment!r}")
        self.augment = dict(self.augment) or dict(FEWSHOT_AUGMENT)
        if self.name is None:
            tag = "".join(f"-{k}={v}" for k, v in sorted(self.params.items()) if k != "weights")
            tag += "" if self.selection == "none" else f"-select={self.selection}"
            name = (f"{self.method}-{os.path.basename(str(self.dataset).rstrip('/'))}-{self.bits}b-"
                    f"n{self.shots}-r{self.repeats}-s{self.seed}{tag}")
            self.name = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
        self.out_dir = os.path.abspath(os.fspath(self.out_dir))


def fewshot_indices(ds, shots: int, seed: int, split: str = "train") -> np.ndarray:
    """Store positions of ``shots`` random ``split`` items per class (all of a smaller class), sorted."""
    if ds.multi_label:
        raise HashbenchError(f"dataset {ds.name!r} is multi-label; the few-shot protocol needs one class per image")
    train = ds.indices(split)
    y = np.asarray(ds.labels[train]).argmax(axis=1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    ys = y[order]
    by_class = order[np.argsort(ys, kind="stable")]           # a random order inside each class
    counts = np.bincount(ys, minlength=ds.num_classes)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(train)) - np.repeat(starts, counts)  # position inside its class
    return np.sort(train[by_class[rank < shots]])


def write_subset_store(ds, train_rows: np.ndarray, dest: str, val_rows: Optional[np.ndarray] = None):
    """A store with ``train_rows`` as its train split, ``val_rows`` (default: the original val split) as
    its val split and the original test split."""
    from hashbench.platform.data import write_store

    val_rows = ds.indices("val") if val_rows is None else np.asarray(val_rows, np.int64)
    keep = np.concatenate([train_rows, val_rows, ds.indices("test")])
    split = np.concatenate([np.zeros(len(train_rows), np.int8), np.ones(len(val_rows), np.int8),
                            np.full(len(ds.indices("test")), 2, np.int8)])
    return write_store(
        dest, np.asarray(ds.images[keep]), np.asarray(ds.labels[keep]), split, class_names=ds.class_names,
        masks=None if ds.masks is None else np.asarray(ds.masks[keep]),
        mask_classes=ds.mask_classes if ds.masks is not None else None,
        groups=None if ds.groups is None else np.asarray(ds.groups[keep]),
        name=os.path.basename(dest), source=f"few-shot subset of {ds.name} ({ds.fingerprint[:12]})",
        format="fewshot-subset", license=ds.meta.get("license", ""),
        attribution=ds.meta.get("attribution", ""), overwrite=True)


def embedding_metrics(train_emb, train_y, test_emb, test_y, knn_k: int = 5) -> dict:
    """kNN balanced accuracy (train → test), silhouette and Davies–Bouldin of the test embeddings."""
    from sklearn.metrics import balanced_accuracy_score, davies_bouldin_score, silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    train_emb, test_emb = np.asarray(train_emb, np.float64), np.asarray(test_emb, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    knn = KNeighborsClassifier(n_neighbors=min(knn_k, len(train_y))).fit(train_emb, train_y)
    out = {"bac": float(balanced_accuracy_score(test_y, knn.predict(test_emb)))}
    if 2 <= len(np.unique(test_y)) < len(test_y):
        out["silhouette"] = float(silhouette_score(test_emb, test_y))
        out["davies_bouldin"] = float(davies_bouldin_score(test_emb, test_y))
    else:
        out["silhouette"] = out["davies_bouldin"] = float("nan")
    return out


def summarize(rows: list) -> dict:
    """Mean and sample standard deviation (ddof = 1; 0 for one repeat) of each metric."""
    out = {}
    for m in METRICS:
        v = np.array([r[m] for r in rows], np.float64)
        out[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def run_fewshot(cfg: FewShotConfig, on_repeat: Optional[Callable[[dict], None]] = None) -> dict:
    """Run the protocol; return ``{"config", "repeats": [...], "summary": {...}}`` (also fewshot.json)."""
    from hashbench.platform.data import load_dataset
    from hashbench.platform.training import TrainConfig, run_local

    ds = load_dataset(cfg.dataset)
    exp_dir = os.path.join(cfg.out_dir, cfg.name)
    if os.path.isfile(os.path.join(exp_dir, "fewshot.json")):
        raise HashbenchError(f"{exp_dir} already holds a finished few-shot experiment; choose another name")
    os.makedirs(exp_dir, exist_ok=True)
    rows = []
    for r in range(cfg.repeats):
        rows_idx = fewshot_indices(ds, cfg.shots, cfg.seed + r)
        # the val split is a few-shot draw too (same budget): no label beyond it enters the repeat
        val_idx = fewshot_indices(ds, cfg.shots, cfg.seed + r, split="val")
        tmp = tempfile.mkdtemp(prefix=".subset-", dir=exp_dir)
        try:
            sub = write_subset_store(ds, rows_idx, os.path.join(tmp, f"{ds.name}-fewshot-r{r}"), val_idx)
            tc = TrainConfig(method=cfg.method, dataset=str(sub.path), bits=cfg.bits, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, params=dict(cfg.params), augment=dict(cfg.augment),
                             seed=cfg.seed + r, out_dir=exp_dir, run_name=f"repeat-{r}", device=cfg.device,
                             restore_best=cfg.selection == "fewshot-val")
            t0 = time.perf_counter()
            result = run_local(tc)
            with np.load(os.path.join(result.run_dir, "codes.npz")) as codes:
                m = embedding_metrics(codes["db_codes"], codes["db_labels"].argmax(1),
                                      codes["query_codes"], codes["query_labels"].argmax(1), cfg.knn_k)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        row = {"repeat": r, "seed": cfg.seed + r, "n_train": int(len(rows_idx)), "n_val": int(len(val_idx)), **m,
               "test_mAP@100": result.metrics.get("test_mAP@100"), "epochs": result.epochs_run,
               "time_s": time.perf_counter() - t0, "run_dir": result.run_dir}
        rows.append(row)
        if on_repeat is not None:
            on_repeat(row)
    out = {"config": asdict(cfg), "dataset_fingerprint": ds.fingerprint, "n_test": int(len(ds.indices("test"))),
           "repeats": rows, "summary": summarize(rows)}
    tmp_file = os.path.join(exp_dir, ".fewshot.json.tmp")
    with open(tmp_file, "w") as f:
        json.dump(out, f, indent=2, default=str)
    os.replace(tmp_file, os.path.join(exp_dir, "fewshot.json"))
    return out
