#!/usr/bin/env bash
# The fused Hamming kernels' tunables (issue 14) on one GPU: each setting in its own process (fused_triton
# reads HASHBENCH_FUSED_BQ / _BN / _WARPS / _CHUNK / _SAMPLE / _ONEPASS at import), timed by
# `benchmarks/fused_profile.py --time-only` on bench_eval.py's 10k x 1M, 64-bit case, mAP@1000, tie-aware
# and index ties (median of REPEAT calls after 2 warm-up calls, which compile that setting's kernels).
# One markdown row per setting; "same" compares both mAPs with the first row's (the defaults), 1e-9.
#   bash benchmarks/fused_tune.sh                       # on the GPU, from the project root
#   TOTAL_S=150 COMBO_S=30 REPEAT=5 ARGS="--queries 10000 --db 1000000" bash benchmarks/fused_tune.sh
#   DEVICE=cpu ARGS="--queries 8 --db 2048" GRID="default" bash benchmarks/fused_tune.sh   # CPU check (interpreter)
# TOTAL_S bounds the whole script: a setting starts only while COMBO_S seconds are left, and none runs past
# TOTAL_S. GRID: names of the settings to run (default: all, in this order). CACHE: the generated case
# (npz, shared by the processes; default /tmp/fused_case.npz). OUT: where each setting's stderr goes.
set -uo pipefail
TOTAL_S=${TOTAL_S:-150}; COMBO_S=${COMBO_S:-30}; REPEAT=${REPEAT:-5}; DEVICE=${DEVICE:-cuda}
CACHE=${CACHE:-/tmp/fused_case.npz}; ARGS=${ARGS:-}
REF=$(mktemp -u /tmp/fused_tune_ref.XXXXXX)          # the first row's mAPs (JSON), written by that row
ERR=${OUT:-/tmp}; mkdir -p "$ERR"                    # each setting's stderr: $ERR/fused_tune_NAME.err
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ "$DEVICE" = cpu ] && export TRITON_INTERPRET=1
# name: BQ BN WARPS CHUNK SAMPLE ONEPASS (defaults 32 256 8 65536 8192 0); one axis at a time, the likeliest
# first; ONEPASS=1: index ties' top-k lists at the sample's threshold, no counting pass (opt-in variant)
SETTINGS="
default       32  256  8  65536  8192  0
onepass       32  256  8  65536  8192  1
warps4        32  256  4  65536  8192  0
warps16       32  256 16  65536  8192  0
bn128         32  128  8  65536  8192  0
bq64          64  256  8  65536  8192  0
chunk16k      32  256  8  16384  8192  0
chunk256k     32  256  8 262144  8192  0
sample2k      32  256  8  65536  2048  0
sample32k     32  256  8  65536 32768  0
bn512         32  512  8  65536  8192  0
bq16          16  256  8  65536  8192  0
"
GRID=${GRID:-$(echo "$SETTINGS" | awk 'NF {print $1}')}
echo "fused kernel settings, $DEVICE, $(date -u +%H:%M:%S) UTC; TOTAL_S=$TOTAL_S COMBO_S=$COMBO_S REPEAT=$REPEAT ARGS=$ARGS"
echo "| setting (BQ BN WARPS CHUNK SAMPLE ONEPASS) | tie-aware ms | index ms | pairs taken % (tie-aware full pass) | mAP tie-aware | mAP index | same mAP as default |"
echo "|---|---|---|---|---|---|---|"
start=$SECONDS
for name in $GRID; do
  read -r _ bq bn warps chunk sample onepass <<< "$(echo "$SETTINGS" | awk -v n="$name" '$1 == n')"
  if [ -z "${bq:-}" ]; then echo "| $name | unknown setting | | | | | |"; continue; fi
  left=$(( TOTAL_S - (SECONDS - start) ))
  if [ "$left" -lt "$COMBO_S" ]; then echo "| $name $bq $bn $warps $chunk $sample $onepass | not run: ${left}s of TOTAL_S left | | | | | |"; continue; fi
  label="$name $bq $bn $warps $chunk $sample $onepass"
  row=$(HASHBENCH_FUSED_BQ=$bq HASHBENCH_FUSED_BN=$bn HASHBENCH_FUSED_WARPS=$warps HASHBENCH_FUSED_CHUNK=$chunk \
        HASHBENCH_FUSED_SAMPLE=$sample HASHBENCH_FUSED_ONEPASS=$onepass timeout "$COMBO_S" python benchmarks/fused_profile.py --device "$DEVICE" \
        --time-only --label "$label" --repeat "$REPEAT" --cache "$CACHE" --ref "$REF" $ARGS 2> "$ERR/fused_tune_$name.err")
  rc=$?
  if [ $rc -eq 0 ] && [ -n "$row" ]; then
    echo "$row" | grep '^|' | tail -n 1
  else
    why=$([ $rc -eq 124 ] && echo "timed out after ${COMBO_S}s" || echo "rc=$rc: $(tail -n 1 "$ERR/fused_tune_$name.err" | tr '|' '/' | cut -c1-150)")
    echo "| $label | failed ($why) | | | | | |"
  fi
done
echo "done in $(( SECONDS - start )) s"
rm -f "$REF"
