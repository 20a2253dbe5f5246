"""View 3 — precision–recall curves and precision within Hamming radius 2 at one dataset and length."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from hashbench.dashboards import results
from hashbench.dashboards.views.common import colours, legend_height, nan_to_none, options


def pr_points(metrics_json: str | None) -> dict | None:
    """A row's ``metrics_json["pr_curve"]`` (the evaluation engine's ``{"x": "hamming_radius" | "rank",
    "at": [...], "precision": [...], "recall": [...]}``); None if the run recorded none."""
    curve = json.loads(metrics_json or "{}").get("pr_curve")
    return curve if curve and curve.get("recall") else None


def pr_figure(best: pl.DataFrame, colour: dict[str, str]) -> tuple[go.Figure, list[str]]:
    """One PR curve per method (the chosen configuration's run); also the methods without a curve."""
    fig, missing = go.Figure(), []
    for row in best.sort("method").iter_rows(named=True):
        curve = pr_points(row["metrics_json"])
        if curve is None:
            missing.append(row["method"])
            continue
        at = "Hamming radius" if curve.get("x") == "hamming_radius" else "top"
        fig.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], name=row["method"],
                                 mode="lines+markers", customdata=curve.get("at"),
                                 line={"color": colour[row["method"]],
                                       "dash": "solid" if row["code_type"] == "binary" else "dot"},
                                 hovertemplate=f"{row['method']}<br>{at} %{{customdata}}<br>"
                                               "recall=%{x:.4f}<br>precision=%{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1],
                      yaxis_range=[0, 1.02], height=legend_height(best.height), margin={"t": 30},
                      legend={"title": "method"})
    return fig, missing


def radius_figure(best: pl.DataFrame, colour: dict[str, str]) -> go.Figure:
    """Bars of P@H≤2 per binary method, with the 95 % CI over seeds where there is one."""
    binary = best.filter(pl.col("test_P@H<=2").is_not_null()).sort("method")
    methods = binary["method"].to_list()
    return go.Figure(go.Bar(
        x=methods, y=binary["test_P@H<=2"].to_list(), marker_color=[colour[m] for m in methods],
        error_y={"type": "data", "array": nan_to_none(binary["test_P@H<=2 ±"].to_list()), "visible": True},
        text=[f"{v:.4f}" for v in binary["test_P@H<=2"].to_list()], textposition="outside",
        hovertemplate="%{x}: P@H≤2 = %{y:.4f}<extra></extra>"),
        layout={"yaxis_title": "precision within Hamming radius 2", "yaxis_range": [0, 1.1],
                "xaxis": {"tickangle": -30}, "height": 420, "margin": {"t": 30, "b": 110}})


def render(data: results.Loaded) -> None:
    st.header("Curves")
    done = results.completed(data.rows)
    left, right = st.columns(2)
    dataset = left.selectbox("Dataset", options(done, "dataset"), key="cur_dataset")
    here = done.filter(pl.col("dataset") == dataset)
    bits = right.selectbox("Code length", options(here, "bits"), key="cur_bits")
    if dataset is None or bits is None:
        st.info("No completed runs yet.")
        return
    best = results.best(data.rows.filter((pl.col("dataset") == dataset) & (pl.col("bits") == bits)),
                        ["test_P@H<=2"])
    colour = colours(options(data.rows, "method"))
    st.caption(f"The best configuration of each method on {dataset} at {bits} bits (chosen on validation "
               "mAP@100); its curve is the one its search trial recorded on the test queries: one point "
               "per Hamming radius for binary codes, per rank cut-off for float embeddings (dotted).")
    fig, missing = pr_figure(best, colour)
    st.subheader("Precision–recall")
    st.plotly_chart(fig, key="cur_pr")
    if missing:
        st.caption(f"No precision–recall points recorded for: {', '.join(missing)}.")
    st.subheader("Precision within Hamming radius 2")
    floats = best.filter(pl.col("test_P@H<=2").is_null())["method"].to_list()
    st.plotly_chart(radius_figure(best, colour), key="cur_radius")
    st.caption("Precision of the database items within Hamming distance 2 of each query, averaged over "
               "the test queries as the evaluation engine records it (`test_P@H<=2`); error bars: 95 % CI "
               "over seeds." + (f" Not defined for float embeddings: {', '.join(floats)}." if floats else ""))
