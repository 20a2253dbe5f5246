"""View — compare: which method wins across datasets (critical-difference diagram, who-wins heat map).

The numbers are those of ``hashbench compare --across-datasets`` (hashbench/platform/stats.py,
docs/statistics.md): average ranks over the datasets at one code length (or storage), the Friedman
test, the Nemenyi critical difference (Demšar 2006), and wins / ties / losses under the paired test.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from hashbench.dashboards import results
from hashbench.dashboards.views.common import colours, options
from hashbench.platform import stats as S

# equal storage first (the default): a float embedding of d dims is ranked with 32*d-bit codes, not d-bit ones
AXES = {"Storage bits per database item": "storage", "Code length (bits / dimensions)": "bits"}


def basis(t: S.RankTable) -> str:
    """What a figure rests on: metric, protocol and the number of queries, seeds and datasets."""
    seeds = sorted({int(s) for s in t.seeds.ravel()}) if t.seeds.size else []
    seed_text = (f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}") if seeds else "0"
    queries = sorted({q for q in t.queries.values() if q is not None})
    q_text = "an unknown number of" if not queries else (f"{queries[0]}" if len(queries) == 1 else f"{queries[0]}–{queries[-1]}")
    where = f"{'bits' if t.axis == 'bits' else 'storage bits'} = {t.value}"
    return (f"{t.metric.removeprefix('test_')} at {where} · protocol {t.protocol} · {len(t.datasets)} datasets · "
            f"{seed_text} seed(s) per method and dataset · {q_text} test queries per dataset")


def cd_diagram(t: S.RankTable) -> go.Figure:
    """Demšar's critical-difference diagram: methods on the average-rank axis (1 = best, left), the CD
    as a bar above it, and a thick line joining each group of methods within CD of each other."""
    k = len(t.methods)
    order = sorted(range(k), key=lambda j: t.ranks[j])
    colour = colours(t.methods)
    fig = go.Figure()
    for pos, j in enumerate(order):
        y = -(pos + 1)
        fig.add_trace(go.Scatter(
            x=[t.ranks[j], t.ranks[j]], y=[0, y], mode="lines+markers+text", name=t.methods[j],
            line={"color": colour[t.methods[j]]}, marker={"size": [10, 0]},
            text=["", f"{t.methods[j]} ({t.ranks[j]:.2f})"], textposition="middle right",
            hovertemplate=f"{t.methods[j]}: average rank {t.ranks[j]:.3f}<extra></extra>", showlegend=False))
    for g, group in enumerate(S.cd_groups(t.methods, t.ranks, t.cd)):
        xs = [t.ranks[t.methods.index(m)] for m in group]
        y = 0.35 + 0.25 * g
        fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[y, y], mode="lines", line={"color": "black", "width": 5},
                                 name="within CD", showlegend=False,
                                 hovertemplate="not significantly different: " + ", ".join(group) + "<extra></extra>"))
    top = 0.35 + 0.25 * max(1, len(S.cd_groups(t.methods, t.ranks, t.cd))) + 0.3
    fig.add_trace(go.Scatter(x=[1, 1 + t.cd], y=[top, top], mode="lines+text", line={"color": "crimson", "width": 3},
                             text=["", f"CD = {t.cd:.3f}"], textposition="top center", name="CD", showlegend=False,
                             hovertemplate=f"Nemenyi critical difference {t.cd:.3f} (alpha 0.05)<extra></extra>"))
    fried = (f"Friedman p = {t.friedman['p']:.3g}" if t.friedman else t.message)
    fig.update_layout(
        title={"text": f"Critical difference (Nemenyi, α = 0.05) — {basis(t)}<br><sup>{fried}</sup>",
               "font": {"size": 13}},
        xaxis={"title": "average rank (1 = best)", "range": [max(k, 1 + t.cd) + 0.5, 0.5], "dtick": 1},
        yaxis={"visible": False, "range": [-(k + 0.8), top + 0.6]},
        height=max(320, 45 * k + 200), margin={"t": 90})
    return fig


def wins_heatmap(ww: dict, t: S.RankTable) -> go.Figure:
    """Rows method A, columns method B: colour = wins - losses, text = wins/ties/losses."""
    m = ww["methods"]
    z = [[None if a == b else ww["counts"][(a, b)][0] - ww["counts"][(a, b)][2] for b in m] for a in m]
    text = [["" if a == b else "/".join(map(str, ww["counts"][(a, b)])) for b in m] for a in m]
    n = max(1, len(ww["cells"]))
    fig = go.Figure(go.Heatmap(z=z, x=m, y=m, text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0,
                               zmin=-n, zmax=n, colorbar={"title": "wins − losses"},
                               hovertemplate="%{y} vs %{x}: %{text} (wins/ties/losses)<extra></extra>"))
    tests = ww["tests"]
    fig.update_layout(
        title={"text": f"Who wins (row vs column), paired test at α = {ww['alpha']} — {basis(t)}<br><sup>"
                       f"{len(ww['cells'])} (dataset, value) cells; {tests['seeds']} seed-matched t-tests, "
                       f"{tests['queries']} Wilcoxon tests over queries, {tests['skipped']} pairs untested</sup>",
               "font": {"size": 13}},
        xaxis_title="method B", yaxis_title="method A", yaxis={"autorange": "reversed"},
        height=max(320, 45 * len(m) + 160), margin={"t": 90})
    return fig


def _runs_readable(rows: pl.DataFrame, directory) -> pl.DataFrame:
    """Rows with ``run_dir`` replaced by the resolved run directory inside a runs root, or "" (the
    dashboard never follows a recorded path elsewhere: results.resolve_run_dir)."""
    dirs = [str(results.resolve_run_dir(d, directory) or "") if d else "" for d in rows["run_dir"].to_list()]
    return rows.with_columns(pl.Series("run_dir", dirs, dtype=pl.String))


def render(data: results.Loaded) -> None:
    st.header("Compare: which method wins")
    rows = results.completed(data.rows)
    maps = [c for c in results.metric_columns(rows) if c.startswith("test_mAP@") or c.startswith("test_P@")]
    if not maps:
        st.info("No finished runs with a test score yet.")
        return
    c1, c2, c3, c4 = st.columns(4)
    metric = c1.selectbox("Metric", maps, index=maps.index("test_mAP@100") if "test_mAP@100" in maps else 0,
                          format_func=lambda c: c.removeprefix("test_"), key="cmp_metric")
    axis = AXES[c2.radio("Rank at equal", list(AXES), key="cmp_axis")]
    column = "bits" if axis == "bits" else "storage_bits"
    protocols = options(rows, "protocol")
    protocol = c3.selectbox("Protocol", protocols, index=protocols.index("common") if "common" in protocols else 0,
                            key="cmp_protocol")
    at = rows.filter(pl.col("protocol") == protocol)
    values = options(at, column)
    if not values:
        st.info(f"No finished runs of protocol {protocol} with a {column} value.")
        return
    cover = [at.filter(pl.col(column) == v).select("dataset", "entry").unique().height for v in values]
    value = c4.selectbox("Bits" if axis == "bits" else "Storage bits", values, index=cover.index(max(cover)),
                         key="cmp_value", help="defaults to the value with the most (dataset, method) results")
    t = S.rank_table(at, metric, value, axis=axis, protocol=protocol)
    for d, missing in t.dropped:
        st.caption(f"Dataset {d} is left out: no result for {', '.join(missing)}.")
    if t.ranks is None:
        st.info(f"No ranking: {t.message}.")
        return
    st.caption("Each method's score on a dataset is the mean over the seeds of its best configuration (chosen "
               "on validation mAP@100). Ranks: 1 = best on that dataset, ties share the mean rank. Methods joined "
               "by a black bar are within the Nemenyi critical difference of each other (not significantly "
               "different at α = 0.05); docs/statistics.md.")
    st.plotly_chart(cd_diagram(t), key="cmp_cd")
    if t.friedman:
        st.write(f"Friedman χ² = {t.friedman['statistic']:.3f}, p = {t.friedman['p']:.3g} "
                 f"(k = {t.friedman['k']} methods, N = {t.friedman['n']} datasets); CD = {t.cd:.3f} "
                 f"(q₀.₀₅ = {t.q_alpha:.3f}).")
    else:
        st.info(t.message)
    table = pl.DataFrame({"method": t.methods, "average rank": list(map(float, t.ranks)),
                          **{d: [float(v) for v in t.scores[i]] for i, d in enumerate(t.datasets)}})
    st.dataframe(table.sort("average rank"), key="cmp_ranks", hide_index=True)

    st.subheader("Who wins")
    ww = S.who_wins(_runs_readable(at, data.directory), metric, axis=axis, protocol=protocol, methods=t.methods,
                    datasets=t.datasets, values=[value])
    st.caption("Cell (row A, column B): over the datasets at this value, wins / ties / losses of A against B. "
               "A win is a paired test with p < 0.05 in A's favour: the seed-matched paired t-test when both have "
               "at least 2 common seeds, else the Wilcoxon signed-rank test over the test queries of one run each.")
    st.plotly_chart(wins_heatmap(ww, t), key="cmp_wins")
