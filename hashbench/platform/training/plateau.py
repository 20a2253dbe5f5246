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

from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import PLATEAU_ON

#: the direction in which each quantity improves
PLATEAU_MODES = {"val_map": "max", "train_loss": "min"}


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def orient_plateau(scheduler, on: str):
    """The scheduler to use for ``on``. A freshly built ``ReduceLROnPlateau`` whose mode is not
    ``PLATEAU_MODES[on]`` is replaced by a new one of the same class on the same optimizer, with that
    mode and the same factor, patience, threshold, threshold mode, cooldown, minimum learning rates and
    eps (best value and bad-epoch count start afresh; the optimizer's learning rates are not touched),
    so a subclass must take ``ReduceLROnPlateau``'s arguments. Any other scheduler, or ``None``, is
    returned as it is. Call it before loading a saved ``state_dict``."""
    if not is_plateau(scheduler):
        return scheduler
    mode = PLATEAU_MODES[on]
    if scheduler.mode == mode:
        return scheduler
    cls = type(scheduler)
    try:
        return cls(scheduler.optimizer, mode=mode, factor=scheduler.factor, patience=scheduler.patience,
                   threshold=scheduler.threshold, threshold_mode=scheduler.threshold_mode,
                   cooldown=scheduler.cooldown, min_lr=list(scheduler.min_lrs), eps=scheduler.eps)
    except TypeError as err:
        raise HashbenchError(
            f"plateau_on {on!r} needs a {cls.__name__} with mode {mode!r}, built with mode {scheduler.mode!r}: "
            f"rebuilding it failed ({err}); build it with mode={mode!r} or give {cls.__name__} "
            f"ReduceLROnPlateau's constructor arguments") from err


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
