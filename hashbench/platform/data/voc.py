"""Pascal VOC boxes: every ``<object>`` box becomes one item, its crop resized to ``size``.

Layout: ``root/Annotations/ID.xml``, ``root/JPEGImages/ID.jpg``, ``root/ImageSets/Main/{train,val,
test}.txt`` (one ID per line). The published split lists are honoured: train/val/test as given;
trainval + test gets a val part carved from trainval (group-aware); images in no list are left
out (counted in meta.json). Without ImageSets the crops are split stratified, seeded and
group-aware. The crops of one image form one group, so an image never spans two splits.

Coordinates are VOC's 1-based inclusive pixels: the box (xmin, ymin, xmax, ymax) is the crop
[xmin - 1, xmax) x [ymin - 1, ymax) (a 0 coordinate is read as 0-based). A box must have
xmax > xmin, ymax > ymin and lie inside the image (0 <= xmin, xmax <= width, same for y);
otherwise preparing fails, or with ``--skip-invalid`` the box is dropped and listed in meta.json.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from hashbench.platform.data.base import (
    Loaded,
    Options,
    check_nonempty_classes,
    class_index,
    option,
    read_license,
    require_dir,
)
from hashbench.platform.data.folder import IMAGE_EXTS, natural_key, read_header
from hashbench.platform.data.images import is_grey, parallel_map, read_image, resize_image
from hashbench.platform.errors import HashbenchError

LIST_NAMES = ("train", "val", "test", "trainval")


def parse_annotation(path: Path) -> list[dict]:
    """Objects of one VOC file: name, box (xmin, ymin, xmax, ymax) and the line of its tag."""
    text = path.read_text(errors="replace")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise HashbenchError(f"{path}: not valid XML ({exc})") from None
    starts = [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r"<object\b", text)]
    objects = []
    for i, obj in enumerate(root.iter("object")):
        line = starts[i] if i < len(starts) else 0
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise HashbenchError(f"{path}:{line}: <object> needs <name> and <bndbox>")
        try:
            coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise HashbenchError(f"{path}:{line}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from None
        objects.append({"name": name, "box": coords, "line": line})
    return objects


def read_split_lists(main: Path, ids: set[str]) -> dict[str, int]:
    """id → split code from ImageSets/Main/*.txt; raises on missing or repeated ids."""
    lists = {n: main / f"{n}.txt" for n in LIST_NAMES if (main / f"{n}.txt").is_file()}
    if "train" in lists or "val" in lists:
        use = {n: c for n, c in (("train", 0), ("val", 1), ("test", 2)) if n in lists}
    else:
        use = {n: c for n, c in (("trainval", 0), ("test", 2)) if n in lists}
    out: dict[str, int] = {}
    where: dict[str, str] = {}
    for list_name, code in use.items():
        f = lists[list_name]
        for no, line in enumerate(f.read_text().splitlines(), start=1):
            item = line.split()[0] if line.split() else ""
            if not item:
                continue
            if item not in ids:
                raise HashbenchError(f"{f}:{no}: names the image {item!r}, which has no "
                                     f"annotation/image in this dataset")
            if item in out:
                raise HashbenchError(f"{f}:{no}: image {item!r} named twice (also {where[item]})")
            out[item] = code
            where[item] = f"{f.name}:{no}"
    return out


def load(source: Path, opts: Options) -> Loaded:
    root = require_dir(source)
    ann_dir = require_dir(root / "Annotations", "Annotations folder")
    img_dir = require_dir(root / "JPEGImages", "JPEGImages folder")
    image_of: dict[str, Path] = {}
    for p in sorted(img_dir.iterdir(), key=natural_key):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in image_of:
                raise HashbenchError(f"{p}: image named twice (also {image_of[p.stem].name})")
            image_of[p.stem] = p
    anns = sorted(ann_dir.glob("*.xml"), key=natural_key)
    if not anns:
        raise HashbenchError(f"{ann_dir}: no .xml annotations found")
    for a in anns:
        if a.stem not in image_of:
            raise HashbenchError(f"{a}: annotation for image {a.stem!r}, which is missing from {img_dir}")
    ids = [a.stem for a in anns]
    main = root / "ImageSets" / "Main"
    split_of = read_split_lists(main, set(ids)) if main.is_dir() else {}
    if split_of:
        ids = [i for i in ids if i in split_of]
    unlisted = len(anns) - len(ids)
    ids = ids[: opts.limit]

    per_image = {i: parse_annotation(ann_dir / f"{i}.xml") for i in ids}
    names_found = [o["name"] for objs in per_image.values() for o in objs]
    if opts.classes is not None:
        for i, objs in per_image.items():
            bad = next((o for o in objs if o["name"] not in opts.classes), None)
            if bad:
                raise HashbenchError(f"{ann_dir / (i + '.xml')}:{bad['line']}: label {bad['name']!r} "
                                     f"is not in the class list {opts.classes}")
    names = class_index(names_found, opts.classes, str(ann_dir))
    channels = opts.channels
    if channels is None:
        channels = 1 if all(parallel_map(lambda i: is_grey(read_header(image_of[i])), ids)) else 3
    skipped: list[str] = []

    def crops(image_id):
        im = read_image(image_of[image_id])
        w, h = im.size
        out, kept = [], []
        for o in per_image[image_id]:
            x0, y0, x1, y1 = o["box"]
            problem = None
            if x1 <= x0 or y1 <= y0:
                problem = f"box {o['box']} has zero area (need xmax > xmin and ymax > ymin)"
            elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                problem = f"box {o['box']} lies outside the image ({w}x{h})"
            if problem:
                msg = f"{ann_dir / (image_id + '.xml')}:{o['line']}: {problem}"
                if not opts.skip_invalid:
                    raise HashbenchError(msg + f"; fix the annotation or pass {option('skip_invalid')}")
                skipped.append(msg)
                continue
            box = (max(int(round(x0)) - 1, 0), max(int(round(y0)) - 1, 0), int(round(x1)), int(round(y1)))
            out.append(resize_image(im.crop(box), opts.size, channels, opts.fit))
            kept.append(names.index(o["name"]))
        empty = np.zeros((0, channels, opts.size, opts.size), np.uint8)
        return (np.stack(out) if out else empty), kept

    results = parallel_map(crops, ids)
    counts = np.array([len(k) for _, k in results])
    if counts.sum() == 0:
        raise HashbenchError(f"{ann_dir}: no valid boxes")
    ids_flat = np.array([c for _, k in results for c in k], np.int64)
    labels = np.zeros((len(ids_flat), len(names)), np.uint8)
    labels[np.arange(len(ids_flat)), ids_flat] = 1
    check_nonempty_classes(labels, names, str(ann_dir), opts.limit is not None)
    split = None
    if split_of:
        split = np.repeat(np.array([split_of[i] for i in ids], np.int8), counts)
    return Loaded(images=np.concatenate([x for x, _ in results]), labels=labels, class_names=names,
                  split=split, groups=np.repeat(np.arange(len(ids), dtype=np.int64), counts),
                  license=read_license(root),
                  notes={"source_images": len(ids), "images_in_no_split_list": unlisted,
                         "skipped_boxes": sorted(skipped),
                         "split_lists": sorted(p.name for p in main.glob("*.txt")) if main.is_dir() else [],
                         "group": "source image index (crops of one image share a split)"})
