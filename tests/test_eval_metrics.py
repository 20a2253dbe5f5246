"""evaluate() against brute-force references written here with plain Python loops.

References: rank by (distance, database index) for the index tie policy; for the tie-aware policy,
enumerate EVERY order of the tied items (itertools.permutations per tie group) and average the metric.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hashbench.platform.evaluation import evaluate

CONVENTIONS = ("hits", "min-k-r", "r")


# ---------------------------------------------------------------- brute-force references
def bf_distance(a, b, distance):
    if distance == "hamming":
        return sum(int(x != y) for x, y in zip(a, b))
    if distance == "l2":
        return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return 1 - sum(float(x) * float(y) for x, y in zip(a, b)) / (na * nb)


def bf_relevant(ql, dl):
    if np.ndim(ql) == 0:
        return int(ql) == int(dl)
    return any(int(x) and int(y) for x, y in zip(ql, dl))


def bf_ap(ranked_rel, k, R, convention):
    hits, s = 0, 0.0
    for i, rel in enumerate(ranked_rel[:k]):
        if rel:
            hits += 1
            s += hits / (i + 1)
    denom = {"hits": hits, "r": R, "min-k-r": min(k, R)}[convention]
    return (s / denom if denom else 0.0), hits


def bf_query_metrics(ranked_rel, ks, R, convention):
    """Per-query (AP, P, R, hits) for each k, plus MAP@R and R-precision, for one fixed order."""
    out = []
    for k in ks:
        ap, hits = bf_ap(ranked_rel, k, R, convention)
        out.append((ap, hits / k, hits / R if R else 0.0, hits))
    if R:
        mapr = sum(sum(ranked_rel[:i + 1]) / (i + 1) for i in range(R) if ranked_rel[i]) / R
        rprec = sum(ranked_rel[:R]) / R
    else:
        mapr = rprec = 0.0
    return out, mapr, rprec


def bf_orders(dists, tie_aware):
    """All orders to average over: one (index ties) or every order of every tie group."""
    idx = sorted(range(len(dists)), key=lambda j: (dists[j], j))
    if not tie_aware:
        return [idx]
    groups = [list(g) for _, g in itertools.groupby(idx, key=lambda j: dists[j])]
    return [[j for part in combo for j in part] for combo in itertools.product(*[list(itertools.permutations(g)) for g in groups])]


def bf_evaluate(qc, dc, ql, dl, ks, convention, tie_aware, distance="hamming", exclude_no_hit=False,
                exclude_self=False):
    """exclude_self: query i is database item i and is left out of its own database."""
    n = len(dc) - int(exclude_self)
    kk = [n if k == "all" else min(k, n) for k in ks]
    sums = {f"mAP@{k}": [] for k in ks}
    res_p = {k: [] for k in ks}
    res_r = {k: [] for k in ks}
    maprs, rprecs = [], []
    for qi in range(len(qc)):
        items = [j for j in range(len(dc)) if not (exclude_self and j == qi)]
        dists = [bf_distance(qc[qi], dc[j], distance) for j in items]
        rel = [bf_relevant(ql[qi], dl[j]) for j in items]
        R = sum(rel)
        orders = bf_orders(dists, tie_aware)
        acc = np.zeros((len(ks), 4))
        acc_mr = np.zeros(2)
        for order in orders:
            per_k, mapr, rprec = bf_query_metrics([rel[j] for j in order], kk, R, convention)
            acc += np.array(per_k)
            acc_mr += (mapr, rprec)
        acc /= len(orders)
        acc_mr /= len(orders)
        for i, k in enumerate(ks):
            if not (exclude_no_hit and acc[i, 3] == 0):
                sums[f"mAP@{k}"].append(acc[i, 0])
            if not (exclude_no_hit and R == 0):     # the no-hit policy drops R = 0 queries everywhere
                res_p[k].append(acc[i, 1])
                res_r[k].append(acc[i, 2])
        if not (exclude_no_hit and R == 0):
            maprs.append(acc_mr[0])
            rprecs.append(acc_mr[1])
    out = {key: (float(np.mean(v)) if v else 0.0) for key, v in sums.items()}
    for k in ks:
        out[f"P@{k}"] = float(np.mean(res_p[k])) if res_p[k] else 0.0
        out[f"R@{k}"] = float(np.mean(res_r[k])) if res_r[k] else 0.0
    out["MAP@R"] = float(np.mean(maprs)) if maprs else 0.0
    out["R-precision"] = float(np.mean(rprecs)) if rprecs else 0.0
    return out


def tiny_case(seed, n_q=4, n_db=7, bits=3, classes=3, multi=False):
    """Heavy ties (3-bit codes), one query class absent from the database when possible."""
    rng = np.random.default_rng(seed)
    qc = rng.integers(0, 2, (n_q, bits))
    dc = rng.integers(0, 2, (n_db, bits))
    if multi:
        ql = rng.integers(0, 2, (n_q, classes))
        dl = rng.integers(0, 2, (n_db, classes))
        ql[0] = 0                                   # a query with no label: nothing relevant
    else:
        ql = rng.integers(0, classes + 1, n_q)      # class `classes` never occurs in the database
        dl = rng.integers(0, classes, n_db)
        ql[0] = classes
    return qc, dc, ql, dl


def assert_close(res, ref, keys):
    for key in keys:
        assert res[key] == pytest.approx(ref[key], abs=1e-9), key


# ---------------------------------------------------------------- tie-aware: all permutations
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_aware_equals_average_over_all_permutations(convention, multi, seed):
    qc, dc, ql, dl = tiny_case(seed, multi=multi)
    ks = [1, 2, 3, 5, "all"]
    ref = bf_evaluate(qc, dc, ql, dl, ks, convention, tie_aware=True)
    res = evaluate(qc, dc, ql, dl, ks=ks, convention=convention, ties="tie-aware", engine="torch")
    assert_close(res, ref, [f"mAP@{k}" for k in ks] + [f"P@{k}" for k in ks] + ["MAP@R", "R-precision"])


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_tie_aware_excluding_no_hit_queries(convention):
    qc, dc, ql, dl = tiny_case(5, n_q=6)
    ks = [1, 2, 4, "all"]
    ref = bf_evaluate(qc, dc, ql, dl, ks, convention, tie_aware=True, exclude_no_hit=True)
    res = evaluate(qc, dc, ql, dl, ks=ks, convention=convention, ties="tie-aware", exclude_no_hit=True)
    assert_close(res, ref, [f"mAP@{k}" for k in ks] + ["MAP@R", "R-precision"])
    assert res["protocol"]["no_hit"] == "excluded"


def test_tie_aware_float_distances_with_duplicates():
    rng = np.random.default_rng(3)
    dc = rng.integers(0, 2, (7, 2)).astype(np.float32)      # few distinct points: exact float ties
    qc = rng.integers(0, 2, (3, 2)).astype(np.float32)
    ql, dl = rng.integers(0, 2, 3), rng.integers(0, 2, 7)
    ks = [1, 3, "all"]
    for conv in CONVENTIONS:
        ref = bf_evaluate(qc, dc, ql, dl, ks, conv, tie_aware=True, distance="l2")
        res = evaluate(qc, dc, ql, dl, distance="l2", ks=ks, convention=conv, ties="tie-aware",
                       engine="torch")
        assert_close(res, ref, [f"mAP@{k}" for k in ks] + ["MAP@R"])


# ---------------------------------------------------------------- index ties: fixed ranking
@pytest.mark.parametrize("engine", ["torch", "faiss"])
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("multi", [False, True])
def test_index_ties_against_loops(engine, convention, multi):
    qc, dc, ql, dl = tiny_case(11, n_q=8, n_db=60, bits=5, classes=4, multi=multi)
    ks = [1, 5, 10, 59, 100, "all"]
    for exclude in (False, True):
        ref = bf_evaluate(qc, dc, ql, dl, ks, convention, tie_aware=False, exclude_no_hit=exclude)
        res = evaluate(qc, dc, ql, dl, ks=ks, convention=convention, ties="index", engine=engine,
                       exclude_no_hit=exclude)
        assert_close(res, ref, [f"mAP@{k}" for k in ks] + [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks]
                     + ["MAP@R", "R-precision"])


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_index_ties_float_against_loops(distance):
    rng = np.random.default_rng(4)
    qc = rng.normal(size=(5, 6)).astype(np.float32)
    dc = rng.normal(size=(40, 6)).astype(np.float32)
    ql, dl = rng.integers(0, 3, 5), rng.integers(0, 3, 40)
    ks = [1, 7, "all"]
    ref = bf_evaluate(qc, dc, ql, dl, ks, "hits", tie_aware=False, distance=distance)
    for engine in ("torch", "faiss"):
        res = evaluate(qc, dc, ql, dl, distance=distance, ks=ks, ties="index", engine=engine)
        assert_close(res, ref, [f"mAP@{k}" for k in ks] + ["MAP@R"])


def test_tie_aware_equals_index_when_no_ties():
    rng = np.random.default_rng(8)
    qc = rng.normal(size=(6, 5))
    dc = rng.normal(size=(50, 5))
    ql, dl = rng.integers(0, 3, 6), rng.integers(0, 3, 50)
    a = evaluate(qc, dc, ql, dl, distance="l2", ks=[3, 20, "all"], ties="index", engine="torch")
    b = evaluate(qc, dc, ql, dl, distance="l2", ks=[3, 20, "all"], ties="tie-aware", engine="torch")
    for key in ("mAP@3", "mAP@20", "mAP@all", "P@20", "MAP@R"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)


# ---------------------------------------------------------------- hand-checkable cases
def test_hand_checked_hits_convention():
    # db distances from the query 0000: items 0..3 at 0,1,1,2 bits; relevant = items 1 and 3
    db = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    q = np.zeros((1, 4), dtype=np.int64)
    ql, dl = np.array([1]), np.array([0, 1, 0, 1])
    idx = evaluate(q, db, ql, dl, ks=[2, "all"], ties="index", engine="torch")
    # index order: 0,1,2,3 -> rel 0,1,0,1 -> AP@all = (1/2 + 2/4)/2 = 0.5; AP@2 (hits) = 1/2
    assert idx["mAP@all"] == pytest.approx(0.5)
    assert idx["mAP@2"] == pytest.approx(0.5)
    tie = evaluate(q, db, ql, dl, ks=[2, "all"], ties="tie-aware", engine="torch")
    # items 1,2 tie at distance 1: orders (1,2) -> AP@all 0.5 ; (2,1) -> (1/3 + 2/4)/2 = 5/12
    assert tie["mAP@all"] == pytest.approx((0.5 + 5 / 12) / 2)
    # AP@2: order (1,2) -> 1/2 ; order (2,1) -> no hit -> 0 ; expected 1/4
    assert tie["mAP@2"] == pytest.approx(0.25)
    assert tie["P@H<=1"] if "P@H<=1" in tie else True
    hr = evaluate(q, db, ql, dl, ks=[2], hamming_radius=1)
    assert hr["P@H<=1"] == pytest.approx(1 / 3)
    assert hr["H<=1-empty-queries"] == 0


def test_precision_within_radius_and_empty_queries_against_loops():
    qc, dc, ql, dl = tiny_case(21, n_q=10, n_db=30, bits=6)
    res = evaluate(qc, dc, ql, dl, ks=[5], hamming_radius=2)
    precs, empty = [], 0
    for i in range(len(qc)):
        got = [j for j in range(len(dc)) if bf_distance(qc[i], dc[j], "hamming") <= 2]
        if not got:
            empty += 1
            precs.append(0.0)
        else:
            precs.append(sum(bf_relevant(ql[i], dl[j]) for j in got) / len(got))
    assert res["P@H<=2"] == pytest.approx(np.mean(precs))
    assert res["H<=2-empty-queries"] == empty


def test_pr_curve_by_hamming_radius_against_loops():
    qc, dc, ql, dl = tiny_case(22, n_q=6, n_db=25, bits=4)
    res = evaluate(qc, dc, ql, dl, ks=[5], pr_curve=True)["pr_curve"]
    assert res["at"] == [0, 1, 2, 3, 4]
    for rad in range(5):
        ps, rs = [], []
        for i in range(len(qc)):
            got = [j for j in range(len(dc)) if bf_distance(qc[i], dc[j], "hamming") <= rad]
            good = sum(bf_relevant(ql[i], dl[j]) for j in got)
            R = sum(bf_relevant(ql[i], dl[j]) for j in range(len(dc)))
            if got:
                ps.append(good / len(got))
            rs.append(good / R if R else 0.0)
        assert res["precision"][rad] == pytest.approx(np.mean(ps) if ps else 0.0)
        assert res["recall"][rad] == pytest.approx(np.mean(rs))


def test_recall_at_k_against_loops():
    qc, dc, ql, dl = tiny_case(23, n_q=5, n_db=20, bits=4, multi=True)
    res = evaluate(qc, dc, ql, dl, ks=[3, 8], ties="index")
    for k in (3, 8):
        rs = []
        for i in range(len(qc)):
            order = bf_orders([bf_distance(qc[i], dc[j], "hamming") for j in range(len(dc))], False)[0]
            rel = [bf_relevant(ql[i], dl[j]) for j in order]
            rs.append(sum(rel[:k]) / sum(rel) if sum(rel) else 0.0)
        assert res[f"R@{k}"] == pytest.approx(np.mean(rs))


# ---------------------------------------------------------------- input forms and engines
def test_code_forms_give_the_same_result():
    qc, dc, ql, dl = tiny_case(30, n_q=6, n_db=40, bits=12)
    base = evaluate(qc, dc, ql, dl, ks=[5, "all"])
    pm = evaluate(qc * 2 - 1, dc * 2 - 1, ql, dl, ks=[5, "all"])
    packed = evaluate(np.packbits(qc.astype(np.uint8), axis=1), np.packbits(dc.astype(np.uint8), axis=1),
                      ql, dl, ks=[5, "all"], bits=12)
    tens = evaluate(torch.tensor(qc * 2 - 1, dtype=torch.float32), torch.tensor(dc), torch.tensor(ql),
                    torch.tensor(dl), ks=[5, "all"])
    onehot = evaluate(qc, dc, np.eye(4, dtype=np.int64)[ql], np.eye(4, dtype=np.int64)[dl], ks=[5, "all"])
    for other in (pm, packed, tens, onehot):
        for key in ("mAP@5", "mAP@all", "P@5", "MAP@R", "P@H<=2"):
            assert other[key] == pytest.approx(base[key], abs=1e-12)


@pytest.mark.parametrize("bits", [8, 13, 64, 72])
def test_torch_and_faiss_rankings_are_identical(bits):
    from hashbench.platform.evaluation.engines import FaissEngine, TorchEngine
    from hashbench.platform.evaluation.inputs import prepare

    rng = np.random.default_rng(bits)
    qc = rng.integers(0, 2, (20, bits))
    dc = rng.integers(0, 2, (300, bits))
    prep = prepare(qc, dc, np.zeros(20), np.zeros(300), distance="hamming", bits=None,
                   device=torch.device("cpu"))
    t, f = TorchEngine(prep), FaissEngine(prep)
    for k in (1, 10, 123, 300):
        ti, td = t.ranking(prep.query, k)
        fi, fd = f.ranking(prep.query, k)
        assert torch.equal(ti, fi), k
        assert torch.equal(td.long(), fd.long())
    assert torch.equal(t.distances(prep.query).long(), f.distances(prep.query).long())


def test_torch_and_faiss_float_rankings_with_ties():
    from hashbench.platform.evaluation.engines import FaissEngine, TorchEngine
    from hashbench.platform.evaluation.inputs import prepare

    rng = np.random.default_rng(5)
    qc = rng.integers(-2, 3, (15, 4)).astype(np.float32)   # small integers: exact distances, many ties
    dc = rng.integers(-2, 3, (200, 4)).astype(np.float32)
    prep = prepare(qc, dc, np.zeros(15), np.zeros(200), distance="l2", bits=None, device=torch.device("cpu"))
    for k in (5, 50, 200):
        ti, _ = TorchEngine(prep).ranking(prep.query, k)
        fi, _ = FaissEngine(prep).ranking(prep.query, k)
        assert torch.equal(ti, fi)


def exact_float_order(q, db, distance):
    """Reference order of float codes: float64 distances of the float32 vectors, ties by index (stable)."""
    q64, d64 = q.astype(np.float32).astype(np.float64), db.astype(np.float32).astype(np.float64)
    if distance == "cosine":
        q64, d64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True), d64 / np.linalg.norm(d64, axis=1, keepdims=True)
        d = 1 - q64 @ d64.T
    else:
        d = ((q64[:, None, :] - d64[None, :, :]) ** 2).sum(2)
    return np.argsort(d, axis=1, kind="stable"), d


def test_float_l2_rankings_are_exact_and_identical_to_faiss_up_to_float32_near_ties():
    """Non-integer embeddings far from the origin: float32 ||q||^2 + ||d||^2 - 2 q.d (faiss IndexFlatL2, the
    old torch engine) loses most digits, so faiss reorders near-ties. Both our engines return the exact
    (float64 distance, index) order; wherever faiss IndexFlatL2 disagrees, the two items' exact distances
    are within faiss's float32 rounding of each other."""
    import faiss

    from hashbench.platform.evaluation.engines import FaissEngine, TorchEngine
    from hashbench.platform.evaluation.inputs import prepare

    rng = np.random.default_rng(12)
    db = (30 + 0.02 * rng.normal(size=(1500, 16))).astype(np.float32)
    q = (30 + 0.02 * rng.normal(size=(60, 16))).astype(np.float32)
    db[7] = db[3]                                            # an exact duplicate: a true tie, index order
    order, dist = exact_float_order(q, db, "l2")
    prep = prepare(q, db, np.zeros(60), np.zeros(1500), distance="l2", bits=None, device=torch.device("cpu"))
    index = faiss.IndexFlatL2(16)
    index.add(db)
    sq = (q.astype(np.float64) ** 2).sum(1)[:, None] + (db.astype(np.float64) ** 2).sum(1).max()
    bound = 4 * 20 * 2.0 ** -24 * sq                         # float32 error of the decomposition, generous
    faiss_rows_differ = 0
    for k in (1, 10, 100, 1500):
        ti, _ = TorchEngine(prep).ranking(prep.query, k)
        fi, _ = FaissEngine(prep).ranking(prep.query, k)
        assert np.array_equal(ti.numpy(), order[:, :k]), k
        assert np.array_equal(fi.numpy(), order[:, :k]), k
        _, raw = index.search(q, k)
        bad = raw != order[:, :k]
        faiss_rows_differ += int(bad.any(1).sum())
        rows, cols = np.nonzero(bad)
        gap = np.abs(dist[rows, raw[rows, cols]] - dist[rows, order[rows, cols]])
        assert (gap <= bound[rows, 0]).all()
    assert faiss_rows_differ > 0                              # the data does exercise float32 near-ties


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_float_rankings_identical_across_engines_and_chunks(distance):
    from hashbench.platform.evaluation.engines import FaissEngine, TorchEngine
    from hashbench.platform.evaluation.inputs import prepare

    rng = np.random.default_rng(13)
    db = rng.normal(size=(800, 24)).astype(np.float32)
    db[100:110] = db[5]                                       # ten exact duplicates
    q = np.concatenate([db[:20] + 1e-6 * rng.normal(size=(20, 24)), rng.normal(size=(20, 24))]).astype(np.float32)
    order, _ = exact_float_order(q, db, distance)
    prep = prepare(q, db, np.zeros(40), np.zeros(800), distance=distance, bits=None, device=torch.device("cpu"))
    for k in (1, 7, 200, 800):
        ti = torch.cat([TorchEngine(prep).ranking(prep.query[s:s + 9], k)[0] for s in range(0, 40, 9)])
        fi, _ = FaissEngine(prep).ranking(prep.query, k)
        assert torch.equal(ti, fi), k
        if distance == "l2":                                  # cosine: the reference normalises in float64
            assert np.array_equal(ti.numpy(), order[:, :k]), k


def test_chunking_does_not_change_results():
    qc, dc, ql, dl = tiny_case(31, n_q=9, n_db=50, bits=6, multi=True)
    for ties in ("index", "tie-aware"):
        a = evaluate(qc, dc, ql, dl, ks=[4, "all"], ties=ties, engine="torch")
        b = evaluate(qc, dc, ql, dl, ks=[4, "all"], ties=ties, engine="torch", chunk_size=2)
        for key in ("mAP@4", "mAP@all", "MAP@R", "P@H<=2", "R@4"):
            assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_protocol_record():
    qc, dc, ql, dl = tiny_case(32)
    res = evaluate(qc, dc, ql, dl, ks=[2, "all"], convention="min-k-r", ties="index", engine="torch")
    p = res["protocol"]
    assert (p["convention"], p["ties"], p["no_hit"], p["distance"], p["engine"]) == \
        ("min-k-r", "index", "count-as-zero", "hamming", "torch")
    assert p["ks"] == ["2", "all"] and p["k_effective"]["all"] == 7
    assert p["queries_without_relevant"] >= 1


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_aware_truncated_gpu_path_against_permutations(convention, seed, monkeypatch):
    """The top-k + boundary-count path (used by the torch engine when only cut-offs < N are asked)."""
    from hashbench.platform.evaluation.engines import TorchEngine

    def no_full_histograms(*_):
        raise AssertionError("full histograms should not be needed")

    monkeypatch.setattr(TorchEngine, "histograms", no_full_histograms)
    qc, dc, ql, dl = tiny_case(seed, n_q=5, multi=seed == 1)
    ks = [1, 2, 3, 5, 6]
    ref = bf_evaluate(qc, dc, ql, dl, ks, convention, tie_aware=True)
    res = evaluate(qc, dc, ql, dl, ks=ks, convention=convention, ties="tie-aware", engine="torch",
                   map_at_r=False, hamming_radius=None)
    assert_close(res, ref, [f"mAP@{k}" for k in ks] + [f"P@{k}" for k in ks])


def test_dense_and_sparse_ranked_sums_agree():
    from hashbench.platform.evaluation.metrics import ranked_sums, ranked_sums_np

    gen = torch.Generator().manual_seed(0)
    rel = torch.rand(7, 40, generator=gen) < 0.3
    rel[2] = False
    cut = torch.randint(0, 41, (7, 3), generator=gen)
    for a, b in zip(ranked_sums(rel, cut), ranked_sums_np(rel.numpy(), cut.numpy())):
        assert torch.allclose(a, b, atol=1e-12)


def test_half_precision_hamming_product_is_exact():
    """The CUDA path multiplies +-1 codes in float16; exact for up to 2048 bits."""
    from hashbench.platform.evaluation.engines import TorchEngine
    from hashbench.platform.evaluation.inputs import prepare

    rng = np.random.default_rng(9)
    qc, dc = rng.integers(0, 2, (6, 2048)), rng.integers(0, 2, (30, 2048))
    prep = prepare(qc, dc, np.zeros(6), np.zeros(30), distance="hamming", bits=None, device=torch.device("cpu"))
    eng = TorchEngine(prep)
    exact = eng.distances(prep.query)
    eng.dtype, eng.db = torch.float16, eng.db.half()
    assert torch.equal(eng.distances(prep.query), exact)
    assert torch.equal(exact.long(), torch.from_numpy((qc[:, None] != dc[None]).sum(2)))


def test_pr_curve_by_rank_for_float_codes_against_loops():
    rng = np.random.default_rng(24)
    qc, dc = rng.normal(size=(4, 3)), rng.normal(size=(30, 3))
    ql, dl = rng.integers(0, 3, 4), rng.integers(0, 3, 30)
    curve = evaluate(qc, dc, ql, dl, distance="l2", ks=[5], pr_curve=True)["pr_curve"]
    assert curve["x"] == "rank" and curve["at"][0] == 1 and curve["at"][-1] == 30
    for i, k in enumerate(curve["at"]):
        ps, rs = [], []
        for qi in range(4):
            order = bf_orders([bf_distance(qc[qi], dc[j], "l2") for j in range(30)], False)[0]
            rel = [bf_relevant(ql[qi], dl[j]) for j in order]
            ps.append(sum(rel[:k]) / k)
            rs.append(sum(rel[:k]) / sum(rel) if sum(rel) else 0.0)
        assert curve["precision"][i] == pytest.approx(np.mean(ps))
        assert curve["recall"][i] == pytest.approx(np.mean(rs))


# ---------------------------------------------------------------- same-set retrieval (leave-one-out)
def same_set_case(seed, n=14, bits=4, classes=4, multi=False):
    """Heavy ties and exact duplicate codes (a query's own code is shared by other items), one class held
    by a single item (a query without any relevant item) and, multi-label, an item with no label."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, (n, bits))
    codes[1] = codes[0]
    if multi:
        labels = rng.integers(0, 2, (n, classes))
        labels[2] = 0
        labels[3] = 0
        labels[3, 0] = 1
        labels[4:, 0] = 0                                   # label 0: item 3 alone
    else:
        labels = rng.integers(0, classes - 1, n)
        labels[3] = classes - 1                             # a class of one item
    return codes, labels


SAME_SET_KEYS = ("mAP@1", "mAP@3", "mAP@all", "P@1", "P@3", "R@3", "MAP@R", "R-precision")


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("ties", ["index", "tie-aware"])
def test_same_set_against_leave_one_out_loops(ties, multi, monkeypatch):
    """Every Hamming path (torch level-select / truncated histograms, numpy, numba kernels) against loops
    that rank each query against the database without its own item."""
    from hashbench.platform.evaluation import engines

    codes, labels = same_set_case(3, n=10 if ties == "tie-aware" else 14, multi=multi)
    ks = [1, 3, "all"]
    keys = [k for k in SAME_SET_KEYS if not (ties == "tie-aware" and k.startswith("R@"))]
    for exclude in (False, True):
        ref = bf_evaluate(codes, codes, labels, labels, ks, "hits", tie_aware=ties == "tie-aware",
                          exclude_no_hit=exclude, exclude_self=True)
        for engine in ("torch", "faiss", "numba"):
            monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", 0 if engine == "numba" else 2 ** 60)
            res = evaluate(codes, codes, labels, labels, ks=ks, ties=ties, exclude_self=True, exclude_no_hit=exclude,
                           engine="faiss" if engine == "numba" else engine)
            assert_close(res, ref, keys)
            assert res["protocol"]["same_set"] is True
            assert res["protocol"]["k_effective"]["all"] == len(codes) - 1
        # the truncated (top-k) path of the torch engine: cut-offs below N - 1 only
        part = evaluate(codes, codes, labels, labels, ks=[1, 3], ties=ties, engine="torch", exclude_self=True,
                        exclude_no_hit=exclude, map_at_r=False, hamming_radius=None)
        assert_close(part, ref, ["mAP@1", "mAP@3", "P@1", "P@3"])


def test_same_set_radius_and_pr_curve_leave_the_own_item_out():
    codes, labels = same_set_case(4, n=12)
    res = evaluate(codes, codes, labels, labels, ks=[2], exclude_self=True, hamming_radius=1, pr_curve=True)
    precs, rec0 = [], []
    for i in range(len(codes)):
        others = [j for j in range(len(codes)) if j != i]
        got = [j for j in others if bf_distance(codes[i], codes[j], "hamming") <= 1]
        precs.append(sum(labels[j] == labels[i] for j in got) / len(got) if got else 0.0)
        R = sum(labels[j] == labels[i] for j in others)
        at0 = sum(labels[j] == labels[i] for j in others if bf_distance(codes[i], codes[j], "hamming") == 0)
        rec0.append(at0 / R if R else 0.0)
    assert res["P@H<=1"] == pytest.approx(np.mean(precs))
    assert res["pr_curve"]["recall"][0] == pytest.approx(np.mean(rec0))


def test_same_set_float_and_knn():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 4))
    x[1] = x[0]                                                 # an exact duplicate of query 0
    y = rng.integers(0, 3, 30)
    ks = [1, 5, "all"]
    for engine in ("torch", "faiss"):
        for ties in ("index", "tie-aware"):
            ref = bf_evaluate(x, x, y, y, ks, "hits", tie_aware=ties == "tie-aware", distance="l2", exclude_self=True)
            res = evaluate(x, x, y, y, distance="l2", ks=ks, ties=ties, engine=engine, exclude_self=True)
            assert_close(res, ref, ["mAP@1", "mAP@5", "mAP@all", "P@5", "MAP@R"])
    res = evaluate(x, x, y, y, distance="l2", ks=[1], knn_k=3, exclude_self=True)
    preds = []
    for i in range(30):
        order = sorted((j for j in range(30) if j != i), key=lambda j: (float(((x[i] - x[j]) ** 2).sum()), j))[:3]
        preds.append(int(np.argmax([sum(y[j] == c for j in order) for c in range(3)])))
    ref = np.mean([np.mean([p == c for p, t in zip(preds, y) if t == c]) for c in np.unique(y)])
    assert res["kNN-balanced-accuracy"] == pytest.approx(ref)


def test_same_set_bad_inputs():
    from hashbench.platform.errors import HashbenchError

    codes, labels = same_set_case(5)
    with pytest.raises(HashbenchError, match="12 queries and 14 database items"):
        evaluate(codes[:12], codes, labels[:12], labels, exclude_self=True)
    other = codes.copy()
    other[5] = 1 - other[5]
    with pytest.raises(HashbenchError, match="differ \\(first at row 5\\)"):
        evaluate(other, codes, labels, labels, exclude_self=True)
    lab = labels.copy()
    lab[7] = lab[7] + 1
    with pytest.raises(HashbenchError, match="query_labels and db_labels differ \\(first at row 7\\)"):
        evaluate(codes, codes, lab, labels, exclude_self=True)
    with pytest.raises(HashbenchError, match="at least 2 items"):
        evaluate(codes[:1], codes[:1], labels[:1], labels[:1], exclude_self=True)


def test_n_minus_m_cut_offs():
    from hashbench.platform.errors import HashbenchError

    qc, dc, ql, dl = tiny_case(40, n_q=5, n_db=20, bits=4)
    res = evaluate(qc, dc, ql, dl, ks=["N-1", 19, "N-0"], ties="index")
    assert res["mAP@N-1"] == res["mAP@19"] and res["protocol"]["k_effective"]["N-0"] == 20
    with pytest.raises(HashbenchError, match="0 <= m < N = 20"):
        evaluate(qc, dc, ql, dl, ks=["N-20"])
    with pytest.raises(HashbenchError, match="0 <= m < N"):
        evaluate(qc, dc, ql, dl, ks=["N-x"])


def test_run_protocol_same_set_option():
    """TrainConfig's ``evaluation.same_set``: the test split scored against itself, recorded in the protocol."""
    from types import SimpleNamespace

    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.training.config import resolve_evaluation
    from hashbench.platform.training.loop import evaluate_readout

    ev = resolve_evaluation({"same_set": "true"})
    assert ev["same_set"] is True and resolve_evaluation(None)["same_set"] is False
    with pytest.raises(HashbenchError, match="same_set"):
        resolve_evaluation({"same_set": "maybe"})
    codes, labels = same_set_case(8, n=12)
    onehot = torch.eye(4)[torch.as_tensor(labels)]
    q = torch.as_tensor(codes * 2 - 1, dtype=torch.int8)
    db = torch.ones(5, codes.shape[1], dtype=torch.int8)          # the train database: ignored under same_set
    cfg = SimpleNamespace(evaluation=ev, eval_ks=(1, 3, "all"))
    readout = SimpleNamespace(name="codes", code_type="binary", distance="hamming")
    method = SimpleNamespace(distance="hamming")
    metrics, protocol = evaluate_readout(q, db, onehot, torch.eye(4)[:1].repeat(5, 1), method, readout, cfg,
                                         torch.device("cpu"), False)
    ref = evaluate(codes, codes, labels, labels, ks=[1, 3, "all"], exclude_self=True)
    assert protocol["same_set"] is True and protocol["n_db"] == 12
    assert metrics["test_mAP@all"] == pytest.approx(ref["mAP@all"], abs=1e-12)
