"""``prepare``: read a source in one of the five formats and write a prepared store."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path

from hashbench.platform.data.base import MASK_VALUES, Loaded, Options, flag, option
from hashbench.platform.data.images import FITS, check_size
from hashbench.platform.data.split import check_ratios, resolve_split
from hashbench.platform.data.store import BUILTIN_ROOT, PreparedDataset, StoreExistsError, data_root, write_store
from hashbench.platform.errors import HashbenchError

FORMATS = {"medmnist": "medmnist", "folder": "folder", "csv": "csv_manifest", "points": "points",
           "voc": "voc"}
DEFAULT_SIZE = 64  # output side when neither --size nor the format (medmnist: native) sets one

MEDMNIST_ATTRIBUTION = (
    "PneumoniaMNIST from MedMNIST v2: Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. "
    "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
    "classification. Scientific Data 10, 41 (2023). Source images: Kermany DS et al., Cell 2018.")
BUSI_ATTRIBUTION = (
    "Breast Ultrasound Images Dataset (BUSI): Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset "
    "of breast ultrasound images. Data in Brief 28, 104863 (2020).")
CC_BY_4 = ("Creative Commons Attribution 4.0 International (CC BY 4.0), "
           "https://creativecommons.org/licenses/by/4.0/ . Images were resized; no other changes.")
CC0 = ("Creative Commons CC0 1.0 Universal (public domain dedication), "
       "https://creativecommons.org/publicdomain/zero/1.0/ . Images and masks were resized.")

# Known public datasets: defaults applied when --recipe names one, or when the dataset name or the
# source folder's name equals the key. Every field can be overridden on the command line.
RECIPES: dict[str, dict] = {
    "pneumoniamnist": {"format": "medmnist", "classes": ["normal", "pneumonia"],
                       "license": CC_BY_4, "attribution": MEDMNIST_ATTRIBUTION},
    "busi": {"format": "folder", "size": 64, "channels": 1, "license": CC0,
             "attribution": BUSI_ATTRIBUTION},
    "chula_rbc12": {"format": "points", "patch": 64, "classes": [
        "normal cell", "macrocyte", "microcyte", "spherocyte", "target cell", "stomatocyte",
        "ovalocyte", "teardrop", "burr cell", "schistocyte", "uncategorised", "hypochromia",
        "elliptocyte"],
        "attribution": "Chula RBC-12: Naruenatthanaset K, Chalidabhongse TH, Palasuwan D, "
                       "Anantrasirichai N, Palasuwan A. Red Blood Cell Segmentation with Overlapping "
                       "Cell Separation and Classification on Imbalanced Dataset. arXiv 2012.01321."},
    "bccd": {"format": "voc", "size": 64,
             "attribution": "BCCD Dataset (Shenggan, https://github.com/Shenggan/BCCD_Dataset), MIT."},
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def find_recipe(name: str, source: Path, recipe: str | None) -> str | None:
    if recipe is not None:
        if recipe not in RECIPES:
            raise HashbenchError(f"{option('recipe')} {recipe!r} is unknown; known: {', '.join(RECIPES)}")
        return recipe
    for key in (name, source.name, source.stem):
        if key in RECIPES:
            return key
    return None


def store_path(name: str) -> Path:
    """Where ``prepare`` writes the dataset ``name`` (under data_root())."""
    if not NAME_RE.match(name):
        raise HashbenchError(f"dataset name {name!r} must start with a letter or digit and use only "
                             f"letters, digits, '_', '-' and '.'")
    if (BUILTIN_ROOT / name / "meta.json").is_file():
        raise HashbenchError(f"dataset name {name!r} is a built-in dataset; choose another name "
                             f"(e.g. {name}_full) or pass {option('out')}")
    return data_root() / name


def prepare(name: str, source: str | Path, format: str | None = None, *,
            options: Options | None = None, out: str | Path | None = None, overwrite: bool = False,
            license: str | None = None, attribution: str | None = None,
            recipe: str | None = None) -> PreparedDataset:
    """Read ``source`` (``format`` or the recipe's) and write the store ``name``.

    The store goes to ``out`` if given, else ``data_root()/name``. Recipe defaults fill every
    option left ``None`` in ``options``. Nothing is written unless the whole source is valid.
    """
    source = Path(source).expanduser()
    opts = dataclasses.replace(options) if options is not None else Options()
    key = find_recipe(name, source, recipe)
    rec = RECIPES.get(key, {}) if key else {}
    format = format or rec.get("format")
    if format not in FORMATS:
        raise HashbenchError(f"{option('format')} {format!r} is not one of {', '.join(FORMATS)}"
                             if format else f"{option('format')} is required for {name!r} (one of "
                             f"{', '.join(FORMATS)})")
    if rec and rec["format"] != format:
        rec, key = {}, None  # a different format than the recipe's: use no recipe defaults
    for opt in ("size", "channels", "patch", "classes"):
        if getattr(opts, opt) is None and opt in rec:
            setattr(opts, opt, rec[opt])
    size_flag = option("size")
    if opts.size is None and format != "medmnist":
        if format == "points" and opts.patch:
            opts.size, size_flag = opts.patch, f"size ({flag('size')}, defaulting to {option('patch')})"
        else:
            opts.size = DEFAULT_SIZE
    if opts.size is not None:
        check_size(opts.size, size_flag)
    if format == "points":
        opts.patch = check_size(opts.patch if opts.patch is not None else opts.size, option("patch"), patch=True)
    if opts.channels not in (None, 1, 3):
        raise HashbenchError(f"{option('channels')} must be 1 or 3, got {opts.channels}")
    if opts.mask_values not in MASK_VALUES:
        raise HashbenchError(f"{option('mask_values')} must be one of {', '.join(MASK_VALUES)}, got {opts.mask_values!r}")
    if opts.fit not in FITS:
        raise HashbenchError(f"{option('fit')} must be one of {', '.join(FITS)}, got {opts.fit!r}")
    opts.ratios = check_ratios(opts.ratios)
    dest = Path(out).expanduser() if out is not None else store_path(name)
    if dest.exists() and not overwrite:
        raise StoreExistsError(dest, name)
    if not source.exists():
        raise HashbenchError(f"{source}: source not found")
    missing_dirs = check_destination(dest, option("out") if out is not None else "data directory ($HASHBENCH_DATA)")

    loader = importlib.import_module(f"hashbench.platform.data.{FORMATS[format]}")
    loaded: Loaded = loader.load(source, opts)
    split = resolve_split(loaded.split, loaded.labels, loaded.groups, opts.ratios, opts.seed)
    settings = {k: v for k, v in dataclasses.asdict(opts).items() if v is not None}
    settings["ratios"] = list(opts.ratios)
    extra = {"recipe": key, "prepare": settings, "notes": loaded.notes,
             "split_protocol": _split_protocol(loaded.split), "split_seed": opts.seed}
    lic = license if license is not None else (loaded.license or rec.get("license", ""))
    try:  # write_store creates missing parent folders: remove them again if it fails
        ds = write_store(dest, loaded.images, loaded.labels, split, class_names=loaded.class_names,
                     masks=loaded.masks, groups=loaded.groups, name=name, source=str(source.resolve()),
                     format=format, license=lic,
                     attribution=attribution if attribution is not None else rec.get("attribution", ""),
                     extra=extra, overwrite=overwrite)
    except OSError as exc:
        _remove_dirs(missing_dirs)
        raise HashbenchError(f"{dest}: cannot write the store ({exc.strerror or exc}); nothing was "
                             f"written") from None
    except BaseException:
        _remove_dirs(missing_dirs)
        raise
    return ds


def check_destination(dest: Path, what: str) -> list:
    """Refuse a store path that cannot be created (a file on the way, no write permission) before
    any work; return the folders that do not exist yet (created by the write, removed on failure)."""
    missing, probe = [], dest.parent
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise HashbenchError(f"{what} {dest}: {probe} is a broken symbolic link; choose another path")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise HashbenchError(f"{what} {dest}: {probe} is a file, not a folder, so {dest} cannot be created; "
                             f"choose a path under an existing folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise HashbenchError(f"{what} {dest}: the folder {probe} is not writable; choose a folder you can "
                             f"write to")
    return missing


def _remove_dirs(dirs: list) -> None:
    for d in dirs:  # deepest first; only if still empty
        try:
            d.rmdir()
        except OSError:
            pass


def _split_protocol(split) -> str:
    if split is None or (split < 0).all():
        return "stratified (seeded, group-aware) split with the given ratios"
    if (split < 0).any() or len(set(split.tolist())) < 3:
        return ("the source's split; the missing split carved (stratified, seeded, group-aware) "
                "from its train part")
    return "the source's own split"
