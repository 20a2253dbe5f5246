#!/usr/bin/env bash
# Issue 13: the packed-sweep contention seen from inside the trials. Starts PROCS (default 8) copies of
#   python benchmarks/step_profile.py --no-profiler [ARGS...]
# at the same time on the same GPU (as 8 trials at 0.125 GPU each), each with its own log and JSON under
# $OUT/step_profile_concurrent (OUT default: out), waits for all, and prints every process's per-epoch
# train-step s (and wall s), so the slow-down against a lone process (PROCS=1) shows.
# MPS=1: the processes run under an NVIDIA MPS control daemon started the way `hashbench sweep --mps`
# and benchmarks/gpu_packing_mps.sh (bench_packing.py --mps) start it: hashbench.platform.sweep.mps.mps_daemon
# (private pipe and log directories, CUDA_MPS_* exported to the children, `quit` when they are done; its
# "[mps] ..." lines name the control log, whose tail is printed).
#   PROCS=8 MPS=1 OUT=$OUT bash benchmarks/step_profile_concurrent.sh                 # drh-nq
#   PROCS=8 MPS=1 OUT=$OUT bash benchmarks/step_profile_concurrent.sh --method dch    # the comparison
# Extra arguments go to every step_profile.py (e.g. --epochs 5 --no-graph).
set -uo pipefail
self=$(realpath "$0")
DIR=$(realpath -m "${OUT:-out}")/step_profile_concurrent
cd "$(dirname "$self")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PROCS=${PROCS:-8}
case $PROCS in ''|*[!0-9]*|0) echo "PROCS=$PROCS: expected a whole number of processes, at least 1" >&2; exit 2;; esac
case ${MPS:-0} in 0|1) ;; *) echo "MPS=$MPS: expected 0 or 1" >&2; exit 2;; esac
mkdir -p "$DIR"

if [ "${MPS:-0}" = 1 ]; then   # this script again, inside mps_daemon's block
  python - "$self" "$@" <<'EOF' 2>&1 | tee "$DIR/mps.txt"
import os, subprocess, sys
from hashbench.platform.errors import HashbenchError
from hashbench.platform.sweep.mps import mps_daemon
try:
    with mps_daemon(lambda line: print(line, flush=True)):
        rc = subprocess.call(["bash", *sys.argv[1:]], env={**os.environ, "MPS": "0", "STEP_PROFILE_MPS": "1"})
except HashbenchError as exc:
    sys.exit(f"MPS=1: {exc} (here: run with MPS=0)")
sys.exit(rc)
EOF
  rc=${PIPESTATUS[0]}
  log=$(sed -n 's/.*\[mps\] control daemon stopped;.* log: \(.*\)$/\1/p' "$DIR/mps.txt")
  [ -n "$log" ] && { echo "== $log (last 20 lines)"; tail -n 20 "$log"; }
  exit "$rc"
fi

echo "== $PROCS concurrent step_profile.py --no-profiler $* (MPS: ${STEP_PROFILE_MPS:-0}; logs in $DIR)"
pids=()
for i in $(seq 1 "$PROCS"); do
  python benchmarks/step_profile.py --no-profiler --label "p$i/$PROCS" --json-out "$DIR/p$i.json" "$@" \
    > "$DIR/p$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "process p$((i + 1)) exited $? (log: $DIR/p$((i + 1)).log):"; tail -n 20 "$DIR/p$((i + 1)).log"; rc=1; }
done
python - "$DIR" "$PROCS" "${STEP_PROFILE_MPS:-0}" <<'EOF' | tee "$DIR/summary.md"
import json, os, sys
out, procs, mps = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = []
for i in range(1, procs + 1):
    path = os.path.join(out, f"p{i}.json")
    if os.path.exists(path):
        with open(path) as f:
            runs.append((f"p{i}", json.load(f)))
if not runs:
    sys.exit("no process wrote its JSON")
first = runs[0][1]
graph = {name: (r["graph"] or {}).get("failed") or ("graph" if r["graph"] else "eager") for name, r in runs}
print(f"\n{first['method']} on {first['dataset']}, {first['device']}, {procs} processes at once, MPS {mps}; "
      f"{first['steps_per_epoch']} steps of {first['batch_size']} per epoch; step: {sorted(set(graph.values()))}")
n_ep = max(len(r["epochs"]) for _, r in runs)
head = " | ".join(f"epoch {e} train s (wall s)" for e in range(n_ep))
print(f"\n| process | pid | {head} | ms/step last epoch |\n|---|---|" + "---|" * (n_ep + 1))
for name, r in runs:
    cells = [f"{e['train_s']:.3f} ({e['wall_s']:.3f})" for e in r["epochs"]]
    last = r["epochs"][-1]
    print(f"| {name} | {r['pid']} | " + " | ".join(cells + [""] * (n_ep - len(cells)))
          + f" | {1000 * last['train_s'] / last['steps']:.2f} |")
last = sorted(r["epochs"][-1]["train_s"] for _, r in runs)
print(f"\nlast epoch train s over the processes: min {last[0]:.3f}, median {last[len(last) // 2]:.3f}, "
      f"max {last[-1]:.3f}")
EOF
exit "$rc"
