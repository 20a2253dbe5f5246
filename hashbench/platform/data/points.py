"""Point annotations: images plus one text file per image with ``x y class`` lines.

Every point becomes one item: a ``patch`` x ``patch`` crop centred on the point (the nuclei-patch
protocol of JTANet), resized to ``size``. Pixels of a patch that fall outside the image are 0
(zero padding; ``meta.json`` notes how many patches touched a border). A patch of even side p
centred on pixel (x, y) spans columns x - p//2 .. x + p - p//2 - 1. Coordinates are pixel
positions, 0 <= x < width, 0 <= y < height (fractions are rounded to the nearest pixel).

Layouts: ``root/Dataset/*.jpg`` + ``root/Label/*.txt`` (Chula RBC-12), ``root/images`` +
``root/labels``, or images and ``.txt`` files side by side in ``root``. The class token is a
class id (an index into ``--classes`` when given) or a class name. Every image needs a label file
(an empty one means no points); the patches of one image form one group, so an image never
spans two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashbench.platform.data.base import (
    Loaded,
    Options,
    check_nonempty_classes,
    class_index,
    read_license,
    require_dir,
)
from hashbench.platform.data.folder import IMAGE_EXTS, natural_key, read_header
from hashbench.platform.data.images import is_grey, parallel_map, read_image, to_array
from hashbench.platform.errors import HashbenchError

IMAGE_DIRS = ("Dataset", "dataset", "images", "Images", "JPEGImages", "img")
LABEL_DIRS = ("Label", "Labels", "label", "labels", "annotations", "Annotations")


def _find_dirs(root: Path) -> tuple[Path, Path]:
    img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    lab_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), root)
    return img_dir, lab_dir


def parse_points(path: Path) -> tuple[np.ndarray, list[str], list[int]]:
    """(xy int64 (n, 2), class tokens, line numbers) of one label file; bad lines raise."""
    xy, tokens, lines = [], [], []
    for no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3:
            raise HashbenchError(f"{path}:{no}: expected 'x y class', got {line.strip()!r}")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise HashbenchError(f"{path}:{no}: x and y must be numbers, got {line.strip()!r}") from None
        xy.append((int(np.floor(x + 0.5)), int(np.floor(y + 0.5))))
        tokens.append(parts[2])
        lines.append(no)
    return np.array(xy, np.int64).reshape(-1, 2), tokens, lines


def extract_patches(img: np.ndarray, xy: np.ndarray, patch: int) -> np.ndarray:
    """uint8 ``(n, C, patch, patch)`` crops of ``img`` (C, H, W) centred on ``xy``, zero-padded."""
    half = patch // 2
    padded = np.pad(img, ((0, 0), (half, patch - half), (half, patch - half)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (patch, patch), axis=(1, 2))
    # windows[c, r, q] is the patch whose top-left is padded (r, q) = image (r - half, q - half)
    return np.ascontiguousarray(windows[:, xy[:, 1], xy[:, 0]].transpose(1, 0, 2, 3))


def resize_patches(patches: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if patches.shape[-1] == size:
        return patches
    out = np.empty((len(patches), patches.shape[1], size, size), np.uint8)
    for i, p in enumerate(patches):
        im = Image.fromarray(p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0))
        r = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = r[None] if r.ndim == 2 else r.transpose(2, 0, 1)
    return out


def load(source: Path, opts: Options) -> Loaded:
    root = require_dir(source)
    img_dir, lab_dir = _find_dirs(root)
    images = sorted((p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
                    key=natural_key)
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise HashbenchError(f"{p}: image named twice (also {by_stem[p.stem].name})")
        by_stem[p.stem] = p
    label_files = sorted(lab_dir.glob("*.txt"), key=natural_key)
    label_stems = {p.stem for p in label_files}
    for lf in label_files:
        if lf.stem not in by_stem and lf.name.lower() not in ("license.txt", "readme.txt"):
            raise HashbenchError(f"{lf}: label file names the image {lf.stem!r}, which does not "
                                 f"exist in {img_dir}")
    if not by_stem:
        raise HashbenchError(f"{img_dir}: no images found")
    missing = [p for s, p in by_stem.items() if s not in label_stems]
    if missing:
        raise HashbenchError(f"{missing[0]}: no label file {lab_dir / (missing[0].stem + '.txt')} "
                             f"(an empty file means no points)")
    stems = list(by_stem)[: opts.limit]

    parsed = [parse_points(lab_dir / f"{s}.txt") for s in stems]
    all_tokens = [t for _, toks, _ in parsed for t in toks]
    if opts.classes is not None and all(t.isdigit() for t in all_tokens):
        names = list(opts.classes)
        for s, (_, toks, lines) in zip(stems, parsed):
            for t, no in zip(toks, lines):
                if int(t) >= len(names):
                    raise HashbenchError(f"{lab_dir / (s + '.txt')}:{no}: class {t} is outside the "
                                         f"class list (ids 0..{len(names) - 1}: {', '.join(names)})")
        to_id = {str(i): i for i in range(len(names))}
    else:
        for s, (_, toks, lines) in zip(stems, parsed):
            if opts.classes is not None:
                bad = next(((t, no) for t, no in zip(toks, lines) if t not in opts.classes), None)
                if bad:
                    raise HashbenchError(f"{lab_dir / (s + '.txt')}:{bad[1]}: class {bad[0]!r} is "
                                         f"not in the class list {opts.classes}")
        names = class_index(all_tokens, opts.classes, str(lab_dir))
        to_id = {n: i for i, n in enumerate(names)}

    channels = opts.channels
    if channels is None:
        channels = 1 if all(parallel_map(lambda s: is_grey(read_header(by_stem[s])), stems)) else 3
    patch, size = opts.patch, opts.size

    def cut(job):
        stem, (xy, _, lines) = job
        im = read_image(by_stem[stem])
        w, h = im.size
        outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
        if outside.any():
            i = int(np.argmax(outside))
            raise HashbenchError(f"{lab_dir / (stem + '.txt')}:{lines[i]}: point ({xy[i, 0]}, "
                                 f"{xy[i, 1]}) is outside its image {by_stem[stem].name} "
                                 f"({w}x{h}; valid 0 <= x < {w}, 0 <= y < {h})")
        if len(xy) == 0:
            return np.zeros((0, channels, size, size), np.uint8), 0
        arr = to_array(im, channels).transpose(2, 0, 1)
        half = patch // 2
        border = int(((xy[:, 0] < half) | (xy[:, 1] < half) | (xy[:, 0] + patch - half > w)
                      | (xy[:, 1] + patch - half > h)).sum())
        return resize_patches(extract_patches(arr, xy, patch), size), border

    cut_parts = parallel_map(cut, list(zip(stems, parsed)))
    counts = np.array([len(p[0]) for p in parsed])
    if counts.sum() == 0:
        raise HashbenchError(f"{lab_dir}: no points in any label file")
    patches = np.concatenate([c for c, _ in cut_parts])
    ids = np.array([to_id[t] for t in all_tokens], np.int64)
    labels = np.zeros((len(ids), len(names)), np.uint8)
    labels[np.arange(len(ids)), ids] = 1
    check_nonempty_classes(labels, names, str(lab_dir), opts.limit is not None)
    groups = np.repeat(np.arange(len(stems), dtype=np.int64), counts)
    return Loaded(images=patches, labels=labels, class_names=names, groups=groups,
                  license=read_license(root),
                  notes={"patch": patch, "padding": "zero", "source_images": len(stems),
                         "images_without_points": int((counts == 0).sum()),
                         "patches_touching_border": int(sum(b for _, b in cut_parts)),
                         "group": "source image index (patches of one image share a split)"})
