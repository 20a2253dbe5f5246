"""numba CPU kernels against brute-force references written here with plain Python loops.

The references rank the database by (Hamming distance, database index) with a stable sort and add
up the AP sums item by item; histograms come from ``np.bincount`` of loop-computed distances. Then
``evaluate`` must give the same numbers with the kernels on and off, under every protocol.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation import engines, evaluate
from hashbench.platform.evaluation.cpu_kernels import PackedDatabase, pack_codes
from hashbench.platform.evaluation.cpu_numpy import NumpyDatabase


# ---------------------------------------------------------------- brute-force references
def bf_distances(q, db):
    return [[sum(int(a != b) for a, b in zip(qi, dj)) for dj in db] for qi in q]


def bf_relevant(ql, dl):
    if np.ndim(ql) == 0:
        return int(ql) == int(dl)
    return any(int(a) and int(b) for a, b in zip(ql, dl))


def bf_sums(q, db, ql, dl, cutoffs):
    """hits and S per query and cut-off, walking the stable (distance, index) ranking."""
    dist = bf_distances(q, db)
    hits = np.zeros(cutoffs.shape)
    sums = np.zeros(cutoffs.shape)
    for i in range(len(q)):
        order = sorted(range(len(db)), key=lambda j: (dist[i][j], j))
        found = 0
        for pos, j in enumerate(order):
            if bf_relevant(ql[i], dl[j]):
                found += 1
                for c, k in enumerate(cutoffs[i]):
                    if pos < k:
                        hits[i, c] += 1
                        sums[i, c] += found / (pos + 1)
    return hits, sums


def bf_histograms(q, db, ql, dl, bits):
    dist = bf_distances(q, db)
    n = np.array([np.bincount(row, minlength=bits + 1) for row in dist])
    r = np.array([np.bincount([d for j, d in enumerate(row) if bf_relevant(ql[i], dl[j])], minlength=bits + 1)
                  for i, row in enumerate(dist)])
    return n, r


def make_case(seed, nq, ndb, bits, multi, n_labels=4):
    """Random codes and labels; the last query has no relevant item in the database."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2, (nq, bits)).astype(np.uint8)
    db = rng.integers(0, 2, (ndb, bits)).astype(np.uint8)
    if multi:
        dl = rng.random((ndb, n_labels + 1)) < min(0.35, 3 / n_labels)
        dl[:, -1] = False                        # a label no database item has
        ql = rng.random((nq, n_labels + 1)) < min(0.35, 3 / n_labels)
        ql[-1] = False
        ql[-1, -1] = True                        # only that label: no relevant item
    else:
        dl = rng.integers(0, n_labels, ndb)
        ql = rng.integers(0, n_labels, nq)
        ql[-1] = n_labels + 7                    # a class absent from the database
    return q, db, ql, dl


def relevant_counts(ql, dl):
    return np.array([sum(bf_relevant(a, b) for b in dl) for a in ql])


# ---------------------------------------------------------------- kernels
DATABASES = [PackedDatabase, NumpyDatabase]          # the numba kernels and their numpy twin


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("bits", [4, 6, 8, 13, 64, 72, 127, 128, 130])
@pytest.mark.parametrize("multi,n_labels", [(False, 4), (True, 4), (True, 70)])   # 70: 3 label words
def test_ranked_sums_and_histograms_against_loops(database, bits, multi, n_labels):
    q, db, ql, dl = make_case(bits * 10 + n_labels, 9, 70, bits, multi, n_labels)
    R = relevant_counts(ql, dl)
    k = 7
    # cut-offs 0, 1, k, R (per query) and N
    cutoffs = np.stack([np.zeros(9, int), np.ones(9, int), np.full(9, k), R, np.full(9, len(db))], 1)
    hits, sums, n, r = database(db, dl).ranked_sums(q, ql, cutoffs)
    ref_hits, ref_sums = bf_sums(q, db, ql, dl, cutoffs)
    np.testing.assert_array_equal(hits, ref_hits)
    np.testing.assert_allclose(sums, ref_sums, rtol=0, atol=1e-12)
    ref_n, ref_r = bf_histograms(q, db, ql, dl, bits)
    np.testing.assert_array_equal(n, ref_n)
    np.testing.assert_array_equal(r, ref_r)
    # short rankings (largest cut-off below N / 2): the kernel's second pass skips the far levels
    short = cutoffs[:, :3]
    s_hits, s_sums, s_n, s_r = database(db, dl).ranked_sums(q, ql, short)
    np.testing.assert_array_equal(s_hits, ref_hits[:, :3])
    np.testing.assert_allclose(s_sums, ref_sums[:, :3], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s_n, ref_n)
    np.testing.assert_array_equal(s_r, ref_r)
    hn, hr = database(db, dl).histograms(q, ql)
    np.testing.assert_array_equal(hn, ref_n)
    np.testing.assert_array_equal(hr, ref_r)
    assert hits[-1].sum() == 0 and r[-1].sum() == 0          # the query with no relevant item
    assert hits[:, 4].tolist() == R.tolist()                # cut-off N finds every relevant item


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("depth", ["short", "long"])
def test_same_set_leaves_the_own_item_out(database, depth):
    """self_start: query i is database item self_start + i; the loop reference drops it from the database."""
    _, db, _, dl = make_case(5, 1, 60, 10, False)
    start = 20
    q, ql = db[start:start + 6], dl[start:start + 6]
    cut = np.tile([3, 10] if depth == "short" else [3, 59], (6, 1))
    hits, sums, n, r = database(db, dl).ranked_sums(q, ql, cut, self_start=start)
    for i in range(6):
        keep = np.arange(60) != start + i
        ref_hits, ref_sums = bf_sums(q[i:i + 1], db[keep], ql[i:i + 1], dl[keep], cut[i:i + 1])
        ref_n, ref_r = bf_histograms(q[i:i + 1], db[keep], ql[i:i + 1], dl[keep], 10)
        np.testing.assert_array_equal(hits[i:i + 1], ref_hits)
        np.testing.assert_allclose(sums[i:i + 1], ref_sums, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(n[i:i + 1], ref_n)
        np.testing.assert_array_equal(r[i:i + 1], ref_r)


@pytest.mark.parametrize("database", DATABASES)
def test_heavy_ties_hand_checked(database):
    """2-bit codes, every item tied with others: rank order is by database index inside a level."""
    q = np.array([[0, 0]])
    db = np.array([[1, 1], [0, 1], [0, 0], [1, 0], [0, 0], [0, 1]])
    dl = np.array([1, 1, 0, 1, 1, 0])
    # ranking: d=0 -> items 2, 4; d=1 -> 1, 3, 5; d=2 -> 0. relevance 0 1 | 1 1 0 | 1
    # relevant at ranks 2, 3, 4, 6 -> precisions 1/2, 2/3, 3/4, 4/6
    hits, sums, n, r = database(db, dl).ranked_sums(q, np.array([1]), np.array([[1, 2, 4, 5, 6]]))
    assert hits.tolist() == [[0, 1, 3, 3, 4]]
    np.testing.assert_allclose(sums, [[0, 1 / 2, 1 / 2 + 2 / 3 + 3 / 4, 1 / 2 + 2 / 3 + 3 / 4,
                                       1 / 2 + 2 / 3 + 3 / 4 + 4 / 6]], rtol=0, atol=1e-15)
    assert n.tolist() == [[2, 3, 1]] and r.tolist() == [[1, 2, 1]]


def test_pack_codes_pads_with_zeros():
    codes = np.ones((2, 70), dtype=np.uint8)
    words = pack_codes(codes)
    assert words.dtype == np.uint64 and words.shape == (2, 2)
    assert [bin(int(w)).count("1") for w in words[0]] == [64, 6]


def test_bad_inputs_raise_clear_errors():
    db = PackedDatabase(np.zeros((5, 8), np.uint8), np.arange(5))
    with pytest.raises(HashbenchError, match=r"q01: expected shape \(queries, 8\)"):
        db.histograms(np.zeros((2, 9), np.uint8), np.arange(2))
    with pytest.raises(HashbenchError, match=r"q_labels: expected shape \(2,\)"):
        db.histograms(np.zeros((2, 8), np.uint8), np.zeros((2, 3), bool))
    with pytest.raises(HashbenchError, match=r"cutoffs: expected shape \(2, m\)"):
        db.ranked_sums(np.zeros((2, 8), np.uint8), np.arange(2), np.ones(2, int))
    with pytest.raises(HashbenchError, match=r"labels: expected shape \(5,\)"):
        PackedDatabase(np.zeros((5, 8), np.uint8), np.arange(4))
    with pytest.raises(HashbenchError, match="codes01: expected shape"):
        PackedDatabase(np.zeros(8, np.uint8), np.arange(8))


# ---------------------------------------------------------------- evaluate() with kernels on / off
def _numeric(res):
    out = {}
    for key, val in res.items():
        if key == "pr_curve":
            out["pr_p"], out["pr_r"] = val["precision"], val["recall"]
        elif key != "protocol":
            out[key] = val
    return out


@pytest.fixture()
def kernel_calls(monkeypatch):
    """Kernels for any input size; counts the kernel calls so that a test can prove they ran."""
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", 0)
    calls = {"sums": 0, "hist": 0}
    sums, hist = engines.FaissEngine.ranked_sums, engines.FaissEngine.label_histograms

    def counted_sums(self, *a):
        calls["sums"] += 1
        return sums(self, *a)

    def counted_hist(self, *a):
        calls["hist"] += 1
        return hist(self, *a)
    monkeypatch.setattr(engines.FaissEngine, "ranked_sums", counted_sums)
    monkeypatch.setattr(engines.FaissEngine, "label_histograms", counted_hist)
    return calls


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("bits", [6, 72])
def test_evaluate_same_with_kernels_on_and_off(multi, bits, kernel_calls, monkeypatch):
    q, db, ql, dl = make_case(3 + bits + multi, 40, 300, bits, multi)
    kw = dict(ks=(1, 10, 100, "all"), hamming_radius=1, pr_curve=True, engine="faiss", chunk_size=16)
    for convention in ("hits", "min-k-r", "r"):
        for ties in ("index", "tie-aware"):
            for excl in (False, True):
                args = dict(kw, convention=convention, ties=ties, exclude_no_hit=excl)
                before = dict(kernel_calls)
                monkeypatch.setattr(engines, "CPU_KERNELS", True)
                on = evaluate(q, db, ql, dl, **args)
                used = "sums" if ties == "index" else "hist"
                assert kernel_calls[used] == before[used] + 3       # 40 queries in chunks of 16
                monkeypatch.setattr(engines, "CPU_KERNELS", False)
                off = evaluate(q, db, ql, dl, **args)
                assert kernel_calls == {k: before[k] + (3 if k == used else 0) for k in before}
                a, b = _numeric(on), _numeric(off)
                assert a.keys() == b.keys()
                for key in a:
                    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-12, err_msg=key)
                assert on["protocol"] == off["protocol"]


def test_evaluate_index_ties_against_loops(kernel_calls):
    """mAP@k under the hits convention straight from the loop reference, through evaluate()."""
    q, db, ql, dl = make_case(11, 12, 90, 5, False)
    res = evaluate(q, db, ql, dl, ks=(3, 40), ties="index", convention="hits", engine="faiss",
                   hamming_radius=None, map_at_r=False)
    assert kernel_calls["sums"] == 1
    hits, sums = bf_sums(q, db, ql, dl, np.tile([3, 40], (12, 1)))
    ap = np.where(hits > 0, sums / np.maximum(hits, 1), 0.0)
    assert res["mAP@3"] == pytest.approx(ap[:, 0].mean(), abs=1e-12)
    assert res["mAP@40"] == pytest.approx(ap[:, 1].mean(), abs=1e-12)
    assert res["P@40"] == pytest.approx((hits[:, 1] / 40).mean(), abs=1e-12)


def test_knn_and_auto_engine_with_kernels(kernel_calls, monkeypatch):
    q, db, ql, dl = make_case(5, 30, 200, 8, False)
    kw = dict(ks=(5, "all"), ties="index", knn_k=3)
    on = evaluate(q, db, ql, dl, **kw)
    assert kernel_calls["sums"] == 1 and on["protocol"]["engine"] == "faiss"
    monkeypatch.setattr(engines, "CPU_KERNELS", False)
    off = evaluate(q, db, ql, dl, **kw)
    assert on["kNN-balanced-accuracy"] == off["kNN-balanced-accuracy"]
    assert on["mAP@all"] == pytest.approx(off["mAP@all"], abs=1e-12)


def test_small_inputs_and_torch_engine_keep_the_numpy_path(monkeypatch):
    calls = []
    monkeypatch.setattr(engines.FaissEngine, "ranked_sums", lambda *a: calls.append(a))
    monkeypatch.setattr(engines.FaissEngine, "label_histograms", lambda *a: calls.append(a))
    q, db, ql, dl = make_case(2, 10, 50, 8, False)
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", 10 * 50 + 1)      # one pair short
    evaluate(q, db, ql, dl, ties="index", engine="faiss")
    evaluate(q, db, ql, dl, engine="faiss")
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", 0)
    evaluate(q, db, ql, dl, ties="index", engine="torch")
    evaluate(q.astype(np.float32), db.astype(np.float32), ql, dl, distance="l2", ties="index", engine="faiss")
    assert calls == []


def test_missing_numba_falls_back_to_numpy(monkeypatch, kernel_calls):
    """An import failure warns once and evaluate() still gives the numpy results."""
    q, db, ql, dl = make_case(8, 20, 100, 8, True)
    expected = evaluate(q, db, ql, dl, ties="index", engine="faiss")
    assert kernel_calls["sums"] == 1
    monkeypatch.setattr(engines, "_kernels", {})
    monkeypatch.setitem(sys.modules, "hashbench.platform.evaluation.cpu_kernels", None)   # import fails
    with pytest.warns(UserWarning, match="numba CPU kernels unavailable"):
        got = evaluate(q, db, ql, dl, ties="index", engine="faiss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # warned once per process only
        evaluate(q, db, ql, dl, ties="index", engine="faiss")
    assert kernel_calls["sums"] == 1
    a, b = _numeric(got), _numeric(expected)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-12, err_msg=key)
