#!/usr/bin/env bash
# Issue 13: the packed sweep with NVIDIA MPS (Multi-Process Service). Without MPS, the CUDA contexts of
# the 8 trial processes at 0.125 GPU per trial time-slice the GPU: session 7 measured 3.83x the trials/h
# of 1 GPU per trial without MPS and 4.97x under MPS on one H100
# (benchmarks/results/2026-12-06/gpu/session7/packing_mps_h100.md). Under MPS their kernels can run at
# the same time. This runs benchmarks/bench_packing.py --mps at the given shares: each share's
# `hashbench sweep --mps` starts a user-space MPS daemon with its own pipe and log folders (no device
# setting is changed) before its local Ray and stops it after (docs/sweeps.md, "Packing with MPS").
# Run on a device call after the bundle is unpacked (gpu_session5.sh P):
#   OUT=$OUT SHARES=1,0.125 bash benchmarks/gpu_packing_mps.sh
set -uo pipefail
. benchmarks/gpu_common.sh
python benchmarks/bench_packing.py --shares "${SHARES:-1,0.125}" --tag=-mps --gpu-util --mps 2>&1 | tee "$OUT/bench_packing_mps.md"
rc=${PIPESTATUS[0]}
# each sweep's control log (its path ends the sweep's "[mps] control daemon stopped" line): the last 20
# lines, trial processes connecting as MPS clients ("NEW CLIENT ...")
for log in $(sed -n 's/.*\[mps\] control daemon stopped;.* log: \(.*\)$/\1/p' "$OUT/bench_packing_mps.md"); do
  echo "== $log"; tail -n 20 "$log"
done 2>&1 | tee "$OUT/mps_control_log.txt"
exit "$rc"
