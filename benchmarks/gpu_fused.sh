#!/usr/bin/env bash
# Fused evaluation kernels (issue 14) on one GPU: compile diagnostics, equality on CUDA, timings.
# Run from the project root on a machine with torch + CUDA + Triton (no Ray needed):
#   OUT=out bash benchmarks/gpu_fused.sh            # add HUGE=0 to leave out 100k x 10M
# Writes $OUT/fused_env.txt, fused_smoke.txt, fused_tests.txt (pytest, when installed),
# fused_check.md (fused == torch on every protocol), bench_eval_fused.md (timings).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/fused_env.txt"
python benchmarks/fused_smoke.py 2>&1 | tee "$OUT/fused_smoke.txt"
if python -c "import pytest" 2>/dev/null; then
  HASHBENCH_FUSED_CUDA=1 timeout 600 python -m pytest -q -p no:cacheprovider tests/test_eval_fused.py 2>&1 | tail -30 | tee "$OUT/fused_tests.txt"
else
  echo "pytest not installed: tests/test_eval_fused.py skipped (bench_eval.py --check below covers equality)" | tee "$OUT/fused_tests.txt"
fi
python benchmarks/bench_eval.py --device cuda --check 2>&1 | tee "$OUT/fused_check.md"
python benchmarks/bench_eval.py --device cuda --ref-queries 20 $([ "${HUGE:-1}" = 1 ] && echo --huge) 2>&1 | tee "$OUT/bench_eval_fused.md"
