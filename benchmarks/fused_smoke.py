"""Compile and check the fused Triton kernels on this GPU, with full diagnostics on failure.

    python benchmarks/fused_smoke.py

Builds tiny cases (8, 64, 100 and 1024 bits; class ids and multi-hot labels), runs the histogram and
top-k kernels with the hardware popcount and, if that fails, with the portable one, and compares them
with brute-force torch results. Prints one line per case and ``SMOKE OK`` or ``SMOKE FAILED``; a compile
error is printed in full (the Triton / MLIR message), not swallowed.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def brute(q, db, ql, dl, bits):
    d = (q[:, None, :] != db[None, :, :]).sum(2)
    rel = (ql[:, None, :] & dl[None, :, :]).any(2) if ql.dim() == 2 else ql[:, None] == dl[None, :]
    n = torch.stack([torch.bincount(row, minlength=bits + 1) for row in d])
    r = torch.stack([torch.bincount(row[m], minlength=bits + 1) for row, m in zip(d, rel)])
    return d, n, r


def case(FT, bits, multi, use_popc, dev):
    g = torch.Generator(device="cpu").manual_seed(bits)
    nq, n = 70, int(os.environ.get("SMOKE_N", 20000 if bits <= 100 else 4000))
    q = torch.randint(0, 2, (nq, bits), generator=g, dtype=torch.uint8)
    db = torch.randint(0, 2, (n, bits), generator=g, dtype=torch.uint8)
    db[10:20] = q[0]
    if multi:
        ql, dl = torch.rand(nq, 40, generator=g) < 0.06, torch.rand(n, 40, generator=g) < 0.06
    else:
        ql, dl = torch.randint(0, 6, (nq,), generator=g), torch.randint(0, 5, (n,), generator=g)
    d, n_ref, r_ref = brute(q, db, ql, dl, bits)
    fh = FT.FusedHamming(db.to(dev), dl.to(dev))
    fh.use_popc = use_popc
    n_all, r_all = fh.histograms(q.to(dev), ql.to(dev))
    ok = torch.equal(n_all.cpu(), n_ref) and torch.equal(r_all.cpu(), r_ref)
    for k in (1, 100, 5000):
        n_k, r_k = fh.histograms(q.to(dev), ql.to(dev), k=k)
        t = (n_ref.cumsum(1) < k).sum(1)
        lvl = torch.arange(bits + 1)[None, :] <= t[:, None]
        ok &= torch.equal(n_k.cpu()[lvl], n_ref[lvl]) and torch.equal(r_k.cpu()[lvl], r_ref[lvl])
        ids, dist = fh.ranking(q.to(dev), k)
        key = torch.sort(d * n + torch.arange(n), 1).values[:, :k]
        ok &= torch.equal(ids.cpu(), key % n) and torch.equal(dist.cpu(), key // n)
    return ok


def main() -> int:
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
    try:
        import triton
        print(f"triton {triton.__version__}")
        from hashbench.platform.evaluation import fused_triton as FT
    except Exception:  # noqa: BLE001 - print everything
        traceback.print_exc()
        print("SMOKE FAILED: Triton or the kernel module does not import; evaluate() will use the torch engine")
        return 1
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not FT.INTERPRET:
        print("SMOKE FAILED: no CUDA device (TRITON_INTERPRET=1 checks this script on the CPU)")
        return 1
    name = torch.cuda.get_device_name() if dev == "cuda" else "none (Triton interpreter)"
    print(f"GPU: {name}; tiles BQ={FT.BQ} BN={FT.BN} chunk={FT.CHUNK} warps={FT.WARPS}")
    bad, ok_hw = 0, False
    for bits, multi in [(64, False), (100, True), (1024, False)]:
        for use_popc in (True, False) if dev == "cuda" else (False,):
            if use_popc is False and dev == "cuda" and ok_hw:
                continue                        # the portable popcount only matters when the hardware one fails
            t0 = time.perf_counter()
            try:
                ok = case(FT, bits, multi, use_popc, dev)
                if dev == "cuda":
                    torch.cuda.synchronize()
                msg = "equal to brute force" if ok else "WRONG NUMBERS"
            except Exception:  # noqa: BLE001 - print the full compiler message
                traceback.print_exc()
                ok, msg = False, "EXCEPTION (above)"
            if use_popc:
                ok_hw = ok
            print(f"bits={bits} {'multi' if multi else 'single'} popcount={'hw' if use_popc else 'swar'}: "
                  f"{msg} ({time.perf_counter() - t0:.1f} s incl. compile)", flush=True)
            bad += not ok
    print("SMOKE OK" if not bad else "SMOKE FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
