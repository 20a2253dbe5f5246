#!/usr/bin/env bash
# Session 9's last GPU call (issue 14), no Ray needed:
#   carry [".gpudata/before"]  bash benchmarks/gpu_session9.sh T
#       .gpudata/before = git archive of the tree before the tie-sums kernel (e840220, with a COMMIT file).
#       before / now at the defaults, two processes each, alternating (fused_profile.py --time-only); where
#       the time of a tie-aware call goes (fused_variance.py: kernel time, GPU time before and after the
#       histogram kernels; RECOUNT host and device, two processes each); the acceptance benchmark
#       (bench_eval.py: 10k x 1M, 100k x 10M), the equality check and the profile; ONLY_TIMES=1: the first
#       two stages only
set -uo pipefail
. benchmarks/gpu_common.sh
STAGE_TAIL=${STAGE_TAIL:-40}
CALL=${1:?T}
[ "$CALL" = T ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $CALL in
  T)
    rm -rf "${RES:?}"/*
    stage before_now 120 bash "$0" before_now
    stage variance 100 bash "$0" variance
    [ "${ONLY_TIMES:-0}" = 1 ] && { save T; exit 0; }
    stage bench_eval 100 bash -c 'python benchmarks/bench_eval.py --device cuda --ref-queries 20 --skip-small; \
        python benchmarks/bench_eval.py --device cuda --only-huge --ref-queries 3'
    stage check 40 python benchmarks/bench_eval.py --device cuda --check
    stage profile 40 python benchmarks/fused_profile.py --device cuda --cache /tmp/fc.npz
    save T
    ;;
  before_now)   # stage of T: two processes each, alternating
    for i in 1 2; do
      python benchmarks/fused_profile.py --device cuda --time-only --label "now $i" --repeat 7 --cache /tmp/fc.npz \
          | grep '^| now'
      ( cd .gpudata/before && PYTHONPATH=$PWD python benchmarks/fused_profile.py --device cuda --time-only \
          --label "before-$(cat COMMIT) $i" --repeat 7 --cache /tmp/fc.npz | grep '^| before' )
    done
    ;;
  variance)     # stage of T
    for r in host device; do for p in 1 2; do
      echo "RECOUNT=$r, process $p"
      HASHBENCH_FUSED_RECOUNT=$r python benchmarks/fused_variance.py --copies 3 --calls 5 --cache /tmp/fc.npz | grep '^|'
    done; done
    ;;
  *) echo "unknown call $CALL" >&2; exit 2 ;;
esac
ls -la "$OUT"
