"""Top-k by distance level (level_select) against brute force: stable sorts and plain counting."""

import numpy as np
import pytest
import torch

from hashbench.platform.evaluation.level_select import (SEARCH_WIDTH, kth_level, level_histograms,
                                                        level_ranking, search_passes)


def products(rng, nq, n, bits):
    q = rng.integers(0, 2, (nq, bits))
    db = rng.integers(0, 2, (n, bits))
    dist = (q[:, None, :] != db[None, :, :]).sum(2)                  # brute-force Hamming distances
    dot = torch.from_numpy((bits - 2 * dist).astype(np.float32))      # the +-1 product
    return dot, dist


def test_search_passes_by_hand():
    assert SEARCH_WIDTH == 8
    assert [search_passes(b) for b in (1, 8, 9, 64, 80, 81, 2048)] == [1, 1, 2, 2, 2, 3, 4]


@pytest.mark.parametrize("bits", [1, 3, 16, 64, 130, 2048])
def test_kth_level_against_sorted_distances(bits):
    rng = np.random.default_rng(bits)
    dot, dist = products(rng, 7, 60, bits)
    for k in (1, 2, 17, 59, 60):
        t, lt, le = kth_level(dot, bits, k)
        srt = np.sort(dist, 1)
        assert t.tolist() == srt[:, k - 1].tolist()
        assert lt.tolist() == (dist < srt[:, k - 1:k]).sum(1).tolist()
        assert le.tolist() == (dist <= srt[:, k - 1:k]).sum(1).tolist()


def test_kth_level_with_every_item_tied():
    dot = torch.full((3, 10), 4.0)                                    # bits 8: every distance is 2
    t, lt, le = kth_level(dot, 8, 4)
    assert t.tolist() == [2, 2, 2] and lt.tolist() == [0, 0, 0] and le.tolist() == [10, 10, 10]


@pytest.mark.parametrize("bits", [4, 13, 64])
def test_level_ranking_is_the_stable_order(bits):
    rng = np.random.default_rng(100 + bits)
    dot, dist = products(rng, 9, 80, bits)
    for k in (1, 5, 40, 79):
        ids, d = level_ranking(dot, bits, k)
        ref = np.argsort(dist, 1, kind="stable")[:, :k]                # ties by database index
        assert ids.tolist() == ref.tolist()
        assert d.tolist() == np.take_along_axis(dist, ref, 1).tolist()


@pytest.mark.parametrize("bits", [5, 64])
def test_level_histograms_match_counting_up_to_the_kth_level(bits):
    rng = np.random.default_rng(7 + bits)
    dot, dist = products(rng, 6, 90, bits)
    ql, dl = rng.integers(0, 3, 6), rng.integers(0, 3, 90)
    rel = ql[:, None] == dl[None, :]
    qlt, dlt = torch.from_numpy(ql), torch.from_numpy(dl)

    def pairs(rows, cols):
        return qlt[rows] == dlt[cols]

    def boundary(d, thr):
        at = d == thr
        return at.sum(1), (at & (qlt[:, None] == dlt[None, :])).sum(1)

    for k in (1, 10, 89):
        n, r = level_histograms(dot, bits, k, pairs, boundary)
        kth = np.sort(dist, 1)[:, k - 1]
        for i in range(6):
            for lev in range(bits + 1):
                inside = lev <= kth[i]
                want_n = int((dist[i] == lev).sum()) if inside else 0
                want_r = int(((dist[i] == lev) & rel[i]).sum()) if inside else 0
                assert (n[i, lev].item(), r[i, lev].item()) == (want_n, want_r), (k, i, lev)
