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
# name, then the tunables it changes as KEY=VALUE (HASHBENCH_FUSED_<KEY>). Grids 1-3 (session 7) ran
# against the defaults of then, which every row of theirs still gets where it sets nothing: BQ=32 BN=256
# WARPS=8 CHUNK=65536 SAMPLE=8192, LIST_BQ/LIST_BN/LIST_WARPS = the row's BQ/BN/WARPS, ONEPASS=0 (BASE=old,
# the default); BASE=now leaves unset tunables at fused_triton's current defaults (picked from grid 3).
# The histogram tile (BQ BN WARPS) decides the tie-aware time; the index time adds the top-k list
# kernel (LIST_*). SET=1 (default) runs SETTINGS; SET=2 runs SETTINGS2 (session 7: around BQ=16), SET=3
# SETTINGS3 (around BQ=8, the best of SET=2), SET=4 SETTINGS4 (BASE=now: around the defaults picked from
# grid 3, and the opt-in device-side re-count RECOUNT=device against the host check), SET=5 SETTINGS5
# (BASE=now, session 9: around the defaults with the query words preloaded per program, where a thread's
# registers hold its queries' words and larger query blocks cost fewer loads), SET=6 SETTINGS6 (BASE=now,
# session 9: the top-k list kernel's tile once it computes each distance once).
SETTINGS="
default
onepass      ONEPASS=1
warps4       WARPS=4
warps16      WARPS=16
bn128        BN=128
bq64         BQ=64
chunk16k     CHUNK=16384
chunk256k    CHUNK=262144
sample2k     SAMPLE=2048
sample32k    SAMPLE=32768
bn512        BN=512
bq16         BQ=16
"
SETTINGS2="
default
bq16         BQ=16
bq16w4       BQ=16 WARPS=4
bq16w16      BQ=16 WARPS=16
bq16bn128    BQ=16 BN=128
bq16bn512    BQ=16 BN=512
bq16bn512w16 BQ=16 BN=512 WARPS=16
bq16w4bn128  BQ=16 WARPS=4 BN=128
bq8          BQ=8
bq8w4        BQ=8 WARPS=4
bq8bn512     BQ=8 BN=512
bq16c16k     BQ=16 CHUNK=16384
bq16c256k    BQ=16 CHUNK=262144
l32w16       BQ=16 LIST_BQ=32 LIST_WARPS=16
l32w16b512   BQ=16 LIST_BQ=32 LIST_WARPS=16 LIST_BN=512
l16w16       BQ=16 LIST_BQ=16 LIST_WARPS=16
l32w4        BQ=16 LIST_BQ=32 LIST_WARPS=4
l64w16       BQ=16 LIST_BQ=64 LIST_WARPS=16
l16w4        BQ=16 LIST_BQ=16 LIST_WARPS=4
l32w8b128    BQ=16 LIST_BQ=32 LIST_WARPS=8 LIST_BN=128
onepass16    BQ=16 ONEPASS=1 LIST_BQ=32 LIST_WARPS=16
"
SETTINGS3="
default
bq8          BQ=8
bq4          BQ=4
bq4w4        BQ=4 WARPS=4
bq4w2        BQ=4 WARPS=2
bq8w2        BQ=8 WARPS=2
bq8bn128     BQ=8 BN=128
bq8bn128w4   BQ=8 BN=128 WARPS=4
bq4bn512     BQ=4 BN=512
bq4bn512w4   BQ=4 BN=512 WARPS=4
bq8c16k      BQ=8 CHUNK=16384
bq8s4k       BQ=8 SAMPLE=4096
bq8l4w2      BQ=8 LIST_BQ=4 LIST_WARPS=2
bq8l8w2      BQ=8 LIST_BQ=8 LIST_WARPS=2
bq8l8w4b128  BQ=8 LIST_BQ=8 LIST_WARPS=4 LIST_BN=128
"
SETTINGS4="
default
recount_dev  RECOUNT=device
bq4          BQ=4
bq16         BQ=16
w4           WARPS=4
bn128        BN=128
c8k          CHUNK=8192
c64k         CHUNK=65536
l2w2         LIST_BQ=2
l8w2         LIST_BQ=8
l4w1         LIST_WARPS=1
l4w4         LIST_WARPS=4
"
SETTINGS5="
default
recount_dev  RECOUNT=device
bq16         BQ=16
bq16rd       BQ=16 RECOUNT=device
bq16w4       BQ=16 WARPS=4
bq16bn512    BQ=16 BN=512
bq4          BQ=4
bn512        BN=512
w4           WARPS=4
c8k          CHUNK=8192
c64k         CHUNK=65536
l8w4         LIST_BQ=8 LIST_WARPS=4
"
SETTINGS6="
default
l8w4         LIST_BQ=8 LIST_WARPS=4
l8w8         LIST_BQ=8 LIST_WARPS=8
l16w8        LIST_BQ=16 LIST_WARPS=8
l8w2         LIST_BQ=8 LIST_WARPS=2
l4w4         LIST_WARPS=4
l4w1         LIST_WARPS=1
l2w2         LIST_BQ=2
lbn128       LIST_BN=128
lbn512       LIST_BN=512
l16w4        LIST_BQ=16 LIST_WARPS=4
recount_dev  RECOUNT=device
"
case ${SET:-1} in
  1) ;;
  2|3|4|5|6) sel=SETTINGS$SET; SETTINGS=${!sel} ;;
  *) echo "fused_tune.sh: SET=$SET: expected 1 to 6" >&2; exit 2 ;;
esac
[ "${SET:-1}" -ge 4 ] && BASE=${BASE:-now}
GRID=${GRID:-$(echo "$SETTINGS" | awk 'NF {print $1}')}
echo "fused kernel settings, $DEVICE, $(date -u +%H:%M:%S) UTC; TOTAL_S=$TOTAL_S COMBO_S=$COMBO_S REPEAT=$REPEAT BASE=${BASE:-old} ARGS=$ARGS"
echo "| setting (changed tunables) | tie-aware ms | index ms | pairs taken % (tie-aware full pass) | mAP tie-aware | mAP index | same mAP as default |"
echo "|---|---|---|---|---|---|---|"
start=$SECONDS
for name in $GRID; do
  line=$(echo "$SETTINGS" | awk -v n="$name" '$1 == n')
  if [ -z "$line" ]; then echo "| $name | unknown setting | | | | | |"; continue; fi
  kv=$(echo "$line" | cut -d' ' -f2- -s | xargs)
  left=$(( TOTAL_S - (SECONDS - start) ))
  label="$name${kv:+ $kv}"
  if [ "$left" -lt "$COMBO_S" ]; then echo "| $label | not run: ${left}s of TOTAL_S left | | | | | |"; continue; fi
  envs=()
  if [ "${BASE:-old}" = old ]; then        # the defaults grids 1-3 were written against
    declare -A v=([BQ]=32 [BN]=256 [WARPS]=8 [CHUNK]=65536 [SAMPLE]=8192)
    for a in $kv; do v[${a%%=*}]=${a#*=}; done
    for t in BQ BN WARPS; do [ -n "${v[LIST_$t]:-}" ] || v[LIST_$t]=${v[$t]}; done
    for key in "${!v[@]}"; do envs+=("HASHBENCH_FUSED_$key=${v[$key]}"); done
    unset v
  else
    for a in $kv; do envs+=("HASHBENCH_FUSED_$a"); done
  fi
  row=$(env "${envs[@]}" timeout "$COMBO_S" python benchmarks/fused_profile.py --device "$DEVICE" \
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
