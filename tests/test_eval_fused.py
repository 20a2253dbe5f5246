"""The fused evaluation path (Triton kernels, tiled float search) against independent references.

The Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, numpy on the CPU) on tiny
cases; on a CUDA machine ``HASHBENCH_FUSED_CUDA=1`` runs the same tests on the GPU (compiled kernels).
References: per-level counts and stable argsorts from brute-force numpy distances; evaluate() by
plain loops over every order of the tied items (``test_eval_metrics.bf_evaluate``); the torch engine
on every convention x tie policy x no-hit policy. Skipped when Triton is not installed.
"""

from __future__ import annotations

import importlib
import itertools
import linecache
import os
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from _triton_interp import DEV, ON_CUDA, import_interpreted  # noqa: E402

FT, _ = import_interpreted()

from hashbench.platform.errors import HashbenchError  # noqa: E402
from hashbench.platform.evaluation import engines, evaluate, fused_engine, fused_float  # noqa: E402
from hashbench.platform.evaluation.inputs import prepare  # noqa: E402
from test_eval_metrics import bf_evaluate, tiny_case  # noqa: E402
from test_tie_sums_sync_free import HostReads, spy_hmax  # noqa: E402

CONVENTIONS = ("hits", "min-k-r", "r")


@pytest.fixture(autouse=True)
def small_sample(monkeypatch):
    """A 64-item threshold sample so that tiny databases take the thresholded (k < N) path."""
    monkeypatch.setattr(FT, "SAMPLE", 64)


def codes(rng, n, bits, dup_of=None):
    x = rng.integers(0, 2, (n, bits)).astype(np.uint8)
    if dup_of is not None:                      # exact duplicates of a query: distance 0 ties
        x[3:7] = dup_of
    return x


def labels(rng, nq, n, multi, classes=5, n_labels=40):
    if multi:
        return rng.random((nq, n_labels)) < 0.06, rng.random((n, n_labels)) < 0.06
    ql = rng.integers(0, classes + 1, nq)       # class `classes` is absent from the database
    return ql, rng.integers(0, classes, n)


def reference(q, db, ql, dl):
    d = (q[:, None, :] != db[None, :, :]).sum(2)
    rel = (ql[:, None, :] & dl[None, :, :]).any(2) if ql.ndim == 2 else ql[:, None] == dl[None, :]
    return d, rel


def hist_ref(d, rel, bits):
    n = np.stack([np.bincount(row, minlength=bits + 1) for row in d])
    r = np.stack([np.bincount(row[m], minlength=bits + 1) for row, m in zip(d, rel)])
    return n, r


def t(x):
    return torch.as_tensor(np.asarray(x)).to(DEV)


# ---------------------------------------------------------------- kernels
# code words W = ceil(bits / 32): 1, 2, 3 and 4 are preloaded per program (fused_triton._word), 5 and 32
# are loaded with every tile; multi-hot label words 1 and 2 are preloaded, 3 (70 labels) loaded per tile
@pytest.mark.parametrize("bits,multi,key64,n_labels", [(8, False, False, 0), (31, True, True, 40),
                                                     (64, False, False, 0), (96, True, False, 20),
                                                     (100, True, True, 40), (128, True, False, 70),
                                                     (160, False, False, 0), (1024, False, False, 0)])
def test_histograms_and_ranking_against_brute_force(bits, multi, key64, n_labels, monkeypatch):
    if key64:                                   # int64 top-k keys (databases of over 2^31 / (bits+1) items)
        monkeypatch.setattr(FT, "KEY32_LIMIT", 0)
    rng = np.random.default_rng(bits)
    nq, n = 11, 300 if bits < 1024 else 200
    q = codes(rng, nq, bits)
    db = codes(rng, n, bits, dup_of=q[0])
    ql, dl = labels(rng, nq, n, multi, n_labels=n_labels)
    d, rel = reference(q, db, ql, dl)
    n_ref, r_ref = hist_ref(d, rel, bits)
    fh = FT.FusedHamming(t(db), t(dl))
    assert fh.db_w.shape[0] == -(-bits // 32) and (not multi or fh.db_l.shape[0] == -(-n_labels // 32))
    n_all, r_all = fh.histograms(t(q), t(ql))
    np.testing.assert_array_equal(n_all.cpu().numpy(), n_ref)
    np.testing.assert_array_equal(r_all.cpu().numpy(), r_ref)
    order = np.argsort(d, axis=1, kind="stable")                     # ties by database index
    for k in (1, 5, 120, n) if bits < 1024 else (5, 120):
        n_k, r_k = fh.histograms(t(q), t(ql), k=k)
        kth = (n_ref.cumsum(1) < k).sum(1)                           # the k-th smallest distance
        for i in range(nq):
            np.testing.assert_array_equal(n_k[i, :kth[i] + 1].cpu().numpy(), n_ref[i, :kth[i] + 1])
            np.testing.assert_array_equal(r_k[i, :kth[i] + 1].cpu().numpy(), r_ref[i, :kth[i] + 1])
        ids, dist = fh.ranking(t(q), k)
        np.testing.assert_array_equal(ids.cpu().numpy(), order[:, :k])
        np.testing.assert_array_equal(dist.cpu().numpy(), np.take_along_axis(d, order[:, :k], 1))


@pytest.mark.parametrize("list_tile", [(8, 32, 1), (64, 128, 2)])
def test_list_kernel_tile_of_its_own_gives_the_same_ranking(list_tile, monkeypatch):
    """HASHBENCH_FUSED_LIST_BQ / _LIST_BN / _LIST_WARPS set the top-k kernel's tile apart from the
    histogram's: a database of 301 items (no multiple of any tile, several chunks) ranks the same."""
    bq, bn, warps = list_tile
    monkeypatch.setattr(FT, "LIST_BQ", bq)
    monkeypatch.setattr(FT, "LIST_BN", bn)
    monkeypatch.setattr(FT, "LIST_WARPS", warps)
    monkeypatch.setattr(FT, "CHUNK", 2 * bn)
    rng = np.random.default_rng(7)
    nq, n, bits = 13, 301, 40
    q = codes(rng, nq, bits)
    db = codes(rng, n, bits, dup_of=q[0])
    d, _ = reference(q, db, np.zeros(nq, int), np.zeros(n, int))
    order = np.argsort(d, axis=1, kind="stable")
    fh = FT.FusedHamming(t(db), t(np.zeros(n, int)))
    for k in (1, 37, n):
        ids, dist = fh.ranking(t(q), k)
        np.testing.assert_array_equal(ids.cpu().numpy(), order[:, :k])
        np.testing.assert_array_equal(dist.cpu().numpy(), np.take_along_axis(d, order[:, :k], 1))


@pytest.mark.parametrize("name,raw,why", [("BQ", "24", "a power of 2"), ("LIST_WARPS", "0", "a power of 2"),
                                          ("CHUNK", "lots", "a positive integer"), ("SAMPLE", "-5", "a positive integer")])
def test_bad_tunable_names_the_variable_and_what_is_valid(name, raw, why, monkeypatch):
    monkeypatch.setenv(f"HASHBENCH_FUSED_{name}", raw)
    with pytest.raises(HashbenchError, match=f"HASHBENCH_FUSED_{name}='{raw}': expected {why}"):
        FT._tunable(name, 8, power_of_2=name not in ("CHUNK", "SAMPLE"))
    monkeypatch.setenv(f"HASHBENCH_FUSED_{name}", "16")
    assert FT._tunable(name, 8) == 16


@pytest.mark.parametrize("recount", ["host", "device"])
def test_threshold_guess_too_low_is_recounted(recount, monkeypatch):
    """The sampled items all sit at distance 8 of the queries, most others far from the first two: up
    to the level their sample gives (8) those two find only 64 + 40 items, fewer than k, so they must
    be recounted with every level. The third query (all ones) is near most unsampled items: its guess
    (level 8) holds, and its counts stay those of the thresholded pass (exact up to its k-th distance;
    the 40 items at distance >= 14 are not counted). HASHBENCH_FUSED_RECOUNT: the re-count after a host
    check, or on the device without one (every query launched, the others taking nothing)."""
    monkeypatch.setattr(FT, "RECOUNT", recount)
    rng = np.random.default_rng(5)
    bits, n, k = 16, 640, 200
    q = np.zeros((3, bits), dtype=np.uint8)
    q[2] = 1
    db = np.ones((n, bits), dtype=np.uint8)
    db[:, :2] = rng.integers(0, 2, (n, 2))
    sample = np.linspace(0, n - 1, FT.SAMPLE).round().astype(int)
    db[sample] = 0
    db[sample, 8:] = 1                        # the sample: distance 8 of every query
    far = np.setdiff1d(np.arange(n), sample)[:40]
    db[far, 2:] = 0                           # near the first two queries (still short: 64 + 40 < k), far from the third
    dl = rng.integers(0, 3, n)
    ql = np.array([0, 1, 2])
    d, rel = reference(q, db, ql, dl)
    n_ref, r_ref = hist_ref(d, rel, bits)
    fh = FT.FusedHamming(t(db), t(dl))
    n_k, r_k = fh.histograms(t(q), t(ql), k=k)
    np.testing.assert_array_equal(n_k[:2].cpu().numpy(), n_ref[:2])         # recounted: every level exact
    np.testing.assert_array_equal(r_k[:2].cpu().numpy(), r_ref[:2])
    kth = int((n_ref[2].cumsum() < k).sum())
    np.testing.assert_array_equal(n_k[2, :kth + 1].cpu().numpy(), n_ref[2, :kth + 1])
    np.testing.assert_array_equal(r_k[2, :kth + 1].cpu().numpy(), r_ref[2, :kth + 1])
    assert int(n_k[2].sum()) < n                                            # not recounted: levels past its threshold are 0
    ids, _ = fh.ranking(t(q), 200)
    np.testing.assert_array_equal(ids.cpu().numpy(), np.argsort(d, axis=1, kind="stable")[:, :200])


def test_queries_with_a_negative_threshold_take_nothing():
    """thr < 0 for every query of a program (SKIP, as the device-side re-count launches it): the kernel
    skips its tiles; the histogram stays 0 there, and the queries beside them (thr >= 0, same launch)
    are counted in full."""
    rng = np.random.default_rng(11)
    bits, nq, n = 24, 19, 300
    q, db = codes(rng, nq, bits), codes(rng, n, bits)
    ql, dl = labels(rng, nq, n, False)
    d, rel = reference(q, db, ql, dl)
    n_ref, r_ref = hist_ref(d, rel, bits)
    fh = FT.FusedHamming(t(db), t(dl))
    on = np.arange(nq) % 3 == 0
    thr = torch.where(t(on), bits, -1)
    n_k, r_k = fh._launch_hist(FT._pack_words(t(q)), fh._query_labels(t(ql)), thr, fh.db_w, fh.db_l, skip=True)
    np.testing.assert_array_equal(n_k.cpu().numpy()[on], n_ref[on])
    np.testing.assert_array_equal(r_k.cpu().numpy()[on], r_ref[on])
    assert not n_k.cpu().numpy()[~on].any()


def test_bad_tunable_is_an_error_of_engine_auto_not_a_silent_fallback(monkeypatch):
    """engine='auto' asks fused_engine.available(): a bad HASHBENCH_FUSED_* value raises there (the
    variable named), instead of counting as 'no Triton' and quietly evaluating with the torch engine."""
    name = "hashbench.platform.evaluation.fused_triton"
    monkeypatch.setenv("HASHBENCH_FUSED_BQ", "3")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delitem(sys.modules, name, raising=False)       # both restored when the test ends
    monkeypatch.delattr(importlib.import_module("hashbench.platform.evaluation"), "fused_triton", raising=False)
    with pytest.raises(HashbenchError, match="HASHBENCH_FUSED_BQ='3': expected a power of 2"):
        fused_engine.available(torch.device("cpu"))
    assert name not in sys.modules                              # nothing half-imported left behind


def test_bad_recount_setting_is_named(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("HASHBENCH_FUSED_RECOUNT", raising=False)
    spec = importlib.util.spec_from_file_location("ft_default_recount", FT.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.RECOUNT == "device"                              # the default: no host sync after the full pass
    monkeypatch.setenv("HASHBENCH_FUSED_RECOUNT", "gpu")
    spec = importlib.util.spec_from_file_location("ft_bad_recount", FT.__file__)
    with pytest.raises(HashbenchError, match="HASHBENCH_FUSED_RECOUNT='gpu': expected 'host' or 'device'; "
                                             "unset it for 'device'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize("room,bits,key64", [(2.0, 64, False), (2.0, 100, True), (0.0, 64, False)])
def test_onepass_ranking_equals_the_default_and_brute_force(room, bits, key64, monkeypatch):
    """HASHBENCH_FUSED_ONEPASS (opt-in): lists at the sample's threshold. With room for them the rows
    need no second ranking; with none (ROOM=0: k + 64 slots, fewer than the items at d <= T) every
    overflowing row is ranked again the default way. Either way: the default path's ids and distances,
    and the stable argsort of brute-force distances."""
    if key64:
        monkeypatch.setattr(FT, "KEY32_LIMIT", 0)
    rng = np.random.default_rng(bits + int(room))
    nq, n = 13, 700
    q = codes(rng, nq, bits)
    db = codes(rng, n, bits, dup_of=q[0])
    d, _ = reference(q, db, np.zeros(nq, int), np.zeros(n, int))
    order = np.argsort(d, axis=1, kind="stable")
    fh = FT.FusedHamming(t(db), t(np.zeros(n, int)))
    redone = []
    default_ranking = FT.FusedHamming._ranking
    monkeypatch.setattr(FT.FusedHamming, "_ranking", lambda self, qw, k: redone.append(qw.shape[1])
                        or default_ranking(self, qw, k))
    for k in (1, 7, 50):
        monkeypatch.setattr(FT, "ONEPASS", False)
        ref_ids, ref_dist = fh.ranking(t(q), k)
        monkeypatch.setattr(FT, "ONEPASS", True)
        monkeypatch.setattr(FT, "ROOM", room)
        redone.clear()
        ids, dist = fh.ranking(t(q), k)
        np.testing.assert_array_equal(ids.cpu().numpy(), ref_ids.cpu().numpy())
        np.testing.assert_array_equal(dist.cpu().numpy(), ref_dist.cpu().numpy())
        np.testing.assert_array_equal(ids.cpu().numpy(), order[:, :k])
        np.testing.assert_array_equal(dist.cpu().numpy(), np.take_along_axis(d, order[:, :k], 1))
        assert redone == ([] if room else [nq]), (k, redone)


def test_onepass_ranking_recounts_rows_below_k(monkeypatch):
    """The sample's level holds fewer than k items (as in the test above it): ONEPASS ranks those
    rows again, and only those."""
    monkeypatch.setattr(FT, "ONEPASS", True)
    rng = np.random.default_rng(6)
    bits, n = 16, 640
    q = np.zeros((3, bits), dtype=np.uint8)
    q[2] = 1                                    # the third query: the sampled items are far from it
    db = np.ones((n, bits), dtype=np.uint8)
    db[:, :2] = rng.integers(0, 2, (n, 2))
    db[np.linspace(0, n - 1, FT.SAMPLE).round().astype(int)] = 0
    d, _ = reference(q, db, np.zeros(3, int), np.zeros(n, int))
    fh = FT.FusedHamming(t(db), t(np.zeros(n, int)))
    redone = []
    default_ranking = FT.FusedHamming._ranking
    monkeypatch.setattr(FT.FusedHamming, "_ranking", lambda self, qw, k: redone.append(qw.shape[1])
                        or default_ranking(self, qw, k))
    ids, _ = fh.ranking(t(q), 200)
    np.testing.assert_array_equal(ids.cpu().numpy(), np.argsort(d, axis=1, kind="stable")[:, :200])
    assert redone == [2]


def test_word_packing_is_twos_complement():
    bits01 = torch.zeros(2, 40, dtype=torch.uint8)
    bits01[0, 31] = 1                      # the sign bit of word 0
    bits01[1, [0, 32, 39]] = 1
    w = FT._pack_words(bits01)
    assert w.dtype == torch.int32 and w.shape == (2, 2)
    assert w[:, 0].tolist() == [-2 ** 31, 0] and w[:, 1].tolist() == [1, 1 + 2 ** 7]


# ---------------------------------------------------------------- evaluate(engine="fused")
def _compare(a: dict, b: dict):
    a, b = dict(a), dict(b)
    pa, pb = a.pop("protocol"), b.pop("protocol")
    assert pb["engine"] == "fused" and pa["no_hit_queries"] == pb["no_hit_queries"]
    assert a.keys() == b.keys()
    for key in a:
        if key == "pr_curve":
            np.testing.assert_allclose(b[key]["precision"], a[key]["precision"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(b[key]["recall"], a[key]["recall"], rtol=0, atol=1e-12)
        elif isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], abs=1e-12), key
        else:
            assert b[key] == a[key], key


@pytest.mark.parametrize("bits,multi,nq,n,both", [(8, False, 9, 200, True), (64, True, 9, 200, True),
                                                  (1024, False, 5, 90, False)])
def test_fused_equals_torch_engine_on_every_protocol(bits, multi, nq, n, both):
    """Every convention x tie policy x no-hit policy; full histograms (MAP@R, PR curve, kNN) and the
    thresholded ones (cut-offs < N, P@H<=r)."""
    rng = np.random.default_rng(bits + multi)
    q = codes(rng, nq, bits)
    db = codes(rng, n, bits, dup_of=q[1])
    ql, dl = labels(rng, nq, n, multi, classes=4)
    extras = [{"map_at_r": True, "pr_curve": True, "knn_k": None if multi else 3},   # full histograms
              {"map_at_r": False, "hamming_radius": 1}]                              # thresholded
    for conv, ties, excl in itertools.product(CONVENTIONS, ("tie-aware", "index"), (False, True)):
        for extra in extras if both else extras[1:]:
            kw = dict(ks=(1, 10, 100, "all") if extra["map_at_r"] else (1, 10, 100), convention=conv,
                      ties=ties, exclude_no_hit=excl, device=DEV, **extra)
            _compare(evaluate(q, db, ql, dl, engine="torch", **kw), evaluate(q, db, ql, dl, engine="fused", **kw))


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("ties", ["tie-aware", "index"])
def test_fused_against_loops_over_all_orders(multi, ties):
    qc, dc, ql, dl = tiny_case(3, n_q=4, n_db=7, bits=3, multi=multi)
    ks = [1, 2, 5, "all"]
    for conv in CONVENTIONS:
        ref = bf_evaluate(qc, dc, ql, dl, ks, conv, tie_aware=ties == "tie-aware")
        res = evaluate(qc, dc, ql, dl, ks=ks, convention=conv, ties=ties, engine="fused", device=DEV)
        for key in ref:
            assert res[key] == pytest.approx(ref[key], abs=1e-9), (conv, key)


def test_kernel_failure_falls_back_to_torch(monkeypatch):
    rng = np.random.default_rng(9)
    q, db = codes(rng, 6, 16), codes(rng, 90, 16)
    ql, dl = labels(rng, 6, 90, False)
    kw = dict(ks=(5, 20), map_at_r=False, device=DEV)
    want = {ties: evaluate(q, db, ql, dl, engine="torch", ties=ties, **kw) for ties in ("tie-aware", "index")}

    def broken(*_a, **_k):
        raise RuntimeError("compilation failed: simulated")

    monkeypatch.setattr(FT.FusedHamming, "histograms", broken)
    monkeypatch.setattr(FT.FusedHamming, "ranking", broken)
    fused_engine.LAST_ERROR.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for ties in ("tie-aware", "index"):
            got = evaluate(q, db, ql, dl, engine="fused", ties=ties, **kw)
            for key in ("mAP@5", "mAP@20", "P@20", "P@H<=2"):
                assert got[key] == pytest.approx(want[ties][key], abs=1e-12)
    assert any("using the torch engine" in str(w.message) for w in caught)
    assert fused_engine.LAST_ERROR and "simulated" in fused_engine.LAST_ERROR[-1]


def test_tie_sums_kernel_failure_falls_back_to_the_torch_sums(monkeypatch):
    """A failing tie-sums kernel: a warning, the torch form of the sums, the torch engine's numbers."""
    _, fts = import_interpreted()
    rng = np.random.default_rng(10)
    q, db = codes(rng, 7, 16), codes(rng, 90, 16)
    ql, dl = labels(rng, 7, 90, False)
    kw = dict(ks=(5, 20, "all"), map_at_r=True, device=DEV, ties="tie-aware")
    want = evaluate(q, db, ql, dl, engine="torch", **kw)

    def broken(*_a, **_k):
        raise RuntimeError("tie sums failed: simulated")

    monkeypatch.setattr(fts, "grouped_sums", broken)
    fused_engine.LAST_ERROR.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compare(want, evaluate(q, db, ql, dl, engine="fused", **kw))
    assert any("fused tie sums" in str(w.message) and "torch" in str(w.message) for w in caught)
    assert fused_engine.LAST_ERROR and "simulated" in fused_engine.LAST_ERROR[-1]


def test_database_labels_are_sorted_once(monkeypatch):
    """The fused engine's label compaction gives core.relevant_counts its class counts: one torch.unique
    of the database labels per evaluation, and R (hence every recall) as the torch engine has it."""
    rng = np.random.default_rng(12)
    q, db = codes(rng, 9, 16), codes(rng, 120, 16)
    ql, dl = labels(rng, 9, 120, False)
    kw = dict(ks=(5, "all"), map_at_r=True, device=DEV)
    want = evaluate(q, db, ql, dl, engine="torch", **kw)
    sizes, real = [], torch.unique

    def counting(x, *a, **k):
        sizes.append(x.shape[0])
        return real(x, *a, **k)

    monkeypatch.setattr(torch, "unique", counting)
    got = evaluate(q, db, ql, dl, engine="fused", **kw)
    assert sizes.count(120) == 1, sizes
    _compare(want, got)


def test_engine_choice(monkeypatch):
    assert engines.choose_engine("auto", torch.device("cpu")) in ("faiss", "torch")
    monkeypatch.setattr(engines, "_fused_available", lambda dev: True)
    assert engines.choose_engine("auto", torch.device("cuda")) == "fused"
    monkeypatch.setattr(engines, "FUSED", False)
    assert engines.choose_engine("auto", torch.device("cuda")) == "torch"
    monkeypatch.setattr(engines, "_fused_available", lambda dev: False)
    monkeypatch.setattr(engines, "FUSED", True)
    assert engines.choose_engine("auto", torch.device("cuda")) == "torch"
    with pytest.raises(HashbenchError, match="engine='fused' needs Triton"):
        engines.choose_engine("fused", torch.device("cpu"))


def test_fused_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setattr(FT, "INTERPRET", False)
    with pytest.raises(HashbenchError, match="runs on CUDA tensors"):
        FT.FusedHamming(torch.zeros(3, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ---------------------------------------------------------------- tiled float search
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_tiled_float_ranking_against_float64_argsort(distance):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(7, 12)).astype(np.float32)
    db = rng.normal(size=(500, 12)).astype(np.float32)
    db[100:104] = db[7]                        # exact duplicates: ties by index
    db[400] = db[7]
    q[0] = db[7]
    prep = prepare(q, db, np.zeros(7), np.zeros(500), distance=distance, bits=None, device=torch.device(DEV))
    qq, dd = prep.query.double().cpu().numpy(), prep.db.double().cpu().numpy()
    d = ((qq[:, None, :] - dd[None]) ** 2).sum(2) if distance == "l2" else 1 - qq @ dd.T
    norm = float(prep.db.double().norm(dim=1).max())
    for k in (1, 5, 37, 499):
        ids, dist = fused_float.tiled_float_ranking(prep.query, prep.db, k, distance, norm, tile=64)
        np.testing.assert_array_equal(ids.cpu().numpy(), np.argsort(d, axis=1, kind="stable")[:, :k])
        np.testing.assert_allclose(dist.cpu().numpy(), np.sort(d, axis=1)[:, :k], atol=1e-5)
    res_t = evaluate(q, db, np.arange(7) % 3, np.arange(500) % 3, distance=distance, ks=(5, 50), ties="index",
                     engine="torch", device=DEV)
    res_f = evaluate(q, db, np.arange(7) % 3, np.arange(500) % 3, distance=distance, ks=(5, 50), ties="index",
                     engine="fused", device=DEV)
    _compare(res_t, res_f)


@pytest.mark.parametrize("ties", ["tie-aware", "index"])
def test_fused_same_set_retrieval_equals_torch(ties):
    """exclude_self: each query's own item leaves its histograms and rankings on both engines."""
    rng = np.random.default_rng(11)
    x = codes(rng, 120, 12)
    x[5:9] = x[0]
    y = rng.integers(0, 3, 120)
    for extra in ({"ks": (1, 10, "all"), "map_at_r": True}, {"ks": (1, 10), "map_at_r": False}):
        kw = dict(ties=ties, exclude_self=True, device=DEV, **extra)
        _compare(evaluate(x, x, y, y, engine="torch", **kw), evaluate(x, x, y, y, engine="fused", **kw))


# ---------------------------------------------------------------- device re-count: a tail without host syncs
class _HostReadSites(HostReads):
    """Where hashbench reads tensor values on the host (a sync on CUDA) from the fused thresholded
    histograms on (``sites``: file, source line of the first caller outside torch). The reads of
    Triton's interpreter (its callers are in triton) are not hashbench's."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.sites, self.after = [], False
        real = FT.FusedHamming._thresholded

        def marked(*args, **kwargs):           # from the thresholded histograms (sample, full pass, re-count) on
            self.after = True
            return real(*args, **kwargs)

        monkeypatch.setattr(FT.FusedHamming, "_thresholded", marked)

    def record(self, name: str):
        frame = sys._getframe(2)               # past __torch_function__
        while frame is not None and os.sep + "torch" + os.sep in frame.f_code.co_filename:
            frame = frame.f_back
        path = frame.f_code.co_filename if frame is not None else ""
        if self.after and os.sep + "hashbench" + os.sep in path and os.sep + "tests" + os.sep not in path:
            self.sites.append((os.path.basename(path), linecache.getline(path, frame.f_lineno).strip()))


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("multi", [False, True])
def test_device_recount_tail_is_sync_free_and_equals_torch(multi, kernel, monkeypatch):
    """HASHBENCH_FUSED_RECOUNT=device: the tie-aware sums after the thresholded histograms take no host
    sync and give the torch engine's metrics; from the histograms' passes to the final averages no
    hashbench code reads a tensor on the host but summary.py's averages and core's count of queries
    without relevant items (the end of the call). The sums come from fused_tie_sums' kernel (``kernel``),
    or, where it is not taken (here forced: more levels than TIE_SUMS_MAX_GROUPS), from the sync-free
    torch form (every AP column with hmax = its cut-off). The host re-count (default) reads in
    fused_triton (and, without the kernel, in tie_sums): the same check fails on it."""
    if not kernel:
        monkeypatch.setattr(fused_engine, "TIE_SUMS_MAX_GROUPS", 0)
    rng = np.random.default_rng(21 + multi)
    bits, nq, n = 16, 11, 300
    q = codes(rng, nq, bits)
    db = codes(rng, n, bits, dup_of=q[1])
    ql, dl = labels(rng, nq, n, multi, classes=3)
    hmaxes = spy_hmax(monkeypatch)
    for excl, radius, ks in ((False, None, (1, 7, 40, 150)), (True, 2, (1, 7, 40, 150)), (False, 2, (3, "all"))):
        kw = dict(ks=ks, convention="hits", ties="tie-aware", map_at_r="all" in ks, exclude_no_hit=excl,
                  hamming_radius=radius, device=DEV)          # "all": full histograms (no re-count), MAP@R
        ref = evaluate(q, db, ql, dl, engine="torch", **kw)
        monkeypatch.setattr(FT, "RECOUNT", "device")
        hmaxes.clear()
        with _HostReadSites(monkeypatch) as reads:
            res = evaluate(q, db, ql, dl, engine="fused", **kw)
        assert hmaxes == ([] if kernel else [n if k == "all" else k for k in ks])
        _compare(ref, res)
        if not ON_CUDA and not kernel:                          # the CPU's torch sums: bit for bit
            assert all(res[f"mAP@{k}"] == ref[f"mAP@{k}"] for k in ks)
        assert reads.after and reads.sites                      # it looked (the averages read at the end)
        assert all(f == "summary.py" or (f == "core.py" and "queries_without_relevant" in line)
                   for f, line in reads.sites), reads.sites
        monkeypatch.setattr(FT, "RECOUNT", "host")
        hmaxes.clear()
        with _HostReadSites(monkeypatch) as reads_host:
            _compare(ref, evaluate(q, db, ql, dl, engine="fused", **kw))
        assert hmaxes == ([] if kernel else [None] * len(ks))
        host_files = {f for f, _ in reads_host.sites}
        assert ("tie_sums.py" in host_files) != kernel and ("fused_triton.py" in host_files) == ("all" not in ks)
