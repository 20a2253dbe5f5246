"""Which method wins, with statistics: paired comparisons of runs and methods, ranks across datasets.

The pieces (docs/statistics.md gives the definitions and the choices):

- :func:`paired_bootstrap`: mean difference of two runs over the same test queries, with a paired
  percentile-bootstrap interval (queries resampled with replacement, both runs together).
- :func:`paired_queries`: that, plus the Wilcoxon signed-rank test over the queries (scipy).
- :func:`paired_seeds`: two methods trained with the same seeds: the paired t-test over seeds (scipy).
- :func:`holm`: Holm's step-down adjustment of several p-values (scipy has Benjamini-Hochberg only).
- :func:`average_ranks`, :func:`friedman`, :func:`nemenyi_cd`: ranks of k methods over N datasets,
  the Friedman test (scipy) and the Nemenyi critical difference of Demšar (2006).
- Leaderboard glue: :func:`run_values` (a run's per-query values), :func:`method_runs` (the seed runs
  of a method's best configuration), :func:`compare_runs`, :func:`compare_methods`,
  :func:`rank_table`, :func:`who_wins`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from hashbench.platform.errors import HashbenchError

#: bootstrap defaults: fixed seed (same numbers on every call), resamples, level
BOOT_SEED = 0
BOOT_RESAMPLES = 10_000
LEVEL = 0.95
ALPHA = 0.05
PER_QUERY_FILE = "per_query.npz"


# ----------------------------------------------------------------------------------------- pure statistics

def _paired(a, b, what: str = "values") -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise HashbenchError(f"paired {what}: need two 1-d arrays of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)       # NaN: a query the metric's mean leaves out
    return a[keep], b[keep]


def paired_bootstrap(a, b, *, resamples: int = BOOT_RESAMPLES, level: float = LEVEL, seed: int = BOOT_SEED,
                     chunk_bytes: int = 2 ** 22) -> dict:
    """Mean of ``a - b`` and its paired percentile-bootstrap interval at ``level``.

    Each resample draws n query indices with replacement (the same for ``a`` and ``b``: paired) and
    takes the mean difference over them; the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the resampled means (numpy's default linear interpolation).
    Vectorised in chunks of resamples (``chunk_bytes`` of int32 indices at a time: a chunk that stays in
    cache; ``rng.integers(0, n, size=(rows, n), dtype=int32)`` gives exactly the draws of a loop calling
    ``rng.integers(0, n, size=n, dtype=int32)`` once per resample). Queries where either
    value is NaN are left out (their count is ``n``)."""
    a, b = _paired(a, b)
    n = a.size
    if n < 2:
        raise HashbenchError(f"paired bootstrap: needs at least 2 queries with values in both runs, got {n}")
    if int(resamples) < 1:
        raise HashbenchError(f"resamples: must be >= 1, got {resamples}")
    d = a - b
    rng = np.random.default_rng(seed)
    per = max(1, int(chunk_bytes) // (4 * n))
    means = np.empty(int(resamples))
    for s in range(0, int(resamples), per):
        rows = min(per, int(resamples) - s)
        means[s:s + rows] = d[rng.integers(0, n, size=(rows, n), dtype=np.int32)].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(n),
            "resamples": int(resamples), "level": level, "seed": seed}


def wilcoxon_p(a, b) -> float:
    """Two-sided p of the Wilcoxon signed-rank test of ``a - b`` (scipy; zero differences dropped,
    ``zero_method='wilcox'``); 1.0 when every difference is zero (no evidence either way)."""
    from scipy.stats import wilcoxon

    a, b = _paired(a, b)
    if not np.any(a != b):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_queries(a, b, **kw) -> dict:
    """:func:`paired_bootstrap` plus the Wilcoxon p-value over the same queries."""
    out = paired_bootstrap(a, b, **kw)
    out["p"] = wilcoxon_p(a, b)
    out["test"] = "wilcoxon over queries"
    return out


def paired_seeds(a: dict, b: dict, level: float = LEVEL) -> dict:
    """Two methods' scores by seed (``{seed: value}``): the seed-matched paired t-test (scipy ``ttest_rel``).

    Returns the matched seeds, the mean difference, its t-interval and p; with fewer than 2 matched
    seeds ``p`` is None and ``message`` says why (no test on one sample)."""
    from scipy.stats import t as student_t, ttest_rel

    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s]))
    x = np.array([a[s] for s in seeds], dtype=np.float64)
    y = np.array([b[s] for s in seeds], dtype=np.float64)
    out = {"seeds": seeds, "n": len(seeds), "mean_diff": float((x - y).mean()) if seeds else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": None, "test": "paired t over seeds", "message": ""}
    if len(seeds) < 2:
        out["message"] = (f"{len(seeds)} seed(s) in common (seeds {sorted(a)} vs {sorted(b)}): a test over seeds "
                          f"needs at least 2; re-train both with --seeds")
        return out
    d = x - y
    if np.all(d == d[0]):                       # constant differences: t is undefined (scipy: nan)
        out["p"] = 1.0 if d[0] == 0 else 0.0
        out["ci_low"] = out["ci_high"] = float(d[0])
        return out
    half = float(student_t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    out.update(ci_low=float(d.mean()) - half, ci_high=float(d.mean()) + half, p=float(ttest_rel(x, y).pvalue))
    return out


def holm(pvalues: Iterable[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (same order as given; None stays None and does not count).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    ps = list(pvalues)
    idx = [i for i, p in enumerate(ps) if p is not None and not (isinstance(p, float) and math.isnan(p))]
    m = len(idx)
    out: list[Optional[float]] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * float(ps[i])))
        out[i] = running
    return out


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """(N datasets, k methods) scores, higher is better -> each method's average rank (1 = best; ties
    share the mean of their ranks, as Demšar 2006 does)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    return rankdata(-scores, axis=1).mean(0)


def friedman(scores: np.ndarray) -> dict:
    """The Friedman test over (N datasets, k methods) scores (scipy ``friedmanchisquare``)."""
    from scipy.stats import friedmanchisquare

    scores = np.asarray(scores, dtype=np.float64)
    n, k = scores.shape
    if k < 3:
        raise HashbenchError(f"Friedman test: needs at least 3 methods, got {k}")
    if n < 2:
        raise HashbenchError(f"Friedman test: needs at least 2 datasets, got {n}")
    res = friedmanchisquare(*scores.T)
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "n": n, "k": k}


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """q_alpha of the Nemenyi test: the studentized range quantile for k groups, infinite df, / sqrt(2)."""
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference of average ranks (Demšar 2006): q_alpha * sqrt(k (k + 1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


# ------------------------------------------------------------------------------------------ seed intervals

def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for ``n`` samples (``n - 1`` degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width of the level CI by the t-distribution, n)``; half-width is NaN for n < 2."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, math.nan, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return mean, t_quantile(n, level) * sd / math.sqrt(n), n


# ------------------------------------------------------------------------------------------ leaderboard glue

def metric_column(metric: str) -> str:
    """``mAP@100`` or ``test_mAP@100`` -> ``test_mAP@100``."""
    return metric if metric.startswith(("test_", "val_")) else f"test_{metric}"


def run_values(row: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-query values of ``metric``, query_index) of one leaderboard row, from its run directory."""
    col = metric_column(metric)
    path = os.path.join(row.get("run_dir") or "", PER_QUERY_FILE)
    if not row.get("run_dir") or not os.path.isfile(path):
        raise HashbenchError(f"run {row['run_id']}: no per-query values ({path}); runs trained before per-query "
                             f"values were kept (issue 16) cannot be compared over queries: re-train them")
    key = f"{row.get('readout') or 'sign'}:{col}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                have = sorted(f.split(":", 1)[1] for f in z.files if f.startswith(f"{row.get('readout')}:"))
                raise HashbenchError(f"{path}: no per-query {col} for readout {row.get('readout')!r}; "
                                     f"it has {', '.join(have) or 'none'}")
            return z[key].astype(np.float64), z["query_index"]
    except (OSError, ValueError, KeyError) as exc:
        raise HashbenchError(f"{path}: not a readable per-query file ({exc})") from None


#: row fields two compared runs must share (field -> what it is, for the message)
SAME = (("dataset", "dataset"), ("dataset_fingerprint", "dataset fingerprint"), ("protocol", "protocol"),
        ("metric_convention", "metric convention"), ("tie_policy", "tie policy"), ("no_hit_policy", "no-hit policy"))


def check_comparable(a: dict, b: dict, what_a: str, what_b: str, fields=SAME) -> None:
    """Refuse two rows that differ in dataset, fingerprint or protocol, naming the difference."""
    diffs = [f"{label} {a.get(f)!r} vs {b.get(f)!r}" for f, label in fields if a.get(f) != b.get(f)]
    if diffs:
        raise HashbenchError(f"{what_a} and {what_b} are not comparable: " + "; ".join(diffs))


def compare_runs(row_a: dict, row_b: dict, metric: str, **boot) -> dict:
    """Two runs over the same test queries: mean difference, paired bootstrap interval, Wilcoxon p."""
    check_comparable(row_a, row_b, f"run {row_a['run_id']}", f"run {row_b['run_id']}")
    va, qa = run_values(row_a, metric)
    vb, qb = run_values(row_b, metric)
    if qa.shape != qb.shape or not np.array_equal(qa, qb):
        raise HashbenchError(f"runs {row_a['run_id']} and {row_b['run_id']} were tested on different queries "
                             f"({qa.size} vs {qb.size} query items, or in another order); per-query pairing needs "
                             f"the same test split")
    out = paired_queries(va, vb, **boot)
    out.update(a=row_a["run_id"], b=row_b["run_id"], metric=metric_column(metric),
               mean_a=float(np.nanmean(va)), mean_b=float(np.nanmean(vb)))
    return out


def method_runs(df, entry: str, metric: str, axis: str = "bits"):
    """The completed rows of ``entry``'s best configuration per (protocol, dataset, bits or storage):
    the best trial on validation mAP@100 plus its ``--seeds`` re-runs (same parameters), one row per seed.

    Returns {(protocol, dataset, axis value): [row, ...]}."""
    import polars as pl

    from hashbench.platform import leaderboard as lb

    col = metric_column(metric)
    df = lb.with_metrics(df, [col])
    mine = df.filter((pl.col("entry") == entry) & (pl.col("status") == "completed"))
    best = lb.best_runs(mine, axis=axis)
    out = {}
    axis_col = lb.AXES[axis][-1]
    for b in best.iter_rows(named=True):
        same = mine.filter(pl.all_horizontal([pl.col(k) == b[k] for k in lb.SEED_KEY]) & pl.col(col).is_not_null()
                           & (pl.col("dataset_fingerprint") == b["dataset_fingerprint"]).fill_null(True))
        same = same.sort("role", descending=True).unique(subset=["seed"], keep="first").sort("seed")
        out[(b["protocol"], b["dataset"], b[axis_col])] = same.to_dicts()
    return out


def compare_methods(df, a: str, b: str, metric: str, axis: str = "bits", datasets=None, values=None,
                    protocol: Optional[str] = None, **boot) -> list[dict]:
    """Method ``a`` vs ``b`` per (protocol, dataset, code length or storage) they share: the seed-matched
    paired t-test over seeds, and on the first common seed the paired bootstrap over queries; Holm-adjusted
    p-values over the pairs shown (``p_holm``)."""
    ra, rb = method_runs(df, a, metric, axis), method_runs(df, b, metric, axis)
    for name, runs in ((a, ra), (b, rb)):
        if not runs:
            raise HashbenchError(f"no completed runs of {name!r} with {metric_column(metric)} in the leaderboard")
    keys = sorted(k for k in set(ra) & set(rb) if (not datasets or k[1] in datasets) and (not values or k[2] in values)
                  and (protocol is None or k[0] == protocol))
    if not keys:
        have_a = sorted({(k[0], k[1], k[2]) for k in ra})
        have_b = sorted({(k[0], k[1], k[2]) for k in rb})
        raise HashbenchError(f"{a} and {b} share no (protocol, dataset, {axis}) with the filters given: "
                             f"{a} has {have_a}, {b} has {have_b}")
    col = metric_column(metric)
    out = []
    for key in keys:
        rows_a, rows_b = ra[key], rb[key]
        check_comparable(rows_a[0], rows_b[0], a, b)
        res = {"protocol": key[0], "dataset": key[1], axis: key[2], "a": a, "b": b, "metric": col,
               "seeds_a": len(rows_a), "seeds_b": len(rows_b)}
        by_a = {r["seed"]: r[col] for r in rows_a}
        by_b = {r["seed"]: r[col] for r in rows_b}
        res["mean_a"] = float(np.mean(list(by_a.values())))
        res["mean_b"] = float(np.mean(list(by_b.values())))
        res["seed_test"] = paired_seeds(by_a, by_b)
        common = res["seed_test"]["seeds"]
        ra0 = next((r for r in rows_a if common and r["seed"] == common[0]), rows_a[0])
        rb0 = next((r for r in rows_b if common and r["seed"] == common[0]), rows_b[0])
        try:
            res["query_test"] = compare_runs(ra0, rb0, metric, **boot)
        except HashbenchError as exc:
            res["query_test"] = {"message": str(exc), "p": None}
        out.append(res)
    adj = holm([r["seed_test"]["p"] for r in out])
    adj_q = holm([r["query_test"].get("p") for r in out])
    for r, p, pq in zip(out, adj, adj_q):
        r["seed_test"]["p_holm"] = p
        r["query_test"]["p_holm"] = pq
    return out


@dataclass
class RankTable:
    """k methods' scores over N datasets at one code length (or storage) and their rank statistics."""
    metric: str
    axis: str
    value: int
    protocol: str
    methods: list
    datasets: list
    scores: np.ndarray                  # (N, k): mean over seeds of each method's best configuration
    seeds: np.ndarray                   # (N, k): seeds behind each score
    queries: dict                       # dataset -> number of test queries
    dropped: list = field(default_factory=list)   # (dataset, missing methods)
    ranks: Optional[np.ndarray] = None
    friedman: Optional[dict] = None
    cd: Optional[float] = None
    q_alpha: Optional[float] = None
    message: str = ""


def _queries_of(row: dict) -> Optional[int]:
    try:
        return int(json.loads(row.get("protocol_json") or "{}").get("n_queries"))
    except (TypeError, ValueError):
        return None


def rank_table(df, metric: str = "mAP@100", value: Optional[int] = None, axis: str = "bits",
               protocol: str = "common", methods=None, datasets=None, alpha: float = ALPHA) -> RankTable:
    """Average ranks, Friedman test and Nemenyi CD of the entries over the datasets at one ``axis`` value.

    A method's score on a dataset is the mean over the seeds of its best configuration. Only datasets
    on which every method has a score take part (the others are listed in ``dropped``)."""
    import polars as pl

    from hashbench.platform import leaderboard as lb

    col = metric_column(metric)
    df = df.filter(pl.col("protocol") == protocol)
    if datasets:
        df = df.filter(pl.col("dataset").is_in(list(datasets)))
    axis_col = lb.AXES[lb.check_axis(axis)][-1]
    if value is None:
        raise HashbenchError(f"--{'bits' if axis == 'bits' else 'storage-bits'}: say which "
                             f"{'code length' if axis == 'bits' else 'storage'} to rank at; present: "
                             f"{sorted(set(df[axis_col].to_list()))}")
    df = df.filter(pl.col(axis_col) == int(value))
    entries = sorted(methods or set(df["entry"].drop_nulls().to_list()))
    cells, seeds, queries, fingerprints = {}, {}, {}, {}
    for e in entries:
        for (proto, ds, _), rows in method_runs(df, e, metric, axis).items():
            cells[(ds, e)] = float(np.mean([r[col] for r in rows]))
            seeds[(ds, e)] = len(rows)
            queries.setdefault(ds, _queries_of(rows[0]))
            first = fingerprints.setdefault(ds, (e, rows[0]))
            check_comparable(first[1], rows[0], f"{first[0]} on {ds}", f"{e} on {ds}")
    all_ds = sorted({d for d, _ in cells})
    keep = [d for d in all_ds if all((d, e) in cells for e in entries)]
    dropped = [(d, [e for e in entries if (d, e) not in cells]) for d in all_ds if d not in keep]
    scores = np.array([[cells[(d, e)] for e in entries] for d in keep]).reshape(len(keep), len(entries))
    nseeds = np.array([[seeds[(d, e)] for e in entries] for d in keep], dtype=np.int64).reshape(scores.shape)
    t = RankTable(metric=col, axis=axis, value=int(value), protocol=protocol, methods=entries, datasets=keep,
                  scores=scores, seeds=nseeds, queries={d: queries.get(d) for d in keep}, dropped=dropped)
    k, n = len(entries), len(keep)
    if k < 2:
        t.message = f"{k} method(s) at {axis_col}={value}: ranking needs at least 2"
        return t
    if n < 1:
        t.message = f"no dataset on which all of {', '.join(entries)} have a {col} at {axis_col}={value}"
        return t
    t.ranks = average_ranks(scores)
    t.q_alpha, t.cd = nemenyi_q(k, alpha), nemenyi_cd(k, n, alpha)
    if n < 2:
        t.message = f"{n} dataset with every method: the Friedman test needs at least 2 datasets"
    elif k < 3:
        t.message = "2 methods: the Friedman test needs at least 3 (compare the two with `hashbench compare A B`)"
    else:
        t.friedman = friedman(scores)
    return t


def who_wins(df, metric: str = "mAP@100", axis: str = "bits", protocol: str = "common", methods=None,
             datasets=None, values=None, alpha: float = ALPHA) -> dict:
    """Wins / ties / losses of each method (row) against each other (column) over datasets x code lengths.

    A cell (dataset, value) counts as a win for A when the paired test is significant at ``alpha`` and A's
    mean is higher, a loss when significant and lower, a tie otherwise. The test is the seed-matched
    paired t-test when both have >= 2 common seeds, else the Wilcoxon test over the queries of one run each
    (where both runs kept per-query values); cells with neither are not counted."""
    import polars as pl

    df = df.filter(pl.col("protocol") == protocol)
    entries = sorted(methods or set(df["entry"].drop_nulls().to_list()))
    runs = {e: method_runs(df, e, metric, axis) for e in entries}
    col = metric_column(metric)
    counts = {(a, b): [0, 0, 0] for a in entries for b in entries if a != b}
    tests = {"seeds": 0, "queries": 0, "skipped": 0}
    cells = set()
    for i, a in enumerate(entries):
        for b in entries[i + 1:]:
            for key in sorted(set(runs[a]) & set(runs[b])):
                _, ds, val = key
                if (datasets and ds not in datasets) or (values and val not in values):
                    continue
                ra, rb = runs[a][key], runs[b][key]
                check_comparable(ra[0], rb[0], f"{a} on {ds}", f"{b} on {ds}")
                st = paired_seeds({r["seed"]: r[col] for r in ra}, {r["seed"]: r[col] for r in rb})
                p, diff = st["p"], st["mean_diff"]
                if p is not None:
                    tests["seeds"] += 1
                else:
                    try:
                        va, qa = run_values(ra[0], metric)
                        vb, qb = run_values(rb[0], metric)
                        if not np.array_equal(qa, qb):
                            raise HashbenchError("different queries")
                        p, diff = wilcoxon_p(va, vb), float(np.nanmean(va - vb))
                        tests["queries"] += 1
                    except HashbenchError:
                        tests["skipped"] += 1
                        continue
                cells.add((ds, val))
                if p < alpha and diff > 0:
                    counts[(a, b)][0] += 1
                    counts[(b, a)][2] += 1
                elif p < alpha and diff < 0:
                    counts[(a, b)][2] += 1
                    counts[(b, a)][0] += 1
                else:
                    counts[(a, b)][1] += 1
                    counts[(b, a)][1] += 1
    return {"methods": entries, "counts": counts, "tests": tests, "cells": sorted(cells), "metric": col,
            "alpha": alpha, "protocol": protocol}


def cd_groups(methods: list, ranks, cd: float) -> list[list]:
    """Maximal runs of methods (in rank order) whose average ranks lie within ``cd`` of each other: the
    bars of a critical-difference diagram (methods in one group are not significantly different)."""
    order = sorted(range(len(methods)), key=lambda j: ranks[j])
    spans = []
    for s in range(len(order)):
        e = s
        while e + 1 < len(order) and ranks[order[e + 1]] - ranks[order[s]] <= cd:
            e += 1
        if e > s and not any(gs <= s and e <= ge for gs, ge in spans):
            spans.append((s, e))
    return [[methods[order[i]] for i in range(s, e + 1)] for s, e in spans]
