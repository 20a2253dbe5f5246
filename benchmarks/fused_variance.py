#!/usr/bin/env python
"""Where the fused evaluation's time varies between processes: the same 10k x 1M, 64-bit, mAP@1000
tie-aware evaluation timed in one process with fresh copies of its inputs (new GPU addresses) and a
random-sized allocation before each copy, kernel time (CUDA events around the histogram passes) and
wall time side by side. If the spread follows the copies, it is placement in memory; if it follows
the wall time only, it is the host.

    python benchmarks/fused_variance.py --copies 6 --calls 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fused_profile  # noqa: E402  (build_case: bench_eval's generator, cached)

from hashbench.platform.evaluation import evaluate  # noqa: E402
from hashbench.platform.evaluation import fused_triton as ft  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--ties", default="tie-aware", choices=["tie-aware", "index"])
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    q, ql, db, dl, how = fused_profile.build_case(10000, 1000000, 64, 0, a.cache)
    kernel_ms = []
    orig = ft._hist_kernel

    class Timed:                                   # CUDA events around every histogram launch
        def __getitem__(self, grid):
            def launch(*args, **kw):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                orig[grid](*args, **kw)
                e.record()
                kernel_ms.append((s, e))
            return launch

    ft._hist_kernel = Timed()
    rng = np.random.default_rng(0)
    print(f"case {how}; {a.ties}, mAP@1000; each copy: fresh device tensors after a spacer of random size")
    print("| copy | spacer MB | db address mod 4096 | wall ms per call (median of calls) | histogram kernels ms per call | "
          "GPU ms from the call to the first histogram kernel | GPU ms from the last histogram kernel to the return | mAP |")
    print("|---|---|---|---|---|---|---|---|")
    keep = []
    for c in range(a.copies):
        spacer = int(rng.integers(1, 64))
        keep.append(torch.empty(spacer << 20, dtype=torch.uint8, device=dev))
        tq, tql, tdb, tdl = (torch.as_tensor(x).to(dev) for x in (q, ql, db, dl))
        walls, kern, pre, post = [], [], [], []
        for i in range(a.calls + 1):
            kernel_ms.clear()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            res = evaluate(tq, tdb, tql, tdl, ks=(1000,), convention="hits", ties=a.ties, hamming_radius=None,
                           map_at_r=False, device="cuda", engine="fused")
            end.record()
            torch.cuda.synchronize()
            if i:                                   # the first call of a copy is not timed
                walls.append((time.perf_counter() - t0) * 1e3)
                kern.append(sum(s.elapsed_time(e) for s, e in kernel_ms))
                pre.append(start.elapsed_time(kernel_ms[0][0]))
                post.append(kernel_ms[-1][1].elapsed_time(end))
        print(f"| {c} | {spacer} | {tdb.data_ptr() % 4096} | {statistics.median(walls):.2f} | "
              f"{statistics.median(kern):.2f} | {statistics.median(pre):.2f} | {statistics.median(post):.2f} | "
              f"{res['mAP@1000']:.9f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
