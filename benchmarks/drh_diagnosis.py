"""Why the DRH family trailed DCH (issue 19): learning curves and one-factor-at-a-time experiments.

Every run goes through the platform's training loop (``run_local``, the same as ``hashbench train
--local``), so the numbers are leaderboard numbers: test mAP@100 of the best-validation epoch.
Per-epoch rows come from the run's history (mean train loss terms over the epoch's steps, val mAP@100,
learning rate). Experiments (``--experiments``, comma-separated; default all):

* ``curves``   per-epoch J_S, J_Q, J_B, R_O, lr and val mAP for drh, drh-nq, dph and dch.
* ``bits``     bit usage of the database codes of the runs so far (constant bits, distinct codes).
* ``codes``    the trained drh model's code statistics: mean |h|, squared distance between items, the
               perplexity of the NCA rows p_i· (how many neighbours a row's softmax spreads over),
               with the J_S distance summed over bits (paper) or averaged, at 16 and 64 bits.
* ``balance``  drh and dph with J_B as printed vs centred per bit.
* ``lr``       drh at several learning rates, with the plateau schedule (patience 5) and without decay.
* ``scale``    drh at 16 and 64 bits with the J_S distance as a sum over bits vs a mean over bits.
* ``wd``       weight decay.
* ``batch``    batch size.
* ``arch``     width and depth.
* ``epochs``   drh (old and current defaults) vs dch at 1x, 2x, 4x the epochs.
* ``after``    before/after: drh, drh-nq, dph, old defaults (``OLD_DEFAULTS``) vs the current ones, and
               dch, per dataset, code length and seed, with means, 95 % intervals and constant bits.

``--old`` runs the DRH family with ``OLD_DEFAULTS`` in every experiment except ``after`` and ``epochs``
(which run both). Usage (CPU, small; the tables of docs/methods/drh.md, old network):

    python benchmarks/drh_diagnosis.py --device cpu --threads 1 --epochs 4 --old --experiments curves,bits
    python benchmarks/drh_diagnosis.py --old --datasets busi --epochs 15 --seeds 2 --experiments lr,balance

On a GPU at full size (issue 19's acceptance table, 3 seeds):

    python benchmarks/drh_diagnosis.py --device cuda --experiments after \\
        --datasets chula_rbc12,busi,pneumoniamnist --bits 16,32,64 --seeds 3 --epochs 0

``--epochs 0`` uses each dataset's epochs from ``--dataset-epochs`` (default
chula_rbc12=3, busi=15, pneumoniamnist=10, anything else 10). The old defaults of the ``after``
experiment are the values the methods had before the fix (``OLD_DEFAULTS``), passed as ``--set`` values,
so one checkout measures both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

#: the defaults drh / dph / drh-nq had before issue 19's fix (passed explicitly to reproduce "before")
OLD_DEFAULTS = {"fch_input": "raw", "lr_patience": 5}
DATASET_EPOCHS = {"chula_rbc12": 3, "busi": 15, "pneumoniamnist": 10}
EXPERIMENTS = ("curves", "codes", "bits", "balance", "lr", "scale", "wd", "batch", "arch", "epochs", "after")
FAMILY = ("drh", "drh-nq", "dph")


def run(method, dataset, bits, epochs, seed, device, threads, params=None, batch_size=None, out=None, train=None):
    """One training through ``run_local``: ``(RunResult, wall seconds)``; ``train``: further TrainConfig
    fields (``--train``, e.g. ``{"precise_bn": true, "plateau_on": "val_map"}``)."""
    from hashbench.platform.training import TrainConfig, run_local

    cfg = TrainConfig(method=method, dataset=dataset, bits=bits, epochs=epochs, params=dict(params or {}),
                      batch_size=batch_size, seed=seed, out_dir=out, device=device, torch_threads=threads,
                      eval_ks=(100,), **dict(train or {}))
    t = time.perf_counter()
    res = run_local(cfg)
    return res, time.perf_counter() - t


def table(headers, rows) -> str:
    """A markdown table; floats with 3 decimals (4 for mAP-like values below 1)."""
    def fmt(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.3f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_ci(values):
    """``(mean, 95 % Student-t half-width)``; half-width NaN below two values."""
    from hashbench.platform.stats import mean_ci as _mean_ci

    m, h, _ = _mean_ci(values, 0.95)
    return m, h


class Runner:
    """Runs trainings, prints one line per run, keeps every result for the JSON dump."""

    def __init__(self, args):
        self.args = args
        self.out = args.out or tempfile.mkdtemp(prefix="drh_diag_")
        self.records = []
        self.cpu_s = 0.0

    def __call__(self, method, dataset, bits, epochs, seed=0, params=None, batch_size=None, tag="", old=None):
        """One run; ``old`` (default: ``--old``) puts the pre-fix defaults under ``params`` (DRH family)."""
        if (self.args.old if old is None else old) and method in FAMILY:
            params = {**OLD_DEFAULTS, **(params or {})}
        res, wall = run(method, dataset, bits, epochs, seed, self.args.device, self.args.threads, params,
                        batch_size, self.out, self.args.train_options)
        self.cpu_s += wall
        rec = {"tag": tag, "method": method, "dataset": dataset, "bits": bits, "epochs": epochs, "seed": seed,
               "params": dict(params or {}), "train": dict(self.args.train_options),
               "batch_size": batch_size or res.config.get("batch_size"),
               "test_mAP@100": float(res.metrics["test_mAP@100"]), "val_mAP@100": float(res.metrics["val_mAP@100"]),
               "best_epoch": res.best_epoch, "history": res.history, "wall_s": wall, "run_dir": res.run_dir,
               "readouts": {k: float(v["metrics"]["test_mAP@100"]) for k, v in res.readouts.items()}}
        self.records.append(rec)
        if self.args.json_out:   # after every run, so a run cut short by a time limit keeps what finished
            with open(self.args.json_out, "w") as f:
                json.dump(self.records, f, indent=1, default=str)
        print(f"  [{wall:6.1f} s] {tag or method:28s} {dataset:15s} {bits:3d} b  seed {seed}  "
              f"test mAP@100 {rec['test_mAP@100']:.4f}  {json.dumps(rec['params'])}", flush=True)
        return rec


# ---------------------------------------------------------------- experiments

def curves(r: Runner, ds, bits, epochs):
    print(f"\n### Learning curves: {ds}, {bits} bits, {epochs} epochs (seed 0)\n")
    for m in FAMILY + ("dch",):
        rec = r(m, ds, bits, epochs)
        keys = [k for k in ("J_S", "J_Q", "J_B", "R_O", "classification", "quantization", "loss")
                if k in rec["history"][0]]
        rows = [[h["epoch"]] + [h[k] for k in keys] + [h["lr"], h["val_mAP@100"]] for h in rec["history"]]
        print(f"\n{m} (test mAP@100 {rec['test_mAP@100']:.4f}"
              + "".join(f", {k} {v:.4f}" for k, v in rec["readouts"].items()) + ")\n")
        print(table(["epoch"] + keys + ["lr", "val mAP@100"], rows))


def code_stats(run_dir, dataset, bits):
    """Statistics of a trained drh model's tanh outputs on 512 train items (train-mode batches of 128 are
    what J_S sees; here eval mode): mean |h|, median squared distance between items of the same / different
    class, and the mean perplexity exp(entropy) of the NCA rows p_i· over batches of 128."""
    import torch

    from hashbench.platform.data import load_dataset
    from hashbench.platform.registry import ModelContext, get_method
    from hashbench.platform.training.batches import SplitData

    ds = load_dataset(dataset)
    with open(os.path.join(run_dir, "config.json")) as f:
        hp = json.load(f)["hp"]
    m = get_method("drh")
    ctx = ModelContext(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes, bits=bits,
                       multi_label=ds.multi_label, mask_classes=2)
    net = m.build_model(ctx, hp)
    net.load_state_dict(torch.load(os.path.join(run_dir, "model.pt"), map_location="cpu", weights_only=True))
    net.eval()
    tr = SplitData.from_store(ds, "train", "cpu")
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(tr), generator=g)[:512]
    b = tr.batch(rows, {"enabled": False}, None)
    with torch.no_grad():
        h = net.encode(b.images).float()
    y = b.labels.float()
    same = (y @ y.T) > 0
    d2 = torch.cdist(h, h).pow(2)
    off = ~torch.eye(len(h), dtype=torch.bool)
    scale = 1.0 / bits if hp.get("distance") == "mean" else 1.0
    perp = []
    for s in range(0, 512, 128):
        blk = d2[s:s + 128, s:s + 128] * scale
        eye = torch.eye(len(blk), dtype=torch.bool)
        p = torch.softmax((-blk).masked_fill(eye, float("-inf")), 1)
        ent = -(p * p.clamp_min(1e-30).log()).sum(1)
        perp.append(ent.exp())
    return {"mean|h|": h.abs().mean().item(), "d2_same": d2[same & off].median().item(),
            "d2_diff": d2[~same].median().item() if (~same).any() else float("nan"),
            "perplexity": torch.cat(perp).mean().item()}


def codes(r: Runner, ds, epochs):
    print(f"\n### Code statistics of trained drh models: {ds}, {epochs} epochs\n")
    rows = []
    for bits in (16, 64):
        for dist in ("sum", "mean"):
            rec = r("drh", ds, bits, epochs, params={"distance": dist}, tag=f"drh distance={dist}")
            st = code_stats(rec["run_dir"], ds, bits)
            rows.append([bits, dist, st["mean|h|"], st["d2_same"], st["d2_diff"], st["perplexity"],
                         rec["test_mAP@100"]])
    print(table(["bits", "J_S distance", "mean abs h", "median d2 same class", "median d2 other class",
                 "NCA row perplexity (of 127)", "test mAP@100"], rows))


def bit_usage_of(run_dir):
    """``(near-constant bits, distinct codes, database size, mean |bit mean|)`` of a run's database codes
    (train split): a bit is near-constant when over 98 % of the items share its sign."""
    import numpy as np

    c = np.load(os.path.join(run_dir, "codes.npz"))
    db = c["db_codes"]
    if db.dtype == np.uint8:                          # packed sign bits
        db = np.unpackbits(db, axis=1)[:, :int(c["bits"])].astype(np.float64) * 2 - 1
    else:
        db = np.where(db >= 0, 1.0, -1.0)
    frac = (db > 0).mean(0)
    return (int(((frac < 0.02) | (frac > 0.98)).sum()), len({r.tobytes() for r in db}), len(db),
            float(np.abs(db.mean(0)).mean()))


def bit_usage(r: Runner, ds, bits, epochs):
    """Bit usage of every finished run so far on (ds, bits), plus drh/drh-nq/dph/dch if none ran yet."""
    print(f"\n### Bit usage of the database codes: {ds}, {bits} bits, {epochs} epochs\n")
    recs = [x for x in r.records if x["dataset"] == ds and x["bits"] == bits]
    if not recs:
        recs = [r(m, ds, bits, epochs) for m in FAMILY + ("dch",)]
    rows = []
    for x in recs:
        const, distinct, n, mbm = bit_usage_of(x["run_dir"])
        rows.append([x["tag"] or x["method"], x["seed"], const, f"{distinct} / {n}", mbm, x["test_mAP@100"]])
    print(table(["run", "seed", "near-constant bits", "distinct codes", "mean abs bit mean", "test mAP@100"],
                rows))


def sweep_one(r: Runner, title, ds, bits, epochs, variants, method="drh"):
    """variants: list of (label, params, batch_size)."""
    print(f"\n### {title}: {method}, {ds}, {bits} bits, {epochs} epochs, seeds {r.args.seed_list}\n")
    rows = []
    for label, params, bs in variants:
        vals = [r(method, ds, bits, epochs, seed=s, params=params, batch_size=bs, tag=f"{method} {label}")
                for s in r.args.seed_list]
        m, h = mean_ci([v["test_mAP@100"] for v in vals])
        last_js = sum(v["history"][-1].get("J_S", float("nan")) for v in vals) / len(vals)
        rows.append([label, m, h, last_js, sum(v["wall_s"] for v in vals) / len(vals)])
    print(table(["setting", "test mAP@100 (mean)", "± 95 %", "last-epoch J_S", "s / run"], rows))


def after(r: Runner, datasets, bits_list, seeds, epochs_for, methods=FAMILY, with_dch=True, sides=("before", "after")):
    print(f"\n### Before / after: seeds {seeds}\n")
    rows = []
    for ds in datasets:
        ep = epochs_for(ds)
        for bits in bits_list:
            ref = "-"
            if with_dch:
                dm, dh = mean_ci([r("dch", ds, bits, ep, seed=s)["test_mAP@100"] for s in seeds])
                ref = _pm(dm, dh)
            for m in methods:
                cells = []
                for label, params in (("before", OLD_DEFAULTS), ("after", None)):
                    if label not in sides:
                        cells += ["-", "-"]
                        continue
                    recs = [r(m, ds, bits, ep, seed=s, params=params, tag=f"{m} {label}", old=False) for s in seeds]
                    mm, hh = mean_ci([x["test_mAP@100"] for x in recs])
                    const = sum(bit_usage_of(x["run_dir"])[0] for x in recs) / len(recs)
                    cells += [_pm(mm, hh), const]
                rows.append([ds, ep, bits, m] + cells + [ref])
    print(table(["dataset", "epochs", "bits", "method", "before (fch_input=raw)", "constant bits before",
                 "after (defaults)", "constant bits after", "dch"], rows))


def _pm(mean, half) -> str:
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default="curves,codes,lr,scale,wd,batch,arch,epochs")
    p.add_argument("--datasets", default="pneumoniamnist", help="comma-separated (curves, sweeps: the first)")
    p.add_argument("--bits", default="32", help="comma-separated code lengths (after); the first elsewhere")
    p.add_argument("--epochs", type=int, default=4, help="0: per-dataset epochs (--dataset-epochs)")
    p.add_argument("--dataset-epochs", default="", help="NAME=EPOCHS,... (overrides the built-in table)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--old", action="store_true",
                   help="run the DRH family with the pre-fix defaults (OLD_DEFAULTS) in every experiment but "
                        "'after' and 'epochs', which run both")
    p.add_argument("--methods", default=",".join(FAMILY), help="after: DRH-family methods to compare")
    p.add_argument("--no-dch", action="store_true", help="after: leave out the dch reference runs")
    p.add_argument("--sides", default="before,after", help="after: which of before / after to run")
    p.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    p.add_argument("--json-out", default=None, help="write every run's record (history included) here")
    p.add_argument("--train", default="{}",
                   help='further TrainConfig fields for every run, as JSON: e.g. \'{"precise_bn": true}\'')
    args = p.parse_args(argv)
    try:
        args.train_options = json.loads(args.train)
    except json.JSONDecodeError as exc:
        p.error(f"--train: not JSON ({exc}): {args.train!r}")
    if not isinstance(args.train_options, dict):
        p.error(f"--train: expected a JSON object of TrainConfig fields, got {args.train!r}")
    exps = [e for e in args.experiments.split(",") if e]
    bad = [e for e in exps if e not in EXPERIMENTS]
    if bad:
        p.error(f"--experiments: unknown {bad}; valid: {', '.join(EXPERIMENTS)}")
    datasets = [d for d in args.datasets.split(",") if d]
    bits_list = [int(b) for b in args.bits.split(",") if b]
    args.seed_list = list(range(args.seeds))
    table_ep = dict(DATASET_EPOCHS)
    for item in filter(None, args.dataset_epochs.split(",")):
        k, _, v = item.partition("=")
        table_ep[k] = int(v)

    def epochs_for(ds):
        return args.epochs or table_ep.get(ds, 10)

    r = Runner(args)
    ds, bits, ep = datasets[0], bits_list[0], epochs_for(datasets[0])
    t0 = time.perf_counter()
    for e in exps:
        if e == "curves":
            for d in datasets:
                curves(r, d, bits, epochs_for(d))
        elif e == "codes":
            codes(r, ds, ep)
        elif e == "bits":
            bit_usage(r, ds, bits, ep)
        elif e == "balance":
            for m in ("drh", "dph"):
                sweep_one(r, "J_B as printed vs centred per bit", ds, bits, ep, [
                    ("bit_balance=printed", {"bit_balance": "printed"}, None),
                    ("bit_balance=centred", {"bit_balance": "centred"}, None)], method=m)
        elif e == "lr":
            sweep_one(r, "Learning rate and schedule", ds, bits, ep, [
                ("lr=1e-3, plateau (patience 5)", {"lr": 1e-3, "lr_patience": 5}, None),
                ("lr=1e-2, plateau (patience 5)", {"lr": 1e-2, "lr_patience": 5}, None),
                ("lr=1e-1, plateau (patience 5)", {"lr": 1e-1, "lr_patience": 5}, None),
                ("lr=1e-2, no decay", {"lr": 1e-2, "lr_patience": 10**6}, None),
                ("lr=1e-1, no decay", {"lr": 1e-1, "lr_patience": 10**6}, None)])
        elif e == "scale":
            for b in (16, 64):
                sweep_one(r, "J_S distance: sum vs mean over bits", ds, b, ep, [
                    ("distance=sum (paper as printed)", {"distance": "sum"}, None),
                    ("distance=mean (per-bit)", {"distance": "mean"}, None)])
        elif e == "wd":
            sweep_one(r, "Weight decay", ds, bits, ep, [
                (f"weight_decay={w:g}", {"weight_decay": w}, None) for w in (0.0, 5e-5, 5e-4, 5e-3)])
        elif e == "batch":
            sweep_one(r, "Batch size", ds, bits, ep, [(f"batch {b}", None, b) for b in (32, 64, 128, 256)])
        elif e == "arch":
            sweep_one(r, "Width and depth", ds, bits, ep, [
                ("depth 34, width auto (6)", {"depth": 34, "width": 0}, None),
                ("depth 18, width auto (6)", {"depth": 18, "width": 0}, None),
                ("depth 34, width 16", {"depth": 34, "width": 16}, None),
                ("depth 18, width 16", {"depth": 18, "width": 16}, None)])
        elif e == "epochs":
            print(f"\n### Epochs: drh vs dch, {ds}, {bits} bits, seed 0\n")
            rows = []
            for mult in (1, 2, 4):
                a = r("drh", ds, bits, ep * mult, old=False)["test_mAP@100"]
                b = r("drh", ds, bits, ep * mult, tag="drh before", old=True)["test_mAP@100"]
                c = r("dch", ds, bits, ep * mult)["test_mAP@100"]
                rows.append([ep * mult, b, a, c])
            print(table(["epochs", "drh old defaults", "drh defaults", "dch"], rows))
        elif e == "after":
            after(r, datasets, bits_list, args.seed_list, epochs_for,
                  [m for m in args.methods.split(",") if m], not args.no_dch, args.sides.split(","))
    print(f"\n{len(r.records)} runs, {time.perf_counter() - t0:.0f} s, device {args.device}, "
          f"torch threads {args.threads}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r.records, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
