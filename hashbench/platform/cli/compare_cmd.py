"""``hashbench compare``: which of two runs or methods wins, with a paired test; ranks across datasets.

``hashbench compare RUN_A RUN_B``: two runs over the same test queries (paired bootstrap interval of
the mean difference, Wilcoxon test). ``hashbench compare METHOD_A METHOD_B``: per dataset and code
length, the seed-matched paired t-test over seeds (Holm-adjusted over the rows shown) and the query
bootstrap on one seed. ``hashbench compare --across-datasets --bits 32``: average ranks, Friedman
test, Nemenyi critical difference and the who-wins matrix. docs/statistics.md.
"""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="which method wins: paired tests of two runs / methods, ranks across datasets",
                       description="Compare two runs (run ids) or two methods (entries) of the leaderboard with "
                                   "paired statistics, or rank every method across datasets "
                                   "(--across-datasets). See docs/statistics.md.")
    p.add_argument("items", nargs="*", metavar="A B", help="two run ids, or two method / entry ids")
    p.add_argument("--metric", default="mAP@100",
                   help="test metric (default mAP@100; any kept per query: mAP@<k>, P@<k>, MAP@R, R-precision)")
    p.add_argument("--dataset", nargs="+", help="only these datasets")
    p.add_argument("--bits", nargs="+", type=int, help="only these code lengths (--across-datasets: exactly one)")
    p.add_argument("--axis", choices=("bits", "storage"), default="storage",
                   help="group by storage bits per database item (default: a d-dim float32 embedding sits with "
                        "32*d-bit codes; --bits then means storage bits) or by code length (bits)")
    p.add_argument("--protocol", default=None, help="only this protocol (default: common for --across-datasets)")
    p.add_argument("--across-datasets", action="store_true",
                   help="average ranks, Friedman test, Nemenyi CD and the who-wins matrix over datasets")
    p.add_argument("--method", nargs="+", help="--across-datasets: only these methods / entries")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--leaderboard", "--dir", dest="dir", metavar="DIR",
                   help="leaderboard directory (default: as for `hashbench leaderboard`)")
    p.set_defaults(func=run)


def _p(p) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}"


def _table(cols: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    width = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, width)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in width])] + [line(r) for r in cells])


def _load(args):
    import os

    from hashbench.platform.defaults import find_leaderboard
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import read_leaderboard

    found, how = find_leaderboard(args.dir)
    if not os.path.isdir(found):
        raise HashbenchError(f"leaderboard directory {found}: no such directory; pass --leaderboard DIR")
    if how != "given":
        print(f"leaderboard: {found} ({how}; --leaderboard DIR chooses another)", file=sys.stderr)
    return read_leaderboard(str(found))


def run(args) -> int:
    from hashbench.platform.errors import HashbenchError

    if args.resamples < 1000:
        raise HashbenchError(f"--resamples: {args.resamples} is too few for a 95% interval; use >= 1000 "
                             f"(default 10000)")
    df = _load(args)
    if args.across_datasets:
        if args.items:
            raise HashbenchError("--across-datasets ranks every method: give no A B (use --method to choose)")
        return _across(df, args)
    if len(args.items) != 2:
        raise HashbenchError(f"give two run ids or two method ids to compare (got {len(args.items)}: "
                             f"{' '.join(args.items) or 'none'}), or --across-datasets")
    a, b = args.items
    runs = set(df["run_id"].to_list()) | set(df["row_id"].to_list())
    entries = set(df["entry"].drop_nulls().to_list()) | set(df["method"].drop_nulls().to_list())
    if a in runs and b in runs:
        return _runs(df, a, b, args)
    if a in entries and b in entries:
        return _methods(df, a, b, args)
    unknown = [x for x in (a, b) if x not in runs and x not in entries]
    if unknown:
        raise HashbenchError(f"{unknown[0]!r} is neither a run id nor a method of the leaderboard; methods: "
                             f"{', '.join(sorted(entries)) or '(none)'}")
    raise HashbenchError(f"compare two runs or two methods, not a run and a method ({a!r}, {b!r})")


def _runs(df, a: str, b: str, args) -> int:
    from hashbench.platform import stats as S
    from hashbench.platform.leaderboard import find_row

    ra, rb = find_row(df, a), find_row(df, b)
    res = S.compare_runs(ra, rb, args.metric, resamples=args.resamples, seed=args.seed)
    print(_table(["run", "entry", "dataset", "bits", "seed", res["metric"]],
                 [[r["run_id"], r["entry"], r["dataset"], r["bits"], r["seed"], f"{m:.4f}"]
                  for r, m in ((ra, res["mean_a"]), (rb, res["mean_b"]))]))
    print()
    print(f"A - B = {res['mean_diff']:+.4f}, 95% paired bootstrap CI [{res['ci_low']:+.4f}, {res['ci_high']:+.4f}] "
          f"({res['resamples']} resamples, seed {res['seed']}); Wilcoxon signed-rank p = {_p(res['p'])}")
    print(f"{res['metric']} per query, {res['n']} test queries of {ra['dataset']} (protocol {ra['protocol']}, "
          f"{ra['metric_convention']}, ties {ra['tie_policy']}, no-hit {ra['no_hit_policy']})")
    return 0


def _methods(df, a: str, b: str, args) -> int:
    from hashbench.platform import stats as S

    res = S.compare_methods(df, a, b, args.metric, axis=args.axis, datasets=args.dataset, values=args.bits,
                            protocol=args.protocol, resamples=args.resamples, seed=args.seed)
    axis = args.axis
    rows = []
    notes = []
    for r in res:
        st, q = r["seed_test"], r["query_test"]
        rows.append([r["protocol"], r["dataset"], r[axis], f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}",
                     f"{st['mean_diff']:+.4f}" if st["n"] else "-",
                     f"[{st['ci_low']:+.4f}, {st['ci_high']:+.4f}]" if st["p"] is not None else "-",
                     st["n"], _p(st["p"]), _p(st.get("p_holm")),
                     f"{q['mean_diff']:+.4f} [{q['ci_low']:+.4f}, {q['ci_high']:+.4f}]" if "ci_low" in q else "-",
                     q.get("n", "-"), _p(q.get("p")), _p(q.get("p_holm"))])
        if st["message"]:
            notes.append(f"{r['dataset']} {axis}={r[axis]}: {st['message']}")
        if q.get("message"):
            notes.append(f"{r['dataset']} {axis}={r[axis]}: {q['message']}")
    metric = res[0]["metric"]
    print(f"{a} (A) vs {b} (B), {metric}; best configuration per dataset and "
          f"{'code length' if axis == 'bits' else 'storage'} (chosen on val mAP@100)")
    print(_table(["protocol", "dataset", axis, "A mean", "B mean", "A-B seeds", "95% t-CI", "seeds", "p(t)",
                  "p(t) Holm", "A-B queries, 95% bootstrap CI", "queries", "p(Wilcoxon)", "p(W) Holm"], rows))
    print(f"seeds: paired t-test over the seeds both ran (mean over seeds); queries: the first common seed's runs, "
          f"paired bootstrap ({args.resamples} resamples, seed {args.seed}) and Wilcoxon; Holm over the "
          f"{len(res)} row(s) shown")
    for n in notes:
        print(f"note: {n}")
    return 0


def _across(df, args) -> int:
    from hashbench.platform import stats as S
    from hashbench.platform.errors import HashbenchError

    if not args.bits or len(args.bits) != 1:
        raise HashbenchError("--across-datasets: give exactly one --bits value (the code length, or storage bits "
                             "with --axis storage) to rank at")
    protocol = args.protocol or "common"
    t = S.rank_table(df, args.metric, args.bits[0], axis=args.axis, protocol=protocol, methods=args.method,
                     datasets=args.dataset)
    where = f"{'bits' if args.axis == 'bits' else 'storage_bits'}={t.value}"
    print(f"{t.metric} at {where}, protocol {protocol}: {len(t.methods)} methods x {len(t.datasets)} datasets")
    for d, missing in t.dropped:
        print(f"note: dataset {d} left out: no result for {', '.join(missing)}")
    if t.ranks is None:
        raise HashbenchError(t.message)
    order = sorted(range(len(t.methods)), key=lambda j: t.ranks[j])
    cols = ["method", "avg rank"] + t.datasets
    rows = [[t.methods[j], f"{t.ranks[j]:.2f}"] + [f"{t.scores[i, j]:.4f} (n={t.seeds[i, j]})"
                                                  for i in range(len(t.datasets))] for j in order]
    print(_table(cols, rows))
    queries = ", ".join(f"{d}: {q}" for d, q in t.queries.items())
    print(f"cells: mean {t.metric} over seeds (n) of each method's best configuration; test queries per dataset: "
          f"{queries}")
    if t.friedman:
        f = t.friedman
        print(f"Friedman chi2 = {f['statistic']:.3f}, p = {_p(f['p'])} (k={f['k']} methods, N={f['n']} datasets)")
    else:
        print(f"Friedman: {t.message}")
    print(f"Nemenyi critical difference (alpha 0.05): CD = {t.cd:.3f} (q = {t.q_alpha:.3f}); average ranks further "
          f"apart than CD differ significantly")
    groups = S.cd_groups(t.methods, t.ranks, t.cd)
    if groups:
        print("not significantly different (within CD): " + "; ".join("{" + ", ".join(g) + "}" for g in groups))
    ww = S.who_wins(df, args.metric, axis=args.axis, protocol=protocol, methods=t.methods, datasets=t.datasets)
    print()
    print(f"who wins (row vs column: wins/ties/losses over datasets x {args.axis}, paired test at alpha 0.05; "
          f"{ww['tests']['seeds']} seed tests, {ww['tests']['queries']} query tests, "
          f"{ww['tests']['skipped']} pairs without a test)")
    m = ww["methods"]
    print(_table([""] + m, [[x] + ["" if x == y else "/".join(map(str, ww["counts"][(x, y)])) for y in m]
                            for x in m]))
    return 0

