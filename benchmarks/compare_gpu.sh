#!/usr/bin/env bash
# Issue 16's acceptance example on one GPU: dch, drh, jtanet, constellation and itq on pneumoniamnist, busi,
# chula_rbc12 and bccd at 32 bits with 3 seeds, every run a `hashbench train --local` into one leaderboard,
# then the `hashbench compare` tables (docs/statistics.md).
#   CHULA=.gpudata/chula_rbc12 BCCD=.gpudata/bccd bash benchmarks/compare_gpu.sh
# Methods run side by side (one process per method, its datasets x seeds in turn). EPOCHS (default: each
# method's own) and SEEDS (default 3) override. A run that fails (e.g. a method that cannot train on a
# dataset) is logged and skipped; the tables say which datasets were left out.
# Results: ${OUT:-out}/compare/{leaderboard,runs}, ${OUT:-out}/compare_*.txt, ${OUT:-out}/compare_<method>.log
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT/compare"
export PYTHONUNBUFFERED=1
LB="$OUT/compare/leaderboard"; RUNS="$OUT/compare/runs"
DATASETS="pneumoniamnist busi ${CHULA:-chula_rbc12} ${BCCD:-bccd}"
SEEDS=${SEEDS:-3}; EP=${EPOCHS:+--epochs $EPOCHS}
pids=()
for m in dch drh jtanet constellation itq; do
  ( for d in $DATASETS; do for s in $(seq 0 $((SEEDS - 1))); do
      extra=""   # constellation's K negatives come from K other classes: K < number of classes
      [ "$m" = constellation ] && [ "$(basename "$d")" = busi ] && extra="--set K=2"            # 3 classes
      [ "$m" = constellation ] && [ "$(basename "$d")" = pneumoniamnist ] && extra="--set K=1"  # 2 classes
      hashbench train $m --dataset "$d" --bits 32 $EP --seed $s --local --device cuda --out "$RUNS" \
          --leaderboard "$LB" $extra || echo "FAILED: $m $d seed $s"
    done; done ) > "$OUT/compare_$m.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
grep -h FAILED "$OUT"/compare_*.log
hashbench compare --across-datasets --bits 32 --leaderboard "$LB" | tee "$OUT/compare_across.txt"
for pair in "dch drh" "dch itq" "jtanet dch" "constellation jtanet" "drh itq"; do
  hashbench compare $pair --leaderboard "$LB"
done | tee "$OUT/compare_pairs.txt"
