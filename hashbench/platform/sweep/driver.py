"""The sweep driver: Ray Tune + Optuna over the studies of a validated :class:`SweepConfig`.

Layout under the storage root ``<storage>/<sweep name>/``: ``sweep.json`` (the manifest: config
text, leaderboard directory), one experiment running every study of the sweep together (``search``;
named after the study, ``<method>-<dataset>-<bits>b``, when the sweep has one searched study and no
other; ``fixed``, a grid of one trial per study, when no study is searched), each study with its own
searcher and ASHA (:mod:`hashbench.platform.sweep.multi`), and one ``seeds`` experiment for the
``--seeds`` re-runs. ``--resume`` restores each experiment with ``Tuner.restore``.

Each finished trial writes its own leaderboard row; after each experiment the driver writes the
rows still missing (trials that ASHA stopped, that failed, or that ended while the driver was
down). Rows are keyed by (sweep, trial), so nothing is ever written twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
import zlib
from datetime import datetime, timezone
from dataclasses import dataclass, replace
from typing import Callable, Optional

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from hashbench.platform.errors import HashbenchError
from hashbench.platform.leaderboard import (append_row, check_writable, now_iso, read_leaderboard,
                                            row_path, rows_from_result)
from hashbench.platform.sweep.config import Study, SweepConfig, train_config

METRIC = "val_mAP@100"
STUDY_KEY = "__study"
SEED_KEY = "__seed"
MANIFEST = "sweep.json"
DRIVER_CPU = 0.01     # the Tune function of a multi-worker trial (zero-CPU trials are refused)
AUTO_GPU_SHARE = 0.25  # gpus_per_worker: auto -> four trials share a GPU when the cluster has GPUs


# --- storage -------------------------------------------------------------------------------------------

def _fs(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - unknown scheme, bad bucket
        raise HashbenchError(f"storage {uri!r}: cannot open it ({exc})") from None


def storage_root(cfg: SweepConfig, storage: Optional[str] = None) -> str:
    """``<storage>/<sweep name>`` as an absolute path or a URI."""
    base = storage or cfg.storage
    if "://" not in base:
        base = os.path.abspath(os.path.expanduser(base))
    return base.rstrip("/") + "/" + cfg.name


def check_storage(root: str) -> None:
    """Prove ``root`` can be written (creates it); HashbenchError naming it otherwise."""
    if "://" not in root:
        check_writable(root, what="storage")
        return
    fs, path = _fs(root)
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/.probe") as f:
            f.write(b"ok")
        fs.delete_file(f"{path}/.probe")
    except Exception as exc:  # noqa: BLE001
        raise HashbenchError(f"storage {root}: not writable ({exc})") from None


def read_manifest(root: str) -> Optional[dict]:
    import pyarrow.fs

    fs, path = _fs(root)
    info = fs.get_file_info(f"{path}/{MANIFEST}")
    if info.type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
        return json.loads(f.read().decode())


def write_manifest(root: str, manifest: dict) -> None:
    fs, path = _fs(root)
    tmp = f"{path}/.{MANIFEST}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(manifest, indent=2).encode())
    fs.move(tmp, f"{path}/{MANIFEST}")


def _existing_sweeps(root: str) -> list:
    import pyarrow.fs

    fs, path = _fs(root)
    parent = path.rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    except Exception:  # noqa: BLE001
        return []
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and fs.get_file_info(f"{i.path}/{MANIFEST}").type == pyarrow.fs.FileType.File)


# --- resources -----------------------------------------------------------------------------------------

@dataclass
class Plan:
    """How trials use the cluster."""

    gpus_per_worker: float
    trial_resources: dict
    capacity: int  # trials that fit at once


def plan_resources(cfg: SweepConfig, nodes: list) -> Plan:
    """Check the per-worker request against ``nodes`` (their total resources) and size concurrency.

    Raises HashbenchError when no node can ever hold one worker, or the cluster cannot hold the
    workers of one trial.
    """
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    gpus = (AUTO_GPU_SHARE if has_gpu else 0.0) if cfg.gpus_per_worker == "auto" else float(cfg.gpus_per_worker)
    cpus = float(cfg.cpus_per_worker)
    if cpus == 0 and gpus == 0:
        raise HashbenchError(f"{cfg.source}: resources: cpus_per_worker is 0 and this cluster has no GPU for "
                             f"gpus_per_worker 'auto'; give each worker at least one CPU")

    def fits(node) -> int:
        n = math.inf
        if cpus > 0:
            n = min(n, math.floor(node.get("CPU", 0) / cpus + 1e-9))
        if gpus > 0:
            n = min(n, math.floor(node.get("GPU", 0) / gpus + 1e-9))
        return int(n) if n != math.inf else 1 << 20

    per_node = [fits(n) for n in nodes]
    described = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU"
                          for i, n in enumerate(nodes)) or "no nodes"
    if not any(per_node):
        raise HashbenchError(
            f"{cfg.source}: resources: a worker asks for {cpus:g} CPU and {gpus:g} GPU, which no node of the "
            f"cluster can ever give ({described}); lower resources.cpus_per_worker / gpus_per_worker")
    slots = sum(per_node)
    if slots < cfg.workers:
        raise HashbenchError(
            f"{cfg.source}: resources: a trial needs {cfg.workers} workers of {cpus:g} CPU and {gpus:g} GPU, "
            f"but the cluster holds only {slots} ({described}); lower resources.workers")
    if cfg.workers == 1:
        trial = {"cpu": cpus, "gpu": gpus}
        capacity = slots
    else:  # the Tune function only drives a TorchTrainer (0.01 CPU), whose workers take the resources
        trial = {"cpu": DRIVER_CPU}
        total_cpu = sum(n.get("CPU", 0) for n in nodes)
        per_trial = cfg.workers * cpus + DRIVER_CPU
        if total_cpu + 1e-9 < per_trial:
            raise HashbenchError(
                f"{cfg.source}: resources: a trial needs {cfg.workers} x {cpus:g} CPU for its workers plus "
                f"{DRIVER_CPU} CPU for its driver, more than the cluster's {total_cpu:g} CPU ({described}); "
                f"lower resources.cpus_per_worker or workers (a trial would wait forever)")
        capacity = max(1, min(slots // cfg.workers, int(total_cpu // per_trial) if cpus > 0 else slots))
    if cfg.max_concurrent:
        capacity = min(capacity, cfg.max_concurrent)
    return Plan(gpus, trial, capacity)


def cluster_nodes() -> list:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


# --- the trial -----------------------------------------------------------------------------------------

def run_name(sweep_id: str, trial_id: str) -> str:
    return f"{sweep_id}-{trial_id}"


def _trial(hp: dict, *, cfg: SweepConfig, studies: dict, default_key: Optional[str], sweep_id: str,
           leaderboard: str, gpus: float, role: str) -> None:
    """One Tune trial: train, write this trial's leaderboard row(s), then give Tune the final report.

    A trial whose run already finished in an earlier life of the sweep (Tune's saved state still said
    RUNNING when the driver died) is recognised by its run directory and not trained again: its row is
    kept (or written, when the run finished but its row was not) and its final metrics are reported.
    """
    t_enter, t0 = time.time(), time.perf_counter()
    import ray.tune

    from hashbench.platform.sweep.session import TuneSession, for_tune
    from hashbench.platform.training import fit, run_training

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trial_id = ray.tune.get_context().get_trial_id()
    hp = dict(hp)
    study = studies[hp.pop(STUDY_KEY, default_key)]
    seed = hp.pop(SEED_KEY, None)
    tcfg = train_config(cfg, study, hp, seed=seed, run_name=run_name(sweep_id, trial_id), gpus=gpus)
    config_s = time.perf_counter() - t0
    done = finished_run(tcfg.run_dir, leaderboard, sweep_id=sweep_id, trial_id=trial_id, role=role)
    if done is not None:
        ray.tune.report(for_tune({**final_metrics(done), "adopted": True}))
        return
    started = now_iso()

    def write_rows(result) -> dict:
        t = time.perf_counter()
        for row in rows_from_result(result, sweep_id=sweep_id, trial_id=trial_id, role=role,
                                    started_at=getattr(result, "started_at", None) or started):
            append_row(leaderboard, row)  # the method's own readout, then one row per extra readout
        # the phase times of this trial, for the final report (benchmarks/bench_trial.py)
        timings = {f"phase_{k}": float(v) for k, v in (getattr(result, "timings", None) or {}).items()
                   if isinstance(v, (int, float))}
        return {**timings, "phase_row_s": time.perf_counter() - t, "phase_import_s": import_s,
                "phase_config_s": config_s, "t_enter": t_enter}

    if tcfg.workers == 1:
        session = TuneSession(tcfg.device, checkpoint_interval_s=cfg.checkpoint_interval_s, on_result=write_rows)
        on_trial_thread(lambda: fit(tcfg, session))
    else:
        from hashbench.platform.sweep.session import tune_report_callback

        write_rows(run_training(tcfg, callbacks=[tune_report_callback()]))


_TRIAL_THREAD = None


def on_trial_thread(fn: Callable):
    """``fn()`` on this process's one long-lived trial thread; its result, or its exception re-raised.

    Tune runs every trial of a reused trial process (``reuse_actors=True``) on a new thread, and
    PyTorch keeps per-thread state that is slow to rebuild: cuDNN's autotuning results
    (``torch.backends.cudnn.benchmark``: the cuDNN v8 API's benchmark cache is ``thread_local``) and
    the cuBLAS / cuDNN handles and workspaces. On a fresh thread every trial autotuned every
    convolution of its model again (on an H100: drh-nq's first epoch 7.8 s against 0.21 s for the
    others; docs/sweeps.md, "How a trial runs"). Running the fit on the same thread in every trial of
    the process keeps that state. Tune's session is process-wide, so ``ray.tune.report`` works from
    this thread; a stop (``SystemExit`` from ``report``) reaches Tune's thread through ``result()``.
    """
    global _TRIAL_THREAD
    if _TRIAL_THREAD is None:
        from concurrent.futures import ThreadPoolExecutor

        _TRIAL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hashbench-trial")
    return _TRIAL_THREAD.submit(fn).result()


def final_metrics(result) -> dict:
    """The scalar metrics of a finished run's final report (what Tune, Optuna and the progress see)."""
    out = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return {**out, "epoch": int(result.epochs_run) - 1, "done": True, "best_epoch": int(result.best_epoch)}


def trial_row_ids(leaderboard: str, sweep_id: str) -> set:
    """The trial ids of ``sweep_id`` that have a row in ``leaderboard`` (any file layout: also after a
    compaction merged the one-row files)."""
    import polars as pl

    if not os.path.isdir(leaderboard):
        return set()
    df = read_leaderboard(leaderboard)
    if df.height == 0:
        return set()
    return set(df.filter(pl.col("sweep_id") == sweep_id)["trial_id"].to_list())


def _has_row(leaderboard: str, sweep_id: str, trial_id: str) -> bool:
    if os.path.exists(row_path(leaderboard, {"sweep_id": sweep_id, "trial_id": trial_id})):
        return True
    return trial_id in trial_row_ids(leaderboard, sweep_id)


def finished_run(run_dir: str, leaderboard: str, *, sweep_id: str, trial_id: str, role: str):
    """The :class:`RunResult` of a run that already finished (its ``metrics.json`` exists), with its
    leaderboard row(s) written if they were missing; None for a run that has not finished.

    A row written here keeps the run's own times: ``started_at`` as the run recorded it (else its
    ``metrics.json`` time less its total time), ``finished_at`` when ``metrics.json`` was written.
    """
    from hashbench.platform.training import RunResult

    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    result = RunResult.load(run_dir)
    if not _has_row(leaderboard, sweep_id, trial_id):
        mtime = os.path.getmtime(path)
        started = result.started_at or datetime.fromtimestamp(
            mtime - float(result.timings.get("total_s") or 0.0), timezone.utc).isoformat(timespec="seconds")
        finished = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
        for row in rows_from_result(result, sweep_id=sweep_id, trial_id=trial_id, role=role, started_at=started,
                                    finished_at=finished):
            append_row(leaderboard, row)
    return result


class LastEpochASHA(ASHAScheduler):
    """ASHA that never ends a trial on the report of its last training epoch nor on its final report.

    The loop marks the report of a run's last epoch (``last_epoch``: all epochs done, or early
    stopping); the test evaluation follows it at once, so a trial that trained to its end is always
    tested. Rungs are placed strictly below the study's epochs (see :func:`make_scheduler`); this guard
    also covers a rung missed while the driver was down (a resumed sweep) and patience-stopped runs.
    """

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("last_epoch") or result.get("finished"):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def make_scheduler(cfg: SweepConfig, epochs: int) -> Optional[ASHAScheduler]:
    """ASHA for a searched study of ``epochs`` epochs, or None when it could never stop a trial early.

    Its time unit is Tune's ``training_iteration`` (one per epoch report); rungs at
    ``grace_period * reduction_factor**k`` epochs, all below ``epochs`` (``max_t = epochs - 1``): a rung
    at the last epoch would stop a trial that has finished training before its test evaluation.
    """
    if not cfg.asha or epochs - 1 < cfg.asha["grace_period"]:
        return None
    return LastEpochASHA(time_attr="training_iteration", max_t=epochs - 1, grace_period=cfg.asha["grace_period"],
                         reduction_factor=cfg.asha["reduction_factor"], stop_last_trials=False)


class Progress(Callback):
    """A Tune callback printing one line per epoch and per finished trial (``emit`` must pickle).

    Each finished trial's line tells trials done / running / queued of the experiment and the rate so
    far in trials per hour.
    """

    def __init__(self, emit: Callable[[str], None], label: str, total: int,
                 two_stage: frozenset = frozenset()):
        self.emit, self.label, self.total = emit, label, total
        self.two_stage = two_stage  # study keys whose per-epoch val mAP is the proxy's, before the hash fit
        self.t0, self.finished_here = time.time(), 0

    def _name(self, trial) -> str:
        return f"[{trial.config.get(STUDY_KEY, self.label)}] trial {trial.trial_id}"

    def _counts(self, trials, ended) -> str:
        """Counted from the trials' states (so a resumed experiment counts what finished before)."""
        others = [t for t in trials if t is not ended]
        done = 1 + sum(1 for t in others if t.status in ("TERMINATED", "ERROR"))
        running = sum(1 for t in others if t.status == "RUNNING")
        queued = max(0, self.total - done - running)
        hours = max(time.time() - self.t0, 1e-9) / 3600
        return f"{done}/{self.total} done, {running} running, {queued} queued, {self.finished_here / hours:.0f} trials/h"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "test_mAP@100" not in result and not result.get("finished"):
            proxy = trial.config.get(STUDY_KEY, self.label) in self.two_stage
            self.emit(f"  {self._name(trial)} epoch {result.get('epoch')}: "
                      f"{'proxy (before the hash fit) ' if proxy else ''}"
                      f"val mAP@100 {result.get(METRIC, float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished_here += 1
        last = trial.last_result or {}
        test, val = last.get("test_mAP@100"), last.get(METRIC)
        # the final report's val mAP: for two-stage methods (itq, lsh, ...) that of the fitted hash function
        what = (f"val mAP@100 {val:.4f}, test mAP@100 {test:.4f}" if test is not None and val is not None
                else f"test mAP@100 {test:.4f}" if test is not None else "stopped early")
        if last.get("adopted"):
            what += " (finished before the resume: kept)"
        self.emit(f"  {self._name(trial)} {what} | {self._counts(trials, trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished_here += 1
        self.emit(f"  {self._name(trial)} FAILED; see {trial.path} | {self._counts(trials, trial)}")


def remove_finished_checkpoints(trials, out_dir: str, sweep_id: str) -> None:
    """Remove the checkpoints of the trials that ended for good (completed or stopped: TERMINATED) once
    their experiment is over and Tune has saved it so: nothing resumes them, their rows are written and
    their run directories hold their model and codes. Failed trials keep theirs (``--resume`` retries
    them from there); so does every trial while its experiment runs, because a driver killed before
    Tune's next save would resume a finished trial from its checkpoint (then recognised as finished).
    Also removes a multi-worker trial's Ray Train storage (``<out_dir>/_ray/<run>``)."""
    for trial in trials:
        if trial.status != "TERMINATED":
            continue
        remove_checkpoints(trial.path)
        train_storage = os.path.join(out_dir, "_ray", run_name(sweep_id, trial.trial_id))
        if os.path.isdir(train_storage):
            shutil.rmtree(train_storage, ignore_errors=True)


def remove_checkpoints(trial_path: Optional[str]) -> None:
    """Delete the ``checkpoint_*`` directories of one Tune trial directory (a path or a URI)."""
    import pyarrow.fs

    if not trial_path:
        return
    try:
        fs, path = _fs(trial_path)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        for info in infos:
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                fs.delete_dir(info.path)
    except Exception:  # noqa: BLE001 - cleaning is best effort; the sweep's result does not depend on it
        pass


# --- filling in rows the trials could not write --------------------------------------------------------

def _load_run_result(tcfg, checkpoint):
    from hashbench.platform.training import RunResult

    path = os.path.join(tcfg.run_dir, "metrics.json")
    if os.path.isfile(path):
        return RunResult.load(tcfg.run_dir)
    if checkpoint is not None:  # a multi-worker run whose rank 0 ran on another node
        try:
            with checkpoint.as_directory() as d:
                if os.path.isfile(os.path.join(d, "metrics.json")):
                    with open(os.path.join(d, "metrics.json")) as f:
                        return RunResult(run_dir=tcfg.run_dir, **json.load(f))
        except (OSError, FileNotFoundError):  # removed with the trial's checkpoints
            pass
    return None


def _fill_rows(grid, *, cfg: SweepConfig, studies: dict, default_key: Optional[str], sweep_id: str,
               leaderboard: str, gpus: float, role: str) -> dict:
    """Write the row of every trial of ``grid`` that has none; count trials by status (and list their ids
    under ``"trial_ids"``)."""
    counts = {"completed": 0, "stopped": 0, "error": 0}
    have = trial_row_ids(leaderboard, sweep_id)
    ids = []
    for trial, result in zip(grid._experiment_analysis.trials, grid):
        ids.append(trial.trial_id)
        hp = dict(trial.config)
        study = studies[hp.pop(STUDY_KEY, default_key)]
        seed = hp.pop(SEED_KEY, None)
        tcfg = train_config(cfg, study, hp, seed=seed, run_name=run_name(sweep_id, trial.trial_id), gpus=gpus)
        last = dict(trial.last_result or {})
        run = _load_run_result(tcfg, result.checkpoint) if "test_mAP@100" in last or result.error is None else None
        if run is not None:
            status = "completed"
        else:
            status = "error" if result.error is not None else "stopped"
            history = result.metrics_dataframe
            best = None
            if history is not None and METRIC in history.columns and len(history):
                best = float(history[METRIC].max())
            run = {"run_id": tcfg.run_id, "run_dir": tcfg.run_dir, "config": tcfg.to_dict(),
                   "metrics": {METRIC: best} if best is not None else {}, "protocol": {},
                   "epochs_run": int(last.get("epoch", -1)) + 1, "device": ""}
        counts[status] += 1
        if trial.trial_id in have:
            continue
        started = None
        if "timestamp" in last and "time_total_s" in last:
            started = datetime.fromtimestamp(last["timestamp"] - last["time_total_s"], timezone.utc)
            started = started.isoformat(timespec="seconds")
        for row in rows_from_result(run, sweep_id=sweep_id, trial_id=trial.trial_id, status=status, role=role,
                                    started_at=started):
            append_row(leaderboard, row)
    return {**counts, "trial_ids": ids}


# --- after the experiments: forgotten trials, disk ------------------------------------------------------

_TRIAL_ID = re.compile(r"^[0-9a-f]+(_[0-9]+)?$")  # Tune trial ids: <hex> or <experiment hex>_<index>


def _sweep_run_dirs(out_dir: str, sweep_id: str) -> dict:
    """``{trial id: run directory}`` of this sweep's trials under ``out_dir`` (``<sweep>-<trial id>``)."""
    if "://" in out_dir or not os.path.isdir(out_dir):
        return {}
    prefix = f"{sweep_id}-"
    out = {}
    for name in os.listdir(out_dir):
        tid = name[len(prefix):] if name.startswith(prefix) else ""
        if _TRIAL_ID.match(tid) and os.path.isdir(os.path.join(out_dir, name)):
            out[tid] = os.path.join(out_dir, name)
    return out


def forgotten_runs(cfg: SweepConfig, sweep_id: str, known: set) -> tuple:
    """Run directories of trials that no experiment of the sweep knows any more (the driver died before
    Tune saved the trial; on ``--resume`` Tune ran the budget again under new trial ids).

    A finished one (``metrics.json``) is a real, tested result: its row is written (one that has a row
    already is left alone). An unfinished one is removed, so no run directory is left without a row. Returns the
    trial ids ``(recorded, removed)``.
    """
    recorded, removed = [], []
    runs = _sweep_run_dirs(cfg.out_dir, sweep_id)
    have = trial_row_ids(cfg.leaderboard, sweep_id) if set(runs) - known else set()
    for tid, path in sorted(runs.items()):
        if tid in known or tid in have:  # Tune's, or recorded already (e.g. a seeds experiment not run now)
            continue
        role = "trial"
        try:
            with open(os.path.join(path, "config.json")) as f:
                role = "seed" if int(json.load(f).get("seed", cfg.seed)) != cfg.seed else "trial"
        except (OSError, ValueError, TypeError):
            pass
        if finished_run(path, cfg.leaderboard, sweep_id=sweep_id, trial_id=tid, role=role) is not None:
            recorded.append(tid)
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(tid)
    return recorded, removed


def _du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def disk_use(root: str, out_dir: str, sweep_id: str, leaderboard: str) -> Optional[dict]:
    """Bytes the sweep leaves on local disk: its Tune state, its run directories, the leaderboard
    directory (None where the storage is a URI)."""
    if "://" in root:
        return None
    return {"tune": _du(root), "runs": sum(_du(p) for p in _sweep_run_dirs(out_dir, sweep_id).values()),
            "leaderboard": _du(leaderboard)}


def format_disk(disk: Optional[dict]) -> str:
    if not disk:
        return "disk use: not measured (remote storage)"
    mb = {k: v / 1e6 for k, v in disk.items()}
    return (f"disk use: {sum(mb.values()):.1f} MB (Tune state {mb['tune']:.1f} MB, run directories "
            f"{mb['runs']:.1f} MB, leaderboard {mb['leaderboard']:.1f} MB)")


# --- the driver ----------------------------------------------------------------------------------------

@dataclass
class SweepSummary:
    sweep_id: str
    root: str
    leaderboard: str
    trials: int
    counts: dict
    wall_s: float
    disk: Optional[dict] = None  # bytes: tune (sweep state), runs (this sweep's run directories), leaderboard


def _sampler_seed(cfg: SweepConfig, key: str) -> int:
    return (cfg.seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31 - 1)


def study_search(cfg: SweepConfig, together: list) -> tuple:
    """The searcher and scheduler of an experiment running the studies ``together``: for a searched
    study a seeded Optuna TPE searcher and ASHA (or none), for a single-trial study its fixed
    configuration and no ASHA, behind a :class:`StudySearcher` and a :class:`StudyScheduler`
    (hashbench.platform.sweep.multi) that keep the studies apart."""
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    from hashbench.platform.sweep.multi import FixedConfig, StudyScheduler, StudySearcher

    def searcher_of(s: Study):
        if s.trials == 1 or not s.search:
            return FixedConfig()
        space = OptunaSearch.convert_search_space({n: d.to_tune() for n, d in s.search.items()})
        return OptunaSearch(space=space, metric=METRIC, mode="max", sampler=TPESampler(seed=_sampler_seed(cfg, s.key)))

    searcher = StudySearcher({s.key: searcher_of(s) for s in together}, {s.key: s.trials for s in together},
                             key_field=STUDY_KEY, metric=METRIC, mode="max")
    scheduler = StudyScheduler({s.key: make_scheduler(cfg, s.epochs) if s.trials > 1 and s.search else None
                                for s in together}, key_field=STUDY_KEY)
    return searcher, scheduler


def _run_experiment(name: str, root: str, *, cfg: SweepConfig, studies: dict, default_key: Optional[str],
                    param_space: dict, together: list, plan: Plan,
                    sweep_id: str, leaderboard: str, role: str, resume: bool, emit,
                    callbacks: Optional[list] = None) -> dict:
    """One Tune experiment: the studies ``together`` (each with its own searcher and ASHA), or, with
    ``together`` empty, the grid ``param_space`` (one trial per grid point)."""
    from ray import tune

    common = dict(cfg=cfg, studies=studies, default_key=default_key, sweep_id=sweep_id,
                  leaderboard=leaderboard, gpus=plan.gpus_per_worker, role=role)
    trainable = tune.with_resources(tune.with_parameters(_trial, **common), plan.trial_resources)
    path = f"{root}/{name}"
    total = sum(s.trials for s in together) if together else _grid_size(param_space)
    from hashbench.platform.registry import get_method

    two_stage = frozenset(k for k, st in studies.items() if get_method(st.method).finalize is not None)
    progress = Progress(emit, default_key or name, total, two_stage=two_stage)
    run_config = tune.RunConfig(name=name, storage_path=root, verbose=0,
                                callbacks=[progress, *(callbacks or [])],
                                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    if resume and tune.Tuner.can_restore(path):
        emit(f"[{name}] resuming from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        searcher = scheduler = None
        if together:  # the studies' spaces are their searchers' own (the caller passes no param_space)
            searcher, scheduler = study_search(cfg, together)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=total if together else 1, reuse_actors=True,
                                        max_concurrent_trials=max(1, min(plan.capacity, total))),
            run_config=run_config)
    studies_line = f" of {len(together)} studies" if len(together) > 1 else ""
    emit(f"[{name}] {total} trial(s){studies_line}, "
         f"up to {plan.capacity} at a time, {plan.trial_resources}")
    if len(together) > 1:
        for s in together:
            emit(f"[{s.key}] {s.trials} trial(s) in experiment {name!r}")
    grid = tuner.fit()
    counts = _fill_rows(grid, **common)
    remove_finished_checkpoints(grid._experiment_analysis.trials, cfg.out_dir, sweep_id)
    return counts


SEARCH_EXPERIMENT, FIXED_EXPERIMENT = "search", "fixed"


def plan_experiments(root: str, studies: list, resume: bool) -> list:
    """``[(experiment name, studies, grid)]``: the experiments that run the studies (not the seeds).

    Every study runs in one experiment, so trial processes serve every study: ``search`` (named after
    the study when there is one searched study and no other), or, when no study is searched, the grid
    ``fixed`` (``grid`` True: one trial per study, no searcher). A sweep begun by an older hashbench ran
    its single-trial studies in ``fixed`` and each searched study as its own experiment (named after
    the study); ``--resume`` continues those experiments as they are and runs the other studies
    together.
    """
    from ray import tune

    def restorable(name: str) -> bool:
        return resume and tune.Tuner.can_restore(f"{root}/{name}")

    searched = [s for s in studies if s.trials > 1]
    fixed = [s for s in studies if s.trials == 1]
    if not searched:
        return [(FIXED_EXPERIMENT, fixed, True)] if fixed else []
    plan, alone = [], []
    if fixed and restorable(FIXED_EXPERIMENT):
        plan.append((FIXED_EXPERIMENT, fixed, True))
        alone += fixed
    for s in searched:
        if restorable(s.key):
            plan.append((s.key, [s], False))
            alone.append(s)
    rest = [s for s in studies if s not in alone]
    if rest:
        lone = len(rest) == 1 and rest[0].trials > 1 and not restorable(SEARCH_EXPERIMENT)
        plan.append((rest[0].key if lone else SEARCH_EXPERIMENT, rest, False))
    return plan


def _grid_size(space: dict) -> int:
    n = 1
    for v in space.values():
        if isinstance(v, dict) and "grid_search" in v:
            n *= len(v["grid_search"])
    return n if space else 0


def _best_params(leaderboard: str, sweep_id: str, study: Study) -> Optional[dict]:
    import polars as pl

    from hashbench.platform.leaderboard import best_runs

    df = read_leaderboard(leaderboard).filter(pl.col("sweep_id") == sweep_id)
    from hashbench.platform.data import load_dataset

    name = load_dataset(study.dataset).name
    best = best_runs(df).filter((pl.col("entry") == study.method) & (pl.col("bits") == study.bits)
                                & (pl.col("dataset") == name))  # the method's own readout's row
    if best.height == 0:
        return None
    row = best.row(0, named=True)
    return {"params": json.loads(row["params_json"]), "seed": int(row["seed"])}


def _missing_dirs(paths: list) -> list:
    """Every directory on the way to ``paths`` that does not exist yet, deepest first."""
    out = set()
    for p in paths:
        p = os.path.abspath(p)
        while not os.path.exists(p):
            out.add(p)
            p = os.path.dirname(p)
    return sorted(out, key=lambda q: q.count(os.sep), reverse=True)


def run_sweep(cfg: SweepConfig, *, resume: bool = False, address: Optional[str] = None,
              storage: Optional[str] = None, seeds: Optional[int] = None, leaderboard: Optional[str] = None,
              emit: Callable[[str], None] = print, callbacks: Optional[list] = None) -> SweepSummary:
    """Run (or with ``resume`` continue) the sweep ``cfg``; every finished trial becomes one row.

    ``callbacks``: extra Tune callbacks for every experiment (benchmarks/bench_trial.py). With ``cfg.mps``
    the sweep starts an NVIDIA MPS daemon, then a fresh local Ray under it, and stops both when it ends
    (:mod:`hashbench.platform.sweep.mps`; refused with an ``address`` or a Ray already running).
    """
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables, our progress lines only
    t0 = time.perf_counter()
    cfg = replace(cfg, out_dir=os.path.abspath(cfg.out_dir),
                  leaderboard=os.path.abspath(leaderboard or cfg.leaderboard))
    if seeds is not None:
        cfg = replace(cfg, seeds=seeds)
    root = storage_root(cfg, storage)
    manifest = read_manifest(root) if "://" in root or os.path.isdir(root) else None
    if resume and manifest is None:
        others = _existing_sweeps(root)
        raise HashbenchError(f"--resume: no sweep named {cfg.name!r} in {root.rsplit('/', 1)[0]}; "
                             f"sweeps there: {', '.join(others) or '(none)'}")
    if not resume and manifest is not None:
        raise HashbenchError(f"sweep {cfg.name!r} already exists in {root}; pass --resume to continue it, "
                             f"or set another 'name' in {cfg.source}")
    stale = {} if resume else _sweep_run_dirs(cfg.out_dir, cfg.name)
    if stale:  # a new sweep would take these for its own forgotten trials and write rows for them
        raise HashbenchError(f"out_dir {cfg.out_dir} holds {len(stale)} run director"
                             f"{'y' if len(stale) == 1 else 'ies'} of an earlier sweep named {cfg.name!r} "
                             f"(e.g. {os.path.basename(sorted(stale.values())[0])}) but {root} has no sweep of "
                             f"that name: remove them, set another 'name' in {cfg.source} (or --name), "
                             f"or point --storage at that sweep's state and pass --resume")
    if cfg.mps:  # before anything is made: MPS reaches the trials only through a Ray started here
        from hashbench.platform.sweep.mps import check_mps_gpus, check_mps_local

        check_mps_gpus(cfg.gpus_per_worker, f"{cfg.source}: resources.gpus_per_worker")
        check_mps_local(address, ray_running=ray.is_initialized())
    made = _missing_dirs([p for p in (root, cfg.leaderboard, cfg.out_dir) if "://" not in p])
    with contextlib.ExitStack() as stack:  # on any exit: Ray (when started for MPS) stops, then the daemon
        try:
            check_storage(root)
            check_writable(cfg.leaderboard)
            check_writable(cfg.out_dir, what="run directory")
            if cfg.mps:
                from hashbench.platform.sweep.mps import mps_daemon

                stack.enter_context(mps_daemon(emit))  # exports its directories: ray.init's workers inherit them
                ray.init(address="local", log_to_driver=False, configure_logging=False)
                stack.callback(ray.shutdown)  # the trial processes end before the daemon is told to quit
            elif not ray.is_initialized():
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            plan = plan_resources(cfg, cluster_nodes())
            if cfg.mps and plan.gpus_per_worker == 0:
                raise HashbenchError(f"{cfg.source}: resources.gpus_per_worker 'auto' is 0 on this machine (no GPU "
                                     f"in the Ray session): MPS has nothing to share; drop --mps (or resources.mps)")
        except HashbenchError:
            for path in made:  # leave nothing behind: remove the (still empty) directories the checks made
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            raise
        return _run_studies(cfg, root, manifest, plan, resume=resume, emit=emit, callbacks=callbacks, t0=t0)


def _run_studies(cfg: SweepConfig, root: str, manifest: Optional[dict], plan: Plan, *, resume: bool, emit,
                 callbacks: Optional[list], t0: float) -> SweepSummary:
    """The sweep once Ray is up and the checks passed: its experiments, the seeds, the rows, the summary."""
    if manifest is None:
        write_manifest(root, {"name": cfg.name, "source": cfg.source, "leaderboard": cfg.leaderboard,
                              "created_at": now_iso(), "config": open(cfg.source).read()
                              if os.path.isfile(cfg.source) else None})
    sweep_id = cfg.name
    studies = {s.key: s for s in cfg.studies}
    counts = {"completed": 0, "stopped": 0, "error": 0}
    common = dict(cfg=cfg, plan=plan, sweep_id=sweep_id, leaderboard=cfg.leaderboard, resume=resume, emit=emit,
                  studies=studies, callbacks=callbacks)
    known: set = set()  # every trial id Tune knows in this sweep's experiments

    for name, group, grid in plan_experiments(root, cfg.studies, resume):
        if grid:
            from ray import tune

            c = _run_experiment(name, root, default_key=None, together=[], role="trial", **common,
                                param_space={STUDY_KEY: tune.grid_search([s.key for s in group])})
        else:
            c = _run_experiment(name, root, default_key=group[0].key if len(group) == 1 else None, param_space={},
                                together=group, role="trial", **common)
        counts = {k: counts[k] + c[k] for k in counts}
        known.update(c["trial_ids"])

    if cfg.seeds > 0:
        from ray import tune

        seed_studies = {}
        for study in cfg.studies:
            best = _best_params(cfg.leaderboard, sweep_id, study)
            if best is None:
                emit(f"[seeds] {study.key}: no completed trial to re-train")
                continue
            seed_studies[f"{study.key}-best"] = replace(study, params=best["params"], search={}, trials=1)
        if seed_studies:
            # every search trial trains with cfg.seed; the re-runs take the next N seeds
            space = {STUDY_KEY: tune.grid_search(sorted(seed_studies)),
                     SEED_KEY: tune.grid_search([cfg.seed + k for k in range(1, cfg.seeds + 1)])}
            c = _run_experiment("seeds", root, **{**common, "studies": seed_studies}, default_key=None,
                                together=[], param_space=space, role="seed")
            counts = {k: counts[k] + c[k] for k in counts}
            known.update(c["trial_ids"])
    recorded, removed = forgotten_runs(cfg, sweep_id, known)
    if recorded or removed:
        emit(f"[resume] run directories of trials Tune had forgotten: {len(recorded)} finished (row written), "
             f"{len(removed)} unfinished (removed)")
    counts["completed"] += len(recorded)
    total = sum(counts.values())
    # the trials' one-row files merged into one (fast reads at sweep scale; safe beside other writers,
    # never fails the sweep): hashbench.platform.leaderboard_store, docs/leaderboard.md
    from hashbench.platform.leaderboard import compact_quietly

    compact_quietly(cfg.leaderboard, emit)
    disk = disk_use(root, cfg.out_dir, sweep_id, cfg.leaderboard)
    return SweepSummary(sweep_id, root, cfg.leaderboard, total, counts, time.perf_counter() - t0, disk)
