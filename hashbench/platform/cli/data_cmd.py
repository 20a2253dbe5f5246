"""``hashbench data``: list, prepare and describe datasets."""

from __future__ import annotations

import argparse
import json
import time

FORMAT_NAMES = ["medmnist", "folder", "csv", "points", "voc"]


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="list, prepare and describe datasets",
                       description="Datasets: built-in stores shipped with hashbench and stores "
                                   "prepared from a source in one of five formats.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    ls = dsub.add_parser("list", help="list built-in and prepared datasets with item counts",
                         description="List every built-in and prepared dataset (and the known "
                                     "recipes that can be prepared) with item counts.")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)

    pr = dsub.add_parser(
        "prepare", help="turn a source (medmnist, folder, csv, points, voc) into a prepared store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a dataset in its published layout and write a prepared store "
                    "(uint8 images, multi-hot labels, split, optional masks/groups, meta.json).",
        epilog="examples:\n"
               "  hashbench data prepare pm --format medmnist --source pneumoniamnist.npz\n"
               "  hashbench data prepare busi128 --format folder --source Dataset_BUSI --size 128\n"
               "  hashbench data prepare rbc --format points --source chula_rbc12 --patch 64 --size 32\n"
               "  hashbench data prepare cells --format voc --source BCCD --size 64 --skip-invalid\n"
               "  hashbench data prepare ct --format csv --source manifest.csv --label-column finding "
               "--label-sep '|' --group-column patient\n"
               "known datasets (--recipe, or a name / source folder equal to one) fill in the format,\n"
               "class names, license and attribution: pneumoniamnist, busi, chula_rbc12, bccd.")
    pr.add_argument("name", help="dataset name (letters, digits, _ - .)")
    pr.add_argument("--source", required=True, help="the source file or folder")
    pr.add_argument("--format", choices=FORMAT_NAMES, help="source format (default: the recipe's)")
    pr.add_argument("--size", type=int, help="output side in pixels (default: medmnist native, "
                                             "points --patch, else 64)")
    pr.add_argument("--channels", type=int, choices=[1, 3],
                    help="output channels (default: 1 if every source image is grey, else 3)")
    pr.add_argument("--fit", choices=["stretch", "pad", "crop"], default="stretch",
                    help="how a non-square image becomes square (default: stretch)")
    pr.add_argument("--patch", type=int, help="points: side of the patch cut around each point, in "
                                              "source pixels (default: --size)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    pr.add_argument("--split", default="0.7,0.1,0.2", metavar="TRAIN,VAL,TEST",
                    help="ratios when the source has no split (default 0.7,0.1,0.2)")
    pr.add_argument("--classes", help="comma-separated class list, in label-id order")
    pr.add_argument("--recipe", help="apply a known dataset's defaults (pneumoniamnist, busi, "
                                     "chula_rbc12, bccd)")
    pr.add_argument("--license", help="license text stored in meta.json (default: the recipe's or "
                                      "the source's LICENSE file)")
    pr.add_argument("--attribution", help="attribution / citation stored in meta.json")
    pr.add_argument("--skip-invalid", action="store_true",
                    help="voc: drop boxes of zero area or outside the image (recorded in meta.json) "
                         "instead of failing")
    pr.add_argument("--path-column", default="path", help="csv: image path column (default: path)")
    pr.add_argument("--label-column", action="append",
                    help="csv: label column; repeat for one 0/1 column per class (default: label)")
    pr.add_argument("--label-sep", help="csv: separator of several labels in one cell (multi-label)")
    pr.add_argument("--mask-column", help="csv: mask path column")
    pr.add_argument("--mask-values", choices=("binary", "classes"), default="binary",
                    help="folder/csv masks: binary = any non-zero pixel is foreground (default); "
                         "classes = the pixel value is the class id (0 background, e.g. 1 disc, 2 cup)")
    pr.add_argument("--group-column", help="csv: group / patient id column")
    pr.add_argument("--split-column", help="csv: split column (train/val/test)")
    pr.add_argument("--out", help="write the store here instead of $HASHBENCH_DATA/NAME")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing store of that name")
    pr.add_argument("--json", action="store_true", help="print the store's meta.json")
    pr.set_defaults(func=run_prepare)

    info = dsub.add_parser("info", help="counts per split and class, shape, masks, fingerprint, license",
                           description="Describe a dataset (a name or a store directory).")
    info.add_argument("name", help="dataset name or store directory")
    info.add_argument("--json", action="store_true", help="print meta.json plus shapes as JSON")
    info.set_defaults(func=run_info)

    def no_action(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_action)


def run_list(args) -> int:
    from hashbench.platform.data import RECIPES, data_root, list_datasets

    rows = list_datasets()
    if args.json:
        print(json.dumps({"datasets": rows, "data_root": str(data_root()),
                          "recipes": sorted(RECIPES)}, indent=2))
        return 0
    print(f"{'name':<22} {'kind':<9} {'items':>7} {'train/val/test':>18} {'cls':>4} "
          f"{'shape':>9} {'masks':>5}  fingerprint")
    for r in rows:
        kind = "built-in" if r["builtin"] else "prepared"
        sp = "/".join(str(r["splits"][s]) for s in ("train", "val", "test"))
        shape = f"{r['channels']}x{r['size']}x{r['size']}"
        note = "  (hidden by the built-in of that name)" if r["shadowed"] else ""
        print(f"{r['name']:<22} {kind:<9} {r['items']:>7} {sp:>18} {r['classes']:>4} {shape:>9} "
              f"{'yes' if r['masks'] else 'no':>5}  {r['fingerprint'][:12]}{note}")
    prepared = {r["name"] for r in rows}
    todo = [k for k in RECIPES if k not in prepared]
    if todo:
        print(f"known recipes not prepared yet: {', '.join(todo)} "
              f"(hashbench data prepare NAME --recipe RECIPE --source PATH)")
    print(f"prepared stores live in {data_root()}")
    return 0


def run_prepare(args) -> int:
    from hashbench.platform.data import Options, prepare
    from hashbench.platform.data.store import StoreExistsError
    from hashbench.platform.errors import HashbenchError

    try:
        ratios = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise HashbenchError(f"--split must be three numbers TRAIN,VAL,TEST, got {args.split!r}") from None
    labels = None
    if args.label_column:
        labels = [c.strip() for col in args.label_column for c in col.split(",") if c.strip()]
    opts = Options(size=args.size, channels=args.channels, fit=args.fit, patch=args.patch,
                   classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
                   seed=args.seed, ratios=ratios, skip_invalid=args.skip_invalid,
                   path_column=args.path_column, label_columns=labels, label_sep=args.label_sep,
                   mask_column=args.mask_column, mask_values=args.mask_values,
                   group_column=args.group_column,
                   split_column=args.split_column)
    t0 = time.perf_counter()
    try:
        ds = prepare(args.name, args.source, args.format, options=opts, out=args.out,
                     overwrite=args.overwrite, license=args.license, attribution=args.attribution,
                     recipe=args.recipe)
    except StoreExistsError as exc:  # its hint is the Python keyword; here it is the flag
        raise StoreExistsError(exc.dest, exc.name, hint="--overwrite") from None
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({**ds.meta, "path": str(ds.path), "seconds": round(seconds, 3)}, indent=2))
        return 0
    c = ds.meta["counts"]
    print(f"prepared {ds.name!r} at {ds.path} in {seconds:.2f} s: {len(ds)} items "
          f"(train {c['train']['items']}, val {c['val']['items']}, test {c['test']['items']}), "
          f"{ds.num_classes} classes, {ds.channels}x{ds.image_size}x{ds.image_size}"
          f"{', masks' if ds.has_masks else ''}, fingerprint {ds.fingerprint[:12]}")
    skipped = (ds.meta.get("notes") or {}).get("skipped_boxes") or []
    if skipped:
        print(f"skipped {len(skipped)} invalid box(es) (--skip-invalid), e.g. {skipped[0]}; all are listed "
              f"in {ds.path / 'meta.json'} under notes.skipped_boxes")
    return 0


def describe(ds) -> dict:
    """meta.json plus the actual array shapes (what ``data info --json`` prints)."""
    shapes = {k: list(getattr(ds, k).shape) for k in ("images", "labels", "split", "masks", "groups")
              if getattr(ds, k) is not None}
    return {**ds.meta, "path": str(ds.path), "shapes": shapes}


def run_info(args) -> int:
    from hashbench.platform.data import load_dataset

    ds = load_dataset(args.name)
    d = describe(ds)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    c = d["counts"]
    print(f"{ds.name}  ({ds.path})")
    print(f"  format {d['format']}, source {d['source']}")
    print(f"  images {ds.channels}x{ds.image_size}x{ds.image_size} uint8, {len(ds)} items, "
          f"{ds.num_classes} classes, {'multi-label' if ds.multi_label else 'single-label'}, "
          f"masks {'yes' if ds.has_masks else 'no'}, groups {'yes' if ds.groups is not None else 'no'}")
    print(f"  fingerprint {ds.fingerprint}")
    width = max(len(n) for n in ds.class_names)
    print(f"  {'class':<{width}} {'train':>7} {'val':>7} {'test':>7}")
    for name in ds.class_names:
        print(f"  {name:<{width}} " + " ".join(f"{c[s]['classes'][name]:>7}" for s in ("train", "val", "test")))
    print(f"  {'total':<{width}} " + " ".join(f"{c[s]['items']:>7}" for s in ("train", "val", "test")))
    print(f"  split: {d.get('split_protocol', 'n/a')}")
    lic = (d.get("license") or "not given").splitlines()[0]
    print(f"  license: {lic}")
    if d.get("attribution"):
        print(f"  attribution: {d['attribution']}")
    return 0
