"""Regenerate the built-in stores shipped in hashbench/data/builtin/ from the shared datasets.

    python tools/make_builtin.py [--datasets ../shared/datasets]

pneumoniamnist: all 5,856 images at 28 px, 1 channel, the official MedMNIST splits.
busi: all 780 images at 64 px, 1 channel, union of masks, stratified seeded 70/10/20 split.
Every shipped file must stay under 5 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hashbench.platform.data import Options, prepare  # noqa: E402
from hashbench.platform.data.store import BUILTIN_ROOT  # noqa: E402

MAX_FILE_BYTES = 5 * 1024 * 1024
BUILTINS = {
    "pneumoniamnist": dict(source="pneumoniamnist/pneumoniamnist.npz", format="medmnist",
                           options=Options(size=28, channels=1),
                           label="MedMNIST v2 pneumoniamnist.npz (official train/val/test split)"),
    "busi": dict(source="busi", format="folder",
                 options=Options(size=64, channels=1, seed=0, ratios=(0.7, 0.1, 0.2)),
                 label="BUSI (Dataset_BUSI_with_GT), longer side cut to 256 px, "
                       "{class}/images + {class}/mask"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets",
                    help="folder holding the shared datasets in their published layouts")
    args = ap.parse_args()
    for name, spec in BUILTINS.items():
        dest = BUILTIN_ROOT / name
        ds = prepare(name, args.datasets / spec["source"], spec["format"], options=spec["options"],
                     out=dest, overwrite=True, recipe=name)
        meta_file = dest / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["source"] = spec["label"]  # not this machine's path; the fingerprint is unaffected
        with tempfile.NamedTemporaryFile("w", dir=dest, delete=False, suffix=".tmp") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
        os.replace(f.name, meta_file)
        for f in sorted(dest.iterdir()):
            size = f.stat().st_size
            if size >= MAX_FILE_BYTES:
                raise SystemExit(f"{f}: {size} bytes, over the 5 MB limit for shipped files")
            print(f"{f.relative_to(ROOT)}  {size / 1e6:.2f} MB")
        print(f"{name}: {len(ds)} items, fingerprint {ds.fingerprint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
