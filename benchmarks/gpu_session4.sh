#!/usr/bin/env bash
# Session 4's GPU measurements in three device calls of at most 10 minutes (the package bundle and the
# datasets do not fit one 64 MiB transfer together; a warm machine keeps the ignored .site/ and /tmp
# between calls, so calls B and C must follow A while the machine is still held):
#   carry [".gpu"]                                        bash benchmarks/gpu_session4.sh A
#       unpack Ray/Optuna/polars into .site/; trials/h at 1 and 0.125 GPU per trial (issue 13);
#       then, with the time left, the BUSI baseline table (issue 12, built-in 64-px BUSI)
#   carry [".gpudata/src", ".gpudata/busi256.tar.xz"]     bash benchmarks/gpu_session4.sh B
#       the Y-Net (busi256, 500 epochs) and DCH (bccd128, 200 epochs, 32/16/8 bits) paper protocols
#       (issue 11) side by side on one local Ray cluster, half a GPU each
#   carry [".gpudata/chula32.tar.xz"]                     bash benchmarks/gpu_session4.sh C
#       continue both paper sweeps (--resume) and, beside them, issue 16's statistics example
# Here, before the calls:  ../shared/tools/gpu-bundle;  .gpudata/src/bccd = $DATASETS/bccd;
#   HASHBENCH_DATA=/tmp/prep hashbench data prepare busi256 --recipe busi --source $DATASETS/busi --size 256 --channels 3
#   HASHBENCH_DATA=/tmp/prep hashbench data prepare chula32 --recipe chula_rbc12 --source $DATASETS/chula_rbc12 --patch 64 --size 32 --channels 3
#   (cd /tmp/prep && tar -cJf $OLDPWD/.gpudata/busi256.tar.xz busi256 && tar -cJf $OLDPWD/.gpudata/chula32.tar.xz chula32)
# Every stage has a time limit; results are re-packed into $OUT after each stage, so a call cut short
# still returns what finished.
set -uo pipefail
DEFAULT_BUDGET=570
. benchmarks/gpu_common.sh
STAGE_TAIL=40
ray_head() {  # one local Ray cluster that both paper sweeps join (RAY_ADDRESS)
  # a head left by an earlier call may be half-alive: a bounded check, else stop it and start afresh
  timeout 20 python -c "import ray; ray.init(address='auto'); ray.shutdown()" >/dev/null 2>&1 && return 0
  timeout 30 python -m ray.scripts.scripts stop --force >/dev/null 2>&1
  timeout 60 python -m ray.scripts.scripts start --head --num-gpus 1 --num-cpus 14 --include-dashboard true \
      --dashboard-host 127.0.0.1 --disable-usage-stats > "$RES/ray_start.txt" 2>&1
}
papers() {  # both paper sweeps side by side, half a GPU each, until LIMIT_S; then their tables
  local limit=$1 resume=${2:-}
  export RAY_ADDRESS=auto
  timeout "$limit" python -m hashbench sweep configs/papers/ynet.yaml --name paper-ynet-64 \
      --set methods=ynet --set bits=64 --gpus-per-worker 0.5 --leaderboard $LB --storage $SW $resume > "$RES/papers/ynet.txt" 2>&1 &
  local y=$!
  timeout "$limit" python -m hashbench sweep configs/papers/dch.yaml --name paper-dch-32-16-8 \
      --set bits=32,16,8 --gpus-per-worker 0.5 --leaderboard $LB --storage $SW $resume \
      > "$RES/papers/dch.txt" 2>&1
  wait $y
  tail -n 5 "$RES/papers/ynet.txt" "$RES/papers/dch.txt"
  hb leaderboard compact --leaderboard $LB >/dev/null 2>&1
  mkdir -p "$RES/papers/leaderboard" && cp -r $LB/. "$RES/papers/leaderboard/"
  hb leaderboard --leaderboard $LB --protocol paper:dch --axis bits \
      --metrics test_P@10 test_mAP@1000 'test_P@H<=0' 'test_P@H<=1' 'test_P@H<=2' 'test_P@H<=3' 'test_P@H<=4'
  hb leaderboard --leaderboard $LB --protocol paper:ynet --axis bits \
      --metrics test_mAP@5 test_mAP@10 test_mAP@20 test_mAP@50
}
CALL=${1:?A, B or C}
[ "$CALL" = papers-run ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $CALL in
  A)
    mkdir -p .site/bin && tar -xJf .gpu/bundle.tar.xz -C .site \
      && printf '#!/bin/sh\nexec python -m hashbench "$@"\n' > .site/bin/hashbench && chmod +x .site/bin/hashbench \
      && python -c "import ray, polars, optuna, torch, triton; print('site ok', ray.__version__, torch.__version__, triton.__version__)"
    stage packing 330 python benchmarks/bench_packing.py --shares 1,0.125 --gpu-util
    stage baselines_busi "$(left)" bash benchmarks/baselines_gpu.sh busi
    ;;
  B)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm): run call A again"; exit 3; }
    mkdir -p "$HASHBENCH_DATA" && tar -xJf .gpudata/busi256.tar.xz -C "$HASHBENCH_DATA"
    hb data prepare bccd128 --recipe bccd --source .gpudata/src/bccd --size 128 --channels 3 --skip-invalid
    ray_head; mkdir -p "$RES/papers"
    stage papers "$(left)" bash "$0" papers-run "$(( $(left) - 45 ))"
    ;;
  C)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm)"; exit 3; }
    tar -xJf .gpudata/chula32.tar.xz -C "$HASHBENCH_DATA"
    ray_head; mkdir -p "$RES/papers" "$RES/compare"; cmp=""
    if [ -n "${COMPARE:-}" ]; then   # issue 16's example beside the sweeps (they then share the GPU)
      ( OUT="$RES/compare" CHULA=chula32 BCCD=bccd128 EPOCHS=${COMPARE_EPOCHS:-10} \
          timeout "$(( $(left) - 30 ))" bash benchmarks/compare_gpu.sh > "$RES/compare/log.txt" 2>&1 ) &
      cmp=$!
    fi
    stage papers "$(left)" bash "$0" papers-run "$(( $(left) - 45 ))" --resume
    if [ -n "$cmp" ]; then wait $cmp; tail -n 60 "$RES/compare/log.txt"; save C; fi
    ;;
  papers-run) papers "${2:?limit}" "${3:-}"
    ;;
esac
ls -la "$OUT"
