"""Every bad input: exit code 2, a message naming the file (and line), and no store left behind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashbench.platform.cli import main
from hashbench.platform.data import Options, prepare
from hashbench.platform.errors import HashbenchError


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def img(h=16, w=16):
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def classes_folder(root, classes=("a", "b"), n=2):
    for c in classes:
        for i in range(n):
            save(root / c / f"{c}{i}.png", img())
    return root


def points_source(root, line="3 4 1"):
    save(root / "Dataset" / "1.png", img(10, 12))
    (root / "Label").mkdir(parents=True, exist_ok=True)
    (root / "Label" / "1.txt").write_text(f"5 5 0\n{line}\n")
    return root


def voc_source(root, box=(2, 2, 8, 8), lists=None):
    save(root / "JPEGImages" / "x1.png", img(12, 12))
    (root / "Annotations").mkdir(parents=True)
    objs = "".join(f"<object>\n<name>{n}</name>\n<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>\n</object>\n"
                   for n, b in (("A", (1, 1, 6, 6)), ("B", box)))
    (root / "Annotations" / "x1.xml").write_text(f"<annotation>\n{objs}</annotation>\n")
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for name, text in lists.items():
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text(text)
    return root


def run_bad(capsys, data_home, args, *expected):
    rc = main(["data", "prepare", "t", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("hashbench data: error: ") and err.count("\n") == 1, err  # one line
    for piece in expected:
        assert piece in err, err
    assert list(data_home.iterdir()) == [], "a store or temporary folder was left behind"
    return err


def test_missing_folder(tmp_path, data_home, capsys):
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(tmp_path / "nope")],
            f"{tmp_path / 'nope'}: source not found")


def test_missing_file_named_in_csv(tmp_path, data_home, capsys):
    save(tmp_path / "a.png", img())
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nmissing.png,y\n")
    run_bad(capsys, data_home, ["--format", "csv", "--source", str(tmp_path / "m.csv")],
            f"{tmp_path / 'm.csv'}:3: image 'missing.png' not found")


def test_corrupt_image(tmp_path, data_home, capsys):
    src = classes_folder(tmp_path / "src")
    (src / "b" / "b1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src)],
            f"{src / 'b' / 'b1.png'}: unreadable or corrupt image")
    pts = points_source(tmp_path / "pts")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(pts / "Dataset" / "1.jpg", quality=95)
    (pts / "Dataset" / "1.png").unlink()
    data = (pts / "Dataset" / "1.jpg").read_bytes()
    (pts / "Dataset" / "1.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    run_bad(capsys, data_home, ["--format", "points", "--source", str(pts), "--patch", "4"],
            f"{pts / 'Dataset' / '1.jpg'}: unreadable or corrupt image (image file is truncated")


def test_mask_size_differs(tmp_path, data_home, capsys):
    src = tmp_path / "src"
    for c in ("a", "b"):
        save(src / c / "images" / f"{c}.png", img())
        save(src / c / "mask" / f"{c}_mask.png", img(16, 16) > 100)
    save(src / "b" / "mask" / "b_mask_1.png", np.zeros((8, 16), np.uint8))
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src)],
            f"{src / 'b' / 'mask' / 'b_mask_1.png'}: mask is 16x8 but its image b.png is 16x16")


def test_label_outside_class_list(tmp_path, data_home, capsys):
    src = points_source(tmp_path / "src", "3 4 7")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), "--classes", "x,y",
                                "--patch", "4"],
            f"{src / 'Label' / '1.txt'}:2: class 7 is outside the class list")
    (tmp_path / "m.csv").write_text("path,label\nsrc/Dataset/1.png,cat\n")
    run_bad(capsys, data_home, ["--format", "csv", "--source", str(tmp_path / "m.csv"),
                                "--classes", "dog,bird"],
            f"{tmp_path / 'm.csv'}:2: label 'cat' is not in the class list")


def test_medmnist_label_outside_class_list_and_missing_keys(tmp_path, data_home, capsys):
    z = np.zeros((4, 5, 5), np.uint8)
    np.savez(tmp_path / "m.npz", train_images=z, train_labels=np.array([[0], [1], [0], [1]]),
             val_images=z, val_labels=np.array([[0], [1], [2], [0]]), test_images=z,
             test_labels=np.array([[0], [1], [0], [1]]))
    run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(tmp_path / "m.npz"),
                                "--classes", "neg,pos"],
            f"{tmp_path / 'm.npz'}: val_labels holds label 2, outside the class list ['neg', 'pos']")
    np.savez(tmp_path / "n.npz", train_images=z, train_labels=np.array([[0], [1], [0], [1]]))
    run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(tmp_path / "n.npz")],
            f"{tmp_path / 'n.npz'}: a MedMNIST file needs train_images/train_labels and "
            "test_images/test_labels")


def test_class_without_items(tmp_path, data_home, capsys):
    src = classes_folder(tmp_path / "src")
    (src / "empty").mkdir()
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src)],
            f"{src}: class 'empty' has no items")


def test_csv_missing_required_column(tmp_path, data_home, capsys):
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    run_bad(capsys, data_home, ["--format", "csv", "--source", str(tmp_path / "m.csv")],
            f"{tmp_path / 'm.csv'}: required column 'path' is missing; columns found: file, label")


def test_point_outside_image(tmp_path, data_home, capsys):
    src = points_source(tmp_path / "src", "12 4 1")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), "--patch", "4"],
            f"{src / 'Label' / '1.txt'}:2: point (12, 4) is outside its image 1.png (12x10")


def test_malformed_point_line(tmp_path, data_home, capsys):
    src = points_source(tmp_path / "src", "3 4")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src)],
            f"{src / 'Label' / '1.txt'}:2: expected 'x y class'")


def test_box_zero_area_and_outside(tmp_path, data_home, capsys):
    src = voc_source(tmp_path / "z", box=(5, 5, 5, 9))
    run_bad(capsys, data_home, ["--format", "voc", "--source", str(src)],
            f"{src / 'Annotations' / 'x1.xml'}:6: box (5.0, 5.0, 5.0, 9.0) has zero area",
            "--skip-invalid")
    src = voc_source(tmp_path / "o", box=(5, 5, 13, 9))
    run_bad(capsys, data_home, ["--format", "voc", "--source", str(src)],
            f"{src / 'Annotations' / 'x1.xml'}:6: box (5.0, 5.0, 13.0, 9.0) lies outside the image (12x12)")


def test_skip_invalid_records_dropped_boxes(tmp_path, data_home, capsys):
    src = voc_source(tmp_path / "z", box=(5, 5, 5, 9))
    xml = src / "Annotations" / "x1.xml"
    xml.write_text(xml.read_text().replace("<name>B</name>", "<name>A</name>"))
    assert main(["data", "prepare", "t", "--format", "voc", "--source", str(src), "--size", "4",
                 "--skip-invalid", "--split", "0.4,0.3,0.3"]) == 0
    from hashbench.platform.data import load_dataset
    ds = load_dataset("t")
    assert len(ds) == 1 and ds.meta["notes"]["skipped_boxes"][0].endswith("has zero area "
                                                                          "(need xmax > xmin and ymax > ymin)")
    out = capsys.readouterr().out  # the CLI says how many boxes it dropped
    assert "skipped 1 invalid box(es) (--skip-invalid)" in out and "notes.skipped_boxes" in out


def test_image_named_twice(tmp_path, data_home, capsys):
    save(tmp_path / "a.png", img())
    (tmp_path / "m.csv").write_text("path,label\na.png,x\n./a.png,y\n")
    run_bad(capsys, data_home, ["--format", "csv", "--source", str(tmp_path / "m.csv")],
            f"{tmp_path / 'm.csv'}:3: image './a.png' named twice (also line 2)")
    src = voc_source(tmp_path / "v", lists={"train": "x1\n", "test": "\nx1\n"})
    run_bad(capsys, data_home, ["--format", "voc", "--source", str(src)],
            f"{src / 'ImageSets' / 'Main' / 'test.txt'}:2: image 'x1' named twice (also train.txt:1)")


def test_split_list_names_missing_image(tmp_path, data_home, capsys):
    src = voc_source(tmp_path / "v", lists={"train": "x1\nx9\n", "test": "x1\n"})
    run_bad(capsys, data_home, ["--format", "voc", "--source", str(src)],
            f"{src / 'ImageSets' / 'Main' / 'train.txt'}:2: names the image 'x9', which has no")


@pytest.mark.parametrize("flag,value", [("--size", "0"), ("--size", "-3"), ("--patch", "0")])
def test_size_not_positive(tmp_path, data_home, capsys, flag, value):
    src = points_source(tmp_path / "src")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), flag, value],
            f"{flag[2:]} ({flag}) must be a positive number of pixels, got {value}")


def test_name_exists_without_overwrite(tmp_path, data_home, capsys):
    src = classes_folder(tmp_path / "src")
    args = ["data", "prepare", "t", "--format", "folder", "--source", str(src), "--size", "8",
            "--split", "0.25,0.25,0.5"]
    assert main(args) == 0
    before = (data_home / "t" / "meta.json").read_text()
    assert main(args) == 2
    err = capsys.readouterr().err   # the CLI names its flag ...
    assert err == f"hashbench data: error: {data_home / 't'}: a dataset named 't' already exists; pass --overwrite " \
                  f"to replace it\n"
    with pytest.raises(HashbenchError) as exc:   # ... the Python function its keyword
        prepare("t", src, "folder", options=Options(size=8, ratios=(0.25, 0.25, 0.5)))
    assert str(exc.value) == f"{data_home / 't'}: a dataset named 't' already exists; pass overwrite=True " \
                             f"to replace it"
    assert (data_home / "t" / "meta.json").read_text() == before
    assert main(args + ["--overwrite", "--size", "4"]) == 0
    assert sorted(p.name for p in data_home.iterdir()) == ["t"]
    from hashbench.platform.data import load_dataset
    assert load_dataset("t").image_size == 4


def test_cli_names_its_flag_when_the_store_appears_while_writing(tmp_path, data_home, capsys, monkeypatch):
    """The store appears between the CLI's check and the write (write_store's own check): still --overwrite."""
    src = classes_folder(tmp_path / "src")
    real_save = np.save

    def save_and_race(path, arr, **kw):
        (data_home / "t").mkdir(exist_ok=True)
        real_save(path, arr, **kw)

    monkeypatch.setattr(np, "save", save_and_race)
    assert main(["data", "prepare", "t", "--format", "folder", "--source", str(src), "--size", "8",
                 "--split", "0.25,0.25,0.5"]) == 2
    assert capsys.readouterr().err == (f"hashbench data: error: {data_home / 't'}: a dataset named 't' already "
                                       f"exists; pass --overwrite to replace it\n")


# ---- issue 17: bad inputs that gave a traceback (exit 1) or were taken silently (exit 0) -------------

def medmnist_npz(path, labels=None, **extra):
    z = np.zeros((4, 5, 5), np.uint8)
    y = np.array([[0], [1], [0], [1]]) if labels is None else labels
    arrays = dict(train_images=z, train_labels=y, test_images=z, test_labels=np.array([[0], [1], [0], [1]]))
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_size_above_the_maximum(tmp_path, data_home, capsys):
    src = points_source(tmp_path / "src")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), "--size", "100000"],
            "size (--size) 100000 is too large: at most 1024 pixels")
    npz = medmnist_npz(tmp_path / "m.npz")
    run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(npz), "--size", "1025"],
            "size (--size) 1025 is too large: at most 1024 pixels")
    # points without --size take the patch side as the output side: the message says where it came from
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), "--patch", "2000"],
            "size (--size, defaulting to patch (--patch)) 2000 is too large: at most 1024 pixels")
    run_bad(capsys, data_home, ["--format", "points", "--source", str(src), "--patch", "5000", "--size", "8"],
            "patch (--patch) 5000 is too large: at most 4096 pixels")


def test_medmnist_object_arrays_are_refused_not_unpickled(tmp_path, data_home, capsys):
    objects = np.empty(4, dtype=object)
    objects[:] = [np.zeros((5, 5), np.uint8)] * 4
    npz = medmnist_npz(tmp_path / "o.npz", train_images=objects)
    run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(npz)],
            f"{npz}: train_images is an array of Python objects (dtype object), which hashbench does not "
            "load", "expected train_images as uint8 images")


def test_medmnist_nan_labels_are_named(tmp_path, data_home, capsys):
    npz = medmnist_npz(tmp_path / "n.npz", labels=np.array([[0.0], [np.nan], [0.0], [1.0]]))
    err = run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(npz)],
                  f"{npz}: train_labels: row 1 holds nan; labels must be whole class ids >= 0")
    assert "negative class id" not in err


def test_random_bytes_are_not_a_npz(tmp_path, data_home, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(junk)],
                  f"{junk}: not a .npz archive (a .npz is a zip file")
    assert "allow_pickle" not in err
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(medmnist_npz(tmp_path / "whole.npz").read_bytes()[:200])
    run_bad(capsys, data_home, ["--format", "medmnist", "--source", str(truncated)],
            f"{truncated}: not a readable .npz archive")


def test_out_under_a_file_cannot_exist(tmp_path, data_home, capsys):
    src = classes_folder(tmp_path / "src")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    out = blocker / "sub" / "store"
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src), "--out", str(out)],
            f"out (--out) {out}: {blocker} is a file, not a folder")
    assert blocker.read_text() == "not a folder"
    # a parent the kernel refuses to create (under /proc): refused as one line, no folder left behind
    out = tmp_path / "new" / "deeper" / "store"
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src), "--size", "4",
                                "--out", "/proc/hashbench-cannot-exist/store"],
            "/proc/hashbench-cannot-exist/store: cannot write the store")
    assert not (tmp_path / "new").exists()


def test_csv_missing_value_label_is_not_a_class(tmp_path, data_home, capsys):
    save(tmp_path / "a.png", img())
    save(tmp_path / "b.png", img())
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,NaN\n")
    run_bad(capsys, data_home, ["--format", "csv", "--source", str(tmp_path / "m.csv")],
            f"{tmp_path / 'm.csv'}:3: label 'NaN' in column 'label' is a missing-value marker, not a class")
    # listed in --classes, it is a class name the user chose
    assert main(["data", "prepare", "t", "--format", "csv", "--source", str(tmp_path / "m.csv"),
                 "--classes", "x,NaN", "--size", "4", "--split", "0.5,0.25,0.25"]) == 0


@pytest.mark.parametrize("ratios,total", [("0.9,0.9,0.9", "2.7"), ("7,1,2", "10"), ("0.5,0.1,0.2", "0.8")])
def test_split_ratios_must_sum_to_one(tmp_path, data_home, capsys, ratios, total):
    src = classes_folder(tmp_path / "src")
    run_bad(capsys, data_home, ["--format", "folder", "--source", str(src), "--split", ratios],
            f"ratios (--split) {ratios}: the ratios sum to {total}; they must sum to 1 (e.g. 0.7,0.1,0.2)")


def test_python_callers_see_the_keyword_beside_the_flag(tmp_path, data_home):
    """prepare() is also a Python API: its errors name the Options field / keyword and the CLI flag."""
    from hashbench.platform.data.base import option

    assert option("mask_values") == "mask_values (--mask-values)" and option("ratios") == "ratios (--split)"
    src = classes_folder(tmp_path / "src")
    cases = [(dict(format="nope"), "format (--format) 'nope' is not one of"),
             (dict(format="folder", options=Options(channels=2)), "channels (--channels) must be 1 or 3, got 2"),
             (dict(format="folder", options=Options(fit="squash")), "fit (--fit) must be one of"),
             (dict(format="folder", options=Options(size=0)), "size (--size) must be a positive number"),
             (dict(format="folder", options=Options(ratios=(0.5, 0.5))), "ratios (--split) must be three"),
             (dict(format="folder", recipe="nope"), "recipe (--recipe) 'nope' is unknown")]
    for kw, message in cases:
        with pytest.raises(HashbenchError) as exc:
            prepare("t", src, **kw)
        assert message in str(exc.value), (kw, str(exc.value))
    assert list(data_home.iterdir()) == []
