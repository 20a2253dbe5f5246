"""Sessions: how the training loop talks to whatever runs it.

:func:`hashbench.platform.training.fit` never imports Ray itself. It asks its
session who it is (``world_rank``, ``world_size``, ``local_rank``, ``device``),
where to resume from (``get_checkpoint_dir``) and hands it every epoch's metrics
and checkpoint directory (``report``). Three implementations:

* :class:`LocalSession` — in-process; keeps the newest checkpoint under a
  directory of its own and resumes from it.
* :class:`RayTrainSession` — inside a Ray Train worker (``ray.train.report``,
  ``ray.train.get_checkpoint``, ``ray.train.get_context``).
* a Tune session (written by the sweep code) — inside a Ray Tune function trial,
  through ``ray.tune.report`` / ``ray.tune.get_checkpoint``.

To write another, subclass :class:`Session` and implement ``report`` and
``get_checkpoint_dir`` (optionally ``wants_checkpoint``, ``final_checkpoint`` and ``on_result``:
how often to checkpoint, and a hook on the finished result). Contract of ``report(metrics, checkpoint_dir)``:
``metrics`` is a flat dict of numbers; ``checkpoint_dir`` (rank 0 only, else
None) is a directory that the session must copy or upload before returning —
the loop deletes it afterwards. Every rank calls ``report`` the same number of
times.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Optional

import torch


def default_device(requested: Optional[str] = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:N"), else the first GPU when there is one, else the CPU."""
    from hashbench.platform.errors import HashbenchError

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise HashbenchError(f"device {requested!r} requested but torch sees no CUDA GPU; use --device cpu")
        dev = torch.device(requested)
        return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


class Session:
    """Base class: a single process (rank 0 of 1) on ``device``; subclasses report somewhere."""

    world_rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        """Record one epoch's ``metrics`` and (rank 0) copy ``checkpoint_dir`` before returning."""
        raise NotImplementedError

    def get_checkpoint_dir(self) -> Optional[str]:
        """A local directory holding the checkpoint to resume from, or None to start fresh."""
        raise NotImplementedError

    #: whether the final report (after the test evaluation) carries a checkpoint with the run's files
    final_checkpoint: bool = True

    def wants_checkpoint(self, epoch: int, last: bool) -> bool:
        """Whether the report of ``epoch`` (``last``: the run's last training epoch) should carry a
        checkpoint. The loop writes none otherwise: a resume restarts from the newest one written."""
        return True

    def on_result(self, result) -> Optional[dict]:
        """Called on rank 0 with the finished :class:`RunResult` just before the final report (the
        run directory is complete); returns extra metrics for that report, or None."""
        return None


class LocalSession(Session):
    """In-process session. Checkpoints live in ``checkpoint_root`` (newest only); resumes from there.

    ``on_report(metrics)`` is called after every report (progress bars).
    """

    def __init__(self, checkpoint_root: Optional[str] = None, device: Optional[str] = None,
                 on_report: Optional[Callable[[dict], None]] = None):
        self.device = default_device(device)
        self.checkpoint_root = checkpoint_root
        self.on_report = on_report
        self.reports: list = []

    def _existing(self) -> list:
        if not self.checkpoint_root or not os.path.isdir(self.checkpoint_root):
            return []
        names = sorted(n for n in os.listdir(self.checkpoint_root) if n.startswith("checkpoint_"))
        return [os.path.join(self.checkpoint_root, n) for n in names]

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.checkpoint_root:
            os.makedirs(self.checkpoint_root, exist_ok=True)
            old = self._existing()
            index = int(os.path.basename(old[-1]).split("_")[1]) + 1 if old else 0
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.checkpoint_root)
            shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
            os.replace(tmp, os.path.join(self.checkpoint_root, f"checkpoint_{index:06d}"))
            for path in old:  # keep the newest complete checkpoint only
                shutil.rmtree(path, ignore_errors=True)
        if self.on_report is not None:
            self.on_report(metrics)

    def get_checkpoint_dir(self) -> Optional[str]:
        existing = self._existing()
        return existing[-1] if existing else None


class RayTrainSession(Session):
    """Inside a Ray Train worker (Train V2): rank and device from Ray, reports through ``ray.train.report``."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = ray.train.torch.get_device()
        self._restored: Optional[str] = None

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def get_checkpoint_dir(self) -> Optional[str]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if self._restored is None:
            self._restored = checkpoint.to_directory()  # downloads when storage is remote
        return self._restored
