"""A small leaderboard for the dashboard tests (no tests here; imported by tests/test_dashboard*.py).

Three methods (two binary, one float), two datasets, two code lengths each, three search trials
per (method, dataset, code length) with different hyper-parameters, seed re-runs of two best
configurations, one stopped and one failed trial, one corrupt Parquet file, run directories with
``codes.npz`` for the ``derm`` runs and a tiny prepared ``derm`` store. Every value follows from
simple formulas so the tests can compute what the dashboard must show on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = {"dch": "binary", "drh": "binary", "constellation": "float"}
BITS = {"binary": (16, 32), "float": (8, 16)}
DATASETS = ("derm", "chest")
LRS = (1e-4, 1e-3, 1e-2)
OPTS = ("adam", "sgd", "adam")
SEEDED = {("dch", "derm", 16), ("drh", "chest", 32)}  # best config re-run with seeds 1 and 2
BASE = {"dch": 0.60, "drh": 0.50, "constellation": 0.40}
N_DB, N_VAL, N_Q, CLASSES, SIZE = 20, 4, 6, 3, 12


@dataclass
class Fixture:
    leaderboard: Path
    data_home: Path
    rows: list[dict]  # every row written (the corrupt file is not among them)
    corrupt: Path


def val_score(method: str, dataset: str, bits: int, trial: int) -> float:
    """Validation mAP: trial 1 (lr 1e-3) is always the best; longer codes score higher."""
    return BASE[method] + (0.05 if dataset == "derm" else 0.0) + bits / 1000 + (0.04 if trial == 1 else 0.01 * trial)


def pr_curve(code_type: str, bits: int, level: float) -> dict:
    if code_type == "binary":
        at = list(range(bits + 1))
        recall = [r / bits for r in at]
        return {"x": "hamming_radius", "at": at, "recall": recall,
                "precision": [round(level * (1 - 0.5 * r), 6) for r in recall]}
    at = [1, 2, 5, 10, 20]
    return {"x": "rank", "at": at, "recall": [a / 20 for a in at],
            "precision": [round(level * (1 - 0.02 * a), 6) for a in at]}


def base_row(method: str, dataset: str, bits: int) -> dict:
    code_type = METHODS[method]
    return {"method": method, "family": method, "dataset": dataset, "dataset_fingerprint": "",
            "splits": json.dumps({"train": N_DB, "val": N_VAL, "test": N_Q}), "code_type": code_type,
            "bits": bits, "storage_bits": bits if code_type == "binary" else 32 * bits,
            "distance": {"dch": "hamming", "drh": "hamming", "constellation": "l2"}[method],
            "metric_convention": "hits", "tie_policy": "tie-aware" if code_type == "binary" else "index",
            "no_hit_policy": "include", "epochs": 2, "device": "cpu", "hashbench_commit": "test",
            "torch_version": "x", "ray_version": "y", "started_at": "2026-01-01T00:00:00+00:00",
            "config_json": "{}", "protocol_json": "{}"}


def scored(row: dict, val: float, test: float, seed: int) -> dict:
    """Fill every metric from one test score ``test`` (+ seed noise already in it)."""
    binary = row["code_type"] == "binary"
    metrics = {"val_mAP@100": val, "test_mAP@10": test + 0.05, "test_mAP@100": test,
               "test_mAP@1000": test - 0.05, "test_mAP@all": test - 0.10, "test_P@10": test + 0.02,
               "test_P@100": test - 0.01, "test_R@100": 0.5, "test_P@H<=2": test + 0.03 if binary else None,
               "test_MAP@R": test - 0.2, "test_R-precision": test - 0.15}
    mj = {k.removeprefix("test_"): v for k, v in metrics.items() if v is not None}
    mj["pr_curve"] = pr_curve(row["code_type"], row["bits"], test)
    return {**row, **metrics, "metrics_json": json.dumps(mj), "seed": seed,
            "time_train_s": 10.0, "time_encode_s": 1.0, "time_eval_s": 0.5, "time_total_s": 11.5,
            "train_images_per_s": 100.0 * (1 + list(METHODS).index(row["method"])) + seed,
            "encode_images_per_s": 1000.0, "queries_per_s": 5000.0 / (row["bits"] / 8) + seed,
            "finished_at": f"2026-01-01T00:{seed:02d}:00+00:00"}


def write_store(data_home: Path) -> object:
    from hashbench.platform.data import write_store as write

    rng = np.random.default_rng(0)
    n = N_DB + N_VAL + N_Q
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 256, size=(n, 3, SIZE, SIZE), dtype=np.uint8)
    split = np.array([0] * N_DB + [1] * N_VAL + [2] * N_Q, np.int8)
    return write(data_home / "derm", images, labels, split, class_names=["nevus", "melanoma", "other"],
                 name="derm")


def write_codes(run_dir: Path, method: str, bits: int, store, seed: int) -> None:
    """codes.npz in the run's own format: {-1,+1} (dch), bit-packed (drh) or float (constellation)."""
    rng = np.random.default_rng(seed)
    db_index, q_index = store.indices("train"), store.indices("test")
    labels = np.asarray(store.labels)
    if METHODS[method] == "binary":
        db = rng.integers(0, 2, size=(len(db_index), bits)).astype(np.int8) * 2 - 1
        q = rng.integers(0, 2, size=(len(q_index), bits)).astype(np.int8) * 2 - 1
        if method == "drh":
            db, q = np.packbits(db > 0, axis=1), np.packbits(q > 0, axis=1)
    else:
        db = rng.normal(size=(len(db_index), bits)).astype(np.float32)
        q = rng.normal(size=(len(q_index), bits)).astype(np.float32)
    ql, dl = labels[q_index], labels[db_index]
    if method == "drh":  # class ids instead of multi-hot
        ql, dl = ql.argmax(1), dl.argmax(1)
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "codes.npz", query_codes=q, db_codes=db, query_labels=ql, db_labels=dl,
             query_index=q_index, db_index=db_index, bits=bits, code_type=METHODS[method],
             distance="hamming" if METHODS[method] == "binary" else "l2")


def build(root: Path) -> Fixture:
    from hashbench.platform.leaderboard import append_row

    lb, data_home, runs = root / "leaderboard", root / "data", root / "runs"
    store = write_store(data_home)
    rows: list[dict] = []
    n = 0
    for method, code_type in METHODS.items():
        for dataset in DATASETS:
            for bits in BITS[code_type]:
                base = base_row(method, dataset, bits)
                for trial, (lr, opt) in enumerate(zip(LRS, OPTS)):
                    n += 1
                    val = val_score(method, dataset, bits, trial)
                    params = json.dumps({"lr": lr, "optimizer": opt, "margin": 0.5}, sort_keys=True)
                    seeds = [0] + ([1, 2] if (method, dataset, bits) in SEEDED and trial == 1 else [])
                    for seed in seeds:
                        run_id = f"{method}-{dataset}-{bits}-t{trial}-s{seed}"
                        run_dir = runs / run_id
                        if dataset == "derm":
                            base["dataset_fingerprint"] = store.fingerprint
                            write_codes(run_dir, method, bits, store, n * 10 + seed)
                        row = scored(base, val, val - 0.02 + 0.01 * seed, seed)
                        row.update(sweep_id="sweep-a", trial_id=f"{method}-{dataset}-{bits}-{trial}" +
                                   (f"-seed{seed}" if seed else ""), run_id=run_id, run_dir=str(run_dir),
                                   status="completed", role="seed" if seed else "trial", params_json=params)
                        rows.append(row)
    stopped = scored(base_row("dch", "derm", 16), 0.30, 0.0, 0)
    stopped.update({m: None for m in stopped if m.startswith("test_")}, sweep_id="sweep-a",
                   trial_id="dch-derm-16-stopped", run_id="dch-stopped", run_dir="", status="stopped",
                   role="trial", params_json=json.dumps({"lr": 0.1, "optimizer": "sgd", "margin": 0.5}))
    failed = {**base_row("drh", "derm", 32), "sweep_id": "sweep-a", "trial_id": "drh-derm-32-error",
              "run_id": "drh-error", "run_dir": "", "status": "error", "role": "trial", "seed": 0,
              "params_json": json.dumps({"lr": 1.0, "optimizer": "sgd", "margin": 0.5})}
    rows += [stopped, failed]
    for row in rows:
        append_row(lb, row)
    corrupt = lb / "broken.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    return Fixture(lb, data_home, rows, corrupt)
