"""Precise batch-norm statistics: every BatchNorm's running mean and variance re-estimated with the
current weights, from one pass over the train split (``TrainConfig.precise_bn``).

Why: the running statistics that evaluation-mode batch norm uses are an exponential average over the
training steps, each taken with the weights of its step. On short runs with few steps an epoch and
fast-moving weights they lag the final weights, and evaluation-mode features (codes) are offset from
the training-mode ones (docs/methods/drh.md, finding 5: constant bits).

How: batch-norm layers in training mode (normalising by each batch's own statistics, as in training),
every other module in evaluation mode (dropout off: the pass measures the features encoding sees), no
gradient, no augmentation. During the pass each batch-norm layer's momentum is 1, so after each batch
its running buffers hold exactly that batch's per-channel mean and unbiased variance (over every
dimension but the channel one); a forward hook reads them and pools them over all items in float64
(Chan et al.'s parallel update, exact up to rounding), with no extra pass over the activations. The running mean becomes the
exact mean over the split and the running variance the exact unbiased variance (``n / (n - 1)`` times
the population one, torch's convention for running variances). This is the cumulative average that
``momentum=None`` keeps, but pooled over the whole split rather than averaged per batch: a mean of
per-batch variances misses the spread of the batch means.

The buffers are written in place (``copy_``): a captured CUDA graph of the training step keeps
pointing at them. Each module's training flag is restored afterwards; the model's own ``train()`` /
``eval()`` is never called (some models count epochs by those switches). ``num_batches_tracked`` is
left as it was.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def batch_norm_layers(model: nn.Module) -> list:
    """Every batch-norm layer of ``model`` that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable, autocast: bool = False) -> int:
    """Re-estimate the running statistics of every batch-norm layer of ``model`` from ``batches``
    (tensors of images, or objects with ``.images``), fed through ``model(x)``. Returns the number of
    items seen (0 when the model has no batch norm: nothing is run)."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    sums: dict = {}

    def hook(module, args, output):
        # momentum 1 during the pass: the running buffers hold exactly this batch's mean and unbiased variance
        nb = args[0].numel() // args[0].shape[1]
        mean, m2 = module.running_mean.double(), module.running_var.double() * max(nb - 1, 0)
        if module not in sums:
            sums[module] = [nb, mean.clone(), m2]
            return
        n, mu, acc = sums[module]                               # Chan et al.'s pooled update
        delta = mean - mu
        sums[module] = [n + nb, mu + delta * (nb / (n + nb)), acc + m2 + delta * delta * (n * nb / (n + nb))]

    modes = {m: m.training for m in model.modules()}
    tracked = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in layers]
    momenta = [m.momentum for m in layers]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]  # for layers the pass never reaches
    handles = [m.register_forward_hook(hook) for m in layers]
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    items = 0
    try:
        for m in model.modules():
            m.training = isinstance(m, nn.modules.batchnorm._BatchNorm)
        for m in layers:
            m.reset_running_stats()     # in place; finite values, since momentum 1 multiplies the old ones by 0
            m.momentum = 1.0
        for b in batches:
            x = getattr(b, "images", b)
            items += x.shape[0]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and device_type == "cuda"):
                model(x)
    finally:
        for h in handles:
            h.remove()
        for m, was in modes.items():
            m.training = was
        for m, count, momentum in zip(layers, tracked, momenta):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
    for m, (old_mean, old_var) in zip(layers, before):
        if m not in sums:
            m.running_mean.copy_(old_mean)
            m.running_var.copy_(old_var)
            continue
        n, mean, m2 = sums[m]
        var = m2 / max(n - 1, 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return items


def even_batches(n: int, batch_size: int, device) -> list:
    """Row indices ``0..n-1`` in ``ceil(n / batch_size)`` batches whose sizes differ by at most one, but
    never so many that one holds a single item (BatchNorm1d refuses those in training mode), unless
    ``n`` itself is 1."""
    k = max(1, min(-(-n // max(1, batch_size)), n // 2))
    return list(torch.arange(n, device=device).tensor_split(k))


__all__ = ["recompute_bn_stats", "batch_norm_layers", "even_batches"]
