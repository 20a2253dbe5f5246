#!/usr/bin/env bash
# Session 5's GPU measurements: device calls of at most 10 minutes on one warm machine (the package
# bundle and the datasets do not fit one 64 MiB transfer together; a warm machine keeps the ignored
# .site/ and /tmp between calls, so B, C and D must follow A while the machine is still held):
#   carry [".gpu"]                                     bash benchmarks/gpu_session5.sh A
#       unpack Ray/Optuna/polars into .site/; issue 19's DRH before/after table on the built-in busi and
#       pneumoniamnist (16/32/64 bits, 3 seeds)
#   carry [".gpudata/src", ".gpudata/busi256.tar.xz"]  bash benchmarks/gpu_session5.sh B
#       issue 11: the Y-Net (busi256, 3x256x256, 500 epochs, 64 bits) and DCH (bccd128, 200 epochs, 32 bits)
#       paper protocols side by side, each sweep on its own local Ray
#   carry [".gpudata/chula32.tar.xz", ".gpudata/oldc", ".gpudata/pml"]  bash benchmarks/gpu_session5.sh C
#       issue 19: constellation vs triplet images/s on chula32, before (.gpudata/oldc: the tree before
#       commit 5259925) and now; then side by side the DRH before/after table on chula32 and issue 12's
#       chula32 baselines (triplet needs .gpudata/pml: pytorch-metric-learning, which only the bundle has)
#   carry [".gpu"]                                     bash benchmarks/gpu_session5.sh P
#       (session 6, instead of A) unpack as A does; issue 13's packing (configs/gpu_packing.yaml at 1 and
#       0.125 GPU per trial, one Tune experiment for all studies)
#   carry [".gpu"]                               MPS=1 bash benchmarks/gpu_session5.sh P
#       (session 7) the same, then the packed run under NVIDIA MPS (benchmarks/gpu_packing_mps.sh)
#   carry [".gpudata/chula32.tar.xz", ".gpudata/pml"]   bash benchmarks/gpu_session5.sh E
#       (session 7, no bundle needed) triplet beside constellation images/s on chula32 (issue 19), the fused
#       evaluation kernels (issue 14: gpu_fused.sh, then fused_profile.py's kernel / sync tables and
#       fused_tune.sh's tile settings), then the chula32 baselines at 64 bits (issue 12) in what is left
#   carry [".gpudata/before"]                          bash benchmarks/gpu_session5.sh F
#       (session 7, no bundle needed) issue 14's kernels before (git archive df5781e) / now, a second tile
#       grid (fused_tune.sh SET=2), then the acceptance benchmark at the picked tunables (fused_pick.py);
#       SET=3 HUGE=0 RESERVE_S=80 BUDGET=230: the third grid (around BQ=8), no before/now rows, no 100k x 10M;
#       SET=4 RESERVE_S=130 BUDGET=470 (next: on an H200): grid 4 around today's defaults and the opt-in
#       device-side re-count (HASHBENCH_FUSED_RECOUNT=device), then the benchmark at its pick;
#       SET=5 RESERVE_S=130 BUDGET=500 (session 9, carry .gpudata/before = git archive a13aec2 with a COMMIT
#       file): before / now at the defaults, grid 5 around the hoisted-load kernels, the benchmark at its pick;
#       SET=6 the same with grid 6 (the list kernel's tile), .gpudata/before = the tree before the list fix
#   (no carry)                                         bash benchmarks/gpu_session5.sh D
#       only if B's time ran out: resume both paper sweeps; the paper tables
# Device calls that must not see uncommitted edits in the checkout run a snapshot of HEAD:
#   git archive HEAD hashbench benchmarks configs pyproject.toml ':(exclude)hashbench/data/builtin' \
#       ':(exclude)benchmarks/results' | gzip -9 > .gpudata/head.tgz      (carry it too; unpack to /tmp/head,
#   copy hashbench/data/builtin there, link .site .gpu .gpudata into it and run this script from there)
# Here, before the calls: bash benchmarks/gpu_prepare.sh (makes each missing .gpu/.gpudata input above and
#   checks every call's transfer against 64 MiB).
# Every stage has a time limit; results are re-packed into $OUT after each stage (gpu_common.sh).
set -uo pipefail
. benchmarks/gpu_common.sh
STAGE_TAIL=30
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
papers_run() {  # issue 11: Y-Net (busi256, 500 epochs, 64 bits) and DCH (bccd128, 200 epochs, 32 bits) paper
  # protocols side by side, each sweep on its own local Ray with the whole GPU (as in session 3, where
  # Y-Net kept 0.8 s per epoch beside DCH); LIMIT_S [--resume]
  timeout "$1" python -m hashbench sweep configs/papers/ynet.yaml --name paper-ynet-64 --set methods=ynet \
      --set bits=64 --leaderboard $LB --storage $SW ${2:-} > "$RES/papers/ynet.txt" 2>&1 &
  local y=$!
  sleep 20   # the two local Ray start-ups one after the other
  timeout "$(( $1 - 20 ))" python -m hashbench sweep configs/papers/dch.yaml --name paper-dch-32 --set bits=32 \
      --leaderboard $LB --storage $SW ${2:-} > "$RES/papers/dch.txt" 2>&1
  wait $y
  tail -n 5 "$RES/papers/ynet.txt" "$RES/papers/dch.txt"
}
tables() {
  hb leaderboard compact --leaderboard $LB >/dev/null 2>&1
  mkdir -p "$RES/papers/leaderboard" && cp -r $LB/. "$RES/papers/leaderboard/"
  hb leaderboard --leaderboard $LB --protocol paper:dch --axis bits \
      --metrics test_P@10 test_mAP@1000 'test_P@H<=0' 'test_P@H<=1' 'test_P@H<=2' 'test_P@H<=3' 'test_P@H<=4'
  hb leaderboard --leaderboard $LB --protocol paper:ynet --axis bits \
      --metrics test_mAP@5 test_mAP@10 test_mAP@20 test_mAP@50 test_mAP@100
}
cap() {  # cap LIMIT_S RESERVE_S: LIMIT_S, or less so that RESERVE_S seconds of the call are left after it (>= 30)
  local l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 30 ] && l=30; echo "$l"
}
CALL=${1:?A, B, C or D}
case $CALL in A|B|C|D|E|F|P) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;; esac
case $CALL in
  A|P)
    mkdir -p .site/bin && tar -xJf .gpu/bundle.tar.xz -C .site \
      && printf '#!/bin/sh\nexec python -m hashbench "$@"\n' > .site/bin/hashbench && chmod +x .site/bin/hashbench \
      && python -c "import ray, polars, optuna, torch, triton; print('site ok', ray.__version__, torch.__version__, triton.__version__)"
    if [ "$CALL" = A ]; then
      stage drh_after "${DRH_S:-300}" bash "$0" drh-after "$(( ${DRH_S:-300} - 10 ))" busi pneumoniamnist
    else
      if [ "${MPS:-0}" = 1 ]; then   # then the packed run again under NVIDIA MPS (gpu_packing_mps.sh)
        stage packing "$(( $(left) - 150 ))" bash benchmarks/gpu_acceptance.sh packing
        SHARES=0.125 stage mps "$(( $(left) - 10 ))" bash benchmarks/gpu_packing_mps.sh
      else
        stage packing "$(( $(left) - 10 ))" bash benchmarks/gpu_acceptance.sh packing
      fi
    fi
    ;;
  B)
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm): run call A again"; exit 3; }
    mkdir -p "$HASHBENCH_DATA" "$RES/papers" && tar -xJf .gpudata/busi256.tar.xz -C "$HASHBENCH_DATA"
    hb data prepare bccd128 --recipe bccd --source .gpudata/src/bccd --size 128 --channels 3 --skip-invalid \
        > "$RES/bccd128_prepare.txt" 2>&1; tail -n 1 "$RES/bccd128_prepare.txt"
    stage papers "$(( $(left) - 30 ))" bash "$0" papers-run "$(( $(left) - 35 ))"
    stage tables 25 bash "$0" tables
    ;;
  C)  # needs neither Ray nor polars: runs on a fresh machine without the bundle
    mkdir -p "$HASHBENCH_DATA" && tar -xJf .gpudata/chula32.tar.xz -C "$HASHBENCH_DATA"
    stage imgs 125 bash "$0" imgs
    ( OUT="$RES/baselines" CHULA=chula32 LIMIT_S="$(( $(left) - 20 ))" bash benchmarks/baselines_gpu.sh chula \
        > "$RES/baselines_log.txt" 2>&1 ) &
    bl=$!
    stage drh_chula "$(( $(left) - 10 ))" bash "$0" drh-after "$(( $(left) - 20 ))" chula32
    wait $bl; tail -n 40 "$RES/baselines_log.txt"; save C
    ;;
  E)  # session 7 plan, no Ray needed: triplet beside constellation (images/s, chula32; triplet needs
      # .gpudata/pml), the fused evaluation kernels (issue 14), then the 64-bit chula32 baselines
    mkdir -p "$HASHBENCH_DATA" && tar -xJf .gpudata/chula32.tar.xz -C "$HASHBENCH_DATA"
    # time (BUDGET 560 s): imgs <= 200 (two runs of <= 90 s); fused <= 200 (gpu_fused.sh, HUGE kept, check 20 s),
    # cut so that 200 s stay for fused_profile (<= 60 s) and fused_tune (<= 160 s, TOTAL_S = its limit - 10,
    # at least 100 s); the baselines get what is left, if 80 s or more. Worst case 5 + 200 + 155 + 60 + 120.
    stage imgs 200 bash "$0" imgs-now
    stage fused "$(cap 200 200)" env CHECK_S=20 bash benchmarks/gpu_fused.sh
    stage fused_profile "$(cap 60 120)" python benchmarks/fused_profile.py --device cuda --cache /tmp/fused_case.npz
    lim=$(cap 160 20)
    stage fused_tune "$lim" env TOTAL_S=$(( lim - 10 )) CACHE=/tmp/fused_case.npz bash benchmarks/fused_tune.sh
    if [ "$(left)" -ge 80 ]; then
      ( OUT="$RES/baselines64" CHULA=chula32 BITS=64 LIMIT_S="$(( $(left) - 20 ))" bash benchmarks/baselines_gpu.sh chula \
          > "$RES/baselines64_log.txt" 2>&1 ); tail -n 30 "$RES/baselines64_log.txt"
    else
      echo "baselines64: not run, $(left) s left"
    fi
    save E
    ;;
  F)  # session 7, no Ray needed (carry .gpudata/before): issue 14's kernels after the list-kernel and
      # host-sync changes: the code before them (.gpudata/before = git archive df5781e) and now at the
      # defaults side by side, fused_tune.sh's second grid (around BQ=16, the list kernel's own tile), then
      # the acceptance benchmark (bench_eval.py: fused vs torch vs numpy, 10k x 1M and 100k x 10M), the
      # equality check and the profile, all at the tunables fused_pick.py takes from the grid
    rm -rf "${RES:?}"/* && mkdir -p "$RES/fused_tune2" "$RES/fused_best"
    if [ -d .gpudata/before ] && { [ "${SET:-2}" = 2 ] || [ "${SET:-2}" -ge 5 ]; }; then
    python benchmarks/fused_profile.py --device cuda --time-only --label now-defaults --repeat 5 \
        --cache /tmp/fused_case.npz --ref /tmp/fused_ref.json > "$RES/fused_tune2/now_defaults.md" 2>&1
    ( cd .gpudata/before && PYTHONPATH=$PWD timeout 60 python benchmarks/fused_profile.py --device cuda --time-only \
        --label "before-$(cat COMMIT 2>/dev/null || echo df5781e)" --repeat 5 --cache /tmp/fused_case.npz --ref /tmp/fused_ref.json ) \
        > "$RES/fused_tune2/before.md" 2>&1
    grep -h '^|' "$RES/fused_tune2/now_defaults.md" "$RES/fused_tune2/before.md" | tail -n 2; save F
    fi
    lim=$(cap 230 ${RESERVE_S:-130})
    stage fused_tune2 "$lim" env SET=${SET:-2} TOTAL_S=$(( lim - 10 )) COMBO_S=25 CACHE=/tmp/fused_case.npz \
        OUT="$RES/fused_tune2" bash benchmarks/fused_tune.sh
    best=$(python benchmarks/fused_pick.py "$RES/fused_tune2/log.txt" 2>&1); echo "picked: $best" | tee "$RES/fused_best/picked.txt"
    case $best in HASHBENCH_FUSED_*) export $best ;; *) echo "no pick: the defaults" ;; esac
    stage fused_best "$(cap 90 40)" bash -c 'timeout 60 python benchmarks/bench_eval.py --device cuda --ref-queries 20 \
        --skip-small; [ "${HUGE:-1}" = 0 ] || timeout 40 python benchmarks/bench_eval.py --device cuda --only-huge --ref-queries 3'
    stage fused_check "$(cap 30 20)" python benchmarks/bench_eval.py --device cuda --check
    stage fused_profile2 "$(cap 40 5)" python benchmarks/fused_profile.py --device cuda --cache /tmp/fused_case.npz
    save F
    ;;
  D)   # only if B's time ran out: continue both paper sweeps
    python -c "import ray, polars" || { echo ".site is gone (machine was not warm)"; exit 3; }
    mkdir -p "$RES/papers"
    stage papers "$(( $(left) - 30 ))" bash "$0" papers-run "$(( $(left) - 35 ))" --resume
    stage tables 25 bash "$0" tables
    ;;
  imgs)   # constellation (before: the tree of 5259925^; now) and triplet, images/s of one epoch on chula32
    for m in triplet constellation; do
      echo "--- $m (now)"; timeout 35 python benchmarks/bench_train_loop.py --device cuda --dataset chula32 \
          --method "$m" --epochs 2 --no-eager 2>&1 | tail -n 8
    done
    echo "--- constellation (before: 5259925^)"
    ( cd .gpudata/oldc && PYTHONPATH=$PWD:$PYTHONPATH timeout 50 python benchmarks/bench_train_loop.py --device cuda \
        --dataset chula32 --method constellation --epochs 2 --no-eager 2>&1 | tail -n 8 )
    ;;
  imgs-now)   # triplet and constellation now, each with time for CUDA start-up and the loader baseline
    for m in triplet constellation; do
      echo "--- $m (now)"; timeout 90 python benchmarks/bench_train_loop.py --device cuda --dataset chula32 \
          --method "$m" --epochs 2 --no-eager > "/tmp/imgs_$m.txt" 2>&1; echo "rc=$?"; tail -n 12 "/tmp/imgs_$m.txt"
    done
    ;;
  drh-after) shift; drh_after "$@" ;;
  papers-run) shift; papers_run "$@" ;;
  tables) tables ;;
  *) echo "unknown call $CALL" >&2; exit 2 ;;
esac
ls -la "$OUT"
