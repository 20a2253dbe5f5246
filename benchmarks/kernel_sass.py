#!/usr/bin/env python
"""Machine instructions per query x item pair of the fused Hamming kernels, counted offline (no GPU).

Triton compiles each kernel for a CUDA target (default sm_90, the H100 / H200) on this machine, with
the ``ptxas`` and ``cuobjdump`` that ship with Triton; the script finds the tile loop in the SASS (the
longest backward branch) and divides its instructions by the pairs one thread handles per tile. At
~10^10 pairs per 10k x 1M evaluation the histogram pass is bound by instruction issue (132 SMs x 4
warp schedulers), so this count predicts its time. The column that matters is what a warp runs when
none of its pairs is taken (the threshold takes ~0.5 % of them; a taken pair's atomic sits behind a
branch): 29 per pair measured 10.5 ms on an H100 and 17 measured 6.7 ms (~0.35 ms per instruction).

    python benchmarks/kernel_sass.py                       # this checkout
    python benchmarks/kernel_sass.py --tree /tmp/before    # another checkout's kernels (e.g. git archive)
    python benchmarks/kernel_sass.py --show 0              # print the tile loop of row 0

Needs Triton (the ``dev`` extra has it); no CUDA device, no torch CUDA build.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

#: (name, kernel, constexprs, warps); W = 32-bit code words, LW = label words
HIST = "_hist_kernel"
LIST = "_list_kernel"
CASES = [
    ("hist 64 bits, BQ=8 BN=256, 8 warps (default)", HIST, dict(W=2, LW=1, MULTI=False, BQ=8, BN=256), 8),
    ("hist 64 bits, BQ=16 BN=256, 8 warps", HIST, dict(W=2, LW=1, MULTI=False, BQ=16, BN=256), 8),
    ("hist 64 bits, BQ=8 BN=256, 4 warps", HIST, dict(W=2, LW=1, MULTI=False, BQ=8, BN=256), 4),
    ("hist 32 bits", HIST, dict(W=1, LW=1, MULTI=False, BQ=8, BN=256), 8),
    ("hist 128 bits", HIST, dict(W=4, LW=1, MULTI=False, BQ=8, BN=256), 8),
    ("hist 64 bits, multi-hot 40 labels", HIST, dict(W=2, LW=2, MULTI=True, BQ=8, BN=256), 8),
    ("hist 64 bits, counts only (sample / top-k counting pass)", HIST,
     dict(W=2, LW=1, MULTI=False, BQ=8, BN=256, REL=False), 8),
    ("list 64 bits, LIST_BQ=8 LIST_BN=256, 8 warps (default)", LIST, dict(W=2, BQ=8, BN=256), 8),
    ("list 64 bits, LIST_BQ=4 LIST_BN=256, 2 warps (the default before session 9)", LIST, dict(W=2, BQ=4, BN=256), 2),
    ("list 64 bits, int64 keys (over 2^31 / (bits + 1) items)", LIST, dict(W=2, BQ=4, BN=256, KEY64=True), 2),
]
HIST_SIG = {"qw_ptr": "*i32", "dbw_ptr": "*i32", "ql_ptr": "*i32", "dl_ptr": "*i32", "thr_ptr": "*i32",
            "hist_ptr": "*i32", "nq": "i32", "N": "i32"}
LIST_SIG = {"qw_ptr": "*i32", "dbw_ptr": "*i32", "thr_ptr": "*i32", "cnt_ptr": "*i32", "out_ptr": "*i32",
            "nq": "i32", "N": "i32", "L": "i32"}


def compile_sass(fn, kind: str, ce: dict, warps: int, arch: int) -> list[str]:
    """The kernel's SASS instructions, in order (Triton -> cubin -> cuobjdump)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if kind == HIST:
        ce = {"TILES": 64, "HW": 2 * (32 * ce["W"] + 1), "USE_POPC": True, "REL": True, "SKIP": False, **ce}
        sig = dict(HIST_SIG)
    else:
        ce = {"TILES": 64, "USE_POPC": True, "KEY64": False, **ce}
        sig = dict(LIST_SIG)
    sig.update({k: "constexpr" for k in ce})
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=ce), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": warps})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return [m.groups() for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", out)]


def tile_loop(sass) -> list[tuple[int, str]]:
    """(address, instruction) of the longest backward branch's body (the tile loop)."""
    best = None
    for addr, ins in sass:
        m = re.search(r"BRA\s+\S*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < int(addr, 16):
            span = (int(m.group(1), 16), int(addr, 16))
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    if best is None:
        raise SystemExit("kernel_sass: no loop found in the SASS (a TILES=1 kernel?)")
    return [(int(addr, 16), ins.strip()) for addr, ins in sass if best[0] <= int(addr, 16) <= best[1]]


def always_run(body) -> list[str]:
    """The instructions a warp runs when none of its pairs is taken: those a predicated forward branch
    jumps over (the atomics and stores, and what the compiler put beside them) are left out. Nearly
    every warp runs just these: at 10k x 1M the threshold takes ~0.5 % of the pairs."""
    skip = set()
    for addr, ins in body:
        m = re.match(r"@!?U?P\d\s+BRA\s+\S*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) > addr:
            skip.update(a for a, _ in body if addr < a < int(m.group(1), 16))
    return [ins for addr, ins in body if addr not in skip]


def opcodes(body) -> collections.Counter:
    c = collections.Counter()
    for ins in body:
        tok = ins.split()
        op = tok[1] if tok[0].startswith("@") else tok[0]
        c[op.split(".")[0]] += 1
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", help="a checkout whose hashbench/ to count instead of this one")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default 90: H100/H200)")
    ap.add_argument("--show", type=int, help="print the tile loop of this row")
    a = ap.parse_args(argv)
    if a.tree:
        if not os.path.isfile(os.path.join(a.tree, "hashbench", "platform", "evaluation", "fused_triton.py")):
            print(f"kernel_sass: --tree {a.tree}: no hashbench/platform/evaluation/fused_triton.py there",
                  file=sys.stderr)
            return 2
        sys.path.insert(0, os.path.abspath(a.tree))
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        print(f"kernel_sass: needs Triton ({exc}); pip install -e '.[dev]'", file=sys.stderr)
        return 2
    try:
        from hashbench.platform.evaluation import fused_triton as ft
    except ImportError as exc:
        where = f"--tree {a.tree}" if a.tree else "this environment"
        print(f"kernel_sass: cannot import hashbench's fused kernels from {where} ({exc})", file=sys.stderr)
        return 2
    print(f"fused kernels of {os.path.dirname(ft.__file__)}, sm_{a.arch}, tile loop per thread\n")
    print("| # | kernel | instructions per tile | pairs per thread | instructions per pair | run per pair when none "
          "is taken | loads per pair | POPC per pair (run) | most frequent (run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (name, kind, ce, warps) in enumerate(CASES):
        body = tile_loop(compile_sass(getattr(ft, kind), kind, ce, warps, a.arch))
        run = always_run(body)
        ops = opcodes(run)
        ppt = ce["BQ"] * ce["BN"] / (32 * warps)
        top = ", ".join(f"{k} {v}" for k, v in ops.most_common(6))
        print(f"| {i} | {name} | {len(body)} | {ppt:g} | {len(body) / ppt:.1f} | {len(run) / ppt:.1f} | "
              f"{ops['LDG'] / ppt:.2f} | {ops['POPC'] / ppt:.1f} | {top} |")
        if a.show == i:
            print("\n".join(f"{'  ' if ins in run else '~ '}{ins}" for _, ins in body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
