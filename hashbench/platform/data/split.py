"""Train/val/test assignment: the source's own split where it has one, else stratified, seeded and
group-aware (no group in two splits).

Items the source left unassigned (-1) are shared, in the user's ratios, among train and every split
the source did not provide: a source with train + test gets a val split carved from its train items
(stratified, group-aware, seeded, with ratio val / (train + val)).
"""

from __future__ import annotations

import numpy as np

from hashbench.platform.data.base import option
from hashbench.platform.errors import HashbenchError

SPLIT_NAMES = ("train", "val", "test")
RATIO_TOLERANCE = 1e-6  # |train + val + test - 1| allowed (0.7 + 0.1 + 0.2 is 0.9999999999999999)


def check_ratios(ratios) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3 or min(r) <= 0 or not np.isfinite(r).all():
        raise HashbenchError(f"{option('ratios')} must be three positive numbers train,val,test "
                             f"(e.g. 0.7,0.1,0.2), got {','.join(map(str, ratios))}")
    total = sum(r)
    if abs(total - 1.0) > RATIO_TOLERANCE:  # never renormalised silently: 0.9,0.9,0.9 is a typo
        raise HashbenchError(f"{option('ratios')} {','.join(f'{x:g}' for x in r)}: the ratios sum to {total:g}; they must "
                             f"sum to 1 (e.g. 0.7,0.1,0.2)")
    return tuple(x / total for x in r)  # type: ignore[return-value]


def _quota(n: int, ratios: np.ndarray) -> np.ndarray:
    """Largest-remainder integer counts summing to n."""
    raw = n * ratios
    base = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - base), kind="stable")
    base[order[: n - base.sum()]] += 1
    return base


def stratified(labels: np.ndarray, ratios, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each row to one of ``len(ratios)`` parts, stratified on the label rows.

    Without groups every label combination is cut exactly (largest remainder) after a seeded
    shuffle. With groups, whole groups are placed greedily, largest first (ties in seeded random
    order), each into the part whose per-class deficit, weighted by the group's class counts and
    normalised by the class totals, is largest.
    """
    ratios = np.asarray(ratios, np.float64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    out = np.empty(n, np.int8)
    if groups is None:
        _, key = np.unique(labels, axis=0, return_inverse=True)
        key = key.reshape(-1)
        for k in range(int(key.max()) + 1 if n else 0):
            idx = rng.permutation(np.flatnonzero(key == k))
            out[idx] = np.repeat(np.arange(len(ratios)), _quota(len(idx), ratios)).astype(np.int8)
        return out
    uniq, ginv = np.unique(groups, return_inverse=True)
    ginv = ginv.reshape(-1)
    per_group = np.zeros((len(uniq), labels.shape[1]), np.float64)
    np.add.at(per_group, ginv, labels.astype(np.float64))
    sizes = np.bincount(ginv, minlength=len(uniq))
    totals = np.maximum(per_group.sum(axis=0), 1.0)
    target = ratios[:, None] * per_group.sum(axis=0)[None, :]
    current = np.zeros_like(target)
    shuffled = rng.permutation(len(uniq))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    part_of_group = np.empty(len(uniq), np.int8)
    for g in order:
        v = per_group[g]
        score = ((target - current) * v[None, :] / totals[None, :]).sum(axis=1)
        s = int(np.argmax(score))
        part_of_group[g] = s
        current[s] += v
    return part_of_group[ginv]


def resolve_split(split: np.ndarray | None, labels: np.ndarray, groups: np.ndarray | None,
                  ratios, seed: int) -> np.ndarray:
    """The final int8 split (0 train / 1 val / 2 test) from a source split with -1 = unassigned."""
    ratios = np.asarray(check_ratios(ratios))
    n = len(labels)
    split = np.full(n, -1, np.int8) if split is None else np.asarray(split, np.int8).copy()
    given = {int(s) for s in np.unique(split[split >= 0])}
    if given and given != {0, 1, 2}:
        if 0 not in given:
            raise HashbenchError("the source's split has no train part (found: "
                                 f"{', '.join(SPLIT_NAMES[s] for s in sorted(given))}); "
                                 "the database is the train split")
        split[split == 0] = -1  # carve the missing split(s) from the source's train part
    free = split < 0
    if not free.any():
        if groups is not None:
            check_groups_disjoint(split, groups)
        return split
    present = {int(s) for s in np.unique(split[~free])}
    targets = [s for s in range(3) if s == 0 or s not in present]
    sub = stratified(labels[free], ratios[targets] / ratios[targets].sum(), seed,
                     None if groups is None else groups[free])
    split[free] = np.asarray(targets, np.int8)[sub]
    if groups is not None:
        check_groups_disjoint(split, groups)
    return split


def check_groups_disjoint(split: np.ndarray, groups: np.ndarray) -> None:
    """Raise if a group id occurs in two splits (e.g. a patient in both train and test)."""
    pairs = np.unique(np.stack([groups, split.astype(np.int64)], axis=1), axis=0)
    g, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise HashbenchError(f"group {int(g[counts > 1][0])} occurs in more than one split of the "
                             f"source; a group must stay in one split")
