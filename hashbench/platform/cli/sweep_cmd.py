"""``hashbench sweep CONFIG.yaml``: a Ray Tune + Optuna sweep; every finished trial → one leaderboard row."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna) from a YAML config",
                       description="Sweep every (method, dataset, bits) of CONFIG with Optuna TPE and ASHA on "
                                   "validation mAP@100; each finished trial adds one leaderboard row. The "
                                   "whole config is validated before anything starts. See docs/sweeps.md.")
    p.add_argument("config", help="sweep config (YAML), e.g. configs/quickstart.yaml")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this config's name")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", help="where Tune keeps the sweep (path or URI; overrides the config's storage)")
    p.add_argument("--seeds", type=int, help="re-train the best configuration of each study N more times")
    p.add_argument("--leaderboard", help="leaderboard directory (overrides the config's leaderboard)")
    p.add_argument("--name", help="sweep name (overrides the config's name; e.g. to run a config twice)")
    p.add_argument("--gpus-per-worker", help="override resources.gpus_per_worker (a number or 'auto'), "
                                             "e.g. 1 vs 0.25 to measure GPU packing")
    p.add_argument("--mps", action="store_true",
                   help="run the trials under an NVIDIA MPS daemon that the sweep starts and stops (local Ray "
                        "only; for trials sharing a GPU, e.g. --gpus-per-worker 0.125; as resources.mps: true)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the config after validation (repeatable): epochs=N (every study, e.g. a "
                        "paper config at reduced epochs on a CPU), trials=N, seeds=N, bits=K,K / methods=M,M "
                        "(only those studies), datasets=D,D (the config's studies on these datasets)")
    p.add_argument("--check", action="store_true", help="validate the config and stop")
    p.set_defaults(func=run)


def run(args) -> int:
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.sweep import load_config

    if args.seeds is not None and args.seeds < 0:
        raise HashbenchError(f"--seeds must be >= 0, got {args.seeds}")
    from hashbench.platform.cli.train_cmd import parse_pairs

    pairs = parse_pairs(args.overrides, "--set")
    # --set datasets=D replaces every study's dataset and checks the new ones, so the config's own
    # stores need not exist (a paper config checked on a small sample of its data)
    # --gpus-per-worker replaces the config's share, so resources.mps with gpus_per_worker 0 in the file is
    # checked after the override (_overrides), not while the file is read
    cfg = load_config(args.config, check_data="datasets" not in pairs,
                      check_mps_gpus=args.gpus_per_worker is None)
    cfg = _overrides(cfg, args, pairs)
    print(f"sweep {cfg.name!r}: {len(cfg.studies)} studies, {cfg.total_trials} trials "
          f"({', '.join(s.key for s in cfg.studies[:6])}{', ...' if len(cfg.studies) > 6 else ''})", flush=True)
    if args.check:
        return 0
    from hashbench.platform.sweep.driver import run_sweep

    summary = run_sweep(cfg, resume=args.resume, address=args.address, storage=args.storage, seeds=args.seeds,
                        leaderboard=args.leaderboard, emit=_emit)
    from hashbench.platform.defaults import remember_leaderboard

    remember_leaderboard(summary.leaderboard)  # `hashbench leaderboard` / `dashboard` with no flag find it
    c = summary.counts
    print(f"sweep {summary.sweep_id!r} finished in {summary.wall_s:.1f} s: {summary.trials} trials "
          f"({c['completed']} completed, {c['stopped']} stopped early, {c['error']} failed); "
          f"Tune state in {summary.root}")
    from hashbench.platform.sweep.driver import format_disk

    print(format_disk(summary.disk))
    print(f"leaderboard: hashbench leaderboard --leaderboard {summary.leaderboard}")
    return 0 if c["error"] == 0 else 1


def _emit(line: str) -> None:
    print(line, flush=True)


def _overrides(cfg, args, pairs: dict):
    """``cfg`` with the command line's overrides: ``pairs`` (the parsed ``--set`` items), then
    ``--name``, ``--gpus-per-worker`` and ``--mps``."""
    import dataclasses

    from hashbench.platform.sweep.config import apply_overrides

    cfg = apply_overrides(cfg, pairs)

    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.sweep.config import _NAME

    if args.name is not None:
        if not _NAME.match(args.name):
            raise HashbenchError(f"--name {args.name!r}: use letters, digits, '.', '_', '-'")
        cfg = dataclasses.replace(cfg, name=args.name)
    if args.gpus_per_worker is not None:
        value = args.gpus_per_worker
        if value != "auto":
            try:
                value = float(value)
            except ValueError:
                value = -1.0
            if not (0 <= value <= 1 or (value > 1 and value.is_integer())):
                raise HashbenchError(f"--gpus-per-worker {args.gpus_per_worker!r}: expected 'auto', a fraction "
                                     f"in [0, 1] or a whole number")
        cfg = dataclasses.replace(cfg, gpus_per_worker=value)
    if getattr(args, "mps", False):
        cfg = dataclasses.replace(cfg, mps=True)
    if cfg.mps:
        from hashbench.platform.sweep.mps import check_mps_gpus, check_mps_local

        given = "--gpus-per-worker" if args.gpus_per_worker is not None else f"{cfg.source}: resources.gpus_per_worker"
        check_mps_gpus(cfg.gpus_per_worker, given)
        check_mps_local(getattr(args, "address", None))
    return cfg
