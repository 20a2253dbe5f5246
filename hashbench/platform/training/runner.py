"""Running :func:`fit`: in-process (:func:`run_local`) or on Ray Train (:func:`run_training`)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from typing import Callable, Optional

from hashbench.platform.errors import HashbenchError
from hashbench.platform.training.config import TrainConfig
from hashbench.platform.training.loop import RunResult, fit
from hashbench.platform.training.session import LocalSession

#: environment variables handed to Ray workers (they may not inherit the driver's environment)
FORWARDED_ENV_PREFIX = "HASHBENCH_"


def _check_not_finished(cfg: TrainConfig) -> None:
    """A finished run is never overwritten; an unfinished one resumes only with the same config."""
    if os.path.isfile(os.path.join(cfg.run_dir, "metrics.json")):
        raise HashbenchError(f"run {cfg.run_dir} already finished (metrics.json exists); choose another "
                             f"run name or out directory")
    saved = os.path.join(cfg.run_dir, "config.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            before = json.load(f)
        now = json.loads(json.dumps(cfg.to_dict()))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise HashbenchError(f"run {cfg.run_dir} exists unfinished with a different configuration "
                                 f"({', '.join(changed)}); resume it with the same settings or choose "
                                 f"another run name")


def run_local(cfg: TrainConfig, on_epoch: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train in this process, no Ray. An unfinished run of the same name resumes from its checkpoint.

    Checkpoints live in ``<run_dir>/checkpoints`` until the run finishes. ``on_epoch(metrics)`` is
    called after every report (progress bars).
    """
    if cfg.workers != 1:
        raise HashbenchError(f"workers={cfg.workers}: an in-process run (--local) is one worker; "
                             f"run it on Ray Train for data-parallel workers")
    _check_not_finished(cfg)
    ckpt_root = os.path.join(cfg.run_dir, "checkpoints")
    import torch

    threads = torch.get_num_threads()  # fit sets cfg.torch_threads; give the caller its own back
    try:
        result = fit(cfg, LocalSession(ckpt_root, device=cfg.device, on_report=on_epoch))
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return result


def _train_worker(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: rebuild the config, run :func:`fit`."""
    from hashbench.platform.training.session import RayTrainSession

    os.environ.update(loop_config["env"])
    fit(TrainConfig.from_dict(loop_config["config"]), RayTrainSession())


def _progress_callback(queue):
    """A Ray Train UserCallback (runs in the controller) that forwards rank 0's metrics to ``queue``."""
    from ray.train import UserCallback

    class _Forward(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                queue.put(dict(metrics[0]))

    return _Forward()


def run_training(cfg: TrainConfig, callbacks: Optional[list] = None,
                 on_epoch: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train on Ray Train: a ``TorchTrainer`` (Train V2) with ``cfg.workers`` DDP workers.

    The run is named ``cfg.run_id`` (a second call with the same name continues that run's
    checkpoints); checkpoints go to ``cfg.storage_path`` (default ``<out_dir>/_ray``). A worker
    failure restarts the workers from the last checkpoint, up to ``cfg.max_failures`` times.
    ``callbacks`` are added to the RunConfig (e.g. Tune's ``TuneReportCallback``); ``on_epoch(metrics)``
    gets rank 0's metrics after every report. Starts a local Ray if none is running.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _check_not_finished(cfg)
    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    storage = cfg.storage_path or os.path.join(cfg.out_dir, "_ray")
    if "://" not in storage:
        storage = os.path.abspath(storage)  # Ray Train wants an absolute local path or a URI
    callbacks = list(callbacks or [])
    queue = pump = None
    if on_epoch is not None:
        from ray.util.queue import Queue

        if not ray.is_initialized():
            ray.init()
        queue = Queue()
        callbacks.append(_progress_callback(queue))
        stop = threading.Event()

        def _pump():
            while not stop.is_set():
                try:
                    on_epoch(queue.get(timeout=0.5))
                except Exception:  # queue.Empty, or the queue actor gone at shutdown
                    continue

        pump = threading.Thread(target=_pump, daemon=True)
        pump.start()
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={"config": cfg.to_dict(),
                           "env": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=cfg.run_id, storage_path=storage, callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _unwrap(exc) from exc
    finally:
        if pump is not None:
            while not queue.empty():
                on_epoch(queue.get())
            stop.set()
            pump.join(timeout=2)
            queue.shutdown()
    if not os.path.isfile(os.path.join(cfg.run_dir, "metrics.json")):
        # rank 0 ran on another node: the final checkpoint carries the run's files
        if result.checkpoint is None:
            raise HashbenchError(f"run {cfg.run_id}: Ray Train returned no final checkpoint")
        with result.checkpoint.as_directory() as d:
            os.makedirs(cfg.run_dir, exist_ok=True)
            for name in ("config.json", "codes.npz", "per_query.npz", "model.pt", "metrics.json"):
                shutil.copyfile(os.path.join(d, name), os.path.join(cfg.run_dir, f".{name}.tmp"))
                os.replace(os.path.join(cfg.run_dir, f".{name}.tmp"), os.path.join(cfg.run_dir, name))
    return RunResult.load(cfg.run_dir)


def _unwrap(exc: Exception) -> Exception:
    """The HashbenchError a worker raised (NaN loss, bad data), else the original error."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        err = failures[rank]
        while err is not None:
            if isinstance(err, HashbenchError):
                return HashbenchError(str(err))
            err = getattr(err, "cause", None) or err.__cause__
    return exc
