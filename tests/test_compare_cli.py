"""``hashbench compare`` on a synthetic leaderboard with per-query files (no training, no Ray).

Expected numbers come from scipy and numpy computed here on the values the fixture wrote, or by hand.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from hashbench.platform import leaderboard as lb
from hashbench.platform.cli import main

METHODS = {"ma": 0.70, "mb": 0.60, "mc": 0.50}
DATASETS = ("d1", "d2", "d3", "d4")
SEEDS = (0, 1, 2)
N_QUERIES = 40
#: on d4, mc is 0.15 better than its base: mb and mc swap places there
BONUS = {("d4", "mc"): 0.15}


def per_query(dataset: str, method: str, seed: int) -> np.ndarray:
    """A query's value = its difficulty (shared by all methods: pairing matters) + the method's level + noise."""
    i = DATASETS.index(dataset)
    hard = np.random.default_rng(100 + i).normal(0, 0.15, N_QUERIES)
    noise = np.random.default_rng(1000 * i + 10 * list(METHODS).index(method) + seed).normal(0, 0.02, N_QUERIES)
    return np.clip(METHODS[method] + BONUS.get((dataset, method), 0.0) + hard + noise, 0, 1).astype(np.float16)


def write_run(tmp, lbdir, method, dataset, seed, bits=32, fingerprint=None, protocol="common", n=N_QUERIES,
              values=None, per_query_file=True, run_id=None, code_type="binary", storage_bits=None):
    run_id = run_id or f"{method}-{dataset}-{bits}-s{seed}"
    run_dir = tmp / "runs" / run_id
    run_dir.mkdir(parents=True)
    vals = per_query(dataset, method, seed)[:n] if values is None else np.asarray(values, np.float16)
    np.savez(run_dir / "codes.npz", bits=np.int64(bits))      # the dashboard follows run dirs that have codes
    if per_query_file:
        np.savez(run_dir / "per_query.npz", query_index=np.arange(1000, 1000 + vals.size),
                 **{"sign:test_mAP@100": vals, "sign:test_P@10": vals / 2})
    mean = float(vals.astype(np.float64).mean())
    row = {"sweep_id": "", "trial_id": "", "run_id": run_id, "status": "completed", "method": method,
           "family": method, "dataset": dataset, "dataset_fingerprint": fingerprint or f"fp-{dataset}",
           "bits": bits, "code_type": code_type, "storage_bits": storage_bits or bits, "val_mAP@100": mean,
           "test_mAP@100": mean, "seed": seed, "epochs": 1, "params_json": json.dumps({"lr": 0.1}),
           "role": "trial" if seed == 0 else "seed", "finished_at": f"2026-01-01T00:00:0{seed}+00:00",
           "metric_convention": "hits", "tie_policy": "tie-aware", "no_hit_policy": "include",
           "protocol": protocol, "readout": "sign", "entry": method, "run_dir": str(run_dir),
           "protocol_json": json.dumps({"n_queries": int(vals.size)}),
           "metrics_json": json.dumps({"test_mAP@100": mean, "test_P@10": mean / 2})}
    lb.append_row(lbdir, row)
    return row


def build(tmp, methods=METHODS, datasets=DATASETS, seeds=SEEDS):
    """The fixture leaderboard: every method x dataset x seed at 32 bits; returns its directory."""
    lbdir = tmp / "lb"
    for m in methods:
        for d in datasets:
            for s in seeds:
                write_run(tmp, lbdir, m, d, s)
    return lbdir


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    return tmp, build(tmp)


def _num(text: str, after: str) -> float:
    return float(text.split(after, 1)[1].split()[0].strip("[],;"))


def test_two_runs_mean_difference_interval_and_wilcoxon(board, capsys):
    from scipy.stats import wilcoxon

    _, lbdir = board
    assert main(["compare", "ma-d1-32-s0", "mb-d1-32-s0", "--leaderboard", str(lbdir)]) == 0
    out = capsys.readouterr().out
    a = per_query("d1", "ma", 0).astype(np.float64)
    b = per_query("d1", "mb", 0).astype(np.float64)
    assert _num(out, "A - B =") == pytest.approx((a - b).mean(), abs=5e-5)
    low, high = (float(x) for x in out.split("CI [", 1)[1].split("]")[0].split(","))
    assert low < (a - b).mean() < high and high - low < 0.05
    assert _num(out, "Wilcoxon signed-rank p =") == pytest.approx(wilcoxon(a, b).pvalue, rel=1e-2)
    assert f"{N_QUERIES} test queries of d1" in out and "protocol common" in out


@pytest.mark.parametrize("field, needle", [("dataset", "dataset 'd2' vs 'd1'"),
                                           ("fingerprint", "dataset fingerprint 'other' vs 'fp-d1'"),
                                           ("protocol", "protocol 'paper:ma' vs 'common'")])
def test_incomparable_runs_are_refused_naming_the_difference(board, tmp_path, capsys, field, needle):
    tmp, lbdir = board
    kw = {"dataset": {"dataset": "d2"}, "fingerprint": {"fingerprint": "other"},
          "protocol": {"protocol": "paper:ma"}}[field]
    args = dict(method="ma", dataset="d1", seed=0, run_id=f"odd-{field}")
    args.update(kw)
    odd = tmp_path / "lb"
    write_run(tmp_path, odd, **args)
    write_run(tmp_path, odd, "mb", "d1", 0)
    assert main(["compare", f"odd-{field}", "mb-d1-32-s0", "--leaderboard", str(odd)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_runs_on_different_queries_or_without_per_query_values_are_refused(tmp_path, capsys):
    lbdir = tmp_path / "lb"
    write_run(tmp_path, lbdir, "ma", "d1", 0, n=30)
    write_run(tmp_path, lbdir, "mb", "d1", 0)
    write_run(tmp_path, lbdir, "mc", "d1", 0, per_query_file=False)
    assert main(["compare", "ma-d1-32-s0", "mb-d1-32-s0", "--leaderboard", str(lbdir)]) == 2
    assert "different queries" in capsys.readouterr().err
    assert main(["compare", "mc-d1-32-s0", "mb-d1-32-s0", "--leaderboard", str(lbdir)]) == 2
    assert "no per-query values" in capsys.readouterr().err
    assert main(["compare", "ma-d1-32-s0", "--leaderboard", str(lbdir)]) == 2
    assert main(["compare", "ma-d1-32-s0", "nope", "--leaderboard", str(lbdir)]) == 2
    assert "'nope' is neither a run id nor a method" in capsys.readouterr().err


def test_two_methods_seed_matched_t_test_with_holm(board, capsys):
    from scipy.stats import ttest_rel

    _, lbdir = board
    assert main(["compare", "mb", "mc", "--dataset", "d1", "d4", "--leaderboard", str(lbdir)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("common ")}
    assert set(lines) == {"d1", "d4"}
    ps = {}
    for d in ("d1", "d4"):
        x = [per_query(d, "mb", s).astype(np.float64).mean() for s in SEEDS]
        y = [per_query(d, "mc", s).astype(np.float64).mean() for s in SEEDS]
        ps[d] = ttest_rel(x, y).pvalue
        cols = lines[d].split()
        assert float(cols[3]) == pytest.approx(np.mean(x), abs=1e-4)
        assert float(cols[5]) == pytest.approx(np.mean(x) - np.mean(y), abs=1e-4)
        assert cols[8] == "3"                                                     # seeds
        assert float(cols[9]) == pytest.approx(ps[d], rel=3e-3)
    # Holm over the 2 rows, by hand
    lo, hi = sorted(ps, key=ps.get)
    holm = {lo: min(1, 2 * ps[lo])}
    holm[hi] = max(holm[lo], min(1, ps[hi]))
    for d in ("d1", "d4"):
        assert float(lines[d].split()[10]) == pytest.approx(holm[d], rel=3e-3)
    assert "Holm over the 2 row(s)" in out


def test_one_seed_says_so_instead_of_a_test(tmp_path, capsys):
    lbdir = build(tmp_path, methods=("ma", "mb"), datasets=("d1",), seeds=(0,))
    assert main(["compare", "ma", "mb", "--leaderboard", str(lbdir)]) == 0
    out = capsys.readouterr().out
    assert "needs at least 2" in out and "re-train both with --seeds" in out


def test_across_datasets_ranks_friedman_cd_and_who_wins(board, capsys):
    from scipy.stats import friedmanchisquare

    _, lbdir = board
    assert main(["compare", "--across-datasets", "--bits", "32", "--leaderboard", str(lbdir)]) == 0
    out = capsys.readouterr().out
    ranks = {ln.split()[0]: float(ln.split()[1]) for ln in out.splitlines() if ln.startswith(("ma ", "mb ", "mc "))
             and "/" not in ln}
    # by hand: ma first everywhere; mb second on d1-d3 and third on d4; mc the reverse
    assert ranks == {"ma": 1.0, "mb": 2.25, "mc": 2.75}
    means = np.array([[np.mean([per_query(d, m, s).astype(np.float64).mean() for s in SEEDS]) for m in METHODS]
                      for d in DATASETS])
    ref = friedmanchisquare(*means.T)
    assert _num(out, "Friedman chi2 =") == pytest.approx(ref.statistic, abs=1e-3)
    assert _num(out, "p =") == pytest.approx(ref.pvalue, rel=1e-3)
    # Demšar's table: q_0.05 (k = 3) = 2.343; CD = 2.343 sqrt(3 * 4 / (6 * 4))
    assert _num(out, "CD =") == pytest.approx(2.343 * math.sqrt(12 / 24), abs=2e-3)
    # who wins: ma beats both on all 4 datasets; mb vs mc: 3 wins and 1 loss (d4)
    matrix = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[-3:]}
    assert matrix["ma"] == ["4/0/0", "4/0/0"] and matrix["mb"] == ["0/0/4", "3/0/1"]
    assert "12 seed tests" in out and f"d1: {N_QUERIES}" in out


def test_across_datasets_needs_one_code_length_and_two_datasets(board, tmp_path, capsys):
    _, lbdir = board
    assert main(["compare", "--across-datasets", "--leaderboard", str(lbdir)]) == 2
    assert "exactly one --bits" in capsys.readouterr().err
    assert main(["compare", "--across-datasets", "--bits", "64", "--leaderboard", str(lbdir)]) == 2
    one = build(tmp_path, datasets=("d1",), seeds=(0,))
    assert main(["compare", "--across-datasets", "--bits", "32", "--leaderboard", str(one)]) == 0
    assert "the Friedman test needs at least 2 datasets" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- dashboard view

@pytest.mark.timeout(120)
def test_dashboard_compare_view_cd_diagram_and_who_wins(board, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from hashbench.dashboards import app_path

    _, lbdir = board
    monkeypatch.setenv("HASHBENCH_LEADERBOARD", str(lbdir))
    at = AppTest.from_file(str(app_path()), default_timeout=60).run()
    at.radio(key="view").set_value("Compare").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="cmp_axis").value == "Storage bits per database item"  # equal storage by default
    assert "storage bits = 32" in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    at.radio(key="cmp_axis").set_value("Code length (bits / dimensions)").run()
    assert not at.exception, [e.value for e in at.exception]
    cd, wins = (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
    # every figure states metric, protocol and the numbers of datasets, seeds and queries behind it
    for fig in (cd, wins):
        title = fig["layout"]["title"]["text"]
        assert all(s in title for s in ("mAP@100 at bits = 32", "protocol common", "4 datasets", "3 seed(s)",
                                        f"{N_QUERIES} test queries"))
    # CD diagram: each method's marker at its average rank (hand values as in the CLI test), the CD bar
    ranks = {tr["name"]: tr["x"][0] for tr in cd["data"] if tr["name"] in METHODS}
    assert ranks == pytest.approx({"ma": 1.0, "mb": 2.25, "mc": 2.75})
    bar = next(tr for tr in cd["data"] if tr["name"] == "CD")
    assert bar["x"][1] - bar["x"][0] == pytest.approx(2.343 * math.sqrt(12 / 24), abs=2e-3)
    # who wins: wins/ties/losses text, rows A vs columns B
    heat = wins["data"][0]
    cell = {(a, b): heat["text"][i][j] for i, a in enumerate(heat["y"]) for j, b in enumerate(heat["x"])}
    assert cell[("ma", "mb")] == "4/0/0" and cell[("mb", "mc")] == "3/0/1" and cell[("mc", "mb")] == "1/0/3"
    assert "12 seed-matched t-tests" in wins["layout"]["title"]["text"]


def test_unknown_metric_and_too_few_resamples_are_refused(board, capsys):
    _, lbdir = board
    assert main(["compare", "ma-d1-32-s0", "mb-d1-32-s0", "--metric", "mAP@5", "--leaderboard", str(lbdir)]) == 2
    err = capsys.readouterr().err
    assert "no per-query test_mAP@5 for readout 'sign'" in err and "test_P@10, test_mAP@100" in err
    assert main(["compare", "ma", "mb", "--resamples", "10", "--leaderboard", str(lbdir)]) == 2
    assert "--resamples: 10 is too few" in capsys.readouterr().err


def test_across_datasets_refuses_a_dataset_with_two_fingerprints(tmp_path, capsys):
    lbdir = build(tmp_path, methods=("ma", "mb", "mc"), datasets=("d1", "d2"), seeds=(0,))
    write_run(tmp_path, lbdir, "md", "d1", 0, fingerprint="changed", values=per_query("d1", "ma", 1))
    write_run(tmp_path, lbdir, "md", "d2", 0, values=per_query("d2", "ma", 1))
    assert main(["compare", "--across-datasets", "--bits", "32", "--leaderboard", str(lbdir)]) == 2
    assert "dataset fingerprint 'fp-d1' vs 'changed'" in capsys.readouterr().err


def test_who_wins_with_one_seed_uses_wilcoxon_over_queries(tmp_path, capsys):
    from scipy.stats import wilcoxon

    lbdir = build(tmp_path, datasets=("d1", "d2", "d3"), seeds=(0,))
    assert main(["compare", "--across-datasets", "--bits", "32", "--leaderboard", str(lbdir)]) == 0
    out = capsys.readouterr().out
    assert "0 seed tests, 9 query tests" in out
    matrix = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[-3:]}
    expect = {}
    for a, b in (("ma", "mb"), ("ma", "mc"), ("mb", "mc")):
        w = t = lo = 0
        for d in ("d1", "d2", "d3"):
            x, y = per_query(d, a, 0).astype(np.float64), per_query(d, b, 0).astype(np.float64)
            p = wilcoxon(x, y).pvalue
            w += p < 0.05 and x.mean() > y.mean()
            lo += p < 0.05 and x.mean() < y.mean()
            t += p >= 0.05
        expect[(a, b)] = f"{w}/{t}/{lo}"
    assert matrix["ma"] == [expect[("ma", "mb")], expect[("ma", "mc")]]
    assert matrix["mb"][1] == expect[("mb", "mc")]


def test_two_methods_default_to_equal_storage_not_equal_code_length(tmp_path, capsys):
    """A 4-dim float32 embedding stores 128 bits per item: by default it is compared with 128-bit codes, not
    with 4-bit codes; --axis bits compares equal code lengths (dimensions = bits) instead."""
    lbdir = tmp_path / "lb"
    weak = {s: np.clip(per_query("d1", "mb", s).astype(np.float64) - 0.3, 0, 1) for s in SEEDS}
    for s in SEEDS:
        write_run(tmp_path, lbdir, "ma", "d1", s, bits=4, code_type="float", storage_bits=128)
        write_run(tmp_path, lbdir, "mb", "d1", s, bits=128)
        write_run(tmp_path, lbdir, "mb", "d1", s, bits=4, values=weak[s], run_id=f"mb-d1-4b-s{s}")

    def row(args):
        assert main(["compare", "ma", "mb", "--dir", str(lbdir)] + args) == 0
        lines = capsys.readouterr().out.splitlines()
        header = lines[1].split()
        cells = next(line for line in lines if line.startswith("common")).split()
        return header[2], int(cells[2]), float(cells[4])

    b128 = float(np.mean([per_query("d1", "mb", s).astype(np.float64).mean() for s in SEEDS]))
    b4 = float(np.mean([w.astype(np.float16).astype(np.float64).mean() for w in weak.values()]))
    axis, value, b_mean = row([])
    assert (axis, value) == ("storage", 128) and b_mean == pytest.approx(b128, abs=1e-4)
    axis, value, b_mean = row(["--axis", "bits"])
    assert (axis, value) == ("bits", 4) and b_mean == pytest.approx(b4, abs=1e-4)
