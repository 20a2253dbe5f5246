#!/usr/bin/env bash
# Fused evaluation kernels (issue 14) on one GPU: compile diagnostics, equality on CUDA, timings.
# Run from the project root on a machine with torch + CUDA + Triton (no Ray needed); stages run in order of
# importance, each under a time limit, so a 10-minute cap still returns the first tables:
#   OUT=out bash benchmarks/gpu_fused.sh           # everything (about 5 min; each stage has a time limit)
#   HUGE=0 ...   leaves out 100k x 10M;   PYTEST=1 ...   also runs tests/test_eval_fused.py on CUDA (pytest)
# Writes to $OUT: fused_env.txt, fused_smoke.txt (compile + brute-force check, full compiler errors),
# fused_check.md (engine fused == torch on every protocol, 8-1024 bits), bench_eval_fused.md
# (10k x 1M and 1k x 59k: new, old, numpy reference), bench_eval_fused_huge.md (100k x 10M).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/fused_env.txt"
timeout 120 python benchmarks/fused_smoke.py 2>&1 | tee "$OUT/fused_smoke.txt"
if [ "${PYTEST:-0}" = 1 ]; then
  HASHBENCH_FUSED_CUDA=1 timeout 200 python -m pytest -q -p no:cacheprovider tests/test_eval_fused.py 2>&1 | tail -30 | tee "$OUT/fused_tests.txt"
fi
timeout 120 python benchmarks/bench_eval.py --device cuda --check 2>&1 | tee "$OUT/fused_check.md"
timeout 300 python benchmarks/bench_eval.py --device cuda --ref-queries 20 2>&1 | tee "$OUT/bench_eval_fused.md"
if [ "${HUGE:-1}" = 1 ]; then
  timeout 240 python benchmarks/bench_eval.py --device cuda --only-huge --ref-queries 5 2>&1 | tee "$OUT/bench_eval_fused_huge.md"
fi
