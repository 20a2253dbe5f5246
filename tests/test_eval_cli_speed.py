"""What makes ``hashbench eval`` start fast, checked as behaviour (no timings here; see
benchmarks/bench_eval_cli.py for those):

* the torch-free CPU path (``cpu_eval.evaluate_cpu``) gives ``evaluate``'s results: hand-checked tie
  cases, every convention x tie policy x no-hit policy, multi-label, packed codes, same-set; it declines
  (returns None) whatever it does not serve, and the CLI then runs ``evaluate`` with its errors;
* ``hashbench eval`` in a fresh process prints what the torch path prints and imports neither torch
  nor the other subcommands' modules;
* the dispatcher builds only the chosen subcommand's parser, and every ``--help`` is unchanged;
* the numba kernels are cached on disk (``NUMBA_CACHE_DIR``) and still work, with a warning, where no
  cache directory is writable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hashbench.platform.cli import SUBCOMMANDS, build_parser, main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation import engines, evaluate
from hashbench.platform.evaluation import cpu_eval
from hashbench.platform.evaluation.cpu_eval import KERNEL_MIN_PAIRS, evaluate_cpu
from hashbench.platform.evaluation.cpu_kernels import PackedDatabase
from hashbench.platform.evaluation.cpu_numpy import NumpyDatabase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-12          # cpu_eval.py: sums, exp and lgamma may round differently in the last bits


def run_py(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600)


def clustered(rng, n, bits, classes=6, flip=0.25, multi=False):
    centres = rng.integers(0, 2, (classes, bits)).astype(np.uint8)
    labels = rng.integers(0, classes, n)
    codes = (centres[labels] ^ (rng.random((n, bits)) < flip)).astype(np.uint8)
    if multi:
        hot = (rng.random((n, classes)) < 0.15).astype(np.uint8)
        hot[np.arange(n), labels] = 1
        hot[-1] = 0                     # an item (or query) without any label
        return codes, hot
    return codes, labels


def assert_same_results(fast: dict, ref: dict):
    assert fast is not None
    assert list(fast) == list(ref)
    assert fast["protocol"] == ref["protocol"]
    for key, value in ref.items():
        if key != "protocol":
            assert type(fast[key]) is type(value), key
            assert fast[key] == pytest.approx(value, abs=TOL, rel=0), key


@pytest.fixture(params=["numba", "numpy"])
def kernels_for_small_inputs(request, monkeypatch):
    """"numba": both paths take the numba kernels at any size (evaluate reads engines' threshold, and
    evaluate_cpu honours it once engines is imported); "numpy": the kernels off, so evaluate_cpu counts
    with its numpy twin (cpu_numpy.NumpyDatabase) and evaluate ranks with faiss / argsort and sums
    with metrics.ranked_sums_np or torch histograms: independent code on both sides."""
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", 0)
    monkeypatch.setattr(engines, "CPU_KERNELS", request.param == "numba")
    monkeypatch.delenv("HASHBENCH_EVAL_TORCH_FREE", raising=False)
    expected = PackedDatabase if request.param == "numba" else NumpyDatabase
    assert cpu_eval._database_class(10 ** 6, 64) is expected
    return request.param


# ------------------------------------------------------------------------ hand-checked values
def test_tie_cases_by_hand(kernels_for_small_inputs):
    """Query 0000 (class 1); database distances 0, 1, 1, 2 with relevance 1, 0, 1, 0. The two items at
    distance 1 are tied: in the two orders the relevant items sit at ranks (1, 3) or (1, 2)."""
    q = np.zeros((1, 4), dtype=np.uint8)
    db = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.uint8)
    ql, dl = np.array([1]), np.array([1, 0, 1, 0])
    kw = dict(ks=["1", "2", "all"], hamming_radius=1)
    tie = evaluate_cpu(q, db, ql, dl, **kw)
    assert tie["mAP@all"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)     # 11/12
    assert tie["mAP@2"] == pytest.approx(1.0)        # hits convention: 1 hit (AP 1) or 2 hits (AP 1)
    assert tie["P@2"] == pytest.approx(0.75) and tie["P@1"] == 1.0
    assert tie["MAP@R"] == pytest.approx(0.75)       # R = 2: S / R over the top 2, (1/2 + 1) / 2
    assert tie["P@H<=1"] == pytest.approx(2 / 3) and tie["H<=1-empty-queries"] == 0
    assert evaluate_cpu(q, db, ql, dl, convention="r", **kw)["mAP@2"] == pytest.approx(0.75)
    index = evaluate_cpu(q, db, ql, dl, ties="index", **kw)                # order 0, 1, 2, 3
    assert index["mAP@all"] == pytest.approx((1 + 2 / 3) / 2)
    assert index["mAP@2"] == 1.0 and index["P@2"] == 0.5 and index["MAP@R"] == 0.5
    assert tie["protocol"]["engine"] == "faiss" and tie["protocol"]["k_effective"] == {"1": 1, "2": 2, "all": 4}


# ------------------------------------------------------------------- equality with evaluate()
@pytest.mark.parametrize("convention", ["hits", "min-k-r", "r"])
@pytest.mark.parametrize("ties", ["tie-aware", "index"])
@pytest.mark.parametrize("exclude_no_hit", [False, True])
def test_equals_evaluate_single_label(kernels_for_small_inputs, convention, ties, exclude_no_hit):
    rng = np.random.default_rng(3)
    q, ql = clustered(rng, 60, 16)
    db, dl = clustered(rng, 700, 16)
    ql[0] = 99                                        # a query whose class no item has
    kw = dict(ks=["1", "10", "100", "all", "N-1"], convention=convention, ties=ties,
              exclude_no_hit=exclude_no_hit, hamming_radius=3)
    assert_same_results(evaluate_cpu(q, db, ql, dl, **kw), evaluate(q, db, ql, dl, **kw))


@pytest.mark.parametrize("ties", ["tie-aware", "index"])
def test_equals_evaluate_multi_label_pm1_and_packed(kernels_for_small_inputs, ties):
    rng = np.random.default_rng(4)
    q, ql = clustered(rng, 40, 70, multi=True)
    db, dl = clustered(rng, 500, 70, multi=True)
    kw = dict(ks=[5, 50, "all"], ties=ties, convention="min-k-r")
    ref = evaluate(q, db, ql, dl, **kw)
    pm1 = evaluate_cpu(q.astype(np.float32) * 2 - 1, db.astype(np.float32) * 2 - 1, ql, dl, **kw)
    packed = evaluate_cpu(np.packbits(q, axis=1), np.packbits(db, axis=1), ql, dl, bits=70, **kw)
    assert_same_results(pm1, ref)
    assert_same_results(packed, ref)
    assert ref["protocol"]["multi_label"] is True


@pytest.mark.parametrize("ties", ["tie-aware", "index"])
def test_equals_evaluate_same_set(kernels_for_small_inputs, ties):
    rng = np.random.default_rng(5)
    codes, labels = clustered(rng, 300, 12)
    kw = dict(ks=["10", "all"], ties=ties, exclude_self=True, exclude_no_hit=True)
    fast = evaluate_cpu(codes, codes, labels, labels, **kw)
    assert_same_results(fast, evaluate(codes, codes, labels, labels, **kw))
    assert fast["protocol"]["same_set"] is True and fast["protocol"]["k_effective"]["all"] == 299


def test_declines_what_it_does_not_serve(kernels_for_small_inputs, monkeypatch):
    rng = np.random.default_rng(6)
    q, ql = clustered(rng, 20, 16)
    db, dl = clustered(rng, 200, 16)
    assert evaluate_cpu(q, db, ql, dl) is not None
    declined = [
        dict(engine="torch"), dict(engine="faiss-hnsw"), dict(device="cuda"), dict(distance="l2"),
        dict(convention="bogus"), dict(ks=["0"]), dict(hamming_radius=-1), dict(bits=16),
    ]
    for kw in declined:
        assert evaluate_cpu(q, db, ql, dl, **kw) is None, kw
    bad_codes = q.copy()
    bad_codes[0, 0] = 2                              # neither 0/1 nor -1/+1
    assert evaluate_cpu(bad_codes, db, ql, dl) is None
    assert evaluate_cpu(q, db, ql.astype(np.float64) + 0.5, dl) is None    # non-integer labels
    assert evaluate_cpu(q, db, np.zeros((20, 0)), np.zeros((200, 0))) is None  # multi-hot without columns
    assert evaluate_cpu(q, db, ql.astype(np.uint32), dl) is None           # uint32 labels: left to evaluate
    assert evaluate_cpu(q, db, ql, dl, exclude_self=True) is None          # queries are not the database
    monkeypatch.setenv("HASHBENCH_EVAL_TORCH_FREE", "0")
    assert evaluate_cpu(q, db, ql, dl) is None
    monkeypatch.delenv("HASHBENCH_EVAL_TORCH_FREE")
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", KERNEL_MIN_PAIRS)     # 20 x 200 pairs: evaluate's numpy path,
    monkeypatch.setattr(engines, "CPU_KERNELS", True)                      # evaluate_cpu's numpy twin
    assert cpu_eval._database_class(20 * 200, 16) is NumpyDatabase
    for ties in ("tie-aware", "index"):
        assert_same_results(evaluate_cpu(q, db, ql, dl, ties=ties), evaluate(q, db, ql, dl, ties=ties))


def test_one_shot_process_weighs_numbas_start_up(monkeypatch):
    """In a one-shot process without numba loaded, the counts below NUMPY_MAX_PAIRS come from numpy and
    larger inputs take the kernels; once numba is loaded, the kernels from KERNEL_MIN_PAIRS on, as evaluate."""
    monkeypatch.setattr(engines, "CPU_KERNELS", True)
    monkeypatch.setattr(engines, "KERNEL_MIN_PAIRS", KERNEL_MIN_PAIRS)
    monkeypatch.setattr(cpu_eval, "_ONE_SHOT", True)
    pick = cpu_eval._database_class
    monkeypatch.delitem(sys.modules, "numba")                    # as in a fresh process (restored after)
    monkeypatch.setattr(cpu_eval, "preload_cython_blas", lambda: False)
    big = cpu_eval.NUMPY_MAX_PAIRS
    assert pick(big - 1, 64) is NumpyDatabase
    assert pick(big, 64) is PackedDatabase
    assert pick(KERNEL_MIN_PAIRS - 1, 64) is NumpyDatabase
    monkeypatch.setattr(cpu_eval, "_ONE_SHOT", False)
    assert pick(big - 1, 64) is PackedDatabase


def test_constants_agree_with_the_torch_modules():
    from hashbench.platform.evaluation import core, cpu_eval

    assert cpu_eval.CONVENTIONS == core.CONVENTIONS and cpu_eval.TIES == core.TIES
    assert cpu_eval.KERNEL_MIN_PAIRS == engines.KERNEL_MIN_PAIRS


def test_cli_error_is_evaluates_error(tmp_path, capsys):
    """A bad file goes to evaluate, whose message the CLI prints."""
    rng = np.random.default_rng(7)
    q, ql = clustered(rng, 4, 8)
    db, dl = clustered(rng, 30, 8)
    q[1, 2] = 5
    path = tmp_path / "bad.npz"
    np.savez(path, query_codes=q, db_codes=db, query_labels=ql, db_labels=dl)
    with pytest.raises(HashbenchError) as exc:
        evaluate(q, db, ql, dl)
    assert main(["eval", "--codes", str(path)]) == exc.value.exit_code
    assert f"hashbench eval: error: {exc.value}" in capsys.readouterr().err


# --------------------------------------------------------------------------- the CLI process
@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """Enough query-item pairs (KERNEL_MIN_PAIRS) for the kernel path without changing any setting."""
    rng = np.random.default_rng(8)
    q, ql = clustered(rng, 300, 64, classes=10, flip=0.3)
    db, dl = clustered(rng, -(-KERNEL_MIN_PAIRS // 300), 64, classes=10, flip=0.3)
    path = tmp_path_factory.mktemp("cli") / "codes.npz"
    np.savez(path, query_codes=q, db_codes=db, query_labels=ql, db_labels=dl)
    return str(path), (q, db, ql, dl)


CLI_PROBE = """
    import io, json, os, sys, contextlib
    from hashbench.platform.cli import main
    if "PROBE_NUMPY_MAX_PAIRS" in os.environ:      # where a one-shot process switches to the numba kernels
        from hashbench.platform.evaluation import cpu_eval
        cpu_eval.NUMPY_MAX_PAIRS = int(os.environ["PROBE_NUMPY_MAX_PAIRS"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(sys.argv[1:])
    mods = sorted(m for m in sys.modules if m in ("torch", "scipy.linalg") or m.startswith(("torch.", "hashbench.")))
    arraymath = sys.modules.get("numba.np.arraymath")
    print(json.dumps({"code": code, "stdout": out.getvalue(), "modules": mods, "numba": "numba" in sys.modules,
                      "numba_blas": getattr(arraymath, "_HAVE_BLAS", None)}))
"""


def probe(args, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CLI_PROBE)] + args, cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, **(env or {})), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("ties", ["tie-aware", "index"])
def test_cli_prints_what_the_torch_path_prints_without_importing_torch(big_file, ties):
    path, (q, db, ql, dl) = big_file
    args = ["eval", "--codes", path, "--ties", ties, "--k", "10,100,all"]
    fast, slow = probe(args), probe(args, env={"HASHBENCH_EVAL_TORCH_FREE": "0"})
    assert fast["code"] == slow["code"] == 0
    assert fast["stdout"] == slow["stdout"]
    assert "engine=faiss on cpu" in fast["stdout"]
    assert "torch" not in fast["modules"] and "torch" in slow["modules"]
    assert not fast["numba"] and "scipy.linalg" not in fast["modules"]   # below NUMPY_MAX_PAIRS: numpy
    # above it: the numba kernels, which start without all of scipy.linalg (preload_cython_blas)
    kernels = probe(args, env={"PROBE_NUMPY_MAX_PAIRS": "0"})
    assert kernels["stdout"] == slow["stdout"] and "torch" not in kernels["modules"]
    assert kernels["numba"] and kernels["numba_blas"] is True and "scipy.linalg" not in kernels["modules"]
    lazy = {"hashbench.platform.evaluation.core", "hashbench.platform.evaluation.engines",
            "hashbench.platform.evaluation.metrics"}
    others = {f"hashbench.platform.cli.{name}_cmd" for name in SUBCOMMANDS if name != "eval"}
    assert not (lazy | others) & set(fast["modules"])
    # --json: the numbers of evaluate() in this process
    got = json.loads(probe(args + ["--json"])["stdout"])
    assert_same_results(got, evaluate(q, db, ql, dl, ks=["10", "100", "all"], ties=ties))


def test_cli_same_set_and_packed(big_file, tmp_path):
    _, (q, db, ql, dl) = big_file
    path = tmp_path / "packed.npz"
    codes, labels = db[:4200], dl[:4200]                            # 4200^2 pairs >= KERNEL_MIN_PAIRS
    np.savez(path, query_codes=np.packbits(codes, axis=1), query_labels=labels, bits=64)
    got = probe(["eval", "--codes", str(path), "--same-set", "--json", "--k", "100,all"])
    assert "torch" not in got["modules"]
    assert_same_results(json.loads(got["stdout"]),
                        evaluate(codes, codes, labels, labels, ks=["100", "all"], exclude_self=True))


# ----------------------------------------------------------------------------- the dispatcher
def test_parser_holds_only_the_chosen_subcommand():
    def choices(parser):
        return list(parser._subparsers._group_actions[0].choices)

    assert choices(build_parser(["eval", "--codes", "x.npz"])) == ["eval"]
    assert choices(build_parser()) == SUBCOMMANDS
    assert choices(build_parser(["--help"])) == SUBCOMMANDS        # top-level help lists every command
    assert choices(build_parser(["nosuch"])) == SUBCOMMANDS        # argparse names the valid ones


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_is_unchanged(name, capsys):
    full = build_parser()._subparsers._group_actions[0].choices[name].format_help()
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == full
    assert full.startswith(f"usage: hashbench {name} ")


def test_top_level_help_and_errors_list_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(f"    {name} " in text or f"    {name}\n" in text for name in SUBCOMMANDS)
    with pytest.raises(SystemExit) as exc:
        main(["nosuch"])
    assert exc.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
    assert main([]) == 2


# --------------------------------------------------------------------------------- numba cache
COUNT_LEVELS = """
    import numpy as np
    from hashbench.platform.evaluation import cpu_kernels as ck
    buf = np.array([0, 1, 3, 2, 3], dtype=np.uint8)       # 2 * level + relevant
    n, r = np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64)
    ck._count_levels(buf, 0, n, r)
    print(n.tolist(), r.tolist(), sorted(ck._count_levels.stats.cache_hits.values()), ck.UNCACHED)
"""


def test_kernels_cached_in_numba_cache_dir(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = run_py(COUNT_LEVELS, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("[[2, 3]] [[1, 2]] ")   # levels 0 and 1: 2 and 3 items, 1 and 2 relevant
    assert any(name.startswith("cpu_kernels._count_levels") and name.endswith(".nbi")
               for _, _, files in os.walk(tmp_path) for name in files)
    second = run_py(COUNT_LEVELS, env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().endswith("[1] []")         # loaded from the cache once; nothing uncached


def test_kernels_work_without_any_writable_cache_directory():
    """A read-only install (no writable __pycache__, user cache or NUMBA_CACHE_DIR): numba finds no cache
    locator; the kernels are compiled in memory, with one warning that says what to set."""
    setup = ("import warnings\n"
             "import numba.core.caching as caching\n"
             "caching.CacheImpl._locator_classes = []   # what numba sees when no directory is writable\n"
             "warnings.simplefilter('always')\n"
             "with warnings.catch_warnings(record=True) as caught:\n"
             + textwrap.indent(textwrap.dedent(COUNT_LEVELS), "    ")
             + "print([str(w.message) for w in caught if w.category.__name__ == 'HashbenchWarning'])\n")
    out = run_py(setup)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[[2, 3]] [[1, 2]] [] ['_count_levels', '_ranked_sums']"
    assert "NUMBA_CACHE_DIR" in lines[1] and lines[1].count("not cached") == 1


def test_scipy_linalg_still_imports_after_the_blas_preload():
    out = run_py("""
        import sys
        import numpy as np
        from hashbench.platform.evaluation.cpu_eval import preload_cython_blas
        assert preload_cython_blas() is True
        assert "scipy.linalg" not in sys.modules
        import numba.np.arraymath
        assert numba.np.arraymath._HAVE_BLAS and "scipy.linalg" not in sys.modules
        import scipy.linalg
        from scipy.linalg import cython_blas
        assert cython_blas is sys.modules["scipy.linalg.cython_blas"]
        a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
        assert np.array_equal(scipy.linalg.blas.dgemm(1.0, a, b), a @ b)
        assert preload_cython_blas() is False          # already there: nothing to do
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
