"""View 2 — across code lengths: mAP@k vs bits, the method × dataset heat map, equal storage."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
import streamlit as st
from plotly.subplots import make_subplots

from hashbench.dashboards import results
from hashbench.dashboards.views.common import colours, fmt, nan_to_none, options

SYMBOL = {"binary": "circle", "float": "diamond"}


def panels(best: pl.DataFrame, metric: str, x: str, x_title: str) -> go.Figure:
    """One panel per dataset, one line per method: ``metric`` (mean ± CI) against column ``x``."""
    datasets = options(best, "dataset")
    methods = options(best, "method")
    colour = colours(methods)
    fig = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets, shared_yaxes=True,
                        horizontal_spacing=0.04)
    in_legend: set[str] = set()
    for i, ds in enumerate(datasets, start=1):
        for m in methods:
            part = best.filter((pl.col("dataset") == ds) & (pl.col("method") == m)).sort(x)
            if part.height == 0:
                continue
            code_type = part["code_type"][0]
            first = m not in in_legend
            in_legend.add(m)
            fig.add_trace(go.Scatter(
                x=part[x].to_list(), y=part[metric].to_list(), name=m, legendgroup=m,
                showlegend=first, mode="lines+markers",
                line={"color": colour[m], "dash": "solid" if code_type == "binary" else "dot"},
                marker={"symbol": SYMBOL.get(code_type, "square")},
                error_y={"type": "data", "array": nan_to_none(part[f"{metric} ±"].to_list()),
                         "visible": True},
                customdata=part.select("seeds", "code_type").rows(),
                hovertemplate=(f"{m}<br>{x_title}=%{{x}}<br>{metric}=%{{y:.4f}}"
                               "<br>seeds=%{customdata[0]} (%{customdata[1]})<extra></extra>")),
                row=1, col=i)
        fig.update_xaxes(title_text=x_title, row=1, col=i)
    fig.update_yaxes(title_text=metric.removeprefix("test_"), row=1, col=1)
    fig.update_layout(height=420, margin={"t": 40}, legend={"title": "method"})
    return fig


def heatmap(best: pl.DataFrame, metric: str, bits: int) -> go.Figure:
    """Method × dataset at one code length: mean ``metric`` with the CI in each cell's text."""
    at = best.filter(pl.col("bits") == bits)
    methods, datasets = options(at, "method"), options(at, "dataset")
    cell = {(r["method"], r["dataset"]): r for r in at.iter_rows(named=True)}
    z = [[cell[(m, d)][metric] if (m, d) in cell else None for d in datasets] for m in methods]
    text = [[fmt(cell[(m, d)][metric], cell[(m, d)][f"{metric} ±"]) if (m, d) in cell else ""
             for d in datasets] for m in methods]
    fig = go.Figure(go.Heatmap(z=z, x=datasets, y=methods, text=text, texttemplate="%{text}",
                               colorscale="Viridis", colorbar={"title": metric.removeprefix("test_")},
                               hovertemplate="%{y} on %{x}: %{text}<extra></extra>"))
    fig.update_layout(height=max(300, 40 * len(methods) + 120), margin={"t": 30},
                      xaxis_title="dataset", yaxis_title="method")
    return fig


def render(data: results.Loaded) -> None:
    st.header("Across code lengths")
    maps = [c for c in results.metric_columns(data.rows) if c.startswith("test_mAP@")]
    k = st.selectbox("mAP@k", maps, index=maps.index("test_mAP@100") if "test_mAP@100" in maps else 0,
                     format_func=lambda c: c.removeprefix("test_"), key="len_k")
    best = results.best(data.rows, [k])
    if best.height == 0:
        st.info("No finished runs with a test score yet.")
        return
    st.caption("Each point is the best configuration (chosen on validation mAP@100) for its method, "
               "dataset and code length, averaged over its seeds; error bars are 95 % confidence "
               "intervals over seeds (none with one seed). Dotted lines are float embeddings.")
    st.plotly_chart(panels(best, k, "bits", "code length (bits)"), key="len_lines")

    st.subheader("Method × dataset")
    lengths = options(best, "bits")
    cells = [best.filter(pl.col("bits") == b).height for b in lengths]
    bits = st.selectbox("Code length", lengths, index=cells.index(max(cells)), key="len_bits",
                        help="defaults to the code length with the most (method, dataset) results")
    st.plotly_chart(heatmap(best, k, bits), key="len_heat")

    st.subheader("Equal storage")
    st.caption("x = storage bits per database item as the leaderboard records them (`storage_bits`: "
               "one bit per hash bit, the float width times the dimension for embeddings), so float "
               "embeddings and binary codes are compared at equal memory.")
    fig = panels(best, k, "storage_bits", "storage bits per item")
    fig.update_xaxes(type="log", dtick=0.30102999566)  # log2 ticks: powers of two
    st.plotly_chart(fig, key="len_storage")
