"""``TuneSession``: the training loop's session inside a Ray Tune function trial (single-worker fast path).

A one-worker trial runs :func:`hashbench.platform.training.fit` directly in the Tune trial process,
skipping the ~15 s a TorchTrainer costs on small trials (docs/sweeps.md). Reports and checkpoints
go to Tune; a restored trial resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from hashbench.platform.training.session import Session, default_device


def for_tune(metrics: dict) -> dict:
    """``metrics`` with the loop's ``done`` flag renamed ``finished``: Tune ends a trial at once when
    a report says ``done``, which would kill it before it writes its leaderboard row."""
    return {("finished" if k == "done" else k): v for k, v in metrics.items()}


def tune_report_callback():
    """Ray Train → Tune forwarding (``TuneReportCallback``) with :func:`for_tune` applied."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Forward(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [for_tune(m) for m in metrics], checkpoint)

    return _Forward()


class TuneSession(Session):
    """Rank 0 of 1 on the device Ray gave this trial (its GPU share, else the CPU).

    Checkpoints hold only what a resume needs (model, loss, optimizer, scheduler, loop state) and are
    written at most every ``checkpoint_interval_s`` seconds (0: after every epoch), never for the last
    epoch: the test evaluation follows at once, and a trial killed there resumes from its newest
    checkpoint (or starts again). The final report carries no checkpoint: the run directory holds the
    run's files and ``on_result(result)`` (the sweep trial writing its leaderboard row) runs before it.
    """

    final_checkpoint = False

    def __init__(self, device: Optional[str] = None, checkpoint_interval_s: float = 0.0,
                 on_result: Optional[Callable] = None):
        self.device = default_device(device)
        self._restored: Optional[str] = None
        self.reports: list = []
        self.checkpoint_interval_s = float(checkpoint_interval_s)
        self._on_result = on_result
        self._since = time.perf_counter()

    def wants_checkpoint(self, epoch: int, last: bool) -> bool:
        if last or time.perf_counter() - self._since < self.checkpoint_interval_s:
            return False
        self._since = time.perf_counter()
        return True

    def on_result(self, result) -> Optional[dict]:
        return self._on_result(result) if self._on_result is not None else None

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        import ray.tune

        self.reports.append(dict(metrics))
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(for_tune(metrics), checkpoint=checkpoint)  # persists the checkpoint before returning

    def get_checkpoint_dir(self) -> Optional[str]:
        import ray.tune

        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is None:
            return None
        if self._restored is None:
            self._restored = checkpoint.to_directory()
        return self._restored
