"""The five source formats on small synthetic sources (exact pixels) and on the real datasets."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from hashbench.platform.data import Options, prepare
from hashbench.platform.data.points import extract_patches


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def ramp(h, w, offset=0, rgb=False):
    base = ((np.arange(h)[:, None] * 7 + np.arange(w)[None, :] * 3 + offset) % 256).astype(np.uint8)
    return np.stack([base, 255 - base, base // 2], -1) if rgb else base


# ---- medmnist ---------------------------------------------------------------------------------
def test_medmnist_rgb_multilabel_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]] * 2, np.uint8)[:n]
    np.savez(tmp_path / "toy.npz", **arrays)
    ds = prepare("toy", tmp_path / "toy.npz", "medmnist", out=tmp_path / "s")
    assert ds.images.shape == (11, 3, 8, 8) and ds.multi_label and ds.num_classes == 3
    np.testing.assert_array_equal(ds.images[:6], arrays["train_images"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.labels[6:8], arrays["val_labels"])
    assert np.asarray(ds.split).tolist() == [0] * 6 + [1] * 2 + [2] * 3
    grey = prepare("toy", tmp_path / "toy.npz", "medmnist", out=tmp_path / "g",
                   options=Options(channels=1, size=4))
    assert grey.images.shape == (11, 1, 4, 4)
    # the grey conversion matches PIL's own luma conversion
    x = arrays["train_images"][0]
    want = np.asarray(Image.fromarray(x).convert("L").resize((4, 4), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(grey.images[0, 0], want)


def test_medmnist_single_label_without_val(tmp_path):
    y = (np.arange(40) % 2)[:, None].astype(np.uint8)
    np.savez(tmp_path / "m.npz", train_images=np.zeros((40, 5, 5), np.uint8), train_labels=y,
             test_images=np.zeros((10, 5, 5), np.uint8), test_labels=y[:10])
    ds = prepare("m", tmp_path / "m.npz", "medmnist", out=tmp_path / "s",
                 options=Options(classes=["neg", "pos"], ratios=(0.6, 0.2, 0.2)))
    # val takes 0.2 / (0.6 + 0.2) of each class's 20 train items
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [30, 10, 10]
    assert ds.class_names == ["neg", "pos"] and "carved" in ds.meta["split_protocol"]


def test_medmnist_real_pneumoniamnist(shared_datasets, tmp_path):
    src = shared_datasets / "pneumoniamnist" / "pneumoniamnist.npz"
    raw = np.load(src)
    ds = prepare("pm", src, "medmnist", out=tmp_path / "pm", recipe="pneumoniamnist")
    assert ds.images.shape == (5856, 1, 28, 28)
    for s in ("train", "val", "test"):
        idx = ds.indices(s)
        np.testing.assert_array_equal(ds.images[idx][:, 0], raw[f"{s}_images"])
        np.testing.assert_array_equal(np.asarray(ds.labels)[idx].argmax(1), raw[f"{s}_labels"][:, 0])
    again = prepare("pm", src, "medmnist", out=tmp_path / "pm", recipe="pneumoniamnist", overwrite=True)
    assert again.fingerprint == ds.fingerprint


# ---- folder -----------------------------------------------------------------------------------
def make_busi_like(root):
    for c, n in (("benign", 3), ("normal", 2)):
        for i in range(1, n + 1):
            save(root / c / "images" / f"{c} ({i}).png", ramp(16, 16, i, rgb=True))
            m = np.zeros((16, 16), np.uint8)
            if c == "benign":
                m[2:6, 2:6] = 255
                save(root / c / "mask" / f"{c} ({i})_mask.png", m)
                m2 = np.zeros((16, 16), np.uint8)
                m2[10:12, 4:14] = 255
                if i == 1:
                    save(root / c / "mask" / f"{c} ({i})_mask_1.png", m2)
            else:
                save(root / c / "mask" / f"{c} ({i})_mask.png", m)
    return root


def test_folder_busi_layout_union_of_masks(tmp_path):
    src = make_busi_like(tmp_path / "src")
    ds = prepare("b", src, "folder", out=tmp_path / "s", options=Options(size=16, channels=3))
    assert ds.class_names == ["benign", "normal"] and ds.images.shape == (5, 3, 16, 16)
    np.testing.assert_array_equal(ds.images[0].transpose(1, 2, 0), ramp(16, 16, 1, rgb=True))
    want = np.zeros((16, 16), np.uint8)
    want[2:6, 2:6] = 1
    want[10:12, 4:14] = 1  # union with benign (1)_mask_1.png
    np.testing.assert_array_equal(ds.masks[0], want)
    assert ds.masks[1].sum() == 16 and ds.masks[3:].sum() == 0
    assert ds.meta["notes"]["images_with_several_masks"] == 1
    again = prepare("b2", src, "folder", out=tmp_path / "s", overwrite=True,
                    options=Options(size=16, channels=3))
    assert again.fingerprint == ds.fingerprint  # preparing twice: same content hash


def test_folder_split_folders_and_flat_masks(tmp_path):
    for split, n in (("Training", 6), ("Testing", 2)):
        for c in ("a", "b"):
            for i in range(n):
                save(tmp_path / "src" / split / c / f"{split}{c}{i}.png", ramp(10, 20, i))
                save(tmp_path / "src" / split / c / f"{split}{c}{i}_mask.png",
                     np.full((10, 20), 255, np.uint8))
    ds = prepare("f", tmp_path / "src", "folder", out=tmp_path / "s", options=Options(size=8, fit="pad"))
    assert ds.channels == 1 and ds.images.shape == (16, 1, 8, 8)
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [10, 2, 4]
    assert ds.masks[0, 0].sum() == 0 and ds.masks[0, 4].sum() == 8  # padded rows are empty


def test_folder_real_busi_subset(shared_datasets, tmp_path):
    ds = prepare("busi_t", shared_datasets / "busi", "folder", out=tmp_path / "s",
                 options=Options(size=32, channels=1, limit=6))
    assert ds.images.shape == (18, 1, 32, 32) and ds.masks.shape == (18, 32, 32)
    labels = np.asarray(ds.labels).argmax(1)
    assert np.bincount(labels).tolist() == [6, 6, 6]
    assert np.asarray(ds.masks)[labels == 2].sum() == 0 and np.asarray(ds.masks)[labels == 0].sum() > 0


# ---- csv --------------------------------------------------------------------------------------
def test_csv_manifest_multilabel_groups_masks_split(tmp_path):
    rows = ["file,finding,patient,seg,part"]
    for i in range(12):
        save(tmp_path / "img" / f"{i}.png", ramp(12, 12, i))
        finding = ["flu", "cold|flu", "none"][i % 3]
        mask = f"img/{i}_m.png" if i % 2 == 0 else ""
        if mask:
            save(tmp_path / mask, np.full((12, 12), 255 * (i % 4 == 0), np.uint8))
        rows.append(f"img/{i}.png,{finding},p{i // 2},{mask},{'train' if i < 8 else 'test'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    opts = Options(size=12, path_column="file", label_columns=["finding"], label_sep="|",
                   group_column="patient", mask_column="seg", split_column="part")
    ds = prepare("c", tmp_path / "m.csv", "csv", options=opts, out=tmp_path / "s")
    assert ds.class_names == ["cold", "flu", "none"] and ds.multi_label
    np.testing.assert_array_equal(ds.labels[1], [1, 1, 0])
    np.testing.assert_array_equal(ds.images[5, 0], ramp(12, 12, 5))
    assert ds.masks[0].all() and not ds.masks[2].any() and not ds.masks[1].any()
    np.testing.assert_array_equal(ds.groups, np.arange(12) // 2)
    assert (np.asarray(ds.split)[8:] == 2).all() and set(np.asarray(ds.split)[:8]) <= {0, 1}
    for g in range(6):  # the carved val split keeps patients whole
        assert len(set(np.asarray(ds.split)[ds.groups == g])) == 1


def test_csv_one_column_per_class(tmp_path):
    save(tmp_path / "a.png", ramp(6, 6))
    save(tmp_path / "b.png", ramp(6, 6, 1))
    (tmp_path / "m.csv").write_text("path,x,y\na.png,1,0\nb.png,1,1\n")
    ds = prepare("c", tmp_path / "m.csv", "csv", out=tmp_path / "s",
                 options=Options(size=6, label_columns=["x", "y"], ratios=(0.4, 0.3, 0.3)))
    assert ds.class_names == ["x", "y"] and ds.labels.tolist() == [[1, 0], [1, 1]]


# ---- points -----------------------------------------------------------------------------------
def test_patch_extraction_matches_brute_force():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (3, 9, 13), dtype=np.uint8)
    xy = np.array([[0, 0], [12, 8], [6, 4], [1, 7]])
    for patch in (4, 5):
        got = extract_patches(img, xy, patch)
        half = patch // 2
        for k, (x, y) in enumerate(xy):
            want = np.zeros((3, patch, patch), np.uint8)
            for r in range(patch):
                for q in range(patch):
                    yy, xx = y - half + r, x - half + q
                    if 0 <= yy < 9 and 0 <= xx < 13:
                        want[:, r, q] = img[:, yy, xx]
            np.testing.assert_array_equal(got[k], want)


def test_points_layout_groups(tmp_path):
    for i in range(6):
        save(tmp_path / "Dataset" / f"{i}.jpg", ramp(20, 30, i, rgb=True))
        (tmp_path / "Label").mkdir(exist_ok=True)
        (tmp_path / "Label" / f"{i}.txt").write_text(f"5 5 0\n29 19 1\n15.4 10.6 {i % 2}\n")
    ds = prepare("p", tmp_path, "points", out=tmp_path / "s",
                 options=Options(patch=6, size=6, classes=["x", "y"], seed=1))
    assert ds.images.shape == (18, 3, 6, 6) and ds.class_names == ["x", "y"]
    np.testing.assert_array_equal(ds.groups, np.repeat(np.arange(6), 3))
    ref = np.asarray(Image.open(tmp_path / "Dataset" / "0.jpg")).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.images[0], ref[:, 2:8, 2:8])  # centre (5, 5), side 6
    np.testing.assert_array_equal(ds.images[2], ref[:, 8:14, 12:18])  # (15.4, 10.6) -> (15, 11)
    assert ds.meta["notes"]["patches_touching_border"] == 6


def test_points_real_chula_subset_and_speed(shared_datasets, tmp_path):
    t0 = time.perf_counter()
    ds = prepare("rbc", shared_datasets / "chula_rbc12", "points", out=tmp_path / "s",
                 recipe="chula_rbc12", options=Options(patch=48, size=24, limit=40))
    seconds = time.perf_counter() - t0
    lines = sum(len((shared_datasets / "chula_rbc12" / "Label" / f).read_text().split("\n")) - 1
                for f in sorted((shared_datasets / "chula_rbc12" / "Label").iterdir(),
                                key=lambda p: int(p.stem))[:40])
    assert len(ds) == lines and ds.images.shape[1:] == (3, 24, 24) and ds.num_classes == 13
    assert ds.meta["license"].startswith("MIT License")
    assert seconds < 10


# ---- voc --------------------------------------------------------------------------------------
def voc_xml(name, objects, w=40, h=30):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n" for n, b in objects)
    return f"<annotation>\n<filename>{name}.jpg</filename>\n<size><width>{w}</width><height>{h}</height></size>\n{objs}</annotation>\n"


def make_voc(root, n=6, lists=True):
    for i in range(n):
        save(root / "JPEGImages" / f"im{i}.png", ramp(30, 40, i, rgb=True))
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"im{i}.xml").write_text(
            voc_xml(f"im{i}", [("A", (11, 5, 18, 12)), ("B", (1, 1, 40, 30))]))
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        for name, ids in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"im{i}\n" for i in ids))
    return root


def test_voc_crops_and_split_lists(tmp_path):
    src = make_voc(tmp_path / "voc")
    ds = prepare("v", src, "voc", out=tmp_path / "s", options=Options(size=8))
    assert ds.images.shape == (12, 3, 8, 8) and ds.class_names == ["A", "B"]
    ref = ramp(30, 40, 0, rgb=True).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.images[0], ref[:, 4:12, 10:18])  # 1-based inclusive box
    assert np.asarray(ds.split).tolist() == [0] * 6 + [1] * 2 + [2] * 4


def test_voc_real_bccd_subset(shared_datasets, tmp_path):
    ds = prepare("b", shared_datasets / "bccd", "voc", out=tmp_path / "s",
                 options=Options(size=32, limit=30))
    main = shared_datasets / "bccd" / "ImageSets" / "Main"
    lists = {s: set((main / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    ids = sorted(set().union(*lists.values()))[:30]
    import xml.etree.ElementTree as ET
    want = [(["train", "val", "test"].index(next(s for s in lists if i in lists[s])), o.findtext("name"))
            for i in ids for o in ET.parse(shared_datasets / "bccd" / "Annotations" / f"{i}.xml").getroot().iter("object")]
    assert np.asarray(ds.split).tolist() == [s for s, _ in want]
    assert [ds.class_names[k] for k in np.asarray(ds.labels).argmax(1)] == [n for _, n in want]
    assert ds.class_names == ["Platelets", "RBC", "WBC"]
