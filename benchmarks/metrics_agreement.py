"""Agreement of hashbench's metrics with the references reviewers use (docs/metrics.md "Peer conventions").

Prints, on seeded synthetic data:
* the largest |hashbench - pytorch-metric-learning| over P@1, MAP@R, R-precision, mAP (same-set with 10 %
  lone items; separate sets with 10 % queries of a class absent from the reference; multi-hot labels
  with the "share a label" comparator);
* the largest |hashbench - CalcTopMap| (a loop from DeepHash-pytorch's definition, stable sort) at
  several k, and topK=-1 against mAP@(N-1);
* float L2 top-k rows whose ids differ: the float32 ranking of the torch engine before the exact order
  (||q||^2 + ||d||^2 - 2 q.d, stable sort) and raw faiss IndexFlatL2, each against the exact
  (float64, index) order, and the torch vs faiss engines now.

    python benchmarks/metrics_agreement.py [--queries 3000] [--db 20000] [--dim 64] [--device cuda]

With ``--device cuda`` it also counts the rows where the torch engine on the GPU differs from the exact
order, and compares same-set (exclude_self) metrics on the GPU (torch engine, and every other engine
``auto`` picks there) with the CPU engines on the same codes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_eval_peers import (OURS, PML_METRICS, blobs, calc_top_map, deephash_case,  # noqa: E402
                             pml_accuracy, share_a_label)

from hashbench.platform.evaluation import evaluate  # noqa: E402
from hashbench.platform.evaluation.engines import FaissEngine, TorchEngine  # noqa: E402
from hashbench.platform.evaluation.inputs import prepare  # noqa: E402


def pml_rows():
    out = []
    x, y = blobs(0, 1000)
    y[::10] = 1000 + np.arange(100)
    ours = evaluate(x, x, y, y, distance="l2", ks=[1, "all"], ties="index", exclude_self=True, exclude_no_hit=True)
    out.append(("PML same-set, 10% lone items, n=1000", ours, pml_accuracy(x, y)))
    xq, yq = blobs(1, 500)
    xr, yr = blobs(2, 2000)
    yq[::10] = 50
    ours = evaluate(xq, xr, yq, yr, distance="l2", ks=[1, "all"], ties="index", exclude_no_hit=True)
    out.append(("PML query/reference, 10% no-hit queries", ours, pml_accuracy(xq, yq, xr, yr)))
    rng = np.random.default_rng(3)
    x, _ = blobs(3, 800)
    lab = (rng.random((800, 5)) < 0.3).astype(np.float32)
    lab[::10] = 0
    ours = evaluate(x, x, lab, lab, distance="l2", ks=[1, "all"], ties="index", exclude_self=True, exclude_no_hit=True)
    out.append(("PML same-set multi-hot, share-a-label", ours, pml_accuracy(x, lab, comparator=share_a_label)))
    for name, res, ref in out:
        diff = max(abs(res[OURS[m]] - ref[m]) for m in PML_METRICS)
        print(f"| {name} | {diff:.1e} | " + ", ".join(f"{m}={ref[m]:.6f}" for m in PML_METRICS) + " |")


def deephash_rows():
    for bits in (16, 64):
        for multi in (False, True):
            qc, dc, ql, dl = deephash_case(bits + multi, 200, 2000, bits, 10, multi)
            ks = [10, 100, 1000, "N-1"]
            ours = evaluate(qc, dc, ql, dl, ks=ks, ties="index", map_at_r=False, hamming_radius=None)
            diffs = [abs(ours[f"mAP@{k}"] - calc_top_map(qc, dc, ql, dl, -1 if k == "N-1" else k)) for k in ks]
            print(f"| CalcTopMap (stable), {bits} bits, {'multi' if multi else 'single'}-label, k=10,100,1000,topK=-1 "
                  f"| {max(diffs):.1e} | mAP@1000={ours['mAP@1000']:.6f}, mAP@N-1={ours['mAP@N-1']:.6f} |")


def gpu_rows(nq, n, dim):
    rng = np.random.default_rng(0)
    db = rng.normal(size=(n, dim)).astype(np.float32)
    q = rng.normal(size=(nq, dim)).astype(np.float32)
    cuda = prepare(q, db, np.zeros(nq), np.zeros(n), distance="l2", bits=None, device=torch.device("cuda"))
    cpu = prepare(q, db, np.zeros(nq), np.zeros(n), distance="l2", bits=None, device=torch.device("cpu"))
    for k in (100, 1000):
        g = TorchEngine(cuda).ranking(cuda.query, k)[0].cpu()
        c = torch.cat([TorchEngine(cpu).ranking(cpu.query[s:s + 250], k)[0] for s in range(0, nq, 250)])
        print(f"| float L2 k={k}: rows where CUDA torch engine != CPU exact order | {int((g != c).any(1).sum())} |")
    codes = rng.integers(0, 2, (20000, 64))
    codes[1::7] = codes[::7][:codes[1::7].shape[0]]                  # exact duplicates
    y = rng.integers(0, 10, 20000)
    y[::50] = 100 + np.arange(400)                                     # lone items
    for ties in ("index", "tie-aware"):
        ref = evaluate(codes, codes, y, y, ks=[10, 100, 1000, "all"], ties=ties, exclude_self=True,
                       exclude_no_hit=True)
        for engine in ("torch", "auto"):
            for extra in ({}, {"map_at_r": False, "hamming_radius": None}):
                ks = [10, 100, 1000] if extra else [10, 100, 1000, "all"]
                res = evaluate(codes, codes, y, y, ks=ks, ties=ties, exclude_self=True, exclude_no_hit=True,
                               device="cuda", engine=engine, **extra)
                keys = [k for k in ref if k.startswith(("mAP@", "P@", "R@", "MAP@R", "R-prec")) and k in res]
                diff = max(abs(res[k] - ref[k]) for k in keys)
                print(f"| same-set Hamming 20000 x 64 bits, ties={ties}, engine={res['protocol']['engine']}"
                      f"{' top-k only' if extra else ''}: max |CUDA - CPU| | {diff:.1e} |")


def l2_rows(nq, n, dim):
    import faiss

    rng = np.random.default_rng(0)
    db = rng.normal(size=(n, dim)).astype(np.float32)
    q = rng.normal(size=(nq, dim)).astype(np.float32)
    prep = prepare(q, db, np.zeros(nq), np.zeros(n), distance="l2", bits=None, device=torch.device("cpu"))
    torch_eng, faiss_eng = TorchEngine(prep), FaissEngine(prep)
    index = faiss.IndexFlatL2(dim)
    index.add(db)
    step = 250
    for k in (100, 1000):
        t0 = time.perf_counter()
        exact = torch.cat([torch_eng.ranking(prep.query[s:s + step], k)[0] for s in range(0, nq, step)]).numpy()
        t1 = time.perf_counter()
        via_faiss = torch.cat([faiss_eng.ranking(prep.query[s:s + step], k)[0] for s in range(0, nq, step)]).numpy()
        t2 = time.perf_counter()
        old = np.concatenate([torch.sort(torch_eng.distances(prep.query[s:s + step]), dim=1, stable=True)[1][:, :k]
                              .numpy() for s in range(0, nq, step)])
        _, raw = index.search(q, k)
        # the exact order checked independently on every row: float64 per-pair distances, stable argsort
        db64 = db.astype(np.float64)
        ref = np.concatenate([np.argsort(((q[s:s + 10, None, :].astype(np.float64) - db64[None]) ** 2).sum(2), axis=1,
                                         kind="stable")[:, :k] for s in range(0, nq, 10)])
        rows = lambda a: int((a != ref).any(1).sum())  # noqa: E731
        print(f"| k={k} | {rows(old)} | {rows(raw)} | {int((old != raw).any(1).sum())} | {rows(exact)} | "
              f"{rows(via_faiss)} | {int((exact != via_faiss).any(1).sum())} | {t1 - t0:.1f} s / {t2 - t1:.1f} s |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--db", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| reference | max abs difference | reference values |\n|---|---|---|")
    pml_rows()
    deephash_rows()
    print(f"\nFloat L2, {a.queries} Gaussian queries x {a.db} items, {a.dim} dims: top-k rows whose ids differ "
          f"from the exact (float64 distance, index) order")
    print("| k | before: torch float32 | faiss IndexFlatL2 | before: torch vs faiss | now: torch engine | "
          "now: faiss engine | now: torch vs faiss | time torch / faiss engine |\n|---|---|---|---|---|---|---|---|")
    l2_rows(a.queries, a.db, a.dim)
    if a.device == "cuda":
        print("\n| GPU check | value |\n|---|---|")
        gpu_rows(a.queries, a.db, a.dim)


if __name__ == "__main__":
    main()
