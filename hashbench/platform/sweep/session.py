"""``TuneSession``: the training loop's session inside a Ray Tune function trial (single-worker fast path).

A one-worker trial runs :func:`hashbench.platform.training.fit` directly in the Tune trial process,
skipping the ~15 s a TorchTrainer costs on small trials (docs/sweeps.md). Reports and checkpoints
go to Tune; a restored trial resumes from its last checkpoint.
"""

from __future__ import annotations

from typing import Optional

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
    """Rank 0 of 1 on the device Ray gave this trial (its GPU share, else the CPU)."""

    def __init__(self, device: Optional[str] = None):
        self.device = default_device(device)
        self._restored: Optional[str] = None
        self.reports: list = []

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
