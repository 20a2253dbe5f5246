#!/usr/bin/env bash
# Session 8's GPU measurements (issue 13: why drh-nq trains slowly when 8 trials share a GPU).
#   (no carry)  bash benchmarks/gpu_session8.sh G
#       step_profile.py on one process (drh-nq with the CUDA graph, drh-nq eager, dch), then 8 processes
#       at once (benchmarks/step_profile_concurrent.sh) with and without MPS; no Ray needed
#   carry [".gpu"]  [NOBENCH_S=120] bash benchmarks/gpu_session8.sh P
#       bench_trial.py (drh-nq, 3 trials one at a time), then the packed sweep (bench_packing.py,
#       configs/gpu_packing.yaml, 0.125 and 1 GPU per trial) under --mps; with NOBENCH_S the 0.125 run
#       again with train.cudnn_benchmark: false in the last NOBENCH_S seconds
#   carry [".gpu"]  bash benchmarks/gpu_session8.sh Q
#       (session 9) issue 14's float top-k (bench_float_topk.py: 10k x 1M x 128, tiled vs whole matrix),
#       the quickstart on the GPU (the brief's 107 s on an H200 against 35 s on 2 CPU cores, before
#       the trial thread and cudnn_benchmark), then bench_trial.py's GPU stage (dch and drh-nq, 8 trials)
set -uo pipefail
. benchmarks/gpu_common.sh
STAGE_TAIL=${STAGE_TAIL:-45}
CALL=${1:?G, P or Q}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $CALL in
  G)
    stage one_drhnq 90 python benchmarks/step_profile.py --device cuda --epochs 4
    stage one_drhnq_eager 70 python benchmarks/step_profile.py --device cuda --epochs 3 --no-graph --no-profiler
    stage one_dch 70 python benchmarks/step_profile.py --device cuda --epochs 4 --method dch
    stage conc_drhnq_mps 110 env PROCS=8 MPS=1 OUT="$RES/conc_drhnq_mps" bash benchmarks/step_profile_concurrent.sh --epochs 5
    stage conc_drhnq 110 env PROCS=8 MPS=0 OUT="$RES/conc_drhnq" bash benchmarks/step_profile_concurrent.sh --epochs 5
    stage conc_dch_mps "$(( $(left) - 5 ))" env PROCS=8 MPS=1 OUT="$RES/conc_dch_mps" bash benchmarks/step_profile_concurrent.sh --epochs 5 --method dch
    save G
    ;;
  P)
    mkdir -p .site/bin && tar -xJf .gpu/bundle.tar.xz -C .site \
      && printf '#!/bin/sh\nexec python -m hashbench "$@"\n' > .site/bin/hashbench && chmod +x .site/bin/hashbench
    [ "${TRIAL:-1}" = 1 ] && stage trial_drhnq 90 python benchmarks/bench_trial.py --device cuda --method drh-nq \
        --trials 3 --epochs 5 --out /tmp/bench_trial
    stage packing "$(( $(left) - ${NOBENCH_S:-0} - 15 ))" python benchmarks/bench_packing.py --shares ${SHARES:-0.125,1} \
        --mps --tag=-s8 --gpu-util
    if [ "${NOBENCH_S:-0}" -gt 0 ]; then   # the same packed sweep with train.cudnn_benchmark: false
      sed 's/^train:$/train:\n  cudnn_benchmark: false/' configs/gpu_packing.yaml > /tmp/gpu_packing_nobench.yaml
      grep -q "cudnn_benchmark: false" /tmp/gpu_packing_nobench.yaml || echo "nobench config not written"
      stage packing_nobench "$(( $(left) - 15 ))" python benchmarks/bench_packing.py --config /tmp/gpu_packing_nobench.yaml \
          --shares 0.125 --mps --tag=-s8nb --gpu-util
    fi
    mkdir -p "$RES/metrics" && for f in runs/gpu-packing/runs/*/metrics.json; do
      cp "$f" "$RES/metrics/$(basename "$(dirname "$f")").json"; done 2>/dev/null
    save P
    ;;
  Q)
    stage float_topk 100 python benchmarks/bench_float_topk.py --device cuda
    mkdir -p .site/bin && tar -xJf .gpu/bundle.tar.xz -C .site \
      && printf '#!/bin/sh\nexec python -m hashbench "$@"\n' > .site/bin/hashbench && chmod +x .site/bin/hashbench
    stage quickstart 240 bash -c 'rm -rf /tmp/qs && mkdir -p /tmp/qs && cd /tmp/qs && time python -m hashbench quickstart'
    stage trial "$(( $(left) - 10 ))" bash benchmarks/gpu_acceptance.sh trial
    save Q
    ;;
  *) echo "unknown call $CALL" >&2; exit 2 ;;
esac
ls -la "$OUT"
