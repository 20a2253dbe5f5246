"""View 5 — a sweep: hyper-parameters against validation mAP, the best trial, what mattered most.

Parameter importance is deliberately simple (docs/dashboard.md): for a numeric parameter, the
squared Spearman rank correlation ρ² between its value and validation mAP@100; for a categorical
one, the correlation ratio η² (between-choice variance / total variance of validation mAP). Both
are "the share of the score's variation this parameter explains on its own", in [0, 1]. With the
few trials a study has per (method, dataset, code length), model-based estimates such as fANOVA
are unstable (a pure-noise parameter got 0.29 of the importance in a 12-trial check).
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
import streamlit as st
from plotly.subplots import make_subplots

from hashbench.dashboards import results
from hashbench.dashboards.views.common import NUMBER

SCORE = "val_mAP@100"


def trials(rows: pl.DataFrame) -> pl.DataFrame:
    """Search trials with a validation score, hyper-parameters decoded into ``hp.*`` columns."""
    done = rows.filter((pl.col("role") == "trial") & pl.col(SCORE).is_not_null())
    if "entry" in done.columns:  # one row per trial: the method's own readout, not its extra readouts
        done = done.filter(pl.col("entry").is_null() | (pl.col("entry") == pl.col("method")))
    return pl.concat([done, results.decode_params(done)], how="horizontal") if done.height else done


def varying(study: pl.DataFrame) -> list[str]:
    """The ``hp.*`` columns that take more than one value in ``study``."""
    return [c for c in study.columns if c.startswith("hp.") and study[c].drop_nulls().n_unique() > 1]


def importance(study: pl.DataFrame, params: list[str]) -> pl.DataFrame:
    """Per parameter: kind, ρ (numeric) and the share of validation-mAP variance it explains."""
    from scipy.stats import spearmanr

    y = study[SCORE].to_numpy()
    out = []
    for p in params:
        x = study[p]
        keep = x.is_not_null().to_numpy()
        if study.schema[p].is_numeric():
            rho = float(spearmanr(x.to_numpy()[keep], y[keep]).statistic) if keep.sum() > 2 else math.nan
            out.append({"parameter": p.removeprefix("hp."), "kind": "numeric", "rho": rho,
                        "explained": rho * rho})
        else:
            yk, groups = y[keep], x.to_numpy()[keep]
            total = ((yk - yk.mean()) ** 2).sum()
            between = sum(len(g) * (g.mean() - yk.mean()) ** 2
                          for g in (yk[groups == v] for v in np.unique(groups)))
            out.append({"parameter": p.removeprefix("hp."), "kind": "categorical", "rho": None,
                        "explained": float(between / total) if total > 0 else math.nan})
    frame = pl.DataFrame(out, schema={"parameter": pl.String, "kind": pl.String, "rho": pl.Float64,
                                      "explained": pl.Float64})
    return frame.sort("explained", descending=True, nulls_last=True)


def _axis(values: pl.Series) -> dict:
    """A parallel-coordinates dimension: numbers as they are, categories as 0..n-1 with tick labels."""
    name = values.name.removeprefix("hp.")
    if values.dtype.is_numeric():
        arr = values.to_numpy()
        positive = arr[~np.isnan(arr)]
        if positive.size and positive.min() > 0 and positive.max() / positive.min() >= 100:
            return {"label": f"log10 {name}", "values": np.log10(arr).tolist()}
        return {"label": name, "values": arr.tolist()}
    choices = sorted(values.drop_nulls().unique().to_list())
    return {"label": name, "values": [choices.index(v) if v is not None else None for v in values],
            "tickvals": list(range(len(choices))), "ticktext": choices}


def parallel(study: pl.DataFrame, params: list[str]) -> go.Figure:
    """Parallel coordinates: one line per trial through its parameters to its validation mAP."""
    dims = [_axis(study[p]) for p in params] + [{"label": SCORE, "values": study[SCORE].to_list()}]
    # labels sit above the axes and tick labels beside them: room on every side keeps them unclipped
    return go.Figure(go.Parcoords(line={"color": study[SCORE].to_list(), "colorscale": "Viridis",
                                        "showscale": True, "colorbar": {"title": "val mAP", "x": 1.06}},
                                  labelangle=-15, labelside="top", dimensions=dims),
                     layout={"height": 460, "margin": {"t": 110, "l": 90, "r": 140, "b": 40}})


def scatter(study: pl.DataFrame, params: list[str]) -> go.Figure:
    """One panel per parameter: its value against validation mAP, one point per trial."""
    fig = make_subplots(rows=1, cols=len(params), shared_yaxes=True,
                        subplot_titles=[p.removeprefix("hp.") for p in params], horizontal_spacing=0.04)
    for i, p in enumerate(params, start=1):
        fig.add_trace(go.Scatter(x=study[p].to_list(), y=study[SCORE].to_list(), mode="markers",
                                 name=p.removeprefix("hp."), showlegend=False,
                                 text=study["trial_id"].to_list(),
                                 hovertemplate="trial %{text}<br>%{x}<br>val mAP %{y:.4f}<extra></extra>"),
                      row=1, col=i)
        axis = _axis(study[p])
        if axis["label"].startswith("log10"):
            fig.update_xaxes(type="log", row=1, col=i)
    fig.update_yaxes(title_text=SCORE, row=1, col=1)
    fig.update_layout(height=360, margin={"t": 40})
    return fig


def render(data: results.Loaded) -> None:
    st.header("Sweep")
    all_trials = trials(data.rows.filter(pl.col("sweep_id").str.len_chars() > 0))
    if all_trials.height == 0:
        st.info("No sweep trials with a validation score yet. Run `hashbench sweep configs/<config>.yaml` "
                "or `hashbench quickstart`.")
        return
    left, right = st.columns(2)
    sweep = left.selectbox("Sweep", sorted(all_trials["sweep_id"].unique().to_list()), key="sw_sweep")
    in_sweep = all_trials.filter(pl.col("sweep_id") == sweep)
    studies = {f"{m} · {d} · {b} bits": (m, d, b) for m, d, b in
               in_sweep.select("method", "dataset", "bits").unique().sort("method", "dataset", "bits").rows()}
    method, dataset, bits = studies[right.selectbox("Study", list(studies), key="sw_study")]
    study = in_sweep.filter((pl.col("method") == method) & (pl.col("dataset") == dataset)
                            & (pl.col("bits") == bits)).sort("trial_id")
    params = varying(study)
    top = study.sort(SCORE, descending=True).head(1)
    st.subheader("Best trial")
    show = ["trial_id", "status", SCORE, "test_mAP@100", "seed", "epochs", "run_id"]
    own = [c for c in study.columns if c.startswith("hp.") and study[c].null_count() < study.height]
    st.dataframe(pl.concat([top.select(show), top.select(own)],
                           how="horizontal"), hide_index=True, key="sw_best",
                 column_config={m: st.column_config.NumberColumn(m, format=NUMBER) for m in (SCORE, "test_mAP@100")})
    st.caption(f"{study.height} trial(s) with a validation score in this study "
               f"({study.filter(pl.col('status') == 'stopped').height} stopped early by ASHA).")
    if not params:
        st.info("No hyper-parameter varies across these trials, so there is nothing to compare.")
        return
    st.subheader("Hyper-parameters against validation mAP@100")
    st.plotly_chart(parallel(study, params), key="sw_parallel")
    st.plotly_chart(scatter(study, params), key="sw_scatter")
    st.subheader("Which parameters mattered")
    st.dataframe(importance(study, params), hide_index=True, key="sw_importance",
                 column_config={"rho": st.column_config.NumberColumn("Spearman ρ", format="%.3f"),
                                "explained": st.column_config.NumberColumn("share explained",
                                                                           format="%.3f")})
    st.caption("share explained = ρ² (numeric: squared Spearman rank correlation with validation "
               "mAP@100) or η² (categorical: between-choice variance / total variance). Each parameter "
               "is measured on its own, so shares need not sum to 1; with few trials they are rough.")
