# Shared by the benchmarks/gpu_session*.sh scripts (sourced, not run): the environment of a device call
# (the bundle unpacked in .site/, prepared data in /tmp/hbdata) and time-limited stages whose results are
# re-packed into $OUT after each one, so a call cut short still returns what finished.
OUT=${OUT:-out}; mkdir -p "$OUT"; RES=/tmp/res; mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.site:$PWD HASHBENCH_DATA=/tmp/hbdata
# pytorch-metric-learning where the bundle is not unpacked (call C), from benchmarks/gpu_prepare.sh; its
# tqdm only where the machine has none, so as not to hide the machine's own
if [ -d .gpudata/pml ]; then
  PYTHONPATH=$PYTHONPATH:$PWD/.gpudata/pml
  python -c 'import tqdm' 2>/dev/null || PYTHONPATH=$PYTHONPATH:$PWD/.gpudata/pml/tqdm-fallback
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
save() { tar -czf "$OUT/results_$1.tgz" -C "$RES" . 2>/dev/null; }   # save CALL: $RES -> $OUT/results_CALL.tgz
stage() {  # stage NAME LIMIT_S COMMAND... (uses $CALL and $STAGE_TAIL, default 60 log lines)
  local name=$1 limit=$2; shift 2; mkdir -p "$RES/$name"; local t0=$SECONDS
  echo "=== $name (limit ${limit}s) ==="
  OUT="$RES/$name" timeout "$limit" "$@" > "$RES/$name/log.txt" 2>&1; local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s ===" | tee -a "$RES/$name/log.txt"
  tail -n "${STAGE_TAIL:-60}" "$RES/$name/log.txt"; save "$CALL"
}
# paper-protocol runs: the hashbench shim of .site/bin, where their leaderboard and Tune state live
export PATH=$PWD/.site/bin:$PATH
LB=/tmp/papers/leaderboard; SW=/tmp/papers/sweeps
hb() { python -m hashbench "$@"; }
left() { echo $(( ${BUDGET:-${DEFAULT_BUDGET:-560}} - SECONDS )); }   # seconds left in this call (BUDGET)
