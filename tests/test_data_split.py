"""Stratified, seeded, group-aware splits and the use of a source's own split."""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.platform.data.split import check_ratios, resolve_split, stratified
from hashbench.platform.errors import HashbenchError


def onehot(ids, k):
    return np.eye(k, dtype=np.uint8)[ids]


def test_stratified_exact_per_class_counts():
    labels = onehot(np.repeat([0, 1, 2], [100, 30, 7]), 3)
    parts = stratified(labels, (0.7, 0.1, 0.2), seed=3)
    # largest remainder per class: 100 -> 70/10/20, 30 -> 21/3/6, 7 -> 4.9/0.7/1.4 -> 5/1/1
    expected = {0: [70, 10, 20], 1: [21, 3, 6], 2: [5, 1, 1]}
    for c, want in expected.items():
        assert np.bincount(parts[labels[:, c] == 1], minlength=3).tolist() == want


def test_seeded_and_seed_dependent():
    labels = onehot(np.arange(200) % 4, 4)
    a, b = stratified(labels, (0.7, 0.1, 0.2), 1), stratified(labels, (0.7, 0.1, 0.2), 1)
    np.testing.assert_array_equal(a, b)
    assert (a != stratified(labels, (0.7, 0.1, 0.2), 2)).any()


def test_groups_never_span_splits_and_stay_balanced():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(120), rng.integers(1, 30, 120))
    labels = onehot(rng.integers(0, 5, len(groups)), 5)
    parts = stratified(labels, (0.7, 0.1, 0.2), 0, groups)
    for g in np.unique(groups):
        assert len(np.unique(parts[groups == g])) == 1
    share = np.bincount(parts, minlength=3) / len(parts)
    assert np.abs(share - [0.7, 0.1, 0.2]).max() < 0.05
    for c in range(5):
        sc = np.bincount(parts[labels[:, c] == 1], minlength=3) / labels[:, c].sum()
        assert np.abs(sc - [0.7, 0.1, 0.2]).max() < 0.08


def test_source_split_kept_and_val_carved_from_train():
    labels = onehot(np.arange(100) % 2, 2)
    full = np.repeat(np.array([0, 1, 2], np.int8), [60, 20, 20])
    np.testing.assert_array_equal(resolve_split(full, labels, None, (0.7, 0.1, 0.2), 0), full)
    train_test = np.where(full == 1, 0, full).astype(np.int8)  # 80 train, 20 test, no val
    out = resolve_split(train_test, labels, None, (0.7, 0.1, 0.2), 0)
    assert (out[80:] == 2).all()  # the source's test items stay test
    # val takes 0.1 / (0.7 + 0.1) of the 80 train items, per class: 40 -> 35/5
    for c in (0, 1):
        assert np.bincount(out[:80][labels[:80, c] == 1], minlength=3).tolist() == [35, 5, 0]


def test_group_leak_in_source_split_and_bad_ratios():
    labels = onehot(np.zeros(4, int), 1)
    with pytest.raises(HashbenchError, match="group 7 occurs in more than one split"):
        resolve_split(np.array([0, 1, 2, 2], np.int8), labels, np.array([7, 7, 8, 9]),
                      (0.7, 0.1, 0.2), 0)
    with pytest.raises(HashbenchError, match="no train part"):
        resolve_split(np.array([1, 1, 2, 2], np.int8), labels, None, (0.7, 0.1, 0.2), 0)
    for bad in ((0.7, 0.3), (0.8, 0.0, 0.2), (1, -1, 1)):
        with pytest.raises(HashbenchError, match=r"ratios \(--split\) must be three positive"):
            check_ratios(bad)
    assert check_ratios((0.7, 0.1, 0.2)) == pytest.approx((0.7, 0.1, 0.2))
    for bad in ((7, 1, 2), (0.9, 0.9, 0.9), (0.5, 0.1, 0.2)):  # not silently renormalised
        with pytest.raises(HashbenchError, match=r"the ratios sum to .*; they must sum to 1"):
            check_ratios(bad)
