"""View 1 — the leaderboard table: filters, best configuration or all runs, protocol and CI, CSV."""

from __future__ import annotations

import polars as pl
import streamlit as st

from hashbench.dashboards import results
from hashbench.dashboards.views.common import NUMBER, options

BEST = "Best configuration per group"
ALL = "All runs"
#: the comparison axes (``hashbench leaderboard --axis``): label -> axis; equal storage is the default
AXES = {"Equal storage (bits per database item)": "storage", "Equal code length (bits / dimensions)": "bits"}


def id_columns(axis: str) -> list[str]:
    """Protocol, dataset, the axis column then the other one, entry, readout, code type."""
    first, second = ("storage_bits", "bits") if axis == "storage" else ("bits", "storage_bits")
    return ["protocol", "dataset", first, second, "entry", "readout", "code_type"]


def filtered(rows: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """The five filters (empty selection = everything) and the rows they keep."""
    kept = rows
    for col, (name, label) in zip(st.columns(5), [("protocol", "Protocol"), ("dataset", "Dataset"),
                                                  ("entry", "Method / readout"), ("bits", "Code length (bits)"),
                                                  ("code_type", "Code type")]):
        chosen = col.multiselect(label, options(rows, name), key=f"{prefix}_{name}", placeholder="all")
        if chosen:
            kept = kept.filter(pl.col(name).is_in(chosen))
    return kept


def table(rows: pl.DataFrame, mode: str, metrics: list[str], axis: str = "storage") -> pl.DataFrame:
    """The table shown (and downloaded): one row per best configuration or per run.

    Best configurations are chosen per (protocol, dataset, entry, storage_bits) on the storage axis,
    per (protocol, dataset, entry, bits) on the bits axis; both columns are shown, the axis first, and
    rows at the same storage (or code length) are adjacent. ``evaluation`` = mAP convention · tie
    policy · no-hit-query policy.
    """
    ids = id_columns(axis)
    evaluation = pl.concat_str([pl.col("metric_convention"), pl.lit(" · "), pl.col("tie_policy"),
                                pl.lit(" · no-hit "), pl.col("no_hit_policy")]).alias("evaluation")
    if mode == ALL:
        extra = [c for c in ("status", "seed", "sweep_id", "trial_id", "run_id", "params_json")
                 if c in rows.columns]
        shown = rows.select(ids + ["val_mAP@100"] + metrics + [evaluation] + extra)
    else:
        chosen = results.best(rows, metrics, axis=axis).with_columns(evaluation)
        several = chosen.height > 0 and int(chosen["seeds"].max()) > 1
        cols = ids + (["seeds"] if several else []) + ["val_mAP@100"]
        for m in metrics:
            cols += [m, f"{m} ±"] if several else [m]  # ± is empty everywhere when no row has seeds
        shown = chosen.select(cols + ["evaluation", "run_id", "params_json"])
    sort_by = metrics[0] if metrics else "val_mAP@100"
    return shown.sort(ids[:3] + [sort_by], descending=[False, False, False, True], nulls_last=True)


def render(data: results.Loaded) -> None:
    st.header("Leaderboard")
    st.caption("Rows are compared at **equal storage** by default: `storage_bits` is what one database item "
               "takes (a hash code of K bits: K; a float32 embedding of d dimensions: 32·d), so a 16-d float "
               "embedding sits with 512-bit codes. Switch to equal code length to group by `bits`. Each "
               "`entry` is a method or one readout of it (`jtanet-sign`: JTANet's sign codes, `drh-nb`: "
               "DRH's continuous embedding, from the same training as `drh`); rows of different `protocol`s "
               "(`common`, `paper:<method>`) never compete. "
               "Best configuration = the completed search trial with the highest validation mAP@100 "
               "(chosen on validation data only). Where it was re-trained with several seeds, each number "
               "is the mean over `seeds` runs and `±` the half-width of its 95 % Student-t confidence "
               "interval (shown only when some configuration has several seeds). "
               "`evaluation` = mAP convention · tie policy · no-hit-query policy. "
               "Click a column header to sort.")
    rows = filtered(data.rows, "lb")
    axis_col, left, right = st.columns([2, 2, 3])
    axis = AXES[axis_col.radio("Compare at", list(AXES), key="lb_axis")]
    mode = left.radio("Rows", [BEST, ALL], key="lb_mode")
    all_metrics = results.metric_columns(data.rows)
    default = [m for m in all_metrics if m.startswith("test_mAP@") or m in ("test_P@H<=2", "test_MAP@R")]
    metrics = right.multiselect("Metrics", all_metrics, default=default, key="lb_metrics")
    shown = table(rows, mode, metrics, axis)
    if shown.height == 0:
        st.info("No rows match these filters.")
        return
    config = {m: st.column_config.NumberColumn(m, format=NUMBER, help="mean over seeds; how it was "
                                               "measured: the `protocol` and `evaluation` columns") for m in metrics}
    config.update({c: st.column_config.NumberColumn(c, format=NUMBER) for c in shown.columns
                   if c == "val_mAP@100" or c.endswith(" ±")})
    st.dataframe(shown, hide_index=True, column_config=config, key="lb_table", placeholder="–",
                 height=min(36 + 35 * shown.height, 740))
    st.caption(f"{shown.height} row(s).")
    st.download_button("Download CSV", shown.write_csv(), file_name="hashbench-leaderboard.csv",
                       mime="text/csv", key="lb_csv")
