#!/usr/bin/env bash
# Session 3's GPU measurements in two device calls (the package bundle and the datasets do not fit one
# 64 MiB transfer together; a warm machine keeps the ignored .site/ between calls):
#   carry [".gpu"]:                                  bash benchmarks/gpu_session3.sh A
#       unpack Ray/Optuna/polars into .site/, fused evaluation (issue 14), trial phases + packing (issue 13)
#   carry [".gpudata/src", ".gpudata/busi256.tar.xz"]: bash benchmarks/gpu_session3.sh B
#       the DCH (bccd128) and Y-Net (busi256) paper protocols (issue 11)
# Every stage has its own time limit; results are re-packed into $OUT after each stage, so a call cut
# short still returns what finished.
set -uo pipefail
. benchmarks/gpu_common.sh
CALL=${1:?A or B}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $CALL in
  A)
    mkdir -p .site && tar -xJf .gpu/bundle.tar.xz -C .site && python -c "import ray, polars, optuna, torch, triton; print('site ok', ray.__version__, torch.__version__, triton.__version__)"
    stage fused 240 bash benchmarks/gpu_fused.sh
    stage trial 120 python benchmarks/bench_trial.py --device cuda --trials 6 --epochs 5
    stage packing 200 python benchmarks/bench_packing.py --shares 1,0.125 --gpu-util
    ;;
  B)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm): run call A again"; exit 3; }
    mkdir -p "$HASHBENCH_DATA" && tar -xJf .gpudata/busi256.tar.xz -C "$HASHBENCH_DATA"
    python -m hashbench data prepare bccd128 --recipe bccd --source .gpudata/src/bccd --size 128 --channels 3 --skip-invalid
    stage papers_dch 270 bash benchmarks/gpu_papers.sh dch 8,16,32,64
    stage papers_ynet 230 bash benchmarks/gpu_papers.sh ynet ynet 64 ${YNET_EPOCHS:-500}
    ;;
esac
ls -la "$OUT"
