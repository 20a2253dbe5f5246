"""``hashbench quickstart``: a small sweep of every registered method, then the leaderboard.

On the built-in data, with no set-up and no network: every registered method at two code lengths
(methods that need masks, and the Y-Net family, on BUSI; the others on PneumoniaMNIST), one
short trial each with the paper's hyperparameters, on this machine (its GPU if it has one). To
finish in minutes on a 2-core CPU machine it trains on seeded subsets of the built-in stores
(written once under ``OUT/data``, each with its own fingerprint) and shrinks the largest backbones;
``--full-data`` uses the built-in stores as they are. The numbers show that everything works,
not how good the methods are: for that, run ``hashbench sweep configs/full.yaml``.
"""

from __future__ import annotations

import os
import time

#: per split items kept in the quickstart subsets (train is also the retrieval database)
SUBSETS = {"pneumoniamnist": (384, 96, 160), "busi": (192, 48, 96)}
#: smaller backbones for the quickstart, where a method has these parameters
#: (and, for the kernel hashers, anchors that fit the 384-item train subset; SDH's paper value is 1000)
#: K = 1: constellation's K negatives come from K other classes, and pneumoniamnist has 2
QUICK_PARAMS = {"arch": "resnet18", "width": 16, "depth": 18, "anchors": 256, "K": 1}
QUICK_WIDTH_FAMILIES = ("constellation",)  # 'width' there is the ResNet width (64 in the paper)


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="a small sweep of every method on built-in data, then the leaderboard",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--out", default="hashbench-quickstart",
                   help="directory for data subsets, runs, sweep state and the leaderboard "
                        "(default: ./hashbench-quickstart)")
    p.add_argument("--bits", nargs=2, type=int, default=[16, 32], metavar=("B1", "B2"),
                   help="the two code lengths (default: 16 32)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial (default: 1)")
    p.add_argument("--full-data", action="store_true", help="train on the whole built-in stores")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: 0.25 GPU per trial when there is a GPU, else CPU")
    p.set_defaults(func=run)


def _subset(name: str, dest: str) -> str:
    """A seeded subset of the built-in store ``name`` at ``dest`` (written once); returns its path."""
    import numpy as np

    from hashbench.platform.data import load_dataset, write_store

    if os.path.isfile(os.path.join(dest, "meta.json")):
        return dest
    ds = load_dataset(name)
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.permutation(ds.indices(split))[:n]
                                   for split, n in zip(("train", "val", "test"), SUBSETS[name])]))
    write_store(dest, np.asarray(ds.images[keep]), np.asarray(ds.labels[keep]), np.asarray(ds.split[keep]),
                class_names=ds.class_names, masks=None if ds.masks is None else np.asarray(ds.masks[keep]),
                name=os.path.basename(dest), source=f"built-in {name}, seeded subset {SUBSETS[name]}",
                format="subset", license=ds.meta.get("license", ""),
                attribution=ds.meta.get("attribution", ""), extra={"subset_of": ds.fingerprint})
    return dest


def build_config(out: str, datasets: dict, bits: list, epochs: int, gpus) -> dict:
    """The quickstart sweep as a config mapping (the same format as configs/quickstart.yaml)."""
    from hashbench.platform.registry import iter_methods

    methods = {}
    for m in iter_methods():
        masks = m.requires.masks or m.family == "ynet"
        opts: dict = {"datasets": [datasets["busi" if masks else "pneumoniamnist"]]}
        params = {}
        for name, value in QUICK_PARAMS.items():
            if name in m.param_map and (name != "width" or m.family in QUICK_WIDTH_FAMILIES):
                try:
                    m.resolve({name: value})
                except Exception:  # noqa: BLE001 - keep the paper's value where the small one is invalid
                    continue
                params[name] = value
        if params:
            opts["params"] = params
        methods[m.id] = opts
    return {"name": f"quickstart-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}", "methods": methods,
            "bits": bits, "trials": 1, "epochs": epochs, "seed": 0,
            "resources": {"cpus_per_worker": 1, "gpus_per_worker": gpus},
            "train": {"augment": {"enabled": False}},
            "storage": os.path.join(out, "sweeps"), "leaderboard": os.path.join(out, "leaderboard"),
            "out_dir": os.path.join(out, "runs")}


def run(args) -> int:
    import yaml

    from hashbench.platform.cli.leaderboard_cmd import render, with_seed_text
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import leaderboard_view, read_leaderboard
    from hashbench.platform.sweep import parse_text

    t0 = time.perf_counter()
    if args.epochs < 1:
        raise HashbenchError(f"--epochs must be >= 1, got {args.epochs}")
    out = os.path.abspath(args.out)
    if args.full_data:
        datasets = {n: n for n in SUBSETS}
    else:
        datasets = {n: _subset(n, os.path.join(out, "data", f"{n}-quick")) for n in SUBSETS}
    gpus = {"auto": "auto", "cpu": 0, "cuda": AUTO_GPU}[args.device]
    text = yaml.safe_dump(build_config(out, datasets, list(args.bits), args.epochs, gpus), sort_keys=False)
    cfg = parse_text(text, "quickstart")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{cfg.name}.yaml"), "w") as f:
        f.write(text)
    print(f"hashbench quickstart: {cfg.total_trials} trials ({len({s.method for s in cfg.studies})} methods x "
          f"{len(args.bits)} code lengths, {args.epochs} epoch(s) each) -> {out}", flush=True)
    _start_ray(args.device)
    from hashbench.platform.sweep.driver import run_sweep

    summary = run_sweep(cfg, emit=_emit)
    from hashbench.platform.defaults import remember_leaderboard

    remember_leaderboard(summary.leaderboard)  # `hashbench dashboard` with no flag opens it
    df = read_leaderboard(summary.leaderboard)
    import polars as pl

    view = with_seed_text(leaderboard_view(df.filter(pl.col("sweep_id") == summary.sweep_id)))
    print()
    print(render(view.drop(["device", "run_id"]), "table"))
    c = summary.counts
    print(f"\n{summary.trials} trials in {time.perf_counter() - t0:.0f} s (the sweep {summary.wall_s:.0f} s; "
          f"{c['completed']} completed, {c['error']} failed). Leaderboard: {summary.leaderboard}")
    from hashbench.platform.sweep.driver import format_disk

    print(format_disk(summary.disk))
    print("Open the dashboard:  hashbench dashboard   (the most recent leaderboard; "
          f"or: hashbench dashboard --leaderboard {summary.leaderboard})")
    return 0 if c["error"] == 0 else 1


AUTO_GPU = 0.25


def _start_ray(device: str) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"num_gpus": 0} if device == "cpu" else {}
    # a local Ray of its own, never a cluster named by $RAY_ADDRESS
    ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False, configure_logging=False, **kwargs)


def _emit(line: str) -> None:
    print(line, flush=True)
