#!/usr/bin/env bash
# Fused evaluation kernels (issue 14) on one GPU: compile diagnostics, timings, equality on CUDA.
# Run from the project root on a machine with torch + CUDA + Triton (no Ray needed):
#   OUT=out bash benchmarks/gpu_fused.sh
# At most 235 s: stages in order of importance, each under a time limit, so a call cut short keeps the
# first tables. HUGE=0 leaves out 100k x 10M; SMALL=1 adds the 1k x 59k rows; CHECK_S=120 gives the
# equality grid time to finish (default 30 s: the rows done by then); PYTEST=1 adds
# tests/test_eval_fused.py on CUDA.
# Writes to $OUT: fused_env.txt, fused_smoke.txt (compile + brute-force check, full compiler errors),
# bench_eval_fused.md (10k x 1M: new = fused, old = torch, numpy reference), bench_eval_fused_huge.md
# (100k x 10M), fused_check.md (engine fused == torch on every protocol, 8-1024 bits).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/fused_env.txt"
timeout 40 python benchmarks/fused_smoke.py 2>&1 | tee "$OUT/fused_smoke.txt"
timeout 110 python benchmarks/bench_eval.py --device cuda --ref-queries 20 $([ "${SMALL:-0}" = 1 ] || echo --skip-small) \
  2>&1 | tee "$OUT/bench_eval_fused.md"
if [ "${HUGE:-1}" = 1 ]; then
  timeout 55 python benchmarks/bench_eval.py --device cuda --only-huge --ref-queries 3 2>&1 | tee "$OUT/bench_eval_fused_huge.md"
fi
timeout ${CHECK_S:-30} python benchmarks/bench_eval.py --device cuda --check 2>&1 | tee "$OUT/fused_check.md"
if [ "${PYTEST:-0}" = 1 ]; then
  HASHBENCH_FUSED_CUDA=1 timeout 200 python -m pytest -q -p no:cacheprovider tests/test_eval_fused.py 2>&1 | tail -30 | tee "$OUT/fused_tests.txt"
fi
