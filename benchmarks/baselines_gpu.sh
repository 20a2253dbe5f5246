#!/usr/bin/env bash
# The papers' baseline comparisons on one GPU (issue 12), one dataset per call:
#   dch vs dch-ksh / dch-sdh / dch-cca-itq      (DCH Table II: "+CNNF" two-stage hashing)
#   drh vs drn-ksh                              (DRH Table 1: end-to-end beats DRN-KSH by 14.2 %)
#   constellation vs ce-embedding (+ its sign)  (constellation Table 1: beats the softmax embedding)
# at 16/32/64 bits, SEEDS seeds each (default 3), 95 % Student-t intervals and paired differences.
#   bash benchmarks/baselines_gpu.sh busi                      # built-in 64-px BUSI
#   CHULA=.gpudata/chula_rbc12 bash benchmarks/baselines_gpu.sh chula
# LIMIT_S caps each process (what finished by then is merged; train_matrix.py writes after every run).
# The eight methods run as eight processes side by side on the GPU (each a train_matrix.py over
# bits x seeds), then train_matrix.py --merge prints the summary and the comparisons.
# Results: ${OUT:-out}/baselines_<stage>_<method>_b<bits>.{md,json} (one per process, written after every
# run), ${OUT:-out}/baselines_<stage>.{md,json} (summary over seeds and the paired comparisons).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stage=${1:?stage: busi | chula}
case $stage in
  busi)  DATA=busi; EPOCHS=${EPOCHS:-15} ;;
  chula) DATA=${CHULA:-chula_rbc12}; EPOCHS=${EPOCHS:-3} ;;
  *) echo "stage must be busi or chula" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-3}; BITS=${BITS:-16,32,64}; TAG=${BITS//,/-}   # BITS=16,32 then BITS=64: two calls, one merge
# SDH's paper value of 1000 anchors exceeds BUSI's 546 train images (a clear error): 500 there.
# The constellation pair uses ResNet-18 (the paper: ResNet-50) to fit the budget; same backbone for both.
# Constellation's K negatives come from K other classes: BUSI has 3 classes, so K = 2 there (paper: 3).
SETS="--set dch-sdh@busi:anchors=500 --set constellation@busi:K=2 --set constellation:arch=resnet18 \
      --set ce-embedding:arch=resnet18"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
pids=()
for m in dch dch-ksh dch-sdh dch-cca-itq drh drn-ksh constellation ce-embedding; do
  timeout "${LIMIT_S:-86400}" python benchmarks/train_matrix.py --methods $m --datasets "$DATA" --bits $BITS --epochs $EPOCHS --seeds $SEEDS \
      $SETS --device cuda --out /tmp/runs_baselines --json-out "$OUT/baselines_${stage}_${m}_b$TAG.json" \
      > "$OUT/baselines_${stage}_${m}_b$TAG.md" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
files=$(ls "$OUT"/baselines_${stage}_*_b*.json | paste -sd, -)   # every bits group run so far
python benchmarks/train_matrix.py --merge "$files" \
    --compare dch:dch-ksh,dch:dch-sdh,dch:dch-cca-itq,drh:drn-ksh,constellation:ce-embedding,constellation:ce-embedding-sign \
    --json-out "$OUT/baselines_${stage}.json" 2>&1 | tee "$OUT/baselines_${stage}.md"
grep -h "error" "$OUT"/baselines_${stage}_*_b*.md | head -20
