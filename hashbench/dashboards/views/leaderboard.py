"""View 1 — the leaderboard table: filters, best configuration or all runs, protocol and CI, CSV."""

from __future__ import annotations

import polars as pl
import streamlit as st

from hashbench.dashboards import results
from hashbench.dashboards.views.common import options

BEST = "Best configuration per (method, dataset, code length)"
ALL = "All runs"
ID_COLUMNS = ["dataset", "method", "code_type", "bits", "storage_bits"]


def filtered(rows: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """The four filters (empty selection = everything) and the rows they keep."""
    kept = rows
    for col, (name, label) in zip(st.columns(4), [("dataset", "Dataset"), ("method", "Method"),
                                                  ("bits", "Code length (bits)"), ("code_type", "Code type")]):
        chosen = col.multiselect(label, options(rows, name), key=f"{prefix}_{name}", placeholder="all")
        if chosen:
            kept = kept.filter(pl.col(name).is_in(chosen))
    return kept


def table(rows: pl.DataFrame, mode: str, metrics: list[str]) -> pl.DataFrame:
    """The table shown (and downloaded): one row per best configuration or per run."""
    protocol = pl.concat_str([pl.col("metric_convention"), pl.lit(" · "), pl.col("tie_policy"),
                              pl.lit(" · no-hit "), pl.col("no_hit_policy")]).alias("protocol")
    if mode == ALL:
        extra = [c for c in ("status", "seed", "sweep_id", "trial_id", "run_id", "params_json")
                 if c in rows.columns]
        return rows.select(ID_COLUMNS + ["val_mAP@100"] + metrics + [protocol] + extra)
    chosen = results.best(rows, metrics).with_columns(protocol)
    cols = ID_COLUMNS + ["seeds", "val_mAP@100"]
    for m in metrics:
        cols += [m, f"{m} ±"]
    return chosen.select(cols + ["protocol", "run_id", "params_json"])


def render(data: results.Loaded) -> None:
    st.header("Leaderboard")
    st.caption("Best configuration = the completed search trial with the highest validation mAP@100 "
               "(chosen on validation data only). Where it was re-trained with several seeds, each number "
               "is the mean over `seeds` runs and `±` the half-width of its 95 % Student-t confidence "
               "interval (empty with one seed). `protocol` = mAP convention · tie policy · no-hit-query policy. "
               "Click a column header to sort.")
    rows = filtered(data.rows, "lb")
    left, right = st.columns([2, 3])
    mode = left.radio("Rows", [BEST, ALL], key="lb_mode")
    all_metrics = results.metric_columns(data.rows)
    default = [m for m in all_metrics if m.startswith("test_mAP@") or m in ("test_P@H<=2", "test_MAP@R")]
    metrics = right.multiselect("Metrics", all_metrics, default=default, key="lb_metrics")
    shown = table(rows, mode, metrics)
    if shown.height == 0:
        st.info("No rows match these filters.")
        return
    sort_by = metrics[0] if metrics else "val_mAP@100"
    shown = shown.sort(["dataset", "bits", sort_by], descending=[False, False, True], nulls_last=True)
    config = {m: st.column_config.NumberColumn(m, format="%.4f", help="mean over seeds; protocol in "
                                               "the `protocol` column") for m in metrics}
    st.dataframe(shown, hide_index=True, column_config=config, key="lb_table", placeholder="–",
                 height=min(36 + 35 * shown.height, 740))
    st.caption(f"{shown.height} row(s).")
    st.download_button("Download CSV", shown.write_csv(), file_name="hashbench-leaderboard.csv",
                       mime="text/csv", key="lb_csv")
