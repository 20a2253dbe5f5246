"""Segmentation masks with several classes (e.g. optic disc and cup): the store records mask_classes,
folder / CSV preparation keeps pixel values as class ids on request, binary masks (BUSI) are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashbench.platform.data import Options, load_dataset, prepare, write_store
from hashbench.platform.errors import HashbenchError


def _arrays(n=6, size=8):
    images = np.zeros((n, 1, size, size), np.uint8)
    labels = np.arange(n) % 2
    split = np.array([0, 0, 0, 0, 1, 2][:n])
    return images, labels, split


def _disc_cup(n=6, size=8):
    """Background 0, a disc (1) of 4x4 with a cup (2) of 2x2 inside it."""
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 2:6, 2:6] = 1
    masks[:, 3:5, 3:5] = 2
    return masks


def test_store_records_three_mask_classes(tmp_path):
    images, labels, split = _arrays()
    ds = write_store(tmp_path / "fundus", images, labels, split, class_names=["normal", "glaucoma"],
                     masks=_disc_cup())
    assert ds.meta["mask_classes"] == 3 and ds.mask_classes == 3
    again = load_dataset(tmp_path / "fundus")
    assert again.mask_classes == 3
    assert np.bincount(np.asarray(again.masks[0]).ravel()).tolist() == [48, 12, 4]   # 64 - 16, 16 - 4, 4
    # a declared count larger than the values present is kept (a class absent from this subset)
    ds4 = write_store(tmp_path / "four", images, labels, split, class_names=["a", "b"], masks=_disc_cup(),
                      mask_classes=4)
    assert ds4.mask_classes == 4


def test_binary_masks_and_mask_less_stores(tmp_path):
    images, labels, split = _arrays()
    binary = write_store(tmp_path / "b", images, labels, split, class_names=["a", "b"],
                         masks=(_disc_cup() > 0))
    assert binary.meta["mask_classes"] == 2 and binary.mask_classes == 2
    empty = write_store(tmp_path / "e", images, labels, split, class_names=["a", "b"],
                        masks=np.zeros((6, 8, 8), np.uint8))
    assert empty.mask_classes == 2                                   # all background still means 2 classes
    none = write_store(tmp_path / "n", images, labels, split, class_names=["a", "b"])
    assert none.mask_classes == 0 and "mask_classes" not in none.meta


def test_builtin_busi_is_a_two_class_mask_store():
    ds = load_dataset("busi")   # written before mask_classes was recorded: {0, 1} masks
    assert ds.has_masks and ds.mask_classes == 2
    assert set(np.unique(np.asarray(ds.masks[:50])).tolist()) <= {0, 1}


@pytest.mark.parametrize("masks,kwargs,match", [
    (_disc_cup(), {"mask_classes": 2}, r"masks: values are class ids 0\.\.1 \(mask_classes=2\), got a value 2"),
    (_disc_cup(), {"mask_classes": 1}, r"mask_classes: expected an integer in \[2, 256\], got 1"),
    (_disc_cup().astype(np.float32), {}, "masks: expected integer class ids"),
    (_disc_cup().astype(np.int16) - 1, {}, "masks: expected integer class ids"),
    (_disc_cup()[:, :4], {}, "masks: expected shape"),
])
def test_bad_masks_are_refused_and_nothing_is_written(tmp_path, masks, kwargs, match):
    images, labels, split = _arrays()
    with pytest.raises(HashbenchError, match=match):
        write_store(tmp_path / "bad", images, labels, split, class_names=["a", "b"], masks=masks, **kwargs)
    assert not any(tmp_path.iterdir())


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _fundus_folder(root):
    """Two classes x 3 images of 8x8 with masks whose pixel values are class ids (0, 1 disc, 2 cup)."""
    mask = _disc_cup(1)[0]
    for c in ("normal", "glaucoma"):
        for i in range(3):
            _save(root / c / "images" / f"{c}{i}.png", np.full((8, 8), 40 * (i + 1), np.uint8))
            _save(root / c / "mask" / f"{c}{i}_mask.png", mask)
    return mask


def test_folder_masks_as_class_ids(tmp_path):
    mask = _fundus_folder(tmp_path / "src")
    ds = prepare("fundus", tmp_path / "src", "folder", out=tmp_path / "s",
                 options=Options(size=8, mask_values="classes"))
    assert ds.mask_classes == 3
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.masks[i], mask)
    up = prepare("fundus", tmp_path / "src", "folder", out=tmp_path / "up",
                 options=Options(size=16, mask_values="classes"))
    np.testing.assert_array_equal(up.masks[0], np.kron(mask, np.ones((2, 2), np.uint8)))  # nearest: ids kept
    # the default stays binary (BUSI): every non-zero pixel is foreground
    binary = prepare("fundus", tmp_path / "src", "folder", out=tmp_path / "b", options=Options(size=8))
    assert binary.mask_classes == 2
    np.testing.assert_array_equal(binary.masks[0], (mask > 0).astype(np.uint8))
    with pytest.raises(HashbenchError, match=r"mask_values \(--mask-values\) must be one of binary, classes"):
        prepare("fundus", tmp_path / "src", "folder", out=tmp_path / "x", options=Options(mask_values="grey"))


def test_csv_masks_as_class_ids(tmp_path):
    mask = _disc_cup(1)[0]
    rows = ["path,label,seg"]
    for i in range(6):
        _save(tmp_path / "img" / f"{i}.png", np.full((8, 8), 30 * i, np.uint8))
        _save(tmp_path / "img" / f"{i}_m.png", mask)
        rows.append(f"img/{i}.png,{'ab'[i % 2]},img/{i}_m.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = prepare("fundus", tmp_path / "m.csv", "csv", out=tmp_path / "s",
                 options=Options(size=8, mask_column="seg", mask_values="classes"))
    assert ds.mask_classes == 3
    np.testing.assert_array_equal(ds.masks[5], mask)
