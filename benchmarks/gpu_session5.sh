#!/usr/bin/env bash
# Session 5's GPU measurements: device calls of at most 10 minutes on one warm machine (the package
# bundle and the datasets do not fit one 64 MiB transfer together; a warm machine keeps the ignored
# .site/ and /tmp between calls, so B, C and D must follow A while the machine is still held):
#   carry [".gpu"]                                     bash benchmarks/gpu_session5.sh A
#       unpack Ray/Optuna/polars into .site/; issue 19's DRH before/after table on the built-in busi and
#       pneumoniamnist (16/32/64 bits, 3 seeds)
#   carry [".gpudata/src", ".gpudata/busi256.tar.xz"]  bash benchmarks/gpu_session5.sh B
#       issue 11: the Y-Net paper protocol (busi256, 3x256x256, 500 epochs, 64 bits) alone on the GPU
#   carry [".gpudata/chula32.tar.xz", ".gpudata/oldc"] bash benchmarks/gpu_session5.sh C
#       issue 19: constellation vs triplet images/s on chula32, before (.gpudata/oldc: the tree before
#       commit 5259925) and now; then side by side: issue 11's DCH paper protocol at 32 bits (bccd128,
#       200 epochs), the DRH before/after table on chula32 and issue 12's chula32 baselines
#   (no carry)                                         bash benchmarks/gpu_session5.sh D
#       resume the DCH sweep if C's time ran out; the paper tables
# Here, before the calls:
#   ../shared/tools/gpu-bundle, then re-pack it without ray/dashboard/client/build/* (keep the empty
#     directory: the dashboard checks that it exists) and tzdata, so that it and the tree fit 64 MiB;
#   mkdir -p .gpudata/src && cp -r $DATASETS/bccd .gpudata/src/
#   HASHBENCH_DATA=/tmp/prep hashbench data prepare busi256 --recipe busi --source $DATASETS/busi --size 256 --channels 3
#   HASHBENCH_DATA=/tmp/prep hashbench data prepare chula32 --recipe chula_rbc12 --source $DATASETS/chula_rbc12 \
#       --patch 64 --size 32 --channels 3
#   (cd /tmp/prep && tar -cJf $OLDPWD/.gpudata/busi256.tar.xz busi256 && tar -cJf $OLDPWD/.gpudata/chula32.tar.xz chula32)
#   git archive 5259925^ hashbench benchmarks ':(exclude)hashbench/data/builtin' | tar -x -C .gpudata/oldc
# Every stage has a time limit; results are re-packed into $OUT after each stage (gpu_common.sh).
set -uo pipefail
. benchmarks/gpu_common.sh
STAGE_TAIL=30
export PATH=$PWD/.site/bin:$PATH
LB=/tmp/papers/leaderboard; SW=/tmp/papers/sweeps
hb() { python -m hashbench "$@"; }
left() { echo $(( ${BUDGET:-560} - SECONDS )); }   # seconds left in this call
ray_head() {  # one local Ray cluster the paper sweeps join (RAY_ADDRESS); a bounded liveness check first
  timeout 20 python -c "import ray; ray.init(address='auto'); ray.shutdown()" >/dev/null 2>&1 && return 0
  timeout 30 python -m ray.scripts.scripts stop --force >/dev/null 2>&1
  timeout 60 python -m ray.scripts.scripts start --head --num-gpus 1 --num-cpus 14 --include-dashboard true \
      --dashboard-host 127.0.0.1 --disable-usage-stats > "$RES/ray_start.txt" 2>&1
}
drh_after() {  # drh_after LIMIT_S DATASET...: one process per (dataset, code length), all side by side
  local lim=$1; shift; local pids=()
  for ds in "$@"; do for b in 16 32 64; do
    timeout "$lim" python benchmarks/drh_diagnosis.py --device cuda --experiments after --datasets "$ds" \
        --bits "$b" --seeds 3 --epochs 0 --dataset-epochs chula32=3 --out "/tmp/drh_runs/$ds-$b" \
        --json-out "$OUT/drh_after_${ds}_b$b.json" > "$OUT/drh_after_${ds}_b$b.md" 2>&1 &
    pids+=($!)
  done; done
  for p in "${pids[@]}"; do wait "$p"; done
  for f in "$OUT"/drh_after_*.md; do echo "== $f"; grep -A12 "^| dataset" "$f" || tail -n 3 "$f"; done
}
dch_sweep() {  # issue 11: DCH's paper protocol at 32 bits (bccd128, 200 epochs); LIMIT_S [--resume]
  RAY_ADDRESS=auto timeout "$1" python -m hashbench sweep configs/papers/dch.yaml --name paper-dch-32 \
      --set bits=32 --gpus-per-worker 0.5 --leaderboard $LB --storage $SW ${2:-} > "$RES/papers/dch.txt" 2>&1
  tail -n 5 "$RES/papers/dch.txt"
}
tables() {
  hb leaderboard compact --leaderboard $LB >/dev/null 2>&1
  mkdir -p "$RES/papers/leaderboard" && cp -r $LB/. "$RES/papers/leaderboard/"
  hb leaderboard --leaderboard $LB --protocol paper:dch --axis bits \
      --metrics test_P@10 test_mAP@1000 'test_P@H<=0' 'test_P@H<=1' 'test_P@H<=2' 'test_P@H<=3' 'test_P@H<=4'
  hb leaderboard --leaderboard $LB --protocol paper:ynet --axis bits \
      --metrics test_mAP@5 test_mAP@10 test_mAP@20 test_mAP@50 test_mAP@100
}
CALL=${1:?A, B, C or D}
case $CALL in A|B|C|D) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;; esac
case $CALL in
  A)
    mkdir -p .site/bin && tar -xJf .gpu/bundle.tar.xz -C .site \
      && printf '#!/bin/sh\nexec python -m hashbench "$@"\n' > .site/bin/hashbench && chmod +x .site/bin/hashbench \
      && python -c "import ray, polars, optuna, torch, triton; print('site ok', ray.__version__, torch.__version__, triton.__version__)"
    stage drh_after "${DRH_S:-300}" bash "$0" drh-after "$(( ${DRH_S:-300} - 10 ))" busi pneumoniamnist
    ;;
  B)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm): run call A again"; exit 3; }
    mkdir -p "$HASHBENCH_DATA" "$RES/papers" && tar -xJf .gpudata/busi256.tar.xz -C "$HASHBENCH_DATA"
    ( hb data prepare bccd128 --recipe bccd --source .gpudata/src/bccd --size 128 --channels 3 --skip-invalid \
        > "$RES/bccd128_prepare.txt" 2>&1 ) &
    ray_head
    stage ynet "$(( $(left) - 25 ))" env RAY_ADDRESS=auto python -m hashbench sweep configs/papers/ynet.yaml \
        --name paper-ynet-64 --set methods=ynet --set bits=64 --leaderboard $LB --storage $SW
    wait; tail -n 2 "$RES/bccd128_prepare.txt"
    stage tables 25 bash "$0" tables
    ;;
  C)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm)"; exit 3; }
    tar -xJf .gpudata/chula32.tar.xz -C "$HASHBENCH_DATA"; mkdir -p "$RES/papers"
    stage imgs 140 bash "$0" imgs
    ray_head
    ( OUT="$RES/baselines" CHULA=chula32 LIMIT_S="$(( $(left) - 50 ))" bash benchmarks/baselines_gpu.sh chula \
        > "$RES/baselines_log.txt" 2>&1 ) &
    bl=$!
    ( mkdir -p "$RES/drh_chula" && OUT="$RES/drh_chula" bash "$0" drh-after "$(( $(left) - 45 ))" chula32 \
        > "$RES/drh_chula/log.txt" 2>&1 ) &
    dr=$!
    stage dch "$(( $(left) - 35 ))" bash "$0" dch-sweep "$(( $(left) - 40 ))"
    wait $bl; wait $dr; tail -n 40 "$RES/baselines_log.txt"; tail -n 40 "$RES/drh_chula/log.txt"; save C
    stage tables 25 bash "$0" tables
    ;;
  D)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm)"; exit 3; }
    ray_head; mkdir -p "$RES/papers"
    stage dch "$(( $(left) - 35 ))" bash "$0" dch-sweep "$(( $(left) - 40 ))" --resume
    stage tables 25 bash "$0" tables
    ;;
  imgs)   # constellation (before: the tree of 5259925^; now) and triplet, images/s of one epoch on chula32
    for m in triplet constellation; do
      echo "--- $m (now)"; timeout 40 python benchmarks/bench_train_loop.py --device cuda --dataset chula32 \
          --method "$m" --epochs 2 --no-eager 2>&1 | tail -n 8
    done
    echo "--- constellation (before: 5259925^)"
    ( cd .gpudata/oldc && PYTHONPATH=$PWD:$PYTHONPATH timeout 60 python benchmarks/bench_train_loop.py --device cuda \
        --dataset chula32 --method constellation --epochs 2 --no-eager 2>&1 | tail -n 8 )
    ;;
  drh-after) shift; drh_after "$@" ;;
  dch-sweep) shift; dch_sweep "$@" ;;
  tables) tables ;;
  *) echo "unknown call $CALL" >&2; exit 2 ;;
esac
ls -la "$OUT"
