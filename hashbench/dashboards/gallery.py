"""Retrieval gallery: rank a run's database for one query and draw the papers' figure.

The figure is one row of tiles: the query, then its top-k retrieved images, each framed green
(shares a label with the query) or red (does not). The ranking is the evaluation engine's exact
search: Hamming distance for binary codes, L2 or cosine for float embeddings, ties broken by
ascending database position (faiss's order, the ``index`` tie policy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashbench.platform.errors import HashbenchError

CODES_KEYS = ("query_codes", "db_codes", "query_labels", "db_labels", "query_index", "db_index",
              "bits", "code_type", "distance")
GREEN = np.array([46, 160, 67], np.uint8)
RED = np.array([214, 39, 40], np.uint8)
GREY = np.array([90, 90, 90], np.uint8)


@dataclass
class RunCodes:
    """The arrays of one run's ``codes.npz``."""

    query_codes: np.ndarray
    db_codes: np.ndarray
    query_labels: np.ndarray  # multi-hot (n, C)
    db_labels: np.ndarray
    query_index: np.ndarray  # positions in the prepared dataset
    db_index: np.ndarray
    bits: int
    code_type: str
    distance: str


def dataset_candidates(row: dict, leaderboard: Path | None = None) -> list[str]:
    """Where a row's prepared dataset may be, in the order tried.

    The path the run recorded (``config_json``'s ``dataset_path``, then its ``dataset`` when that is
    a path), then ``data/<name>`` beside the leaderboard (the quickstart's layout, also after the
    whole quickstart directory moved), then the dataset's name (built-in stores, ``$HASHBENCH_DATA``).
    """
    import json

    try:
        cfg = json.loads(row.get("config_json") or "{}")
    except ValueError:
        cfg = {}
    out: list[str] = []
    for p in (cfg.get("dataset_path"), cfg.get("dataset")):
        if isinstance(p, str) and p and (os.sep in p or p.startswith(".")):
            out.append(p)
    name = row.get("dataset") or ""
    if leaderboard is not None and name:
        out.append(str(Path(leaderboard).parent / "data" / name))
    if name:
        out.append(name)
    return list(dict.fromkeys(out))


def resolve_dataset(row: dict, leaderboard: Path | None = None, load=None):
    """The prepared dataset of a leaderboard ``row``: ``(dataset, warning or None)``.

    Tries :func:`dataset_candidates` in order and takes the first whose fingerprint is the recorded
    one; failing that, the first that opens at all, with a warning that its images may not match the
    codes. Raises HashbenchError naming every place looked in when none opens.
    """
    if load is None:
        from hashbench.platform.data import load_dataset as load
    want = row.get("dataset_fingerprint") or ""
    opened, tried = [], []
    for cand in dataset_candidates(row, leaderboard):
        try:
            ds = load(cand)
        except HashbenchError as exc:
            tried.append(f"{cand} ({str(exc).splitlines()[0][:80]})")
            continue
        if not want or ds.fingerprint == want:
            return ds, None
        opened.append(ds)
        tried.append(f"{cand} (fingerprint {ds.fingerprint[:12]}, not {want[:12]})")
    if opened:
        ds = opened[0]
        return ds, (f"The prepared dataset {row.get('dataset')!r} at {ds.path} (fingerprint {ds.fingerprint[:12]}) "
                    f"differs from the one this run used ({want[:12]}): images may not match the codes.")
    raise HashbenchError(
        f"The data of run {row.get('run_id')!r} (dataset {row.get('dataset')!r}, fingerprint {want[:12]}) is "
        f"no longer on disk; looked in: {'; '.join(tried)}. Prepare it again with the same source and options "
        f"(`hashbench data prepare …`; for the quickstart's subsets, run `hashbench quickstart` again).")


def read_codes(path: Path) -> RunCodes:
    """Load ``codes.npz`` (no pickles); raise HashbenchError naming a missing key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in CODES_KEYS if k not in z.files]
            if missing:
                raise HashbenchError(f"{path}: missing {', '.join(missing)}; a run's codes.npz holds "
                                     f"{', '.join(CODES_KEYS)}")
            arr = {k: z[k] for k in CODES_KEYS}
    except (OSError, ValueError) as exc:
        raise HashbenchError(f"{path}: not a readable codes.npz ({exc})") from None
    ql, dl = arr["query_labels"], arr["db_labels"]
    if ql.ndim == 1 or dl.ndim == 1:  # class ids → multi-hot over the classes seen
        c = int(max(ql.max(initial=0), dl.max(initial=0))) + 1
        ql, dl = (np.eye(c, dtype=np.uint8)[x] if x.ndim == 1 else x for x in (ql, dl))
    return RunCodes(arr["query_codes"], arr["db_codes"], ql, dl, arr["query_index"].astype(np.int64),
                    arr["db_index"].astype(np.int64), int(arr["bits"]), str(arr["code_type"]),
                    str(arr["distance"]))


def top_k(codes: RunCodes, q: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(database numbers, distances, relevant flags) of the ``k`` nearest items to query number ``q``.

    The ranking is the evaluation engine's own (``hashbench.platform.evaluation``: inputs validated
    by ``prepare``, exact torch search, ties by ascending database position). L2 distances are
    squared, as the engine ranks them.
    """
    import torch

    from hashbench.platform.evaluation.engines import build_engine
    from hashbench.platform.evaluation.inputs import prepare

    db = codes.db_codes
    packed = codes.distance == "hamming" and db.dtype == np.uint8 and db.shape[1] == -(-codes.bits // 8) != codes.bits
    prep = prepare(codes.query_codes[q:q + 1], db, codes.query_labels[q:q + 1], codes.db_labels,
                   distance=codes.distance, bits=codes.bits if packed else None, device=torch.device("cpu"))
    ids, dist = build_engine("torch", prep).ranking(prep.query, min(k, db.shape[0]))
    order = ids[0].numpy()
    relevant = (codes.db_labels[order].astype(np.int32) @ codes.query_labels[q].astype(np.int32)) > 0
    return order, dist[0].numpy().astype(np.float64), relevant


def _tile(img: np.ndarray, scale: int, frame: np.ndarray | None, border: int) -> np.ndarray:
    """A (C, H, W) uint8 image as an RGB tile, enlarged ``scale`` times, with a coloured frame."""
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w, _ = rgb.shape
    out = np.full((h + 2 * border, w + 2 * border, 3), 255, np.uint8)
    if frame is not None:
        out[:] = frame
    out[border:border + h, border:border + w] = rgb
    return out


def figure(query_image: np.ndarray, retrieved: np.ndarray, relevant: np.ndarray,
           target_px: int = 112) -> np.ndarray:
    """One RGB image: the query (grey frame), a gap, then the retrieved images framed green/red."""
    size = query_image.shape[-1]
    scale = max(1, target_px // size)
    border = max(3, scale * size // 20)
    tiles = [_tile(query_image, scale, GREY, border)]
    gap = np.full((tiles[0].shape[0], 3 * border, 3), 255, np.uint8)
    tiles.append(gap)
    for img, ok in zip(retrieved, relevant):
        tiles += [_tile(img, scale, GREEN if ok else RED, border), gap[:, :border]]
    return np.concatenate(tiles, axis=1)
