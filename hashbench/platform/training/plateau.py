"""What a plateau scheduler (``ReduceLROnPlateau``) is stepped with at the end of each epoch.

``val_map``: the validation mAP@100 (mode ``max``), the platform's default. ``train_loss``: the
epoch's mean training loss (the mean of the ``loss`` term over the epoch's steps, averaged over the
workers; mode ``min``), for methods whose paper divides the learning rate when the training objective
stops falling (DRH: "upon convergence"). A method names its default (``Method.plateau_on``);
``TrainConfig.plateau_on`` overrides it for one run. Schedulers that are not ``ReduceLROnPlateau``
take no metric and ignore the choice.
"""

from __future__ import annotations

import torch

from hashbench.platform.registry import PLATEAU_ON

#: the direction in which each quantity improves
PLATEAU_MODES = {"val_map": "max", "train_loss": "min"}


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def orient_plateau(scheduler, on: str) -> None:
    """Point a freshly built ``ReduceLROnPlateau`` at ``on``: its mode becomes ``PLATEAU_MODES[on]``
    (threshold and threshold mode kept); its best value and bad-epoch count start afresh. Other
    schedulers are left alone."""
    if not is_plateau(scheduler):
        return
    mode = PLATEAU_MODES[on]
    if scheduler.mode != mode:
        scheduler._init_is_better(mode=mode, threshold=scheduler.threshold, threshold_mode=scheduler.threshold_mode)
        scheduler._reset()


def step_scheduler(scheduler, on: str, val_map: float, train_loss: float) -> None:
    """One end-of-epoch step: a plateau scheduler gets ``val_map`` or ``train_loss`` (``on``), any
    other scheduler a plain ``step()``."""
    if scheduler is None:
        return
    if is_plateau(scheduler):
        scheduler.step(train_loss if on == "train_loss" else val_map)
    else:
        scheduler.step()


__all__ = ["PLATEAU_ON", "PLATEAU_MODES", "orient_plateau", "step_scheduler", "is_plateau"]
