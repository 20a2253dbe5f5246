"""MedMNIST ``.npz``: ``{train,val,test}_images`` (n, H, W[, 3]) uint8 and ``_labels``.

Labels ``(n, 1)`` are class ids (single-label); ``(n, C)`` with C > 1 are multi-hot (multi-label,
e.g. ChestMNIST). The file's own train/val/test split is kept; a file without ``val_*`` gets a
val split carved from train (see :mod:`.split`).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from hashbench.platform.data.base import Loaded, Options, check_nonempty_classes, option, read_license
from hashbench.platform.data.images import parallel_map, resize_array
from hashbench.platform.errors import HashbenchError

SPLITS = ("train", "val", "test")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of uint8 (..., 3), the same integer formula PIL's convert("L") uses."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _array(npz, key: str, source: Path) -> np.ndarray:
    """``npz[key]``, refusing arrays of Python objects (loading them means unpickling)."""
    try:
        arr = npz[key]
    except ValueError as exc:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise HashbenchError(f"{source}: {key} is an array of Python objects (dtype object), which "
                             f"hashbench does not load (unpickling can run code); expected {key} as "
                             f"{'uint8 images' if key.endswith('_images') else 'integer class ids'}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise HashbenchError(f"{source}: {key} is unreadable ({type(exc).__name__}); the .npz is "
                             f"damaged or truncated") from None
    if arr.dtype.kind not in "biuf":
        raise HashbenchError(f"{source}: {key} has dtype {arr.dtype}; expected "
                             f"{'uint8 images' if key.endswith('_images') else 'integer class ids'}")
    return arr


def check_label_values(y: np.ndarray, where: str) -> None:
    """Labels must be whole numbers >= 0: a NaN, an infinity or a fraction is named, not cast."""
    if y.dtype.kind != "f" or y.size == 0:
        return
    bad = ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(len(y), -1).any(axis=1))[0])
        value = y.reshape(len(y), -1)[i][bad.reshape(len(y), -1)[i]][0]
        raise HashbenchError(f"{where}: row {i} holds {float(value)!r}; labels must be whole class ids >= 0 "
                             f"(or 0/1 for multi-label), with no NaN or missing values")


def load(source: Path, opts: Options) -> Loaded:
    if source.is_dir():
        files = sorted(source.glob("*.npz"))
        if len(files) != 1:
            raise HashbenchError(f"{source}: expected exactly one .npz file in the folder, found "
                                 f"{len(files)}; pass the .npz file itself as {option('source')}")
        source = files[0]
    if not source.is_file():
        raise HashbenchError(f"{source}: MedMNIST .npz file not found")
    with open(source, "rb") as fh:
        magic = fh.read(4)
    if magic not in ZIP_MAGIC:  # numpy would try it as a pickle and hint at allow_pickle
        raise HashbenchError(f"{source}: not a .npz archive (a .npz is a zip file of .npy arrays, which "
                             f"starts with 'PK'; this file starts with {magic!r}); pass MedMNIST's "
                             f"<name>.npz as {option('source')}")
    try:
        npz = np.load(source, allow_pickle=False)
        keys = set(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HashbenchError(f"{source}: not a readable .npz archive ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); pass MedMNIST's "
                             f"<name>.npz as {option('source')}") from None
    present = [s for s in SPLITS if f"{s}_images" in keys]
    for s in present:
        if f"{s}_labels" not in keys:
            raise HashbenchError(f"{source}: has {s}_images but no {s}_labels")
    if "train_images" not in keys or "test_images" not in keys:
        raise HashbenchError(f"{source}: a MedMNIST file needs train_images/train_labels and "
                             f"test_images/test_labels (found keys: {sorted(keys)})")

    images, labels, split = [], [], []
    for code, s in enumerate(SPLITS):
        if s not in present:
            continue
        x = _array(npz, f"{s}_images", source)[: opts.limit]
        y = _array(npz, f"{s}_labels", source)[: opts.limit]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] != 3):
            raise HashbenchError(f"{source}: {s}_images must be uint8 (n, H, W) or (n, H, W, 3), "
                                 f"got {x.dtype} {x.shape}")
        if y.ndim == 1:
            y = y[:, None]
        check_label_values(y, f"{source}: {s}_labels")
        if y.ndim != 2 or len(y) != len(x):
            raise HashbenchError(f"{source}: {s}_labels must be (n, 1) or (n, C) with n = "
                                 f"{len(x)}, got {y.shape}")
        images.append(x)
        labels.append(y)
        split.append(np.full(len(x), code, np.int8))
    if len({x.shape[1:] for x in images}) != 1 or len({y.shape[1] for y in labels}) != 1:
        raise HashbenchError(f"{source}: splits disagree on image shape or label width: "
                             f"{[x.shape for x in images]}, {[y.shape for y in labels]}")
    x = np.concatenate(images)
    y = np.concatenate(labels).astype(np.int64)
    split_arr = np.concatenate(split)

    multi = y.shape[1] > 1
    if multi:
        if not np.isin(y, (0, 1)).all():
            raise HashbenchError(f"{source}: multi-label labels (n, {y.shape[1]}) must be 0/1")
        k = y.shape[1]
    else:
        if y.min() < 0:
            raise HashbenchError(f"{source}: negative class id {int(y.min())}")
        k = int(y.max()) + 1 if opts.classes is None else len(opts.classes)
    names = list(opts.classes) if opts.classes is not None else [str(i) for i in range(k)]
    if len(names) != k or (not multi and y.max() >= k):
        bad = int(y.max()) if not multi else y.shape[1]
        which = next(s for s, yy in zip(present, labels) if (yy.max() if not multi else yy.shape[1]) >= bad)
        raise HashbenchError(f"{source}: {which}_labels holds label {bad}, outside the class list "
                             f"{names} ({len(names)} classes)")
    if multi:
        onehot = y.astype(np.uint8)
    else:
        onehot = np.zeros((len(y), k), np.uint8)
        onehot[np.arange(len(y)), y[:, 0]] = 1
    check_nonempty_classes(onehot, names, str(source), opts.limit is not None)

    native_c = 3 if x.ndim == 4 else 1
    channels = opts.channels or native_c
    if channels == 1 and native_c == 3:
        x = to_grey(x)
    size = opts.size or x.shape[1]
    if (x.shape[1], x.shape[2]) != (size, size):
        x = np.stack(parallel_map(lambda a: resize_array(a, size, opts.fit), list(x)))
    elif x.ndim == 3:
        x = x[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=1)
    lic_dir = source.parent
    return Loaded(images=np.ascontiguousarray(x), labels=onehot, class_names=names,
                  split=split_arr,
                  license=read_license(lic_dir),
                  notes={"native_size": int(images[0].shape[1]), "native_channels": native_c})
