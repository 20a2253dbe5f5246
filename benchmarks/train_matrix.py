"""Train a grid of (method, dataset, code length) in-process and print one table row per run.

The acceptance runs of the method issues use it, on a CPU or on one GPU:

    python benchmarks/train_matrix.py --methods dch,drh,dph,drh-nq,drh-nb \
        --datasets pneumoniamnist --bits 16,32,64 --epochs 3 --json-out runs/matrix.json

Each run goes through the same training loop as ``hashbench train --local`` (``run_local``), so the
numbers are the ones the leaderboard would hold: test mAP@100 (queries = test split, database =
train split, tie-aware expected AP, "hits" convention unless the protocol column says otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", required=True, help="comma-separated method ids")
    ap.add_argument("--datasets", required=True, help="comma-separated dataset names or store paths")
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the method's)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a hyperparameter for one method, e.g. drh:depth=34 (repeatable)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: a GPU when there is one)")
    ap.add_argument("--out", default="runs/matrix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default=None, help="also write every run's summary to this JSON file")
    args = ap.parse_args(argv)

    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.training import TrainConfig, run_local

    overrides: dict = {}
    for item in args.set:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if not (method and key and value):
            ap.error(f"--set {item!r}: expected METHOD:KEY=VALUE")
        overrides.setdefault(method, {})[key] = value

    rows = []
    header = ("method", "dataset", "bits", "epochs", "val mAP@100", "test mAP@100", "test mAP@all",
              "train img/s", "encode img/s", "train s", "total s", "device")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for dataset in args.datasets.split(","):
        for method in args.methods.split(","):
            for bits in (int(b) for b in args.bits.split(",")):
                t0 = time.perf_counter()
                try:
                    cfg = TrainConfig(method=method, dataset=dataset, bits=bits, epochs=args.epochs,
                                      params=overrides.get(method, {}), batch_size=args.batch_size,
                                      seed=args.seed, out_dir=args.out, device=args.device)
                    res = run_local(cfg)
                except HashbenchError as exc:
                    print(f"| {method} | {dataset} | {bits} | error: {exc} |", flush=True)
                    rows.append({"method": method, "dataset": dataset, "bits": bits, "error": str(exc)})
                    continue
                m, tp, tm = res.metrics, res.throughput, res.timings
                row = {"method": method, "dataset": dataset, "bits": bits, "epochs": res.epochs_run,
                       "val_mAP@100": m.get("val_mAP@100"), "test_mAP@100": m.get("test_mAP@100"),
                       "test_mAP@all": m.get("test_mAP@all"),
                       "train_images_per_s": tp.get("train_images_per_s"),
                       "encode_images_per_s": tp.get("encode_images_per_s"),
                       "train_s": tm.get("train_s"), "total_s": time.perf_counter() - t0,
                       "device": res.device, "protocol": res.protocol, "run_dir": res.run_dir}
                rows.append(row)
                cells = [method, dataset, bits, res.epochs_run] + [
                    f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k])
                    for k in ("val_mAP@100", "test_mAP@100", "test_mAP@all")] + [
                    f"{row[k]:.0f}" if isinstance(row[k], (int, float)) else "-"
                    for k in ("train_images_per_s", "encode_images_per_s")] + [
                    f"{row['train_s']:.1f}", f"{row['total_s']:.1f}", res.device]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
