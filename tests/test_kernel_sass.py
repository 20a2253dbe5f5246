"""benchmarks/kernel_sass.py: the fused kernels compiled for sm_90 offline, their tile loops counted.

The counts guard what the GPU timings rest on: the query words are preloaded per program (the loop loads
only the item's words and label), and a pair costs two XOR + POPC at 64 bits. The code before the preload
(git a13aec2) counted 31.2 instructions and 3.4 loads per pair in the default tile; timings on an H100 are
in benchmarks/results/2026-12-06/README.md (session 9).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "kernel_sass.py")


def _module():
    spec = importlib.util.spec_from_file_location("kernel_sass", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compiled_kernels():
    """A private copy of fused_triton with compiled (not interpreted) kernels: the interpreted one that
    other test files import may be in ``sys.modules``, and ``triton.jit`` fixed its mode at import."""
    path = os.path.join(ROOT, "hashbench", "platform", "evaluation", "fused_triton.py")
    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        spec = importlib.util.spec_from_file_location("_fused_triton_compiled", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old
    return mod


FT = None


@pytest.fixture(scope="module")
def ks():
    global FT
    FT = _compiled_kernels()
    mod = _module()
    try:
        mod.compile_sass(*_hist_args(mod, W=1))
    except (OSError, subprocess.CalledProcessError) as exc:       # no runnable ptxas / cuobjdump here
        pytest.skip(f"Triton's CUDA tools do not run here: {exc}")
    return mod


def _hist_args(mod, W, BQ=8, BN=256, warps=8, **extra):
    return FT._hist_kernel, mod.HIST, dict(W=W, LW=1, MULTI=False, BQ=BQ, BN=BN, **extra), warps, 90


def _per_pair(ks, W, **kw):
    args = _hist_args(ks, W, **kw)
    body = [ins for _, ins in ks.tile_loop(ks.compile_sass(*args))]
    ops = ks.opcodes(body)
    ppt = args[2]["BQ"] * args[2]["BN"] / (32 * args[3])
    return len(body) / ppt, ops["POPC"] / ppt, ops["LDG"]


def test_tile_loop_of_the_default_histogram_tile(ks):
    per_pair, popc, loads = _per_pair(ks, W=2)
    assert popc == 2.0                                   # one POPC per 32-bit word of a 64-bit code
    assert loads == 3                                    # the item's two words and its class id: no query loads
    assert per_pair < 24                                 # 19.0 with Triton 3.6; 31.2 before the preload


def test_each_preloaded_word_adds_its_xor_and_popc(ks):
    one, popc1, loads1 = _per_pair(ks, W=1)
    four, popc4, loads4 = _per_pair(ks, W=4)
    assert (popc1, popc4) == (1.0, 4.0)
    assert (loads1, loads4) == (2, 5)                    # item words + its label; the query's stay in registers
    assert 3 <= four - one <= 15                         # ~3 instructions (XOR, POPC, add) per extra word


def test_longer_codes_load_query_words_in_the_loop(ks):
    _, popc, loads = _per_pair(ks, W=8)                  # 256 bits: past the 4 preloaded words
    # each tile loads the 8 queries' words 1..7 again (word 0 stays preloaded), the item's 8 words, its label
    assert popc == 8.0 and loads == 7 * 8 + 8 + 1


def test_list_kernel_computes_each_distance_once(ks):
    # contiguous counters gave the counter atomics and the key stores two layouts, and the compiler
    # computed each distance twice (4 POPC per pair at 64 bits, shared-memory conversions in the loop)
    for key64 in (False, True):
        ce = dict(W=2, BQ=4, BN=256, KEY64=key64)
        body = ks.tile_loop(ks.compile_sass(FT._list_kernel, ks.LIST, ce, 2, 90))
        run = ks.always_run(body)
        ops = ks.opcodes(run)
        ppt = 4 * 256 / 64
        assert ops["POPC"] / ppt == 2.0 and ops["LDS"] == 0 and ops["BAR"] == 0
        assert len(run) < len(body)                      # the atomics and stores sit behind branches


def test_always_run_leaves_out_what_a_forward_branch_jumps_over(ks):
    body = [(0x10, "LOP3.LUT R1, R2, R3, RZ, 0x3c, !PT"), (0x20, "@!P0 BRA 0x50"), (0x30, "IMAD.MOV.U32 R4, RZ, RZ, 0x1"),
            (0x40, "REDG.E.ADD.STRONG.GPU desc[UR4][R6.64], R4"), (0x50, "BSYNC B0"), (0x60, "@P1 BRA 0x10")]
    assert ks.always_run(body) == ["LOP3.LUT R1, R2, R3, RZ, 0x3c, !PT", "@!P0 BRA 0x50", "BSYNC B0", "@P1 BRA 0x10"]


def test_script_prints_a_row_per_case_and_compares_another_tree(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--tree", ROOT], capture_output=True, text=True, timeout=300)
    if out.returncode and "ptxas" in out.stderr:
        pytest.skip("Triton's CUDA tools do not run here")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(_module().CASES)
    assert ROOT in out.stdout.splitlines()[0]


def test_a_tree_without_the_kernels_is_refused(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--tree", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"--tree {tmp_path}" in out.stderr and "fused_triton.py" in out.stderr
