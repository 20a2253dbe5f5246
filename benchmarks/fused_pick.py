#!/usr/bin/env python
"""The fastest tunables from a ``benchmarks/fused_tune.sh`` table, as ``HASHBENCH_FUSED_*`` assignments.

The histogram tile (``BQ BN WARPS CHUNK SAMPLE``) comes from the row with the smallest tie-aware time,
the top-k list tile (``LIST_BQ LIST_BN LIST_WARPS``) from the row with the smallest index time (a row
that does not set them uses its histogram tile for the list kernel too). Only rows whose mAPs equal
the defaults' (``same mAP`` = ref / yes) count; ONEPASS rows are not picked (opt-in variant).

    python benchmarks/fused_pick.py TUNE.md      # prints e.g. HASHBENCH_FUSED_BQ=16 HASHBENCH_FUSED_LIST_WARPS=16
"""

from __future__ import annotations

import sys

# the defaults fused_tune.sh grids 1-3 ran against (its BASE=old); a row's unset tunables took these
DEFAULTS = {"BQ": "32", "BN": "256", "WARPS": "8", "CHUNK": "65536", "SAMPLE": "8192"}
LIST = ("BQ", "BN", "WARPS")


def rows(lines):
    """(settings dict, tie-aware ms, index ms) of every measured row with the defaults' mAPs."""
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or cells[6] not in ("ref", "yes"):
            continue
        try:
            tie, idx = float(cells[1]), float(cells[2])
        except ValueError:
            continue
        kv = dict(a.split("=", 1) for a in cells[0].split()[1:] if "=" in a)
        if kv.get("ONEPASS", "0") == "1":
            continue
        yield kv, tie, idx


def pick(lines) -> dict:
    """The fastest rows' tunables. A table of ``BASE=old`` (its header line says which; grids 1-3): every
    histogram and list tunable, explicit, the old defaults where a row left one. ``BASE=now``: only what
    the rows set (the rest stays at fused_triton's defaults), ``RECOUNT`` going with the histogram."""
    lines = list(lines)
    now = any("BASE=now" in line for line in lines if not line.startswith("|"))
    found = list(rows(lines))
    if not found:
        raise SystemExit("fused_pick: no measured row with the defaults' mAPs in the table")
    hist = min(found, key=lambda r: r[1])[0]
    lst = min(found, key=lambda r: r[2])[0]
    if now:
        out = {k: v for k, v in hist.items() if not k.startswith("LIST_")}
        out.update({k: v for k, v in lst.items() if k.startswith("LIST_")})
        return out
    out = {k: hist.get(k, v) for k, v in DEFAULTS.items()}
    out.update({f"LIST_{k}": lst.get(f"LIST_{k}", lst.get(k, DEFAULTS[k])) for k in LIST})
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(" ".join(f"HASHBENCH_FUSED_{k}={v}" for k, v in pick(f).items()))
