"""``hashbench reproduce RUN_ID``: re-run one leaderboard row from its recorded configuration."""

from __future__ import annotations

import json
import math
import time

#: the metrics compared (those present in the row's metrics_json are all compared)
HEADLINE = ("val_mAP@100", "test_mAP@100")


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="re-run a leaderboard row from its recorded config and compare",
                       description="Re-train one leaderboard row (by run id or row id) from its recorded "
                                   "configuration, after checking that the dataset still has the recorded "
                                   "fingerprint, and print every metric: recorded, reproduced, difference. "
                                   "The re-run goes to a new run directory and adds no leaderboard row.")
    p.add_argument("run_id", help="the run_id (or row_id) of a leaderboard row")
    p.add_argument("--leaderboard", "--dir", dest="leaderboard", metavar="DIR",
                   help="leaderboard directory (default: $HASHBENCH_LEADERBOARD, else the most recently "
                        "written one: see docs/leaderboard.md)")
    p.add_argument("--out", help="where the re-run goes (default: the recorded out_dir)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device for the re-run (default: a GPU if any)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="exit 1 when a test metric differs by more than this (default: only report)")
    p.add_argument("--verbose", action="store_true",
                   help="show library output instead of writing it to the re-run's reproduce.log")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def reproduce_config(row: dict, *, out: str | None = None, device: str | None = None):
    """The TrainConfig of ``row`` with a fresh run name; refuses a dataset whose fingerprint changed."""
    from hashbench.platform.data import load_dataset
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.training import TrainConfig

    if not row.get("config_json"):
        raise HashbenchError(f"row {row['run_id']!r} has no recorded configuration (config_json)")
    d = json.loads(row["config_json"])
    ds = load_dataset(d.get("dataset_path") or d["dataset"])
    if ds.fingerprint != row["dataset_fingerprint"]:
        raise HashbenchError(
            f"dataset {row['dataset']!r} ({ds.path}) has fingerprint {ds.fingerprint[:16]}…, but run "
            f"{row['run_id']!r} was trained on {row['dataset_fingerprint'][:16]}…; prepare the same data "
            f"again (same source and options) to reproduce it")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    d["run_name"] = f"{row['run_id']}-repro-{stamp}"
    if out:
        d["out_dir"] = out
    if device:
        d["device"] = device
    return TrainConfig.from_dict(d)


def compare(recorded: dict, reproduced: dict) -> list:
    """``[(metric, recorded, reproduced, difference)]`` over the metrics both have."""
    out = []
    for k in sorted(set(recorded) & set(reproduced)):
        a, b = recorded[k], reproduced[k]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out.append((k, float(a), float(b), float(b) - float(a)))
    return out


def run(args) -> int:
    from hashbench.platform.cli.output import run_with_progress
    from hashbench.platform.defaults import find_leaderboard
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import find_row, read_leaderboard
    from hashbench.platform.training import run_local, run_training

    directory, how = find_leaderboard(args.leaderboard)
    try:
        row = find_row(read_leaderboard(directory), args.run_id)
    except HashbenchError as exc:
        raise HashbenchError(f"{exc} (in leaderboard {directory}{'' if how == 'given' else f', {how}'}; "
                             f"pass --leaderboard DIR)") from None
    cfg = reproduce_config(row, out=args.out, device=args.device)
    print(f"reproducing {row['run_id']} ({row['method']}, {row['dataset']}, {row['bits']} bits, seed {cfg.seed}, "
          f"{cfg.torch_threads} torch thread(s)) from {directory} -> {cfg.run_dir}", flush=True)
    result, _ = run_with_progress(cfg, run_local if cfg.workers == 1 else run_training, verbose=args.verbose,
                                  log_name="reproduce.log")
    rows = compare(json.loads(row["metrics_json"] or "{}"), result.metrics)
    worst = max((abs(d) for k, _, _, d in rows if k.startswith("test_") and math.isfinite(d)), default=0.0)
    if args.json:
        print(json.dumps({"run_id": row["run_id"], "reproduced_run": result.run_id, "run_dir": result.run_dir, "max_abs_test_diff": worst,
                          "metrics": [dict(zip(("metric", "recorded", "reproduced", "diff"), r)) for r in rows]},
                         indent=2))
    else:
        print(f"{'metric':<20} {'recorded':>10} {'reproduced':>10} {'diff':>10}")
        for k, a, b, d in rows:
            print(f"{k:<20} {a:>10.4f} {b:>10.4f} {d:>+10.4f}")
        print(f"largest test-metric difference: {worst:.4g} (recorded on {row['device']}, "
              f"commit {row['hashbench_commit']}; reproduced on {result.device})")
    if args.tolerance is not None and worst > args.tolerance:
        return 1
    return 0
