"""``hashbench fewshot``: the few-shot protocol of Medela & Picon (2020) for one or more methods."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fewshot", help="few-shot protocol: train on N samples per class, R repeats, kNN BAC / silhouette / DB",
        description="For each METHOD: train on SHOTS random train samples per class (repeat r uses seed "
                    "SEED+r, the same subsets for every method), R times, with the same test set; fit a "
                    "kNN classifier on the train embeddings, predict the test classes, and report mean ± sd "
                    "of balanced accuracy, silhouette and Davies-Bouldin of the test embeddings. Each "
                    "repeat is an in-process training run (OUT/NAME/repeat-r); the table goes to "
                    "OUT/NAME/fewshot.json.")
    p.add_argument("methods", nargs="+", metavar="METHOD", help="method ids (see `hashbench methods`)")
    p.add_argument("--dataset", required=True, help="prepared single-label dataset name or store directory")
    p.add_argument("--bits", type=int, default=128, help="embedding / code length (paper: 128)")
    p.add_argument("--shots", type=int, default=20, help="train samples per class (paper: 20)")
    p.add_argument("--repeats", type=int, default=10, help="repeats with different samples (paper: 10)")
    p.add_argument("--knn-k", type=int, default=5, help="neighbours of the kNN classifier (scikit-learn's 5)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the method's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the method's)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="a hyperparameter for every method, or for one with METHOD: (repeatable)")
    p.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                   help="augmentation option, as for `hashbench train` (default: none, as in the paper)")
    p.add_argument("--selection", choices=("none", "fewshot-val"), default="none",
                   help="none (default): train the fixed epochs and keep the last; fewshot-val: keep the epoch "
                        "with the best mAP@100 on a few-shot val draw (SHOTS per class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), help="device (default: a GPU if any)")
    p.add_argument("--out", default="runs/fewshot", help="output directory (default: runs/fewshot)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _params(items: list, method: str) -> dict:
    from hashbench.platform.errors import HashbenchError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HashbenchError(f"--set {item!r}: expected [METHOD:]KEY=VALUE")
        scope, colon, name = key.strip().rpartition(":")
        if colon and scope != method:
            continue
        out[name] = value.strip()
    return out


def run(args) -> int:
    from hashbench.platform.cli.train_cmd import parse_pairs
    from hashbench.platform.fewshot import METRICS, FewShotConfig, run_fewshot

    configs = [FewShotConfig(method=m, dataset=args.dataset, bits=args.bits, shots=args.shots,
                             repeats=args.repeats, knn_k=args.knn_k, seed=args.seed, epochs=args.epochs,
                             batch_size=args.batch_size, params=_params(args.params, m),
                             augment=parse_pairs(args.augment, "--augment"), device=args.device, out_dir=args.out,
                             selection=args.selection)
               for m in args.methods]
    results = []
    for cfg in configs:
        res = run_fewshot(cfg, on_repeat=lambda row, m=cfg.method: print(
            f"{m} repeat {row['repeat']}: BAC {row['bac']:.4f}, silhouette {row['silhouette']:.4f}, "
            f"DB {row['davies_bouldin']:.4f} ({row['time_s']:.1f} s)", file=sys.stderr))
        results.append(res)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    print(f"{'method':<16}" + "".join(f"{m:>22}" for m in METRICS))
    for res in results:
        s = res["summary"]
        print(f"{res['config']['method']:<16}" + "".join(f"{s[m]['mean']:>14.4f} ± {s[m]['sd']:<5.3f}"
                                                       for m in METRICS))
    return 0
