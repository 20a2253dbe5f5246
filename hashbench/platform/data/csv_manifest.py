"""A CSV manifest: one row per image; paths are relative to the CSV's folder (or absolute).

Columns (names are options):
  path            the image (``--path-column``, default ``path``)
  label           one class name per row (``--label-column``, default ``label``); with
                  ``--label-sep '|'`` a cell holds several names (multi-label); with several
                  ``--label-column`` options each column is one class holding 0 or 1
  mask            optional (``--mask-column``): a mask image of the same size; an empty cell is an
                  empty mask
  group           optional (``--group-column``): patient / group id; no group spans two splits
  split           optional (``--split-column``): train / val / test (also training, validation,
                  valid, testing, 0, 1, 2); every row must have one
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hashbench.platform.data.base import (
    SPLIT_ALIASES,
    Loaded,
    Options,
    check_nonempty_classes,
    class_index,
    option,
    require_file,
)
from hashbench.platform.data.images import is_grey, parallel_map, read_image, resize_image, resize_mask
from hashbench.platform.data.folder import read_header
from hashbench.platform.errors import HashbenchError

#: cells that spreadsheets and pandas write for a missing value; never silently a class of their own
MISSING_LABELS = frozenset({"nan", "na", "n/a", "<na>", "null", "nat"})  # "none" stays a class ("no finding")


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, row) pairs; raises on a missing header or ragged rows."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise HashbenchError(f"{path}: empty file; expected a header line with a path column")
        reader.fieldnames = header
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise HashbenchError(f"{path}:{reader.line_num}: has a different number of fields "
                                     f"than the header ({len(header)})")
            rows.append((reader.line_num, {k: v.strip() for k, v in row.items()}))
    return header, rows


def load(source: Path, opts: Options) -> Loaded:
    path = require_file(source, "CSV manifest")
    header, rows = read_rows(path)
    label_cols = opts.label_columns or ["label"]
    needed = [opts.path_column, *label_cols] + [c for c in (opts.mask_column, opts.group_column,
                                                             opts.split_column) if c]
    for col in needed:
        if col not in header:
            raise HashbenchError(f"{path}: required column {col!r} is missing; columns found: "
                                 f"{', '.join(header)}")
    if not rows:
        raise HashbenchError(f"{path}: no rows after the header")
    rows = rows[: opts.limit]
    base = path.parent

    seen: dict[Path, int] = {}
    images: list[Path] = []
    for no, row in rows:
        cell = row[opts.path_column]
        if not cell:
            raise HashbenchError(f"{path}:{no}: empty {opts.path_column!r} cell")
        p = (base / cell).resolve()
        if p in seen:
            raise HashbenchError(f"{path}:{no}: image {cell!r} named twice (also line {seen[p]})")
        seen[p] = no
        if not p.is_file():
            raise HashbenchError(f"{path}:{no}: image {cell!r} not found ({p})")
        images.append(p)

    if len(label_cols) > 1:  # one 0/1 column per class
        names = list(opts.classes) if opts.classes is not None else label_cols
        if names != label_cols:
            raise HashbenchError(f"{option('classes')} {names} must equal the label columns {label_cols}")
        labels = np.zeros((len(rows), len(names)), np.uint8)
        for i, (no, row) in enumerate(rows):
            for j, col in enumerate(label_cols):
                if row[col] not in ("0", "1"):
                    raise HashbenchError(f"{path}:{no}: column {col!r} must be 0 or 1, got {row[col]!r}")
                labels[i, j] = row[col] == "1"
    else:
        col = label_cols[0]
        per_row = []
        for no, row in rows:
            cell = row[col]
            toks = [t.strip() for t in cell.split(opts.label_sep)] if opts.label_sep else [cell]
            toks = [t for t in toks if t]
            if not toks:
                raise HashbenchError(f"{path}:{no}: empty label in column {col!r}")
            missing = next((t for t in toks if t.lower() in MISSING_LABELS), None)
            if missing is not None and (opts.classes is None or missing not in opts.classes):
                raise HashbenchError(f"{path}:{no}: label {missing!r} in column {col!r} is a missing-value "
                                     f"marker, not a class; give the row its class, drop the row, or list "
                                     f"{missing!r} in {option('classes')} to make it a class")
            if opts.classes is not None:
                bad = next((t for t in toks if t not in opts.classes), None)
                if bad is not None:
                    raise HashbenchError(f"{path}:{no}: label {bad!r} is not in the class list "
                                         f"{opts.classes}")
            per_row.append(toks)
        names = class_index([t for toks in per_row for t in toks], opts.classes, str(path))
        index = {n: i for i, n in enumerate(names)}
        labels = np.zeros((len(rows), len(names)), np.uint8)
        for i, toks in enumerate(per_row):
            labels[i, [index[t] for t in toks]] = 1
    check_nonempty_classes(labels, names, str(path), opts.limit is not None)

    split = None
    if opts.split_column:
        codes = []
        for no, row in rows:
            v = row[opts.split_column].lower()
            if v not in SPLIT_ALIASES:
                raise HashbenchError(f"{path}:{no}: split {row[opts.split_column]!r} is not one of "
                                     f"train, val, test")
            codes.append(SPLIT_ALIASES[v])
        split = np.array(codes, np.int8)
    groups = None
    if opts.group_column:
        vals = [row[opts.group_column] for _, row in rows]
        empty = next((no for (no, _), v in zip(rows, vals) if not v), None)
        if empty is not None:
            raise HashbenchError(f"{path}:{empty}: empty {opts.group_column!r} cell")
        groups = np.unique(np.array(vals), return_inverse=True)[1].reshape(-1).astype(np.int64)
    masks_paths: list[Path | None] = [None] * len(rows)
    if opts.mask_column:
        for i, (no, row) in enumerate(rows):
            if row[opts.mask_column]:
                mp = (base / row[opts.mask_column]).resolve()
                if not mp.is_file():
                    raise HashbenchError(f"{path}:{no}: mask {row[opts.mask_column]!r} not found ({mp})")
                masks_paths[i] = mp

    channels = opts.channels
    if channels is None:
        channels = 1 if all(parallel_map(lambda p: is_grey(read_header(p)), images)) else 3

    def decode(i):
        im = read_image(images[i])
        x = resize_image(im, opts.size, channels, opts.fit)
        if not opts.mask_column:
            return x, None
        if masks_paths[i] is None:
            return x, np.zeros((opts.size, opts.size), np.uint8)
        m = read_image(masks_paths[i], "mask")
        if m.size != im.size:
            raise HashbenchError(f"{path}:{rows[i][0]}: mask {masks_paths[i].name} is "
                                 f"{m.size[0]}x{m.size[1]} but its image {images[i].name} is "
                                 f"{im.size[0]}x{im.size[1]}")
        if opts.mask_values == "classes":  # pixel value = class id
            return x, resize_mask(np.asarray(m.convert("L")), opts.size, opts.fit, classes=True)
        return x, resize_mask(np.asarray(m.convert("L")) > 0, opts.size, opts.fit)

    decoded = parallel_map(decode, range(len(rows)))
    return Loaded(images=np.stack([x for x, _ in decoded]), labels=labels, class_names=names,
                  split=split, groups=groups,
                  masks=np.stack([m for _, m in decoded]) if opts.mask_column else None,
                  notes={"rows": len(rows), "items_without_label": int((labels.sum(1) == 0).sum())})
