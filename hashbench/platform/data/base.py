"""Types shared by the source-format loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashbench.platform.errors import HashbenchError

MASK_VALUES = ("binary", "classes")
SPLIT_ALIASES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2,
                 "testing": 2, "0": 0, "1": 1, "2": 2}


#: the ``hashbench data prepare`` flag of a preparation setting, where it is not ``--`` + its name
_FLAGS = {"ratios": "--split"}


def flag(name: str) -> str:
    """The ``hashbench data prepare`` flag of the preparation setting ``name``, e.g. ``--mask-values``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def option(name: str) -> str:
    """A preparation setting as errors name it, for Python callers and the CLI alike: its Python name
    (an :class:`Options` field or a ``prepare`` keyword) and its flag, e.g. ``mask_values (--mask-values)``."""
    return f"{name} ({flag(name)})"


@dataclass
class Options:
    """Preparation options (the CLI flags of ``hashbench data prepare``)."""

    size: int | None = None            # output side in pixels (None: the format's default)
    channels: int | None = None        # 1 or 3 (None: 1 if every source image is grey, else 3)
    fit: str = "stretch"               # how non-square images become square: stretch | pad | crop
    patch: int | None = None           # points: side of the square patch around each point
    classes: list[str] | None = None   # the class list (None: taken from the data)
    seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    skip_invalid: bool = False         # voc: drop zero-area / outside boxes instead of failing
    # csv manifest columns
    path_column: str = "path"
    label_columns: list[str] | None = None
    label_sep: str | None = None
    mask_column: str | None = None
    # masks: "binary" = any non-zero pixel is 1 (several masks of an image: union);
    # "classes" = the pixel value is the class id (0 background; several masks: pixel-wise maximum)
    mask_values: str = "binary"
    group_column: str | None = None
    split_column: str | None = None
    limit: int | None = None           # testing aid: read at most this many source images


@dataclass
class Loaded:
    """What a loader returns: resized arrays plus what it learnt about the source."""

    images: np.ndarray                 # uint8 (N, C, S, S)
    labels: np.ndarray                 # uint8 multi-hot (N, K)
    class_names: list[str]
    split: np.ndarray | None = None    # int8 (N,): 0/1/2 from the source, -1 unassigned; None: none
    masks: np.ndarray | None = None    # uint8 (N, S, S)
    groups: np.ndarray | None = None   # int64 (N,)
    license: str = ""
    notes: dict = field(default_factory=dict)


def require_dir(path: Path, what: str = "source folder") -> Path:
    if not path.is_dir():
        raise HashbenchError(f"{path}: {what} not found" if not path.exists()
                             else f"{path}: expected a {what}, found a file")
    return path


def require_file(path: Path, what: str = "file") -> Path:
    if not path.is_file():
        raise HashbenchError(f"{path}: {what} not found")
    return path


def read_license(root: Path) -> str:
    """Text of a LICENSE / LICENSE.txt file in the source folder, if any."""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "license.txt"):
        if (root / name).is_file():
            return (root / name).read_text(errors="replace").strip()
    return ""


def class_index(names_found: list[str], given: list[str] | None, where: str) -> list[str]:
    """The class list: ``given`` (every found name must be in it) or the sorted found names."""
    if given is None:
        found = sorted(set(names_found), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        return found
    unknown = sorted(set(names_found) - set(given))
    if unknown:
        raise HashbenchError(f"{where}: label {unknown[0]!r} is not in the class list {given}")
    return list(given)


def check_nonempty_classes(labels: np.ndarray, class_names: list[str], where: str,
                           limited: bool) -> None:
    """A class with no items is an error (unless the source was cut with ``limit``)."""
    if limited:
        return
    counts = labels.sum(axis=0)
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        raise HashbenchError(f"{where}: class {empty[0]!r} has no items; remove it from the class "
                             f"list or add items for it")
