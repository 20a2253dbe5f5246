"""``hashbench leaderboard``: the best run per (method, dataset, code length), or every run."""

from __future__ import annotations

FORMATS = ("table", "csv", "markdown", "latex", "json")


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="show the leaderboard (best run per entry at equal storage or code length)",
                       description="Show the Parquet leaderboard: by default the best run per (protocol, dataset, "
                                   "entry, storage_bits) chosen on validation mAP@100 (--axis bits: per code "
                                   "length), with its test metrics and, for "
                                   "configurations re-trained with --seeds, mean ± 95% CI over the seeds.")
    p.add_argument("--leaderboard", "--dir", dest="dir", metavar="DIR",
                   help="leaderboard directory (default: $HASHBENCH_LEADERBOARD, else the most recently "
                        "written one, see docs/leaderboard.md)")
    p.add_argument("--dataset", nargs="+", help="only these datasets")
    p.add_argument("--method", nargs="+", help="only these methods")
    p.add_argument("--bits", nargs="+", type=int, help="only these code lengths")
    p.add_argument("--axis", choices=("storage", "bits"), default="storage",
                   help="compare at equal storage per database item (default: storage_bits; a float "
                        "embedding of d float32 values takes 32*d bits) or at equal code length (bits); "
                        "both columns are shown")
    p.add_argument("--protocol", nargs="+", help="only these protocols (common, paper:dch, ...)")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="further metric columns, e.g. test_P@5 test_P@H<=0 test_kNN-balanced-accuracy "
                        "(read from each row's metrics_json)")
    p.add_argument("--all-runs", action="store_true", help="every row, not only the best per group")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.set_defaults(func=run)
    add_compact_parser(p)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def render(df, fmt: str) -> str:
    """``df`` as text in ``fmt`` (one of FORMATS)."""
    import polars as pl

    if fmt == "json":
        return df.write_json()
    if fmt == "csv":
        return df.write_csv().rstrip("\n")
    cols = df.columns
    rows = [[_fmt(v) for v in r] for r in df.iter_rows()]
    if fmt == "markdown":
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(out)
    if fmt == "latex":
        def esc(s: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("<=", r"$\leq$"), ("@", "@")):
                s = s.replace(a, b)
            return s
        out = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
               " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
        out += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(out)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=40, float_precision=4,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        return str(df)


def run(args) -> int:
    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import filter_rows, leaderboard_view, read_leaderboard
    import os
    import sys

    from hashbench.platform.defaults import find_leaderboard

    found, how = find_leaderboard(args.dir)
    if not os.path.isdir(found):
        raise HashbenchError(f"leaderboard directory {found}: no such directory; run `hashbench quickstart`, "
                             f"`hashbench sweep` or `hashbench train` first, or pass --leaderboard DIR")
    if how != "given":
        print(f"leaderboard: {found} ({how}; --leaderboard DIR chooses another)", file=sys.stderr)
    args.dir = str(found)
    df = filter_rows(read_leaderboard(args.dir), dataset=args.dataset, method=args.method, bits=args.bits,
                     protocol=args.protocol)
    view = leaderboard_view(df, all_runs=args.all_runs, axis=args.axis, metrics=args.metrics)
    if view.height == 0:
        print(f"(no {'rows' if args.all_runs else 'completed runs'} in {args.dir} match)")
        return 0
    if args.format in ("table", "markdown", "latex") and "n_seeds" in view.columns:
        view = with_seed_text(view)
    print(render(view, args.format))
    if args.format in ("table", "markdown", "latex"):
        for line in protocol_lines(df.filter(df["run_id"].is_in(view["run_id"].to_list()))):
            print(line)
        print(AXIS_LINES[args.axis])
    return 0


AXIS_LINES = {
    "storage": "compared at equal storage: best run per (protocol, dataset, entry, storage_bits); storage_bits = "
               "bits for binary codes, dims x 32 for float32 embeddings (--axis bits: per code length)",
    "bits": "compared at equal code length: best run per (protocol, dataset, entry, bits); a float embedding of "
            "d dims takes 32*d storage bits (--axis storage: at equal storage)",
}


def protocol_lines(df) -> list:
    """One line per distinct evaluation protocol of the rows shown, so every number states its protocol."""
    import polars as pl

    cols = ["protocol", "metric_convention", "tie_policy", "no_hit_policy", "distance"]
    out = []
    measured = df.filter(pl.col("metric_convention").is_not_null())  # stopped / failed rows have no protocol
    for r in measured.select(cols).unique().sort(cols, nulls_last=True).iter_rows(named=True):
        where = ("selection on val (docs/protocol.md)" if r["protocol"] == "common"
                 else f"the paper's own protocol (configs/papers/, docs/protocol.md)")
        out.append(f"protocol {r['protocol']}: mAP convention {r['metric_convention']}, ties {r['tie_policy']}, "
                   f"no-hit queries {r['no_hit_policy']}, distance {r['distance']}; "
                   f"queries = test split, database = train split, {where}")
    return out


def with_seed_text(view):
    """Fold the seed columns into one ``mean ± CI (n=N)`` text column (empty without seeds)."""
    import polars as pl

    text = [f"{m:.4f} ± {h:.4f} (n={n})" if n and n > 1 else ""
            for m, h, n in zip(view["test_mAP@100_mean"], view["test_mAP@100_ci95"], view["n_seeds"])]
    view = view.drop(["test_mAP@100_mean", "test_mAP@100_ci95", "n_seeds"])
    if any(text):
        view = view.insert_column(view.columns.index("test_mAP@100") + 1,
                                  pl.Series("test_mAP@100 seeds (95% CI)", text))
    return view


def add_compact_parser(p) -> None:
    """``hashbench leaderboard compact [--dir DIR]``: merge the one-row files (docs/leaderboard.md)."""
    import argparse

    actions = p.add_subparsers(dest="lb_action", metavar="[compact]")
    actions.required = False
    c = actions.add_parser(
        "compact", help="merge the leaderboard's files into one (fast reads; safe while sweeps write)",
        description="Merge every file of a leaderboard directory into one Parquet file, atomically: the "
                    "merged file is in place before the files it replaces are removed, rows written "
                    "meanwhile are kept, and the newest row of each trial wins. Sweeps do this when they "
                    "finish; run it after many `hashbench train` runs or an interrupted sweep.")
    c.add_argument("--leaderboard", "--dir", dest="dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="leaderboard directory (default: as for `hashbench leaderboard`)")
    c.set_defaults(func=run_compact)


def run_compact(args) -> int:
    import os

    from hashbench.platform.errors import HashbenchError
    from hashbench.platform.leaderboard import compact

    given = getattr(args, "dir", None)
    try:
        from hashbench.platform.defaults import find_leaderboard
        found = find_leaderboard(given)[0]
    except ImportError:  # a build without the recent-leaderboard defaults
        found = given or "leaderboard"
    if not os.path.isdir(found):
        raise HashbenchError(f"leaderboard directory {found}: no such directory; pass --dir DIR")
    print(compact(found).line())
    return 0
