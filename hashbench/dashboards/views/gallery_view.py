"""View 4 — retrieval gallery: one query and its top-k retrieved images, correct ones in green."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import streamlit as st

from hashbench.dashboards import gallery, results
from hashbench.dashboards.views.common import options


@st.cache_data(max_entries=4, show_spinner="Loading the run's codes…")
def _codes(path: str, mtime_ns: int) -> gallery.RunCodes:
    return gallery.read_codes(Path(path))


@st.cache_resource(max_entries=4, show_spinner="Opening the dataset…")
def _open(path: str, fingerprint: str):
    from hashbench.platform.data import load_dataset

    return load_dataset(path)


def _dataset(row: dict, leaderboard: Path):
    """The row's dataset (recorded path and fingerprint first, then by name) and a warning or None."""
    def load(cand: str):
        from hashbench.platform.data.store import resolve

        path = resolve(cand)  # HashbenchError when it is not there
        meta = Path(path) / "meta.json"
        return _open(str(path), str(meta.stat().st_mtime_ns) if meta.is_file() else "")

    return gallery.resolve_dataset(row, leaderboard, load=load)


def choose_run(rows: pl.DataFrame) -> dict | None:
    """Dataset → method → code length → run selectors; the default run is the best configuration's."""
    c = st.columns(4)
    dataset = c[0].selectbox("Dataset", options(rows, "dataset"), key="gal_dataset")
    rows = rows.filter(pl.col("dataset") == dataset)
    method = c[1].selectbox("Method", options(rows, "method"), key="gal_method")
    rows = rows.filter(pl.col("method") == method)
    bits = c[2].selectbox("Code length", options(rows, "bits"), key="gal_bits")
    rows = rows.filter(pl.col("bits") == bits).sort("val_mAP@100", descending=True, nulls_last=True)
    if rows.height == 0:
        return None
    labels = {r["run_id"]: f"{r['run_id']} · seed {r['seed']} · val mAP@100 {r['val_mAP@100'] or 0:.3f}"
              for r in rows.iter_rows(named=True)}
    run_id = c[3].selectbox("Run (best first)", list(labels), format_func=labels.get, key="gal_run")
    return rows.filter(pl.col("run_id") == run_id).row(0, named=True)


def choose_query(codes: gallery.RunCodes) -> int | None:
    """A query number, drawn at random (re-drawn by the button) or given by its dataset id."""
    left, right = st.columns([1, 2])
    mode = left.radio("Query", ["Random", "By id"], horizontal=True, key="gal_mode")
    nq = len(codes.query_index)
    if mode == "Random":
        if right.button("Another random query", key="gal_shuffle"):
            st.session_state["gal_draw"] = st.session_state.get("gal_draw", 0) + 1
        return int(np.random.default_rng(st.session_state.get("gal_draw", 0)).integers(nq))
    ids = codes.query_index
    chosen = right.number_input(f"Query id (dataset index; the {nq} test queries span {ids.min()}–{ids.max()})",
                                min_value=0, value=int(ids[0]), step=1, key="gal_id")
    hit = np.flatnonzero(ids == chosen)
    if hit.size == 0:
        st.warning(f"Item {chosen} is not a test query of this run; choose one of its {nq} query ids "
                   f"(e.g. {', '.join(map(str, ids[:5]))}).")
        return None
    return int(hit[0])


def _namer(class_names: list[str]):
    """multi-hot label row → "name, name" (class numbers where the store has fewer names)."""
    names = list(class_names)

    def text(lab: np.ndarray) -> str:
        hot = np.flatnonzero(lab)
        return ", ".join(names[i] if i < len(names) else str(i) for i in hot)

    return text


def render(data: results.Loaded) -> None:
    st.header("Retrieval gallery")
    recorded = data.rows.filter(pl.col("run_dir").str.len_chars() > 0)
    found = {d: results.resolve_run_dir(d, data.directory) for d in recorded["run_dir"].unique().to_list()}
    with_codes = recorded.filter(pl.col("run_dir").is_in([d for d, p in found.items() if p is not None]))
    if with_codes.height < recorded.height:
        st.caption(f"{recorded.height - with_codes.height} run(s) whose codes.npz is no longer on disk are not "
                   "listed (re-create one with `hashbench reproduce RUN_ID`).")
    row = choose_run(with_codes)
    if row is None:
        st.info("No run in the leaderboard has its codes on disk (the run directories were moved or "
                "deleted). Re-create one with `hashbench reproduce RUN_ID`.")
        return
    path = found[row["run_dir"]] / "codes.npz"
    codes = _codes(str(path), path.stat().st_mtime_ns)
    ds, warning = _dataset(row, data.directory)
    if warning:
        st.warning(warning)
    k = st.slider("Retrieved images (k)", 1, 20, 8, key="gal_k")
    q = choose_query(codes)
    if q is None:
        return
    order, dist, relevant = gallery.top_k(codes, q, k)
    qid, db_ids = int(codes.query_index[q]), codes.db_index[order]
    images = np.asarray(ds.images[np.concatenate([[qid], db_ids])])
    label_text = _namer(ds.class_names)
    st.image(gallery.figure(images[0], images[1:], relevant), output_format="PNG",
             caption=f"Query {qid} ({label_text(codes.query_labels[q])}), then its top {k} by "
                     f"{codes.distance} distance: green = shares a label, red = does not. "
                     f"Precision@{k} = {relevant.mean():.2f}.")
    st.dataframe(pl.DataFrame({
        "rank": np.arange(1, len(order) + 1), "dataset id": db_ids, "distance": dist,
        "labels": [label_text(codes.db_labels[i]) for i in order], "correct": relevant}),
        hide_index=True, key="gal_table",
        column_config={"distance": st.column_config.NumberColumn(
            "distance", format="%d" if codes.distance == "hamming" else "%.4f")})
    st.caption(f"Ranking: exact {codes.distance} distance over the run's {len(codes.db_index)} database codes, "
               "ties broken by ascending database position (the `index` tie policy).")
