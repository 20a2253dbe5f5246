"""View 2 — across code lengths: mAP@k vs storage bits (default) or bits, the entry × dataset heat map."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
import streamlit as st
from plotly.subplots import make_subplots

from hashbench.dashboards import results
from hashbench.dashboards.views.common import bits_axis, colours, fmt, legend_height, nan_to_none, options

SYMBOL = {"binary": "circle", "float": "diamond"}


#: the comparison axes: label -> (column, axis title); equal storage is the default (as `hashbench leaderboard`)
AXES = {"Equal storage (bits per database item)": ("storage", "storage_bits", "storage bits per item"),
        "Equal code length (bits / dimensions)": ("bits", "bits", "code length (bits / dimensions)")}


def with_lines(best: pl.DataFrame) -> pl.DataFrame:
    """``best`` with a ``line`` column: the entry (method or readout, e.g. ``jtanet-sign``), plus its
    protocol in brackets when that is not the common one, so paper-protocol rows get lines of their own."""
    return best.with_columns(
        pl.when(pl.col("protocol") == "common").then(pl.col("entry"))
        .otherwise(pl.concat_str([pl.col("entry"), pl.lit(" ["), pl.col("protocol"), pl.lit("]")]))
        .alias("line"))


def panels(best: pl.DataFrame, metric: str, x: str, x_title: str) -> go.Figure:
    """One panel per dataset, one line per entry: ``metric`` (mean ± CI) against column ``x``."""
    best = with_lines(best)
    datasets = options(best, "dataset")
    methods = options(best, "line")
    colour = colours(methods)
    fig = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets, shared_yaxes=True,
                        horizontal_spacing=0.04)
    in_legend: set[str] = set()
    for i, ds in enumerate(datasets, start=1):
        for m in methods:
            part = best.filter((pl.col("dataset") == ds) & (pl.col("line") == m)).sort(x)
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
                customdata=part.select("seeds", "code_type", "bits", "storage_bits").rows(),
                hovertemplate=(f"{m}<br>{x_title}=%{{x}}<br>{metric}=%{{y:.4f}}"
                               "<br>bits=%{customdata[2]}, storage bits=%{customdata[3]}"
                               "<br>seeds=%{customdata[0]} (%{customdata[1]})<extra></extra>")),
                row=1, col=i)
        fig.update_xaxes(title_text=x_title, row=1, col=i, **bits_axis(best[x].to_list()))
    fig.update_yaxes(title_text=metric.removeprefix("test_"), row=1, col=1)
    fig.update_layout(height=legend_height(len(methods)), margin={"t": 40}, legend={"title": "method / readout"})
    return fig


def heatmap(best: pl.DataFrame, metric: str, value: int, column: str = "bits") -> go.Figure:
    """Entry × dataset at one value of ``column`` (storage bits or code length): mean ``metric`` with
    the CI in each cell's text."""
    at = with_lines(best.filter(pl.col(column) == value))
    methods, datasets = options(at, "line"), options(at, "dataset")
    cell = {(r["line"], r["dataset"]): r for r in at.iter_rows(named=True)}
    z = [[cell[(m, d)][metric] if (m, d) in cell else None for d in datasets] for m in methods]
    text = [[fmt(cell[(m, d)][metric], cell[(m, d)][f"{metric} ±"]) if (m, d) in cell else ""
             for d in datasets] for m in methods]
    fig = go.Figure(go.Heatmap(z=z, x=datasets, y=methods, text=text, texttemplate="%{text}",
                               colorscale="Viridis", colorbar={"title": metric.removeprefix("test_")},
                               hovertemplate="%{y} on %{x}: %{text}<extra></extra>"))
    fig.update_layout(height=max(300, 40 * len(methods) + 120), margin={"t": 30},
                      xaxis_title="dataset", yaxis_title="method / readout")
    return fig


def render(data: results.Loaded) -> None:
    st.header("Across code lengths")
    left, right = st.columns([2, 3])
    axis, column, x_title = AXES[left.radio("Compare at", list(AXES), key="len_axis")]
    maps = [c for c in results.metric_columns(data.rows) if c.startswith("test_mAP@")]
    k = right.selectbox("mAP@k", maps, index=maps.index("test_mAP@100") if "test_mAP@100" in maps else 0,
                        format_func=lambda c: c.removeprefix("test_"), key="len_k")
    best = results.best(data.rows, [k], axis=axis)
    if best.height == 0:
        st.info("No finished runs with a test score yet.")
        return
    if axis == "storage":
        st.caption("x = storage bits per database item (`storage_bits`: one bit per hash bit, 32 per float32 "
                   "dimension), so float embeddings and binary codes are compared at equal memory: a 2-d "
                   "embedding sits at 64 bits with 64-bit hash codes. ")
    st.caption("Each point is the best configuration (chosen on validation mAP@100) for its method or "
               "readout, protocol, dataset and " + ("storage size" if axis == "storage" else "code length")
               + ", averaged over its seeds; error bars are 95 % confidence intervals over seeds (none with "
               "one seed). Dotted lines are float embeddings; `jtanet-sign` / `drh-nb` are other readouts "
               "of the same trainings as `jtanet` / `drh`; paper-protocol rows are separate lines.")
    st.plotly_chart(panels(best, k, column, x_title), key="len_lines")

    st.subheader("Method × dataset")
    values = options(best, column)
    cells = [best.filter(pl.col(column) == b).height for b in values]
    value = st.selectbox("Storage bits per item" if axis == "storage" else "Code length", values,
                         index=cells.index(max(cells)), key=f"len_{column}",
                         help="defaults to the value with the most (method, dataset) results")
    st.plotly_chart(heatmap(best, k, value, column), key="len_heat")
