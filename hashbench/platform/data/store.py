"""The prepared-data store: one directory of ``.npy`` arrays plus ``meta.json``.

Layout (docs/architecture.md, "Prepared data store"):

    images.npy  uint8 (N, C, S, S)      labels.npy  uint8 multi-hot (N, K)
    split.npy   int8 (N,) 0/1/2         masks.npy   optional uint8 (N, S, S), class ids 0..mask_classes-1
    groups.npy  optional int64 (N,)     meta.json   names, provenance, counts, fingerprint

Arrays are opened with ``np.load(mmap_mode="r")``. Stores are written into a temporary sibling
directory and renamed into place, so a reader never sees a half-written store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hashbench.platform.errors import HashbenchError

STORE_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
ARRAY_FILES = ("images", "labels", "split", "masks", "groups")
BUILTIN_ROOT = Path(__file__).resolve().parents[2] / "data" / "builtin"


class StoreExistsError(HashbenchError):
    """``dest`` already holds a store and ``overwrite`` is false. ``hint`` is how the caller asks for
    a replacement: ``overwrite=True`` in Python; the CLI re-raises it with ``--overwrite``."""

    def __init__(self, dest: Path, name: str, hint: str = "overwrite=True"):
        self.dest, self.name = dest, name
        super().__init__(f"{dest}: a dataset named {name!r} already exists; pass {hint} to replace it")


def data_root() -> Path:
    """Where prepared stores live: ``$HASHBENCH_DATA``, else ``~/.cache/hashbench/data``."""
    env = os.environ.get("HASHBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hashbench" / "data"


def split_code(name: str) -> int:
    """``"train"`` → 0, ``"val"`` → 1, ``"test"`` → 2."""
    if name not in SPLIT_NAMES:
        raise HashbenchError(f"unknown split {name!r}; valid: {', '.join(SPLIT_NAMES)}")
    return SPLIT_NAMES.index(name)


class PreparedDataset:
    """A prepared store: memory-mapped arrays plus its metadata.

    Pickling a store that was opened from disk sends only its path and fingerprint (the receiver
    re-opens the memory maps, e.g. a Ray worker on shared storage); :meth:`materialize` gives an
    in-memory copy whose pickle carries the arrays (for the Ray object store).
    """

    def __init__(self, path: Path | None, images: np.ndarray, labels: np.ndarray, split: np.ndarray,
                 masks: np.ndarray | None, groups: np.ndarray | None, meta: dict):
        self.path = Path(path) if path is not None else None
        self.images, self.labels, self.split = images, labels, split
        self.masks, self.groups, self.meta = masks, groups, meta
        self.name: str = meta["name"]
        self._mapped = path is not None

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def multi_label(self) -> bool:
        return bool(self.meta["multi_label"])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def mask_classes(self) -> int:
        """Segmentation classes of the masks (0 = background): ``meta["mask_classes"]``; 2 for stores
        written before it was recorded (their masks are {0, 1}); 0 without masks."""
        if self.masks is None:
            return 0
        return int(self.meta.get("mask_classes", 2))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices(self, split_name: str) -> np.ndarray:
        """int64 positions of the items in ``split_name`` (``train``, ``val`` or ``test``)."""
        return np.flatnonzero(np.asarray(self.split) == split_code(split_name)).astype(np.int64)

    def materialize(self) -> "PreparedDataset":
        """An in-memory copy (plain arrays, no files behind it); its pickle carries the arrays."""
        copy = lambda a: None if a is None else np.array(a)  # noqa: E731
        return PreparedDataset(None, copy(self.images), copy(self.labels), copy(self.split),
                               copy(self.masks), copy(self.groups), json.loads(json.dumps(self.meta)))

    def __reduce__(self):
        if self._mapped:
            return (_reopen, (str(self.path), self.fingerprint))
        return (PreparedDataset, (None, self.images, self.labels, self.split, self.masks, self.groups,
                                  self.meta))

    def __repr__(self) -> str:
        return (f"PreparedDataset({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"{self.channels}x{self.image_size}x{self.image_size}, masks={self.has_masks})")


def _reopen(path: str, fingerprint: str) -> PreparedDataset:
    ds = open_store(Path(path))
    if ds.fingerprint != fingerprint:
        raise HashbenchError(f"{path}: store changed since it was pickled (fingerprint "
                             f"{ds.fingerprint[:12]} != {fingerprint[:12]})")
    return ds


def compute_fingerprint(arrays: dict[str, np.ndarray | None], class_names: list[str]) -> str:
    """sha256 over every array's dtype, shape and bytes, then the class names (no timestamps)."""
    h = hashlib.sha256()
    for key in ARRAY_FILES:
        a = arrays.get(key)
        if a is None:
            h.update(f"{key}:none;".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    h.update(json.dumps(list(class_names)).encode())
    return h.hexdigest()


def _counts(labels: np.ndarray, split: np.ndarray, class_names: list[str]) -> dict:
    out = {"total": int(len(split))}
    for code, sname in enumerate(SPLIT_NAMES):
        sel = split == code
        per_class = labels[sel].sum(axis=0, dtype=np.int64)
        out[sname] = {"items": int(sel.sum()),
                      "classes": {c: int(n) for c, n in zip(class_names, per_class)}}
    return out


def _as_multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise HashbenchError(f"labels: class ids must lie in [0, {num_classes}), "
                                 f"got {int(labels.min())}..{int(labels.max())}")
        out = np.zeros((len(labels), num_classes), np.uint8)
        out[np.arange(len(labels)), labels.astype(np.int64)] = 1
        return out
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise HashbenchError(f"labels: expected class ids (N,) or multi-hot (N, {num_classes}), "
                             f"got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise HashbenchError("labels: a multi-hot array must hold only 0 and 1")
    return labels.astype(np.uint8)


def _validate(images, labels, split, masks, groups, class_names, mask_classes=None) -> None:
    n = images.shape[0] if images.ndim == 4 else -1
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] not in (1, 3) \
            or images.shape[2] != images.shape[3]:
        raise HashbenchError(f"images: expected uint8 (N, C, S, S) with C in (1, 3), "
                             f"got {images.dtype} {images.shape}")
    if n == 0:
        raise HashbenchError("images: a store needs at least one item")
    if len(set(class_names)) != len(class_names) or not class_names:
        raise HashbenchError(f"class_names: need distinct, non-empty names, got {class_names}")
    if labels.shape[0] != n:
        raise HashbenchError(f"labels: {labels.shape[0]} rows for {n} images")
    if split.shape != (n,) or not np.isin(split, (0, 1, 2)).all():
        raise HashbenchError(f"split: expected (N,) with values 0 train / 1 val / 2 test, got shape "
                             f"{split.shape} values {np.unique(split)[:5].tolist()}")
    if masks is not None and masks.shape != (n, images.shape[2], images.shape[3]):
        raise HashbenchError(f"masks: expected shape (N, S, S) = {(n, *images.shape[2:])}, got {masks.shape}")
    if masks is not None and mask_classes is not None and masks.size and int(masks.max()) >= mask_classes:
        raise HashbenchError(f"masks: values are class ids 0..{mask_classes - 1} (mask_classes={mask_classes}), "
                             f"got a value {int(masks.max())}")
    if groups is not None and groups.shape != (n,):
        raise HashbenchError(f"groups: expected shape ({n},), got {groups.shape}")


def write_store(dest: str | Path, images: np.ndarray, labels: np.ndarray, split: np.ndarray, *,
                class_names: list[str], masks: np.ndarray | None = None,
                groups: np.ndarray | None = None, mask_classes: int | None = None,
                name: str | None = None, source: str = "",
                format: str = "synthetic", license: str = "", attribution: str = "",
                extra: dict | None = None, overwrite: bool = False) -> PreparedDataset:
    """Validate and atomically write a store at ``dest``; return it opened (memory-mapped).

    ``labels`` are class ids ``(N,)`` or multi-hot ``(N, K)``; ``split`` holds 0/1/2 (or the names
    ``"train"``/``"val"``/``"test"``); ``name`` defaults to the directory name. ``extra`` is merged
    into meta.json (e.g. preparation options). ``masks`` hold one class id per pixel (0 =
    background; binary masks are {0, 1}); ``mask_classes`` (recorded in meta.json) defaults to
    ``max(2, largest value + 1)``. Raises HashbenchError if ``dest`` exists and
    ``overwrite`` is false; with ``overwrite`` the old store is replaced only after the new one is
    complete.
    """
    dest = Path(dest).expanduser()
    name = name or dest.name
    class_names = [str(c) for c in class_names]
    images = np.ascontiguousarray(images)
    labels = _as_multi_hot(labels, len(class_names))
    split = np.asarray(split)
    if split.dtype.kind in "US":
        split = np.array([split_code(str(s)) for s in split], np.int8)
    split = split.astype(np.int8)
    if masks is not None:
        raw = np.asarray(masks)
        if raw.dtype.kind not in "biu" or (raw.size and (int(raw.min()) < 0 or int(raw.max()) > 255)):
            raise HashbenchError(f"masks: expected integer class ids in 0..255, got {raw.dtype} values "
                                 f"{(raw.min(), raw.max()) if raw.size else ()}")
        masks = np.ascontiguousarray(raw, dtype=np.uint8)
        if mask_classes is None:
            mask_classes = max(2, int(masks.max()) + 1 if masks.size else 2)
        elif isinstance(mask_classes, bool) or not isinstance(mask_classes, (int, np.integer)) \
                or not 2 <= mask_classes <= 256:
            raise HashbenchError(f"mask_classes: expected an integer in [2, 256], got {mask_classes!r}")
        mask_classes = int(mask_classes)
    else:
        mask_classes = None
    groups = None if groups is None else np.asarray(groups, dtype=np.int64)
    _validate(images, labels, split, masks, groups, class_names, mask_classes)
    if dest.exists() and not overwrite:
        raise StoreExistsError(dest, name)

    arrays = {"images": images, "labels": labels, "split": split, "masks": masks, "groups": groups}
    meta = {
        "name": name, "class_names": class_names, "source": str(source), "format": format,
        "license": license, "attribution": attribution,
        "fingerprint": compute_fingerprint(arrays, class_names),
        "multi_label": bool((labels.sum(axis=1) != 1).any()),
        "channels": int(images.shape[1]), "size": int(images.shape[2]),
        "has_masks": masks is not None, "has_groups": groups is not None,
        **({"mask_classes": mask_classes} if masks is not None else {}),
        "counts": _counts(labels, split, class_names),
        "store_version": STORE_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra or {})

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; workers of other users read shared stores
    old = None
    try:
        for key, arr in arrays.items():
            if arr is not None:
                np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            if not overwrite:  # appeared while we were writing
                raise StoreExistsError(dest, name)
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "store")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "store").exists() and not dest.exists():
            os.replace(old / "store", dest)  # put the previous store back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return open_store(dest)


def open_store(path: Path) -> PreparedDataset:
    """Open the store directory ``path`` (memory-mapped, read-only)."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise HashbenchError(f"{path}: not a prepared dataset (no meta.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise HashbenchError(f"{meta_file}: invalid JSON ({exc})") from None
    if meta.get("store_version") != STORE_VERSION:
        raise HashbenchError(f"{meta_file}: store_version {meta.get('store_version')!r} is not "
                             f"{STORE_VERSION}; prepare the dataset again")
    arrays = {}
    for key in ARRAY_FILES:
        f = path / f"{key}.npy"
        if not f.exists():
            if key in ("masks", "groups"):
                arrays[key] = None
                continue
            raise HashbenchError(f"{f}: missing from the store; prepare the dataset again")
        arrays[key] = np.load(f, mmap_mode="r", allow_pickle=False)
    return PreparedDataset(path, arrays["images"], arrays["labels"], arrays["split"],
                           arrays["masks"], arrays["groups"], meta)


def resolve(name_or_path: str | Path) -> Path:
    """The store directory for a name (built-in first, then data_root()) or a path."""
    text = str(name_or_path)
    if "/" not in text and os.sep not in text and text not in (".", ".."):
        for root in (BUILTIN_ROOT, data_root()):
            if (root / text / "meta.json").is_file():
                return root / text
    p = Path(text).expanduser()
    if (p / "meta.json").is_file():
        return p
    known = ", ".join(d["name"] for d in list_datasets()) or "none"
    raise HashbenchError(f"dataset {text!r} not found (looked in {BUILTIN_ROOT} and {data_root()}); "
                         f"available: {known}; prepare one with `hashbench data prepare`")


def load_dataset(name_or_path: str | Path) -> PreparedDataset:
    """Open a prepared dataset by name (built-in, then ``data_root()``) or by directory path."""
    return open_store(resolve(name_or_path))


def list_datasets() -> list[dict]:
    """Every built-in and prepared store: name, path, builtin flag and a summary of meta.json."""
    out, seen = [], set()
    for root, builtin in ((BUILTIN_ROOT, True), (data_root(), False)):
        if not root.is_dir():
            continue
        for meta_file in sorted(root.glob("*/meta.json")):
            if meta_file.parent.name.startswith("."):
                continue
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            name = meta.get("name", meta_file.parent.name)
            out.append({"name": name, "path": str(meta_file.parent), "builtin": builtin,
                        "shadowed": name in seen, "items": meta["counts"]["total"],
                        "splits": {s: meta["counts"][s]["items"] for s in SPLIT_NAMES},
                        "classes": len(meta["class_names"]), "size": meta["size"],
                        "channels": meta["channels"], "masks": meta.get("has_masks", False),
                        "multi_label": meta["multi_label"], "format": meta["format"],
                        "fingerprint": meta["fingerprint"]})
            seen.add(name)
    return out
