"""Image decoding and resizing shared by the file-based loaders (PIL, a thread pool)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from hashbench.platform.errors import HashbenchError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
FITS = ("stretch", "pad", "crop")
T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (PIL releases the GIL while decoding)."""
    items = list(items)
    workers = min(8, os.cpu_count() or 1, max(1, len(items)))
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def read_image(path: Path, what: str = "image"):
    """Open and fully decode ``path`` with PIL, or raise HashbenchError naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise HashbenchError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise HashbenchError(f"{path}: unreadable or corrupt {what} ({exc}); expected an image "
                             f"file PIL can decode (PNG, JPEG, TIFF, BMP)") from None


def is_grey(im) -> bool:
    return im.mode in GREY_MODES


def to_array(im, channels: int) -> np.ndarray:
    """uint8 ``(H, W, channels)`` from a PIL image (grey → repeated, RGB → luma)."""
    if channels == 1:
        return np.asarray(im.convert("L"))[:, :, None]
    return np.asarray(im.convert("RGB"))


def fit_square(im, size: int, fit: str, resample):
    """Resize a PIL image to ``size`` x ``size``: stretch, pad (centred, zeros) or centre crop."""
    from PIL import Image

    w, h = im.size
    if fit == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new(im.mode, (side, side))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    elif fit == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if im.size != (size, size):
        im = im.resize((size, size), resample)
    return im


def resize_image(im, size: int, channels: int, fit: str) -> np.ndarray:
    """uint8 ``(channels, size, size)`` from a PIL image (bilinear, antialiased)."""
    from PIL import Image

    if channels == 1:
        im = im.convert("L")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    im = fit_square(im, size, fit, Image.Resampling.BILINEAR)
    return to_array(im, channels).transpose(2, 0, 1)


def resize_mask(mask: np.ndarray, size: int, fit: str, classes: bool = False) -> np.ndarray:
    """uint8 ``(size, size)`` by nearest neighbour: {0, 1} from a boolean / 0-1 mask, or, with
    ``classes``, the mask's own values (class ids) kept as they are."""
    from PIL import Image

    if classes:
        im = fit_square(Image.fromarray(np.asarray(mask, np.uint8), mode="L"), size, fit,
                        Image.Resampling.NEAREST)
        return np.asarray(im).astype(np.uint8)
    im = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")
    im = fit_square(im, size, fit, Image.Resampling.NEAREST)
    return (np.asarray(im) > 127).astype(np.uint8)


def resize_array(arr: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Resize a uint8 ``(H, W)`` or ``(H, W, 3)`` array (as decoded) to ``(C, size, size)``."""
    from PIL import Image

    im = Image.fromarray(arr if arr.ndim == 2 or arr.shape[2] == 3 else arr[:, :, 0])
    im = fit_square(im, size, fit, Image.Resampling.BILINEAR)
    out = np.asarray(im)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


#: The largest output side (``--size``) and points patch (``--patch``), in pixels (docs/data.md). A
#: store holds every image decoded in memory (N x C x size x size bytes): 1024 is far above the
#: 28-256 px retrieval models use, and a typo such as ``--size 100000`` is refused before any work.
MAX_SIZE = 1024
MAX_PATCH = 4096


def check_size(size: int, what: str = "size (--size)", patch: bool = False) -> int:
    if size is None or int(size) <= 0:
        raise HashbenchError(f"{what} must be a positive number of pixels, got {size}")
    limit = MAX_PATCH if patch else MAX_SIZE
    if int(size) > limit:
        raise HashbenchError(f"{what} {size} is too large: at most {limit} pixels (a prepared store keeps "
                             f"every image in memory); choose e.g. 64, 128 or 256")
    return int(size)
