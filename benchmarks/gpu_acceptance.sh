#!/usr/bin/env bash
# The GPU acceptance measurements, in stages (one device call each). Run from the project root on a
# machine with torch + CUDA; prepared stores that are not built in are read from $HASHBENCH_DATA.
#   bash benchmarks/gpu_acceptance.sh speed      # evaluation + training-loop benchmarks, busi matrix
#   bash benchmarks/gpu_acceptance.sh chula      # the hashing methods on chula_rbc12 patches
#   bash benchmarks/gpu_acceptance.sh metric     # the metric-learning methods (issue 5)
#   bash benchmarks/gpu_acceptance.sh loop       # evaluation + training-loop benchmarks (CUDA graphs)
#   bash benchmarks/gpu_acceptance.sh packing    # trials/h at 1, 0.25, 0.125 GPU per trial (SHARES=...), GPU busy %
#   bash benchmarks/gpu_acceptance.sh trial      # per-trial phase times and fixed cost at 1 GPU per trial (issue 13)
# Results go to ${OUT:-out}/ (tables as markdown, JSON beside them).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stage=${1:?stage: speed | loop | packing | trial | chula | metric}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 1000 > "$OUT/util_$stage.csv" &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
HASH="dch,drh,dph,drh-nq"   # drh-nb: the float readout of each drh run (RunResult.readouts)
case $stage in
  speed)
    python benchmarks/bench_eval.py --device cuda --ref-queries 20 2>&1 | tee "$OUT/bench_eval_cuda.md"
    python benchmarks/bench_train_loop.py --device cuda --method dch --dataset pneumoniamnist --epochs 2 2>&1 | tee "$OUT/bench_train_dch.md"
    python benchmarks/bench_train_loop.py --device cuda --method drh --set depth=34 --dataset pneumoniamnist --epochs 2 2>&1 | tee "$OUT/bench_train_drh34.md"
    python benchmarks/train_matrix.py --methods $HASH --datasets busi --bits 16,32,64 --epochs ${EPOCHS:-15} \
        --device cuda --out /tmp/runs --json-out "$OUT/matrix_busi.json" 2>&1 | tee "$OUT/matrix_busi.md"
    ;;
  loop)   # session 2: level-select GPU evaluation, CUDA-graph training step
    python benchmarks/bench_eval.py --device cuda --ref-queries 20 2>&1 | tee "$OUT/bench_eval_cuda.md"
    for spec in "dch pneumoniamnist" "drh pneumoniamnist --set depth=34" "dch busi" "drh busi --set depth=34"; do
      set -- $spec
      python benchmarks/bench_train_loop.py --device cuda --method $1 --dataset $2 "${@:3}" --epochs 3 2>&1 \
        | tee -a "$OUT/bench_train_loop.md"
    done
    ;;
  packing)
    python benchmarks/bench_packing.py --shares ${SHARES:-1,0.25,0.125} --gpu-util 2>&1 | tee "$OUT/bench_packing.md"
    ;;
  trial)  # session 3: where a trial's time goes (fixed cost = wall - training epochs), warm trial processes
    for m in dch drh-nq; do
      python benchmarks/bench_trial.py --device cuda --method $m --dataset pneumoniamnist --subset full --trials ${TRIALS:-8} \
          --epochs 5 --json-out "$OUT/bench_trial_$m.json" 2>&1 | tee "$OUT/bench_trial_$m.md"
    done
    ;;
  chula)
    python benchmarks/train_matrix.py --methods $HASH --datasets chula_rbc12 --bits 16,32,64 --epochs ${EPOCHS:-3} \
        --device cuda --out /tmp/runs --json-out "$OUT/matrix_chula.json" 2>&1 | tee "$OUT/matrix_chula.md"
    ;;
  metric)
    python benchmarks/train_matrix.py --methods ynet,ynet-no-fpn,ynet-no-rmac,ynet-ce --datasets busi --bits 16,32,64 \
        --epochs ${EPOCHS:-15} --device cuda --out /tmp/runs --json-out "$OUT/matrix_ynet.json" 2>&1 | tee "$OUT/matrix_ynet.md"
    python benchmarks/train_matrix.py --methods jtanet,constellation,triplet,npair,contrastive,lsh,itq --datasets chula_rbc12 \
        --bits 16,32,64 --epochs ${EPOCHS_CHULA:-3} --device cuda --out /tmp/runs --json-out "$OUT/matrix_metric_chula.json" 2>&1 | tee "$OUT/matrix_metric_chula.md"
    ;;
esac
