"""Every bad input: exit code 2, a message naming the file (and line), and no store left behind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hashbench.platform.cli import main


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
    assert err.startswith("hashbench data: error: ")
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
                 "--skip-invalid", "--split", "1,1,1"]) == 0
    from hashbench.platform.data import load_dataset
    ds = load_dataset("t")
    assert len(ds) == 1 and ds.meta["notes"]["skipped_boxes"][0].endswith("has zero area "
                                                                          "(need xmax > xmin and ymax > ymin)")


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
            f"{flag} must be a positive number of pixels, got {value}")


def test_name_exists_without_overwrite(tmp_path, data_home, capsys):
    src = classes_folder(tmp_path / "src")
    args = ["data", "prepare", "t", "--format", "folder", "--source", str(src), "--size", "8",
            "--split", "1,1,2"]
    assert main(args) == 0
    before = (data_home / "t" / "meta.json").read_text()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{data_home / 't'}: a dataset named 't' already exists; pass --overwrite" in err
    assert (data_home / "t" / "meta.json").read_text() == before
    assert main(args + ["--overwrite", "--size", "4"]) == 0
    assert sorted(p.name for p in data_home.iterdir()) == ["t"]
    from hashbench.platform.data import load_dataset
    assert load_dataset("t").image_size == 4
