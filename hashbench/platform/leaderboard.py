"""The leaderboard: a directory of Parquet files, one row per finished trial.

Storage (``hashbench.platform.leaderboard_store``, re-exported here): every row is written as its own
file under a name unique to that write (a hash of the row's key, a time stamp, random bits), first to
a hidden temporary name and then renamed into place, so concurrent trials never corrupt or lose each
other's rows and a reader never sees a half-written file. Readers keep the most recently written row
of each key (``(sweep_id, trial_id)``, else ``run_id``), so writing a trial again replaces its row: a
resumed sweep cannot duplicate rows. :func:`compact` (``hashbench leaderboard compact``, and the end
of every sweep) merges the files into one, atomically and safely beside writers and other compactions.

Schema: ``SCHEMA`` (version ``SCHEMA_VERSION``), documented in docs/leaderboard.md. Each file
carries its ``schema_version``. Reading upgrades older files in memory through ``UPGRADES``
(``UPGRADES[v]`` turns a version-``v`` frame into a version-``v + 1`` frame), and skips corrupt or
partial files and files written by a newer hashbench with one warning per file naming it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import tempfile
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import polars as pl

from hashbench.platform.errors import HashbenchError
from hashbench.platform.stats import mean_ci, t_quantile  # noqa: F401  (re-exported; their polars-free home)

SCHEMA_VERSION = 2

#: The columns the architecture fixes (docs/architecture.md), in order, then the added ones.
TEST_METRICS = ("test_mAP@10", "test_mAP@100", "test_mAP@1000", "test_mAP@all", "test_P@10", "test_P@100",
                "test_R@100", "test_P@H<=2", "test_MAP@R", "test_R-precision")
SCHEMA: dict[str, pl.DataType] = {
    "schema_version": pl.Int64, "row_id": pl.String, "sweep_id": pl.String, "trial_id": pl.String,
    "run_id": pl.String, "status": pl.String, "method": pl.String, "family": pl.String,
    "dataset": pl.String, "dataset_fingerprint": pl.String, "splits": pl.String,
    "code_type": pl.String, "bits": pl.Int64, "storage_bits": pl.Int64, "distance": pl.String,
    "metric_convention": pl.String, "tie_policy": pl.String, "no_hit_policy": pl.String,
    "val_mAP@100": pl.Float64, **{m: pl.Float64 for m in TEST_METRICS},
    "metrics_json": pl.String, "protocol_json": pl.String, "params_json": pl.String,
    "seed": pl.Int64, "epochs": pl.Int64,
    "time_train_s": pl.Float64, "time_encode_s": pl.Float64, "time_eval_s": pl.Float64,
    "time_total_s": pl.Float64, "train_images_per_s": pl.Float64, "encode_images_per_s": pl.Float64,
    "queries_per_s": pl.Float64, "device": pl.String, "hashbench_commit": pl.String,
    "torch_version": pl.String, "ray_version": pl.String, "run_dir": pl.String,
    "started_at": pl.String, "finished_at": pl.String,
    # added beyond the architecture's list (docs/leaderboard.md):
    "role": pl.String,          # "trial" (a search trial), "seed" (a re-run of the best config)
    "config_json": pl.String,   # the full TrainConfig.to_dict(), what `hashbench reproduce` re-runs
    # schema version 2 (docs/leaderboard.md):
    "protocol": pl.String,      # "common", or "paper:<method>" for a paper's own protocol (configs/papers/)
    "readout": pl.String,       # how the trained model was read out: "sign" (binary), "float", ...
    "entry": pl.String,         # the name the row competes under: the method id, or its readout's label
}
STATUSES = ("completed", "stopped", "error")
ROLES = ("trial", "seed")
#: the comparison axes of ``hashbench leaderboard --axis``: rows compete within (protocol, dataset, entry)
#: at equal storage per database item (default) or at equal code length / embedding dimension
AXES = {"storage": ("protocol", "dataset", "entry", "storage_bits"),
        "bits": ("protocol", "dataset", "entry", "bits")}
DEFAULT_AXIS = "storage"
GROUP = AXES[DEFAULT_AXIS]
#: the rows that are samples of one configuration (a trial and its --seeds re-runs)
SEED_KEY = ("protocol", "dataset", "entry", "bits", "storage_bits", "params_json")


def _upgrade_1_to_2(frame: pl.DataFrame) -> pl.DataFrame:
    """v1 -> v2: every v1 row is a common-protocol row of its method's own readout."""
    readout = (pl.when(pl.col("code_type") == "binary").then(pl.lit("sign"))
               .when(pl.col("code_type") == "float").then(pl.lit("float")).otherwise(pl.lit(None, pl.String)))
    return frame.with_columns(pl.lit("common").alias("protocol"), readout.alias("readout"),
                              pl.col("method").alias("entry"))


#: ``UPGRADES[v](frame) -> frame`` turns schema version ``v`` into ``v + 1``.
UPGRADES: dict[int, Callable[[pl.DataFrame], pl.DataFrame]] = {1: _upgrade_1_to_2}


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise HashbenchError(f"axis {axis!r}: expected one of {', '.join(AXES)} (storage = equal bits per "
                             f"database item, bits = equal code length)")
    return axis


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def hashbench_commit() -> str:
    """The git commit of the hashbench checkout (``+dirty`` with local changes), else ``$HASHBENCH_COMMIT``."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("HASHBENCH_COMMIT", "unknown")


def _versions() -> tuple[str, str]:
    import torch

    try:
        import ray
        ray_version = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        ray_version = "none"
    return torch.__version__, ray_version


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _float(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def row_from_result(result: Any, *, sweep_id: str = "", trial_id: str = "", status: str = "completed",
                    role: str = "trial", started_at: Optional[str] = None,
                    finished_at: Optional[str] = None) -> dict:
    """A leaderboard row (a dict over ``SCHEMA``) from a training ``RunResult`` (object or dict).

    ``status`` is ``completed`` for a run that reached its test evaluation, ``stopped`` for one that
    early stopping ended (validation metrics only) and ``error`` for a failed one.
    """
    from hashbench.platform.data import load_dataset
    from hashbench.platform.registry import get_method

    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    config = _get(result, "config")
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    method = get_method(cfg["method"])
    ds = load_dataset(cfg["dataset"])
    metrics = dict(_get(result, "metrics") or {})
    protocol = dict(_get(result, "protocol") or {})
    timings = dict(_get(result, "timings") or {})
    throughput = dict(_get(result, "throughput") or {})
    bits = int(cfg["bits"])
    counts = ds.meta.get("counts", {})
    splits = {s: counts.get(s, {}).get("items") if isinstance(counts.get(s), dict) else None
              for s in ("train", "val", "test")}
    splits.update({k: ds.meta[k] for k in ("split_protocol", "split_seed") if k in ds.meta})
    torch_version, ray_version = _versions()
    no_hit = protocol.get("no_hit", protocol.get("exclude_no_hit"))
    row = {
        "schema_version": SCHEMA_VERSION, "row_id": uuid.uuid4().hex,
        "sweep_id": sweep_id, "trial_id": trial_id, "run_id": str(_get(result, "run_id") or cfg.get("run_name")),
        "status": status, "method": method.id, "family": method.family or method.id,
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "splits": _json(splits),
        "code_type": method.code_type, "bits": bits,
        "storage_bits": int(protocol.get("storage_bits") or storage_bits_of(method.code_type, bits)),
        "distance": protocol.get("distance", method.distance),
        "metric_convention": protocol.get("convention"), "tie_policy": protocol.get("ties"),
        "no_hit_policy": ("exclude" if no_hit else "include") if isinstance(no_hit, bool) else no_hit,
        "val_mAP@100": _float(metrics.get("val_mAP@100")),
        **{m: _float(metrics.get(m)) for m in TEST_METRICS},
        "metrics_json": _json(metrics), "protocol_json": _json(protocol),
        "params_json": _json(cfg.get("hp") or cfg.get("params") or {}),
        "seed": int(cfg.get("seed", 0)), "epochs": int(_get(result, "epochs_run") or cfg.get("epochs") or 0),
        "time_train_s": _float(timings.get("train_s")), "time_encode_s": _float(timings.get("encode_s")),
        "time_eval_s": _float(timings.get("eval_s")), "time_total_s": _float(timings.get("total_s")),
        "train_images_per_s": _float(throughput.get("train_images_per_s")),
        "encode_images_per_s": _float(throughput.get("encode_images_per_s")),
        "queries_per_s": _float(throughput.get("queries_per_s")),
        "device": str(_get(result, "device") or ""), "hashbench_commit": hashbench_commit(),
        "torch_version": torch_version, "ray_version": ray_version,
        "run_dir": str(_get(result, "run_dir") or ""),
        "started_at": started_at, "finished_at": finished_at or now_iso(),
        "role": role, "config_json": _json(cfg),
        "protocol": cfg.get("protocol") or "common", "readout": method.primary_readout.name, "entry": method.id,
    }
    return row


def storage_bits_of(code_type: str, bits: int, value_bits: int = 32) -> int:
    """Bits per database item: ``bits`` for binary codes; ``bits`` dimensions x ``value_bits`` (float32: 32)."""
    return int(bits) if code_type == "binary" else int(bits) * int(value_bits)


def rows_from_result(result: Any, **kwargs) -> list:
    """Every leaderboard row of one training: the method's own readout, then each extra readout.

    ``kwargs`` as for :func:`row_from_result`. An extra readout (``Method.readouts``: jtanet's sign
    codes, drh's continuous DRH-NB embedding) gets a row of its own with its own metrics, code type,
    distance and storage, the same ``run_id`` (the link to its training) and its own ``readout`` and
    ``entry``. Only completed runs have readout rows (stopped and failed ones have no test metrics).
    """
    from hashbench.platform.registry import get_method

    primary = row_from_result(result, **kwargs)
    rows = [primary]
    if primary["status"] != "completed":
        return rows
    method = get_method(primary["method"])
    measured = dict(_get(result, "readouts") or {})
    for ro in method.readouts:
        info = measured.get(ro.name)
        if info is None:
            continue
        metrics = dict(info.get("metrics") or {})
        protocol = dict(info.get("protocol") or {})
        no_hit = protocol.get("no_hit", protocol.get("exclude_no_hit"))
        rows.append({
            **primary, "row_id": uuid.uuid4().hex, "code_type": ro.code_type, "distance": ro.distance,
            "storage_bits": int(info.get("storage_bits") or storage_bits_of(ro.code_type, primary["bits"])),
            "metric_convention": protocol.get("convention"), "tie_policy": protocol.get("ties"),
            "no_hit_policy": ("exclude" if no_hit else "include") if isinstance(no_hit, bool) else no_hit,
            "val_mAP@100": _float(metrics.get("val_mAP@100")),
            **{m: _float(metrics.get(m)) for m in TEST_METRICS},
            "metrics_json": _json(metrics), "protocol_json": _json(protocol),
            "readout": ro.name, "entry": method.entry(ro),
        })
    return rows


def with_row_defaults(row: dict) -> dict:
    """``row`` with the schema-2 columns a caller left out: protocol ``common``, the method's own
    readout (``sign`` for binary codes, ``float`` for float ones) and entry = method."""
    out = dict(row)
    if out.get("protocol") is None:
        out["protocol"] = "common"
    if out.get("readout") is None and out.get("code_type") in ("binary", "float"):
        out["readout"] = "sign" if out["code_type"] == "binary" else "float"
    if out.get("entry") is None:
        out["entry"] = out.get("method")
    return out


def _frame(rows: Iterable[dict]) -> pl.DataFrame:
    rows = [with_row_defaults(r) for r in rows]
    unknown = sorted({k for r in rows for k in r} - set(SCHEMA))
    if unknown:
        raise HashbenchError(f"leaderboard row has unknown columns {unknown}; valid columns: {', '.join(SCHEMA)}")
    return pl.DataFrame([{k: r.get(k) for k in SCHEMA} for r in rows], schema=SCHEMA, orient="row")


def check_writable(directory: str | os.PathLike, what: str = "leaderboard directory") -> Path:
    """Create ``directory`` if needed and prove a file can be written there, else HashbenchError."""
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HashbenchError(f"{what} {directory}: not writable ({exc.strerror or exc}); "
                             f"choose a directory you can write to") from None
    return directory


def _upgrade(frame: pl.DataFrame, version: int, path: Path) -> pl.DataFrame:
    while version < SCHEMA_VERSION:
        if version not in UPGRADES:
            raise HashbenchError(f"{path}: leaderboard schema version {version} has no upgrade to "
                                 f"{version + 1}; this hashbench reads versions "
                                 f"{min([SCHEMA_VERSION, *UPGRADES])}..{SCHEMA_VERSION}")
        frame = UPGRADES[version](frame)
        version += 1
    return frame.with_columns(pl.lit(SCHEMA_VERSION, pl.Int64).alias("schema_version"))


def filter_rows(df: pl.DataFrame, *, dataset: Optional[Iterable[str]] = None,
                method: Optional[Iterable[str]] = None, bits: Optional[Iterable[int]] = None,
                protocol: Optional[Iterable[str]] = None,
                storage_bits: Optional[Iterable[int]] = None) -> pl.DataFrame:
    """Rows whose dataset / method (or entry) / bits / protocol / storage bits are among the given values.

    ``None`` or empty: any. A method name matches the ``method`` and the ``entry`` column, so
    ``drh-nb`` (the float readout of drh) and ``drh`` (both of its readouts) both work.
    """
    if dataset:
        df = df.filter(pl.col("dataset").is_in(list(dataset)))
    if method:
        names = list(method)
        df = df.filter(pl.col("method").is_in(names) | pl.col("entry").is_in(names))
    if bits:
        df = df.filter(pl.col("bits").is_in([int(b) for b in bits]))
    if protocol:
        df = df.filter(pl.col("protocol").is_in(list(protocol)))
    if storage_bits:
        df = df.filter(pl.col("storage_bits").is_in([int(b) for b in storage_bits]))
    return df


def axis_order(axis: str) -> list:
    """The sort order of a view on ``axis``: protocol, dataset, the axis column, the other one, entry.

    (Sorting is by protocol, dataset, axis column, entry, other column; the first four of the list are
    the view's leading columns.)"""
    check_axis(axis)
    other = "bits" if axis == "storage" else "storage_bits"
    return ["protocol", "dataset", AXES[axis][-1], other, "entry"]


def _sort_keys(axis: str) -> list:
    order = axis_order(axis)
    return [*order[:3], "entry", order[3]]


def best_runs(df: pl.DataFrame, metric: str = "val_mAP@100", axis: str = DEFAULT_AXIS) -> pl.DataFrame:
    """The best completed search trial per group of ``AXES[axis]``, chosen on ``metric``.

    Groups are (protocol, dataset, entry, storage_bits) for ``axis="storage"`` and (protocol, dataset,
    entry, bits) for ``axis="bits"``: rows of different protocols or readouts never compete. Ties go
    to the earlier finished row, then the smaller row_id, so the choice is deterministic. The result is
    sorted so that rows at equal storage (or equal bits) are adjacent.
    """
    group = list(AXES[check_axis(axis)])
    done = df.filter((pl.col("status") == "completed") & (pl.col("role") == "trial")
                     & pl.col(metric).is_not_null())
    return (done.sort([metric, "finished_at", "row_id"], descending=[True, False, False], nulls_last=True)
            .group_by(group, maintain_order=True).first()
            .sort(_sort_keys(axis), nulls_last=True))


def seed_summary(df: pl.DataFrame, metrics: Iterable[str] = ("test_mAP@100",),
                 level: float = 0.95) -> pl.DataFrame:
    """Per ``SEED_KEY`` (protocol, dataset, entry, bits, storage_bits, params_json): n seeds, mean and CI.

    Counts completed rows of role ``seed`` together with the trial they re-run (same params), so
    ``--seeds N`` gives N + 1 samples of the best configuration.
    """
    metrics = list(metrics)
    done = df.filter(pl.col("status") == "completed")
    keys = list(SEED_KEY)
    seeded = done.filter(pl.col("role") == "seed").select(keys).unique()
    rows = []
    for key_frame in seeded.iter_rows(named=True):
        group = done.filter(pl.all_horizontal([pl.col(k) == key_frame[k] for k in keys]))
        # one sample per distinct seed (the trial and a seed re-run may share a seed value)
        group = group.sort("role").unique(subset=["seed"], keep="first")
        out = dict(key_frame)
        for m in metrics:
            mean, half, n = mean_ci(group[m].to_list(), level)
            out[f"{m}_mean"], out[f"{m}_ci95"], out["n_seeds"] = mean, half, n
        rows.append(out)
    schema = {**{k: SCHEMA[k] for k in keys},
              **{c: pl.Float64 for m in metrics for c in (f"{m}_mean", f"{m}_ci95")}, "n_seeds": pl.Int64}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def find_row(df: pl.DataFrame, run_id: str) -> dict:
    """The row whose ``run_id`` (or ``row_id``) is ``run_id``; the error lists a few valid ids.

    A run with several readouts has one row per readout under the same ``run_id``: the method's own
    readout's row (``entry == method``) is returned, whose metrics are the run's ``metrics``.
    """
    hit = df.filter((pl.col("run_id") == run_id) | (pl.col("row_id") == run_id))
    hit = hit.sort(pl.col("entry") != pl.col("method"), nulls_last=True)  # the primary readout first
    if hit.height == 0:
        some = ", ".join(df["run_id"].head(5).to_list()) or "(the leaderboard is empty)"
        raise HashbenchError(f"no leaderboard row with run id {run_id!r}; some run ids: {some}")
    return hit.row(0, named=True)


VIEW_COLUMNS = ("protocol", "dataset", "storage_bits", "bits", "entry", "readout", "val_mAP@100", "test_mAP@100",
                "test_mAP@1000", "test_P@100", "test_MAP@R", "epochs", "time_total_s", "device", "run_id")


def with_metrics(df: pl.DataFrame, names: Iterable[str]) -> pl.DataFrame:
    """``df`` with a float column per metric name (``test_P@5``, ``test_kNN-balanced-accuracy``, ...).

    Schema columns are kept; any other name is read from each row's ``metrics_json`` (null where that
    row did not measure it).
    """
    names = [n for n in names if n not in df.columns]
    if not names:
        return df
    decoded = [json.loads(m) if m else {} for m in df["metrics_json"].to_list()]
    return df.with_columns([pl.Series(n, [_float(d.get(n)) for d in decoded], dtype=pl.Float64) for n in names])


def leaderboard_view(df: pl.DataFrame, *, all_runs: bool = False, axis: str = DEFAULT_AXIS,
                     metrics: Optional[Iterable[str]] = None) -> pl.DataFrame:
    """What ``hashbench leaderboard`` shows: the best run per group of ``AXES[axis]``, or every run.

    Both ``storage_bits`` and ``bits`` are shown, the axis first; rows at equal storage (or equal
    code length) are adjacent. ``metrics``: further metric columns (from ``metrics_json`` where they
    are not schema columns). In the best-run view, a configuration re-trained with ``--seeds`` gets
    ``n_seeds`` and the mean and 95 % CI half-width (t-distribution) of its test mAP@100 over the seeds.
    """
    order = axis_order(axis)
    cols = [c for c in VIEW_COLUMNS if c not in order[:4]]
    extra = [m for m in (metrics or []) if m not in cols]
    df = with_metrics(df, extra)
    if all_runs:
        head = ["sweep_id", "trial_id", "role", "status"]
        keys = _sort_keys(axis) + ["val_mAP@100"]
        return df.select(order[:4] + head + cols[:2] + extra + cols[2:] + ["seed", "params_json"]).sort(
            keys, descending=[False] * (len(keys) - 1) + [True], nulls_last=True)
    best = best_runs(df, axis=axis)
    seeds = seed_summary(df, ("test_mAP@100",))
    view = best.join(seeds, on=list(SEED_KEY), how="left")
    i = cols.index("test_mAP@100") + 1
    return view.select(order[:4] + cols[:i] + ["test_mAP@100_mean", "test_mAP@100_ci95", "n_seeds"]
                       + extra + cols[i:])


# The storage layer (file naming, writing, reading, compaction): hashbench/platform/leaderboard_store.py
from hashbench.platform.leaderboard_store import (  # noqa: E402 - it reads SCHEMA & co. from this module
    Compaction, LeaderboardWarning, append_row, compact, compact_quietly, has_row, read_leaderboard, row_key,
    row_path)
