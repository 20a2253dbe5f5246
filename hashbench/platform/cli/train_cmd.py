"""``hashbench train``: train one method on one dataset (Ray Train, or in-process with --local)."""

from __future__ import annotations

import json

from hashbench.platform.errors import HashbenchError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train one method on one dataset and evaluate it",
        description="Train METHOD on a prepared dataset with the one training loop (Ray Train TorchTrainer, "
                    "or in this process with --local), then encode the train (database) and test (query) "
                    "splits, evaluate, and write the run directory OUT/RUN (config.json, metrics.json, "
                    "codes.npz, model.pt).")
    p.add_argument("method", help="method id (see `hashbench methods`)")
    p.add_argument("--dataset", required=True, help="prepared dataset name or store directory")
    p.add_argument("--bits", required=True, type=int, help="code length K")
    p.add_argument("--epochs", type=int, help="epochs (default: the method's)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the method's)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyperparameter, e.g. --set gamma=1e-3 (repeatable)")
    p.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                   help="augmentation option: enabled, hflip, vflip, rot90 (true/false), brightness, "
                        "contrast (0..1) (repeatable)")
    p.add_argument("--eval-ks", metavar="K,K,...",
                   help="test cut-offs k of mAP@k / P@k / R@k, comma-separated integers or 'all' "
                        "(default: 10,100,1000,all; 100 is always added, it drives selection)")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better val mAP@100")
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (DDP)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="directory for run directories (default: runs)")
    p.add_argument("--run-name", help="run directory name (default: METHOD-DATASET-Kb-sSEED-TIME-RANDOM); "
                                      "an unfinished run of that name resumes")
    p.add_argument("--storage-path", help="Ray Train storage for checkpoints (default: OUT/_ray)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures to recover from")
    p.add_argument("--local", action="store_true", help="train in this process without Ray")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device for --local (default: a GPU if any)")
    p.add_argument("--compile", nargs="?", const="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the training forward (mode: default, reduce-overhead = CUDA graphs, "
                        "max-autotune)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="run every training step eagerly (default: one CUDA graph per step on a single GPU "
                        "for methods that allow it)")
    p.add_argument("--plateau-on", choices=("val_map", "train_loss"),
                   help="what a plateau lr scheduler is stepped with: the validation mAP@100 or the epoch's "
                        "mean training loss (default: the method's; DRH family: train_loss)")
    p.add_argument("--precise-bn", action="store_true",
                   help="re-estimate every batch norm's running statistics with each epoch's final weights "
                        "over the train split before encoding (docs/training.md)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads (default 1); recorded in the run's configuration, since CPU "
                        "results depend on it")
    p.add_argument("--leaderboard", "--dir", dest="leaderboard", default="leaderboard", metavar="DIR",
                   help="leaderboard directory that gets this run's row (keyed by its run id, no sweep id; "
                        "default: ./leaderboard)")
    p.add_argument("--no-leaderboard", action="store_true", help="write no leaderboard row")
    p.add_argument("--verbose", action="store_true",
                   help="show library output (Ray, faiss, warnings) instead of writing it to RUN_DIR/train.log")
    p.add_argument("--json", action="store_true", help="print the final metrics and configuration as JSON")
    p.set_defaults(func=run)


def parse_pairs(items: list, flag: str) -> dict:
    """``KEY=VALUE`` command-line items as a dict; a malformed item names ``flag`` in the error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HashbenchError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_eval_ks(text) -> dict:
    """``--eval-ks 5,10,all`` as TrainConfig keyword arguments (``{}`` when not given)."""
    if text is None:
        return {}
    items = [t.strip() for t in str(text).split(",")]
    ks = []
    for item in items:
        if item == "all":
            ks.append(item)
        elif item.isdigit() and int(item) > 0:
            ks.append(int(item))
        else:
            raise HashbenchError(f"--eval-ks {text!r}: {item!r} is not a positive integer or 'all'; "
                                 f"give e.g. --eval-ks 5,10,20,50,all")
    return {"eval_ks": tuple(ks)}


def run(args) -> int:
    from hashbench.platform.cli.output import run_with_progress
    from hashbench.platform.defaults import remember_leaderboard
    from hashbench.platform.leaderboard import append_row, check_writable, now_iso, rows_from_result
    from hashbench.platform.training import TrainConfig, run_local, run_training

    cfg = TrainConfig(
        method=args.method, dataset=args.dataset, bits=args.bits, epochs=args.epochs,
        params=parse_pairs(args.params, "--set"), batch_size=args.batch_size, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker, seed=args.seed,
        out_dir=args.out, run_name=args.run_name, augment=parse_pairs(args.augment, "--augment"),
        patience=args.patience, max_failures=args.max_failures, storage_path=args.storage_path,
        device=args.device, compile=args.compile, cuda_graph=args.cuda_graph, torch_threads=args.torch_threads,
        plateau_on=args.plateau_on, precise_bn=args.precise_bn, **parse_eval_ks(args.eval_ks))
    leaderboard = None if args.no_leaderboard else check_writable(args.leaderboard)
    started = now_iso()
    result, log = run_with_progress(cfg, run_local if args.local else run_training, verbose=args.verbose)
    row_file = None
    if leaderboard is not None:
        # one row per readout of the run (jtanet: float and sign; drh: sign and DRH-NB float)
        row_file = [append_row(leaderboard, row) for row in rows_from_result(result, started_at=started)][0]
        remember_leaderboard(leaderboard)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, "metrics": result.metrics,
                          "protocol": result.protocol, "timings": result.timings,
                          "throughput": result.throughput, "device": result.device,
                          "epochs_run": result.epochs_run, "config": result.config,
                          "leaderboard_row": str(row_file) if row_file else None, "log": log},
                         indent=2, default=str))
    else:
        m = result.metrics
        print(f"{result.run_id}: test mAP@100 {m.get('test_mAP@100', float('nan')):.4f}, "
              f"val mAP@100 {m['val_mAP@100']:.4f}, {result.epochs_run} epochs, "
              f"train {result.timings['train_s']:.1f} s, total {result.timings['total_s']:.1f} s, "
              f"encode {result.throughput['encode_images_per_s']:.0f} images/s -> {result.run_dir}")
        if row_file is not None:
            print(f"leaderboard row: {row_file} (hashbench leaderboard --leaderboard {leaderboard})")
        if log:
            print(f"log: {log}")
    return 0
