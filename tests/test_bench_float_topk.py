"""benchmarks/bench_float_topk.py on the CPU at a tiny size, in a subprocess: its table, its checks, bad input."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_float_topk.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--queries", "40", "--db", "3000", "--dim", "8",
                           "--repeat", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and line[2].isdigit()]


def test_each_cut_off_gets_a_row_and_both_paths_agree_with_float64():
    # chunks of 7 queries: the tiled path's running merge and the chunk concatenation are both exercised
    out = _run("--ks", "1,10,500", "--query-chunk", "7", "--distance", "cosine")
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert [r[0] for r in rows] == ["1", "10", "500"]
    for r in rows:
        assert r[7] == "yes" and r[8].startswith("yes (40 queries)"), r
        assert float(r[1]) > 0 and float(r[4]) > 0


def test_skip_old_leaves_the_whole_matrix_columns_empty():
    out = _run("--ks", "5", "--skip-old")
    assert out.returncode == 0, out.stderr
    (row,) = _rows(out.stdout)
    assert row[4] == row[6] == row[7] == "-" and row[8].startswith("yes")


def test_a_cut_off_past_the_database_is_refused():
    for ks in ("10,3001", "10,x"):
        out = _run("--ks", ks)
        assert out.returncode == 2 and f"--ks {ks}" in out.stderr and "1..--db (3000)" in out.stderr
        assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
