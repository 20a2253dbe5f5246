"""Train a grid of (method, dataset, code length, seed) in-process and print one table row per run.

The acceptance runs of the method issues use it, on a CPU or on one GPU:

    python benchmarks/train_matrix.py --methods dch,drh,dph,drh-nq \
        --datasets pneumoniamnist --bits 16,32,64 --epochs 3 --json-out runs/matrix.json

With ``--seeds N`` every cell is trained with seeds ``--seed`` … ``--seed + N − 1`` and a summary
table gives, per (entry, dataset, bits), the mean test mAP over the seeds and the half-width of its
95 % Student-t confidence interval. ``--compare A:B`` adds the paired difference A − B (same seed,
same data) with its 95 % interval, and whether it excludes 0:

    python benchmarks/train_matrix.py --methods dch,dch-ksh --datasets busi --bits 16 --seeds 3 \
        --compare dch:dch-ksh --set dch-ksh@busi:anchors=300

Each run goes through the same training loop as ``hashbench train --local`` (``run_local``), so the
numbers are the ones the leaderboard would hold: test mAP@100 (queries = test split, database =
train split, tie-aware expected AP, "hits" convention unless the protocol column says otherwise).
A method's extra readouts (e.g. ``ce-embedding``'s sign codes, ``drh``'s float ``drh-nb``) get rows
of their own under their leaderboard entry name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

SUMMARY_METRICS = ("test_mAP@100", "test_mAP@all")


def _parse_sets(items, error) -> dict:
    """``METHOD[@DATASET]:KEY=VALUE`` → {(method, dataset or None): {key: value}}."""
    out: dict = {}
    for item in items:
        target, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        method, _, dataset = target.partition("@")
        if not (method and key and value):
            error(f"--set {item!r}: expected METHOD[@DATASET]:KEY=VALUE")
        out.setdefault((method, dataset or None), {})[key] = value
    return out


def _params_for(sets: dict, method: str, dataset: str) -> dict:
    return {**sets.get((method, None), {}), **sets.get((method, dataset), {})}


def mean_ci(values) -> tuple:
    """``(mean, 95 % Student-t half-width, n)`` (the leaderboard's); the half-width is NaN below two values."""
    from hashbench.platform.stats import mean_ci as _mean_ci

    return _mean_ci(values, 0.95)


def _fmt_ci(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def summarise(rows: list) -> list:
    """Per (entry, dataset, bits): n seeds, mean and 95 % CI of each summary metric."""
    groups: dict = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["entry"], r["dataset"], r["bits"]), []).append(r)
    out = []
    for (entry, dataset, bits), rs in groups.items():
        s = {"entry": entry, "dataset": dataset, "bits": bits, "seeds": sorted(r["seed"] for r in rs)}
        for m in SUMMARY_METRICS:
            s[m], s[m + "_ci95"], s["n"] = mean_ci(r.get(m) for r in rs)
        out.append(s)
    return out


def compare(rows: list, pairs: list) -> list:
    """Paired differences A − B of test mAP@100 over the seeds both completed, per dataset and bits."""
    by = {(r["entry"], r["dataset"], r["bits"], r["seed"]): r for r in rows if "error" not in r}
    out = []
    for a, b in pairs:
        cells = sorted({(d, k) for (e, d, k, _) in by if e == a})
        for dataset, bits in cells:
            diffs = [by[(a, dataset, bits, s)]["test_mAP@100"] - by[(b, dataset, bits, s)]["test_mAP@100"]
                     for (e, d, k, s) in by if (e, d, k) == (a, dataset, bits) and (b, dataset, bits, s) in by]
            mean, half, n = mean_ci(diffs)
            verdict = ("inconclusive (one seed)" if n < 2 else
                       f"{a} better" if mean - half > 0 else f"{b} better" if mean + half < 0 else "inconclusive")
            out.append({"a": a, "b": b, "dataset": dataset, "bits": bits, "n": n, "diff_mAP@100": mean,
                        "diff_ci95": half, "verdict": verdict})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="", help="comma-separated method ids")
    ap.add_argument("--datasets", default="", help="comma-separated dataset names or store paths")
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the method's)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD[@DATASET]:KEY=VALUE",
                    help="a hyperparameter for one method (on one dataset with @DATASET), e.g. drh:depth=34 "
                         "or dch-sdh@busi:anchors=500 (repeatable; the dataset-specific value wins)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: a GPU when there is one)")
    ap.add_argument("--out", default="runs/matrix")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell: --seed, --seed + 1, … (default 1)")
    ap.add_argument("--compare", default="", metavar="A:B[,C:D]",
                    help="paired differences of test mAP@100 (entry A − entry B, same seeds) with 95 %% CIs")
    ap.add_argument("--json-out", default=None, help="also write every run, the summary and the comparisons here")
    ap.add_argument("--leaderboard", default=None, metavar="DIR",
                    help="also append every run's rows to this leaderboard (as hashbench train does), e.g. for "
                         "hashbench compare")
    ap.add_argument("--merge", default="", metavar="FILE[,FILE]",
                    help="train nothing: read the runs of earlier --json-out files (e.g. parallel processes) "
                         "and print their summary and --compare tables")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    pairs = []
    for item in filter(None, args.compare.split(",")):
        a, _, b = item.partition(":")
        if not (a and b):
            ap.error(f"--compare {item!r}: expected A:B")
        pairs.append((a, b))
    sets = _parse_sets(args.set, ap.error)
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.merge:
        rows = []
        for path in args.merge.split(","):
            with open(path) as f:
                rows.extend(json.load(f)["runs"])
        seeds = sorted({r["seed"] for r in rows})
    elif not (args.methods and args.datasets):
        ap.error("--methods and --datasets are required (unless --merge)")
    else:
        rows = train(args, sets, seeds)
    report(rows, pairs, seeds, args.json_out)
    return 0 if all("error" not in r for r in rows) else 1


def train(args, sets: dict, seeds: list) -> list:
    """Every (dataset, method, bits, seed) through ``run_local``; one printed row per readout."""
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.registry import get_method
    from hashbench.platform.training import TrainConfig, run_local

    leaderboard = None
    if args.leaderboard:
        from hashbench.platform.leaderboard import append_row, check_writable, now_iso, rows_from_result
        leaderboard = check_writable(args.leaderboard)
    rows = []
    header = ("entry", "dataset", "bits", "seed", "epochs", "val mAP@100", "test mAP@100", "test mAP@all",
              "train img/s", "encode img/s", "train s", "total s", "device")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for dataset in args.datasets.split(","):
        for method in args.methods.split(","):
            for bits in (int(b) for b in args.bits.split(",")):
                for seed in seeds:
                    t0 = time.perf_counter()
                    try:
                        cfg = TrainConfig(method=method, dataset=dataset, bits=bits, epochs=args.epochs,
                                          params=_params_for(sets, method, dataset), batch_size=args.batch_size,
                                          seed=seed, out_dir=args.out, device=args.device)
                        started = now_iso() if leaderboard else None
                        res = run_local(cfg)
                        for lb_row in rows_from_result(res, started_at=started) if leaderboard else ():
                            append_row(leaderboard, lb_row)  # one row per readout, as `hashbench train` writes
                    except HashbenchError as exc:
                        print(f"| {method} | {dataset} | {bits} | {seed} | error: {exc} |", flush=True)
                        rows.append({"entry": method, "method": method, "dataset": dataset, "bits": bits,
                                     "seed": seed, "error": str(exc)})
                        _save(args.json_out, {"runs": rows})
                        continue
                    total = time.perf_counter() - t0
                    m_obj = get_method(method)
                    m, tp, tm = res.metrics, res.throughput, res.timings
                    base = {"method": method, "dataset": dataset, "bits": bits, "seed": seed,
                            "epochs": res.epochs_run, "train_images_per_s": tp.get("train_images_per_s"),
                            "encode_images_per_s": tp.get("encode_images_per_s"), "train_s": tm.get("train_s"),
                            "total_s": total, "device": res.device, "run_dir": res.run_dir}
                    readouts = [(method, m, res.protocol)]
                    for ro in m_obj.readouts:   # the same model read out another way (its own entry)
                        extra = (getattr(res, "readouts", None) or {}).get(ro.name)
                        if extra:
                            readouts.append((m_obj.entry(ro), extra.get("metrics", {}), extra.get("protocol", {})))
                    for entry, met, protocol in readouts:
                        row = {**base, "entry": entry, "val_mAP@100": met.get("val_mAP@100"),
                               "test_mAP@100": met.get("test_mAP@100"), "test_mAP@all": met.get("test_mAP@all"),
                               "protocol": protocol}
                        rows.append(row)
                        cells = [entry, dataset, bits, seed, res.epochs_run] + [
                            f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k])
                            for k in ("val_mAP@100", "test_mAP@100", "test_mAP@all")] + [
                            f"{row[k]:.0f}" if isinstance(row[k], (int, float)) else "-"
                            for k in ("train_images_per_s", "encode_images_per_s")] + [
                            f"{row['train_s']:.1f}", f"{row['total_s']:.1f}", res.device]
                        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
                    _save(args.json_out, {"runs": rows})   # after every run: a killed matrix keeps its runs
    return rows


def _save(path, data: dict) -> None:
    """Write ``data`` as JSON atomically (temporary file + rename); nothing when ``path`` is None."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def report(rows: list, pairs: list, seeds: list, json_out) -> None:
    """The summary over seeds and the paired comparisons (printed; with the runs in ``json_out``)."""
    summary = summarise(rows)
    if summary:
        print(f"\nMean over seeds {seeds} ± half-width of the 95 % Student-t interval (n = seeds completed):\n")
        print("| entry | dataset | bits | n | test mAP@100 | test mAP@all |")
        print("|---|---|---|---|---|---|")
        for s in summary:
            print(f"| {s['entry']} | {s['dataset']} | {s['bits']} | {s['n']} | "
                  f"{_fmt_ci(s['test_mAP@100'], s['test_mAP@100_ci95'])} | "
                  f"{_fmt_ci(s['test_mAP@all'], s['test_mAP@all_ci95'])} |")
    comparisons = compare(rows, pairs)
    if comparisons:
        print("\nPaired differences of test mAP@100 (A − B, same seed) ± 95 % interval:\n")
        print("| A | B | dataset | bits | n | A − B | verdict |")
        print("|---|---|---|---|---|---|---|")
        for c in comparisons:
            print(f"| {c['a']} | {c['b']} | {c['dataset']} | {c['bits']} | {c['n']} | "
                  f"{_fmt_ci(c['diff_mAP@100'], c['diff_ci95'])} | {c['verdict']} |")
    _save(json_out, {"runs": rows, "summary": summary, "comparisons": comparisons})


if __name__ == "__main__":
    sys.exit(main())
