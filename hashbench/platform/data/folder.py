"""Image folders: one sub-folder per class, optionally under split folders, optionally with masks.

    root/{class}/*.png                               plain class folders
    root/{train,val,test}/{class}/*.png              split folders (also Training/, Testing/, ...)
    root/{class}/images/X.png + {class}/mask/X_mask.png, X_mask_1.png, ...   BUSI layout
    root/{class}/X.png + root/{class}/X_mask.png     masks beside the images (original BUSI)

Several masks of one image are combined by union. If any image has a mask, every image must.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hashbench.platform.data.base import (
    SPLIT_ALIASES,
    Loaded,
    Options,
    check_nonempty_classes,
    class_index,
    read_license,
    require_dir,
)
from hashbench.platform.data.images import is_grey, parallel_map, read_image, resize_image, resize_mask
from hashbench.platform.errors import HashbenchError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")
IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("mask", "masks")


def natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTS), key=natural_key)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=natural_key)


def scan_class_dir(cdir: Path) -> list[tuple[Path, list[Path]]]:
    """(image, [its masks]) for every image of one class folder, in either mask layout."""
    subs = {p.name.lower(): p for p in _subdirs(cdir)}
    img_dir = next((subs[n] for n in IMAGE_DIRS if n in subs), None)
    mask_dir = next((subs[n] for n in MASK_DIRS if n in subs), None)
    if img_dir is not None:
        images = _files(img_dir)
        mask_files = _files(mask_dir) if mask_dir is not None else []
        stray = [p for p in images if MASK_RE.match(p.stem)]
        if stray:
            raise HashbenchError(f"{stray[0]}: a mask file in the images folder {img_dir}")
    else:
        files = _files(cdir)
        images = [p for p in files if not MASK_RE.match(p.stem)]
        mask_files = [p for p in files if MASK_RE.match(p.stem)]
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise HashbenchError(f"{p}: image named twice (also {by_stem[p.stem].name}); image "
                                 f"names must be unique within a class folder")
        by_stem[p.stem] = p
    masks: dict[str, list[Path]] = {s: [] for s in by_stem}
    for m in mask_files:
        match = MASK_RE.match(m.stem)
        if not match:
            raise HashbenchError(f"{m}: file in the mask folder is not named IMAGE_mask[_N]")
        stem = match.group("stem")
        if stem not in masks:
            raise HashbenchError(f"{m}: mask names the image {stem!r}, which does not exist in "
                                 f"{img_dir or cdir}")
        masks[stem].append(m)
    return [(p, masks[p.stem]) for p in images]


def load(source: Path, opts: Options) -> Loaded:
    root = require_dir(source)
    top = _subdirs(root)
    if not top:
        raise HashbenchError(f"{root}: no class sub-folders found; expected {root}/CLASS/*.png "
                             f"(optionally under train/ val/ test/)")
    split_dirs = [d for d in top if d.name.lower() in SPLIT_ALIASES and not d.name.isdigit()]
    if split_dirs and len(split_dirs) != len(top):
        other = next(d for d in top if d not in split_dirs)
        raise HashbenchError(f"{other}: mixes split folders ({split_dirs[0].name}/) with class "
                             f"folders; put every class folder under a split folder")
    parts = [(d, SPLIT_ALIASES[d.name.lower()]) for d in split_dirs] or [(root, -1)]

    items: list[tuple[Path, list[Path], str, int]] = []
    class_dirs: list[str] = []
    for part_dir, code in parts:
        for cdir in _subdirs(part_dir):
            class_dirs.append(cdir.name)
            found = scan_class_dir(cdir)[: opts.limit]
            items.extend((img, masks, cdir.name, code) for img, masks in found)
    names = class_index(class_dirs, opts.classes, str(root))
    if not items:
        raise HashbenchError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTS))})")
    with_masks = [bool(m) for _, m, _, _ in items]
    if any(with_masks) and not all(with_masks):
        img = items[with_masks.index(False)][0]
        raise HashbenchError(f"{img}: has no mask while other images do (expected "
                             f"{img.stem}_mask{img.suffix} in the mask folder)")

    labels = np.zeros((len(items), len(names)), np.uint8)
    labels[np.arange(len(items)), [names.index(c) for _, _, c, _ in items]] = 1
    check_nonempty_classes(labels, names, str(root), opts.limit is not None)
    channels = opts.channels
    if channels is None:
        channels = 1 if all(parallel_map(lambda it: is_grey(read_header(it[0])), items)) else 3

    def decode(item):
        img_path, mask_paths, _, _ = item
        im = read_image(img_path)
        x = resize_image(im, opts.size, channels, opts.fit)
        if not mask_paths:
            return x, None
        classes = opts.mask_values == "classes"
        union = np.zeros((im.size[1], im.size[0]), np.uint8 if classes else bool)
        for mp in mask_paths:
            m = read_image(mp, "mask")
            if m.size != im.size:
                raise HashbenchError(f"{mp}: mask is {m.size[0]}x{m.size[1]} but its image "
                                     f"{img_path.name} is {im.size[0]}x{im.size[1]}")
            if classes:  # pixel value = class id; several masks: the larger id wins
                np.maximum(union, np.asarray(m.convert("L")), out=union)
            else:
                union |= np.asarray(m.convert("L")) > 0
        return x, resize_mask(union, opts.size, opts.fit, classes=classes)

    decoded = parallel_map(decode, items)
    images = np.stack([x for x, _ in decoded])
    masks = np.stack([m for _, m in decoded]) if any(with_masks) else None
    split = np.array([code for *_, code in items], np.int8)
    return Loaded(images=images, labels=labels, class_names=names,
                  split=None if (split < 0).all() else split, masks=masks,
                  license=read_license(root),
                  notes={"split_folders": [d.name for d, _ in parts if d != root],
                         "images_with_several_masks": int(sum(len(m) > 1 for _, m, _, _ in items))})


def read_header(path: Path):
    """Open an image lazily (mode and size only), raising HashbenchError if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise HashbenchError(f"{path}: unreadable or corrupt image ({exc})") from None
