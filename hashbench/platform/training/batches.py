"""Data on the device: splits as uint8 tensors, index-tensor batches, samplers, augmentation.

Nothing here loops over samples in Python: a batch is one ``index_select`` of
the split's uint8 tensor, augmentation is a handful of masked tensor ops, and a
sampler returns an epoch's whole plan as one ``(steps, world_size, per_worker)``
index tensor from which each worker takes its column.
"""

from __future__ import annotations

import numpy as np
import torch

from hashbench.platform.registry import Batch

#: fraction of the free GPU memory a split's images may take before they stay in (pinned) host memory
GPU_DATA_FRACTION = 0.4


class SplitData:
    """One split of a prepared store, held as tensors.

    images: uint8 (n, C, H, W) on ``store_device`` (the training device when it fits, else pinned host
    memory); labels: float multi-hot (n, C) and targets: long (n,) on ``device``; masks (optional):
    uint8 (n, H, W) next to the images; index: long (n,) positions in the store.
    """

    def __init__(self, images, labels, index, device, masks=None):
        self.device = torch.device(device)
        n_bytes = images.nbytes + (masks.nbytes if masks is not None else 0)
        self.store_device = self.device if _fits(n_bytes, self.device) else torch.device("cpu")
        pin = self.store_device.type == "cpu" and self.device.type == "cuda"
        self.images = _to(torch.from_numpy(np.ascontiguousarray(images)), self.store_device, pin)
        self.masks = None if masks is None else _to(torch.from_numpy(np.ascontiguousarray(masks)),
                                                     self.store_device, pin)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(self.device, torch.float32)
        self.targets = self.labels.argmax(1)  # the first label of each item
        self.index = torch.from_numpy(np.asarray(index, dtype=np.int64)).to(self.device)

    @classmethod
    def from_store(cls, ds, split: str, device, masks: bool = False) -> "SplitData":
        idx = np.asarray(ds.indices(split), dtype=np.int64)
        return cls(np.asarray(ds.images[idx]), np.asarray(ds.labels[idx]), idx, device,
                   masks=np.asarray(ds.masks[idx]) if masks else None)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, rows: torch.Tensor, augment: dict | None = None,
              generator: torch.Generator | None = None) -> Batch:
        """The items at ``rows`` (long tensor on ``device``) as a float [0, 1] :class:`Batch`."""
        src = rows if self.store_device == self.device else rows.cpu()
        x = self.images.index_select(0, src).to(self.device, non_blocking=True)
        m = None
        if self.masks is not None:
            m = self.masks.index_select(0, src).to(self.device, non_blocking=True)
        x = x.float().div_(255.0)
        if augment is not None and augment.get("enabled", True):
            x, m = augment_batch(x, m, augment, generator)
        return Batch(images=x, labels=self.labels[rows], targets=self.targets[rows],
                     masks=None if m is None else m.long(), index=self.index[rows])

    def iter_batches(self, batch_size: int):
        """Every item once, in order, without augmentation."""
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)), device=self.device)
            yield self.batch(rows)


def _fits(n_bytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= GPU_DATA_FRACTION * free


def _to(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    return t.pin_memory() if pin else t.to(device)


def _where(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(flag.view(-1, *([1] * (a.dim() - 1))), a, b)


def augment_batch(x: torch.Tensor, masks, cfg: dict, generator: torch.Generator | None = None):
    """Random flips, 90-degree rotations and intensity jitter of a float batch ``x`` (B, C, H, W).

    Geometric transforms are applied to ``masks`` (B, H, W) too. Each sample draws its own
    transform from ``generator`` (on ``x``'s device). A rotation by k quarter turns is built from a
    transpose and flips: k=1 transpose + horizontal flip, k=2 both flips, k=3 transpose + vertical
    flip (the same images as ``torch.rot90(x, -k, (-2, -1))``).
    """
    n, dev = x.shape[0], x.device

    def coin() -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) < 0.5

    def apply(flag, fn):
        nonlocal x, masks
        x = _where(flag, fn(x), x)
        if masks is not None:
            masks = _where(flag, fn(masks), masks)

    # which transforms run is decided by the config only (no data-dependent branch: no host sync)
    transpose = hflip = vflip = None
    if cfg.get("rot90") and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (n,), device=dev, generator=generator)
        transpose, hflip, vflip = (k % 2 == 1), (k == 1) | (k == 2), (k == 2) | (k == 3)
    if cfg.get("hflip"):
        hflip = coin() if hflip is None else hflip ^ coin()
    if cfg.get("vflip"):
        vflip = coin() if vflip is None else vflip ^ coin()
    if transpose is not None:
        apply(transpose, lambda t: t.transpose(-1, -2))
    if hflip is not None:
        apply(hflip, lambda t: t.flip(-1))
    if vflip is not None:
        apply(vflip, lambda t: t.flip(-2))
    b, c = cfg.get("brightness", 0.0), cfg.get("contrast", 0.0)
    if b > 0 or c > 0:
        shape = (n,) + (1,) * (x.dim() - 1)
        gain = 1.0 + c * (2 * torch.rand(shape, device=dev, generator=generator) - 1)
        shift = b * (2 * torch.rand(shape, device=dev, generator=generator) - 1)
        x = ((x - 0.5) * gain + 0.5 + shift).clamp_(0.0, 1.0)
    return x, masks


def random_plan(n: int, batch_size: int, world_size: int, generator: torch.Generator) -> torch.Tensor:
    """An epoch of a seeded permutation as ``(steps, world_size, per_worker)`` row indices.

    ``per_worker = batch_size // world_size``; the incomplete last batch is dropped unless the
    split is smaller than one global batch, when every worker gets one batch of ``n // world_size``.
    """
    per = batch_size // world_size
    steps = n // (per * world_size)
    if steps == 0:
        steps, per = 1, n // world_size
    perm = torch.randperm(n, generator=generator)
    return perm[: steps * world_size * per].view(steps, world_size, per)


def class_balanced_plan(targets: torch.Tensor, batch_size: int, world_size: int, spc: int,
                        generator: torch.Generator) -> torch.Tensor:
    """An epoch of class-balanced batches as ``(steps, world_size, per_worker)`` row indices.

    Each worker batch holds ``n = min(per_worker // spc, usable classes)`` distinct classes (classes
    with fewer than ``spc`` items are never drawn), filled to ``per_worker`` items: every class gets
    ``per_worker // n`` items and ``per_worker % n`` of them one more. So a batch of 40 with ``spc`` 4
    is 10 classes x 4 on data with many classes, and 2 classes x 20 on a 2-class set (not 2 x 4). No
    item repeats within a batch: when a drawn class has fewer items than its share, every class gets
    at most the smallest usable class's count (the batch is then smaller). Classes are drawn uniformly
    per batch; each class's items are consumed in chunks from fresh random permutations. About one
    pass over the data per epoch.
    """
    targets = targets.cpu()
    per = batch_size // world_size
    counts = torch.bincount(targets)
    usable = torch.nonzero(counts >= spc).flatten()
    n_cls = min(per // spc, len(usable))
    base, extra = divmod(per, n_cls)
    chunk = base + (extra > 0)
    cap = int(counts[usable].min())
    sizes = torch.full((n_cls,), base, dtype=torch.long)
    sizes[:extra] += 1
    if chunk > cap:  # not enough items for the share without repeating one: everyone gets `cap`
        chunk, sizes = cap, torch.full((n_cls,), cap, dtype=torch.long)
    keep = torch.arange(chunk)[None, :] < sizes[:, None]  # (n_cls, chunk): the slots a batch uses
    per_eff = int(sizes.sum())
    steps = max(1, len(targets) // (per_eff * world_size))
    n_batches = steps * world_size
    # classes of every batch: the first n_cls of a random ordering of the usable classes
    keys = torch.rand(n_batches, len(usable), generator=generator)
    chosen = usable[keys.argsort(dim=1)[:, :n_cls]]  # (n_batches, n_cls)
    rows = torch.empty(n_batches, n_cls, chunk, dtype=torch.long)
    flat_choice = chosen.flatten()
    for c in usable.tolist():  # a loop over classes, not samples
        where = torch.nonzero(flat_choice == c).flatten()
        if len(where) == 0:
            continue
        members = torch.nonzero(targets == c).flatten()
        need, usable_len = len(where) * chunk, (len(members) // chunk) * chunk
        reps = -(-need // usable_len)
        stream = torch.cat([members[torch.randperm(len(members), generator=generator)[:usable_len]]
                            for _ in range(reps)])
        rows.view(-1, chunk)[where] = stream[:need].view(-1, chunk)
    return rows[:, keep].view(steps, world_size, per_eff)
