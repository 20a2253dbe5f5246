"""hashbench's numbers against the references reviewers use (docs/metrics.md "Peer conventions").

* pytorch-metric-learning's ``AccuracyCalculator`` (a dependency), run as its users run it: same-set
  (``query = reference``), queries whose class has no other item, multi-hot labels with a "share at
  least one label" comparator;
* DeepHash-pytorch's ``CalcTopMap``: a loop written here from its definition (rank by Hamming
  distance with ``np.argsort``, keep the top ``topK`` with ``gnd[0:topK]``, AP = mean of
  ``count / rank`` over the hits, queries without a hit add 0, divide by the number of queries),
  with a stable sort so the tie order is the database index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashbench.platform.evaluation import evaluate

pml_calc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
PML_METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision")
OURS = {"precision_at_1": "P@1", "mean_average_precision_at_r": "MAP@R", "r_precision": "R-precision",
        "mean_average_precision": "mAP@all"}


def pml_accuracy(query, query_labels, reference=None, reference_labels=None, comparator=None):
    calc = pml_calc.AccuracyCalculator(include=PML_METRICS, k=None, device=torch.device("cpu"),
                                       label_comparison_fn=comparator)
    return calc.get_accuracy(torch.as_tensor(query), torch.as_tensor(query_labels),
                             None if reference is None else torch.as_tensor(reference),
                             None if reference_labels is None else torch.as_tensor(reference_labels))


def share_a_label(a, b):
    """The comparator hashbench's relevance uses: two multi-hot rows share at least one label."""
    return (a * b).sum(-1) > 0


def blobs(seed, n, dim=6, classes=8):
    """Continuous embeddings (no distance ties: PML's faiss search and our exact order agree)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.normal(size=(n, dim)) + 1.5 * np.eye(classes, dim)[y % dim] * (1 + y[:, None] // dim)).astype(np.float32)
    return x, y


def assert_matches_pml(ours, pml, tol=1e-12):
    for name in PML_METRICS:
        assert ours[OURS[name]] == pytest.approx(pml[name], abs=tol), name


# ---------------------------------------------------------------- pytorch-metric-learning
def test_same_set_equals_pml_query_is_reference():
    x, y = blobs(0, 300)
    lone = np.arange(0, 300, 10)                 # 10 % of the items: classes of one item (no other relevant)
    y[lone] = 100 + np.arange(lone.size)
    pml = pml_accuracy(x, y)
    ours = evaluate(x, x, y, y, distance="l2", ks=[1, "all"], ties="index", exclude_self=True, exclude_no_hit=True)
    assert_matches_pml(ours, pml)
    assert ours["protocol"]["queries_without_relevant"] == lone.size
    # without the no-hit policy the 30 lone queries count as 0 in P@1, MAP@R, R-precision and mAP
    counted = evaluate(x, x, y, y, distance="l2", ks=[1, "all"], ties="index", exclude_self=True)
    for name in PML_METRICS:
        assert counted[OURS[name]] == pytest.approx(pml[name] * 270 / 300, abs=1e-12), name


def test_queries_without_relevant_items_follow_pml():
    """Separate query and reference sets; 10 % of the queries have a class absent from the reference."""
    xq, yq = blobs(1, 200)
    xr, yr = blobs(2, 400)
    yq[::10] = 50                                # no reference item has class 50
    pml = pml_accuracy(xq, yq, xr, yr)
    ours = evaluate(xq, xr, yq, yr, distance="l2", ks=[1, 5, "all"], ties="index", exclude_no_hit=True)
    assert_matches_pml(ours, pml)
    # P@k follows the same policy: the mean of the precision of the queries that have a relevant item
    rng_p5 = []
    for i in range(200):
        if yq[i] == 50:
            continue
        order = np.argsort(((xq[i].astype(np.float64) - xr) ** 2).sum(1), kind="stable")[:5]
        rng_p5.append(np.mean(yr[order] == yq[i]))
    assert ours["P@5"] == pytest.approx(np.mean(rng_p5), abs=1e-12)


def test_multi_hot_labels_need_the_share_a_label_comparator():
    rng = np.random.default_rng(3)
    x, _ = blobs(3, 240)
    labels = (rng.random((240, 5)) < 0.3).astype(np.float32)
    labels[::10] = 0                            # 10 % of the items have no label: nothing is relevant to them
    pml = pml_accuracy(x, labels, comparator=share_a_label)
    ours = evaluate(x, x, labels, labels, distance="l2", ks=[1, "all"], ties="index", exclude_self=True,
                    exclude_no_hit=True)
    assert_matches_pml(ours, pml)
    cross = evaluate(x[:100], x[100:], labels[:100], labels[100:], distance="l2", ks=[1, "all"], ties="index",
                     exclude_no_hit=True)
    assert_matches_pml(cross, pml_accuracy(x[:100], labels[:100], x[100:], labels[100:], comparator=share_a_label))
    # PML's default comparison (torch.eq) compares multi-hot rows element by element, not "share a label";
    # with PML 2.9 it stops on a shape error, same-set or not
    with pytest.raises(RuntimeError, match="size of tensor"):
        pml_accuracy(x, labels)
    with pytest.raises(RuntimeError, match="size of tensor"):
        pml_accuracy(x[:100], labels[:100], x[100:], labels[100:])


# ---------------------------------------------------------------- DeepHash-pytorch CalcTopMap
def calc_top_map(q_codes, db_codes, q_labels, db_labels, top_k, stable=True):
    """DeepHash-pytorch's CalcTopMap, from its definition: +-1 codes, one-hot/multi-hot labels."""
    total = 0.0
    bits = q_codes.shape[1]
    for i in range(q_codes.shape[0]):
        relevant = (q_labels[i] @ db_labels.T > 0).astype(np.float64)
        hamming = 0.5 * (bits - q_codes[i] @ db_codes.T)
        order = np.argsort(hamming, kind="stable" if stable else "quicksort")
        top = relevant[order][0:top_k]
        hits = int(top.sum())
        if hits == 0:
            continue
        ranks = np.flatnonzero(top == 1) + 1.0
        total += np.mean(np.arange(1, hits + 1) / ranks)
    return total / q_codes.shape[0]


def deephash_case(seed, n_q, n_db, bits, classes, multi):
    rng = np.random.default_rng(seed)
    qc = rng.choice([-1, 1], (n_q, bits))
    dc = rng.choice([-1, 1], (n_db, bits))
    if multi:
        ql = (rng.random((n_q, classes)) < 0.25).astype(np.int64)
        dl = (rng.random((n_db, classes)) < 0.25).astype(np.int64)
    else:
        ql = np.eye(classes, dtype=np.int64)[rng.integers(0, classes, n_q)]
        dl = np.eye(classes, dtype=np.int64)[rng.integers(0, classes, n_db)]
    return qc, dc, ql, dl


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("bits", [16, 64])
def test_deephash_calc_top_map_equals_index_ties_hits_convention(bits, multi):
    qc, dc, ql, dl = deephash_case(bits + multi, 60, 500, bits, 6, multi)
    ours = evaluate(qc, dc, ql, dl, ks=[10, 100, 500], ties="index", convention="hits", map_at_r=False,
                    hamming_radius=None)
    for k in (10, 100, 500):
        assert ours[f"mAP@{k}"] == pytest.approx(calc_top_map(qc, dc, ql, dl, k), abs=1e-14), k


def test_deephash_top_k_minus_one_is_map_at_n_minus_one():
    """``topK=-1`` slices ``gnd[0:-1]``: the last-ranked item is dropped, so it is mAP@(N-1), not mAP@all."""
    qc, dc, ql, dl = deephash_case(7, 40, 200, 16, 3, False)
    ref = calc_top_map(qc, dc, ql, dl, -1)
    ours = evaluate(qc, dc, ql, dl, ks=["N-1", 199, "all"], ties="index", map_at_r=False, hamming_radius=None)
    assert ours["mAP@N-1"] == pytest.approx(ref, abs=1e-14)
    assert ours["mAP@199"] == ours["mAP@N-1"]
    assert ours["mAP@all"] != pytest.approx(ref, abs=1e-6)     # the last item is relevant for some queries


def test_unstable_argsort_is_one_tie_order_of_many():
    """np.argsort's default (introsort, unstable) orders tied distances in a CPU- and size-dependent way:
    one tie order among many. Ranking a randomly permuted database with a stable sort draws a uniformly
    random tie order; the mean of CalcTopMap over such draws converges to our tie-aware mAP@k (its exact
    expectation), while each draw - like an unstable sort - lands somewhere around it."""
    qc, dc, ql, dl = deephash_case(8, 30, 400, 16, 4, False)
    expected = evaluate(qc, dc, ql, dl, ks=[100], ties="tie-aware", map_at_r=False, hamming_radius=None)["mAP@100"]
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(300):
        perm = rng.permutation(400)
        draws.append(calc_top_map(qc, dc[perm], ql, dl[perm], 100))
    draws = np.array(draws)
    assert draws.std() > 1e-4                                   # the tie order matters at this size
    assert abs(draws.mean() - expected) < 5 * draws.std() / np.sqrt(draws.size)
    assert calc_top_map(qc, dc, ql, dl, 100) == pytest.approx(
        evaluate(qc, dc, ql, dl, ks=[100], ties="index", map_at_r=False, hamming_radius=None)["mAP@100"], abs=1e-14)


# ---------------------------------------------------------------- the CLI takes the peers' settings
def test_cli_eval_same_set_and_n_minus_one(tmp_path, capsys):
    from hashbench.platform.cli import main

    qc, dc, ql, dl = deephash_case(9, 20, 80, 16, 3, False)
    path = tmp_path / "codes.npz"
    np.savez(path, query_codes=qc, db_codes=dc, query_labels=ql.argmax(1), db_labels=dl.argmax(1))
    assert main(["eval", "--codes", str(path), "--k", "N-1,10", "--ties", "index", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mAP@N-1"] == pytest.approx(calc_top_map(qc, dc, ql, dl, -1), abs=1e-14)
    same = tmp_path / "same.npz"
    np.savez(same, query_codes=dc, query_labels=dl.argmax(1))
    assert main(["eval", "--codes", str(same), "--same-set", "--k", "1,all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = evaluate(dc, dc, dl.argmax(1), dl.argmax(1), ks=[1, "all"], exclude_self=True)
    assert out["mAP@all"] == pytest.approx(ref["mAP@all"]) and out["protocol"]["same_set"] is True
    assert out["protocol"]["k_effective"]["all"] == 79
