#!/usr/bin/env bash
# The papers' own protocols (configs/papers/, docs/protocol.md) on the offline GPU machine, in device
# calls of at most 10 minutes each. Run from the project root there; a warm machine keeps /tmp between
# calls, so the set-up is paid once.
#
# Here, before the calls (the bundle and the data do not fit one 64 MiB transfer together):
#   ../shared/tools/gpu-bundle                                   # .gpu/bundle.tar.xz (ignored)
#   mkdir -p .gpudata && cp -r $DATASETS/busi $DATASETS/bccd .gpudata/   # 46 MB (ignored)
# Device calls (carry the named path):
#   carry [".gpu"]      bash benchmarks/gpu_papers.sh site        # unpack Ray/Optuna/polars to /tmp/site
#   carry [".gpudata"]  bash benchmarks/gpu_papers.sh data        # busi256 (3x256x256), bccd128 (3x128x128)
#   bash benchmarks/gpu_papers.sh dch 8,16                        # DCH, 200 epochs, two code lengths per call
#   bash benchmarks/gpu_papers.sh dch 32,64
#   bash benchmarks/gpu_papers.sh ynet ynet 64 [EPOCHS]           # Y-Net 256 px; EPOCHS (default 500) to fit 10 min
#   RESUME=1 bash benchmarks/gpu_papers.sh ynet ynet 64             # continue the same sweep in the next call
#     (a call ended by its time limit leaves Tune's state and checkpoints in /tmp/papers/sweeps)
#   bash benchmarks/gpu_papers.sh table                           # every paper row so far
# Results: $OUT/leaderboard (one compacted Parquet file) and the tables printed on stdout.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} HASHBENCH_DATA=/tmp/hbdata
LB=/tmp/papers/leaderboard
hb() { python -m hashbench "$@"; }
resume=${RESUME:+--resume}
table() {
  mkdir -p "$OUT/leaderboard" && cp -r "$LB"/. "$OUT/leaderboard/" 2>/dev/null
  hb leaderboard --leaderboard "$LB" --protocol "paper:$1" --axis bits --metrics "${@:2}"
}
stage=${1:?stage: site | data | dch BITS | ynet METHODS BITS [EPOCHS] | table}
case $stage in
  site) mkdir -p /tmp/site && tar -xJf .gpu/bundle.tar.xz -C /tmp/site && python -c "import ray, polars, optuna; print('ok')" ;;
  data)
    hb data prepare busi256 --recipe busi --source .gpudata/busi --size 256 --channels 3
    hb data prepare bccd128 --recipe bccd --source .gpudata/bccd --size 128 --channels 3 --skip-invalid ;;
  dch)
    nvidia-smi --query-gpu=name --format=csv,noheader
    hb sweep configs/papers/dch.yaml --name "paper-dch-${2//,/-}" --set bits="$2" \
        --leaderboard "$LB" --storage /tmp/papers/sweeps $resume
    table dch test_P@10 test_mAP@1000 'test_P@H<=0' 'test_P@H<=1' 'test_P@H<=2' 'test_P@H<=3' 'test_P@H<=4' ;;
  ynet)
    nvidia-smi --query-gpu=name --format=csv,noheader
    hb sweep configs/papers/ynet.yaml --name "paper-ynet-${2//,/-}-${3//,/-}" --set methods="$2" --set bits="$3" \
        --set epochs="${4:-500}" --leaderboard "$LB" --storage /tmp/papers/sweeps $resume
    table ynet test_mAP@5 test_mAP@10 test_mAP@20 test_mAP@50 ;;
  table)
    table dch test_P@10 test_mAP@1000 'test_P@H<=0' 'test_P@H<=2' 'test_P@H<=4'
    table ynet test_mAP@5 test_mAP@10 test_mAP@20 test_mAP@50 ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
