"""View 6 — speed: queries per second against mAP, and training throughput per method."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from hashbench.dashboards import results
from hashbench.dashboards.views.common import colours, legend_height, log_ticks, options


def tradeoff(runs: pl.DataFrame, metric: str, colour: dict[str, str]) -> go.Figure:
    """Accuracy–speed: one point per run (x = queries/s, log scale), one trace per method."""
    fig = go.Figure()
    for m in options(runs, "method"):
        part = runs.filter(pl.col("method") == m).sort("bits")
        fig.add_trace(go.Scatter(
            x=part["queries_per_s"].to_list(), y=part[metric].to_list(), name=m, mode="markers",
            marker={"color": colour[m], "size": 10,
                    "symbol": ["circle" if t == "binary" else "diamond" for t in part["code_type"]]},
            customdata=part.select("bits", "device", "seed").rows(),
            hovertemplate=(f"{m} · %{{customdata[0]}} bits · %{{customdata[1]}} · seed %{{customdata[2]}}"
                           f"<br>%{{x:,.0f}} queries/s<br>{metric}=%{{y:.4f}}<extra></extra>")))
    ticks, labels = log_ticks(runs["queries_per_s"].to_list())
    fig.update_layout(xaxis={"title": "queries per second (log scale)", "type": "log", "tickvals": ticks,
                             "ticktext": labels},
                      yaxis_title=metric.removeprefix("test_"),
                      height=legend_height(len(options(runs, "method"))), margin={"t": 30},
                      legend={"title": "method"})
    return fig


def throughput(runs: pl.DataFrame) -> go.Figure:
    """Mean training images per second per method, one bar group per device."""
    mean = (runs.filter(pl.col("train_images_per_s").is_not_null())
            .group_by("device", "method").agg(pl.col("train_images_per_s").mean(), pl.len().alias("runs"))
            .sort("device", "method"))
    fig = go.Figure()
    for dev in options(mean, "device"):
        part = mean.filter(pl.col("device") == dev)
        fig.add_trace(go.Bar(x=part["method"].to_list(), y=part["train_images_per_s"].to_list(),
                             name=dev or "unknown device", customdata=part["runs"].to_list(),
                             hovertemplate="%{x}: %{y:,.0f} images/s (mean of %{customdata} runs)"
                                           "<extra></extra>"))
    fig.update_layout(barmode="group", yaxis={"title": "training images per second", "tickformat": ",.0f"},
                      xaxis={"tickangle": -30}, height=420, margin={"t": 30, "b": 110},
                      legend={"title": "device"})
    return fig


def render(data: results.Loaded) -> None:
    st.header("Speed")
    done = results.completed(data.rows)
    timed = done.filter(pl.col("queries_per_s").is_not_null() & (pl.col("queries_per_s") > 0))
    colour = colours(options(data.rows, "method"))
    st.subheader("Accuracy against search speed")
    if timed.height == 0:
        st.info("No run in the leaderboard recorded its search speed (`queries_per_s`).")
    else:
        left, right = st.columns(2)
        dataset = left.selectbox("Dataset", options(timed, "dataset"), key="spd_dataset")
        maps = [c for c in results.metric_columns(timed) if c.startswith("test_mAP@")]
        metric = right.selectbox("Accuracy", maps, index=maps.index("test_mAP@100"), key="spd_metric",
                                 format_func=lambda c: c.removeprefix("test_"))
        st.plotly_chart(tradeoff(timed.filter(pl.col("dataset") == dataset), metric, colour), key="spd_tradeoff")
        st.caption("Each point is one completed run: exact search over its test queries (up and to the "
                   "right is better). Circles: binary codes; diamonds: float embeddings. Speeds measured "
                   "on different devices are not comparable; hover a point to see its device.")
    st.subheader("Training throughput")
    if done.filter(pl.col("train_images_per_s").is_not_null()).height == 0:
        st.info("No run in the leaderboard recorded its training throughput (`train_images_per_s`).")
        return
    st.plotly_chart(throughput(done), key="spd_train")
