#!/usr/bin/env bash
# Issue 13: the packed sweep with NVIDIA MPS (Multi-Process Service). Without MPS, the CUDA contexts of
# the 8 trial processes at 0.125 GPU per trial time-slice the GPU: session 6 measured 3.18x the trials/h
# of 1 GPU per trial with the GPU 74 % busy (benchmarks/results/2026-12-06/gpu/session6/packing_h100.md).
# Under MPS their kernels can run at the same time. This starts a user-space MPS daemon with its own
# pipe and log folders (no device setting is changed), runs benchmarks/bench_packing.py at the given
# shares and stops the daemon. Run on a device call after the bundle is unpacked (gpu_session5.sh P):
#   OUT=$OUT SHARES=1,0.125 bash benchmarks/gpu_packing_mps.sh
set -uo pipefail
. benchmarks/gpu_common.sh
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d || { echo "could not start the MPS daemon"; exit 3; }
trap 'echo quit | nvidia-cuda-mps-control; echo "MPS daemon stopped"' EXIT
echo "MPS daemon started"
python benchmarks/bench_packing.py --shares "${SHARES:-1,0.125}" --tag=-mps --gpu-util 2>&1 | tee "$OUT/bench_packing_mps.md"
tail -n 20 "$CUDA_MPS_LOG_DIRECTORY/control.log" 2>/dev/null | tee "$OUT/mps_control_log.txt"
