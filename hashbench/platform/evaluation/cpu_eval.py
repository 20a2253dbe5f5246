""":func:`evaluate_cpu`: ``evaluate`` of exact Hamming codes on the CPU without importing torch.

On the CPU with faiss installed, ``evaluate`` (``core.py``) takes every count from the numba kernels of
:mod:`~hashbench.platform.evaluation.cpu_kernels` once the evaluation has at least
``engines.KERNEL_MIN_PAIRS`` query-item pairs (below that, from its numpy path); what is left is
arithmetic on (queries, bits + 1) arrays: milliseconds of work, done in torch, whose import alone takes
about 1-2 s. ``hashbench eval`` calls this module first: it takes the same counts from the numba
kernels or from their numpy twin (:class:`~hashbench.platform.evaluation.cpu_numpy.NumpyDatabase`,
the same integers), then runs the same arithmetic in numpy: the tie-aware sums and AP conventions of
:mod:`~hashbench.platform.evaluation.tie_sums` (one implementation, which ``metrics.py`` runs on torch
tensors), ``relevant_counts`` below (``core.relevant_counts`` in numpy) and ``summary.summarise``. It
returns the same dictionary, or ``None`` when the call is not one it serves; the caller then runs
``evaluate`` (which also raises every input error, so none is reworded here). It serves: Hamming
distance, ``device`` None or ``"cpu"``, ``engine`` ``"auto"`` or ``"faiss"`` with faiss installed,
valid codes and labels as numpy arrays; the results of ``map_at_r=True`` without the PR curve, kNN
accuracy or per-query values (what the CLI asks for). ``HASHBENCH_EVAL_TORCH_FREE=0`` turns it off.

Which counts: the numba kernels where ``evaluate`` would use them (``HASHBENCH_EVAL_NUMBA``, numba
importable, at least ``KERNEL_MIN_PAIRS`` pairs), else the numpy twin. A process declared one-shot
(:func:`one_shot`, called by the CLI) that has not loaded numba also takes the numpy twin below
:data:`NUMPY_MAX_PAIRS` pairs: numba's start-up (0.5-1 s) costs more than numpy's slower counting
there. Above it, :func:`preload_cython_blas` runs before numba loads (see there for why it stays).

Agreement with ``evaluate``: the integer parts (histograms, kernel sums, counts, cut-offs, the
protocol) are the same numbers; the float64 arithmetic is the same operations in the same order,
except for what rounds differently in the last bit: sums over an axis (numpy's pairwise summation vs
torch's vectorised one), ``exp`` and ``lgamma`` (numpy / CPython vs torch's vectorised functions;
only in the expected AP of the "hits" convention under tie-aware ties, where wide tie groups make
differences of large ``lgamma`` values), and the numpy twin's index-tie sums (added in rank order, the
kernels' in database order). The metrics agree to 1e-13 or better (1.2e-14 on the 1000 x 59000
benchmark file, 5e-14 on 16-bit codes with tie groups of thousands); printed with 4 decimals they are
the same text. tests/test_eval_cli_speed.py checks both, with the kernels and with the numpy twin.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation.cpu_numpy import MAX_BITS, NumpyDatabase
from hashbench.platform.evaluation.inputs import parse_ks
from hashbench.platform.evaluation.summary import summarise
from hashbench.platform.evaluation.tie_sums import NUMPY, apply_convention, grouped_sums, harmonic_table

# the same names and values as in core.py / engines.py, which import torch (a test checks they agree)
CONVENTIONS = ("hits", "min-k-r", "r")
TIES = ("tie-aware", "index")
KERNEL_MIN_PAIRS = 2 ** 24
F64 = np.float64
# the dtypes served here (others, e.g. uint32 or float16, are left to evaluate)
_CODE_DTYPES = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                      np.float32, np.float64)}
_ENGINES_MODULE = "hashbench.platform.evaluation.engines"


def enabled() -> bool:
    """``HASHBENCH_EVAL_TORCH_FREE`` is not ``0``."""
    return os.environ.get("HASHBENCH_EVAL_TORCH_FREE", "1") != "0"


def evaluate_cpu(query_codes, db_codes, query_labels, db_labels, *, distance: str = "hamming",
                 ks=(10, 100, 1000, "all"), convention: str = "hits", ties: str = "tie-aware",
                 exclude_no_hit: bool = False, engine: str = "auto", device=None, bits: int | None = None,
                 hamming_radius: int | None = 2, exclude_self: bool = False) -> dict | None:
    """``evaluate(...)`` with these arguments (and ``map_at_r=True``, no ``pr_curve``, ``knn_k`` or
    ``per_query``) computed without torch, or ``None`` when this path does not serve the call."""
    if not enabled() or distance != "hamming" or device not in (None, "cpu") or engine not in ("auto", "faiss"):
        return None
    if convention not in CONVENTIONS or ties not in TIES:
        return None
    if hamming_radius is not None and (not isinstance(hamming_radius, (int, np.integer)) or hamming_radius < 0):
        return None
    if bits is not None and (not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits <= 0):
        return None
    q, d = _codes01(query_codes, bits), _codes01(db_codes, bits)
    if q is None or d is None or q.shape[0] == 0 or d.shape[0] == 0 or q.shape[1] != d.shape[1] or q.shape[1] == 0:
        return None
    ql, dl = _labels(query_labels, q.shape[0]), _labels(db_labels, d.shape[0])
    if ql is None or dl is None or ql.ndim != dl.ndim or ql.shape[1:] != dl.shape[1:]:
        return None
    exclude_self = bool(exclude_self)
    if exclude_self and not (q.shape == d.shape and d.shape[0] >= 2 and np.array_equal(q, d)
                             and np.array_equal(ql, dl)):
        return None
    n_db, n_q, dim = d.shape[0], q.shape[0], q.shape[1]
    n_eff = n_db - exclude_self
    try:
        cutoffs = parse_ks(ks, n_eff)
    except HashbenchError:
        return None
    if not _faiss_available():                          # evaluate would pick the torch engine
        return None
    database = _database_class(n_q * n_db, dim)
    return _evaluate(q, d, ql, dl, database, cutoffs, n_eff, convention=convention, ties=ties,
                     exclude_no_hit=bool(exclude_no_hit), hamming_radius=hamming_radius,
                     exclude_self=exclude_self, distance=distance)


def preload_cython_blas() -> bool:
    """Let numba start without importing all of ``scipy.linalg``; for a one-shot process (:func:`one_shot`).

    When numba first loads (or compiles) a kernel it imports its whole library of implementations;
    one of them, ``numba.np.arraymath``, checks at import that BLAS is there (for ``np.dot`` and
    friends, which our kernels never call) with ``import scipy.linalg.cython_blas``, and importing that
    module first runs ``scipy/linalg/__init__.py`` (all of scipy.linalg and scipy's array-API layer:
    0.3-0.7 s on the 2-core machine, a third of numba's start-up). This loads the
    ``cython_blas`` extension module alone, from the same file, and registers it under its name, so
    numba's check finds it, as it would, without the package's ``__init__``.

    Why it stays: numba has no setting that skips or defers the check (it runs at the import of
    ``numba.np.arraymath``, which every kernel load imports); making scipy absent would turn numba's
    BLAS support off for the whole process; the numpy twin (``cpu_numpy``) replaces numba in one-shot
    processes only below ``NUMPY_MAX_PAIRS`` (above, the kernels' speed is needed), and avoiding numba's
    start-up altogether would take an ahead-of-time compiled extension (a build step per platform).
    It is limited to one-shot processes, runs only just before numba loads, and falls back to the
    ordinary import on any surprise. A later ``import
    scipy.linalg`` in the same process still works (and reuses this module); only the attribute
    ``scipy.linalg.cython_blas`` is then missing (``from scipy.linalg import cython_blas`` works;
    tests/test_eval_cli_speed.py checks both). Does nothing when numba's library or scipy.linalg is
    already loaded, and nothing (returns False) when anything differs from the expected layout.
    Returns whether the module was loaded here."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return False
    try:
        import importlib.machinery

        import scipy
        spec = importlib.machinery.PathFinder.find_spec(name, [os.path.join(os.path.dirname(scipy.__file__),
                                                                            "linalg")])
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return False
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - anything unexpected: numba imports scipy.linalg as usual
        sys.modules.pop(name, None)
        return False
    return True


def one_shot() -> None:
    """Declare this process a one-shot evaluation (``hashbench eval``): numba's start-up (import,
    then loading its library of implementations with the first kernel: about 1 s on the 2-core
    machine) is then paid only where the kernels save more than it costs (:func:`_database_class`),
    and :func:`preload_cython_blas` runs before numba loads."""
    global _ONE_SHOT
    _ONE_SHOT = True


_ONE_SHOT = False
#: a one-shot process that has not loaded numba counts in numpy below this many query-item pairs: on the
#: 2-core machine numpy takes 0.3 s (index ties) or 0.15 s (histograms) more per 59M pairs than the kernels,
#: whose start-up costs 0.5-1 s (benchmarks/results/2026-12-06/eval_cpu.md)
NUMPY_MAX_PAIRS = 2 ** 27


def _database_class(pairs: int, bits: int):
    """The class that computes the level counts (and index-tie sums): the numba kernels'
    ``PackedDatabase`` where ``evaluate`` would use them (``FaissEngine.kernels_usable``), unless this is a
    one-shot process without numba loaded and below ``NUMPY_MAX_PAIRS`` pairs; else their numpy twin
    ``cpu_numpy.NumpyDatabase`` (the same counts)."""
    engines = sys.modules.get(_ENGINES_MODULE)           # already imported: honour its (test) settings
    on = engines.CPU_KERNELS if engines else os.environ.get("HASHBENCH_EVAL_NUMBA", "1") != "0"
    min_pairs = engines.KERNEL_MIN_PAIRS if engines else KERNEL_MIN_PAIRS
    start_up_costs_more = _ONE_SHOT and "numba" not in sys.modules and pairs < NUMPY_MAX_PAIRS
    if on and pairs >= min_pairs and bits <= MAX_BITS and not start_up_costs_more:
        if _ONE_SHOT and enabled():
            preload_cython_blas()
        try:
            return importlib.import_module("hashbench.platform.evaluation.cpu_kernels").PackedDatabase
        except Exception:  # noqa: BLE001 - a missing or broken numba: the numpy twin gives the same counts
            pass
    return NumpyDatabase


def _faiss_available() -> bool:
    """faiss can be found (without importing it: 0.05-0.1 s). ``evaluate`` reports engine "faiss" on
    this path; nothing of faiss runs in either."""
    return importlib.util.find_spec("faiss") is not None


def _codes01(x, bits):
    """inputs._binary_codes in numpy: (n, bits) uint8 {0, 1}, or None where it would raise."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype not in _CODE_DTYPES:
        return None
    if bits is not None:
        if x.dtype != np.uint8 or x.shape[1] != (bits + 7) // 8:
            return None
        return np.ascontiguousarray(np.unpackbits(x, axis=1)[:, :bits])   # big-endian, like np.packbits
    if x.dtype == np.bool_:
        return x.astype(np.uint8)
    if not x.size or ((x == 0) | (x == 1)).all():
        return x.astype(np.uint8)
    if x.dtype != np.uint8 and ((x == -1) | (x == 1)).all():
        return (x > 0).astype(np.uint8)
    return None


def _labels(y, n: int):
    """inputs._labels in numpy: (n,) int64 class ids or (n, C) bool multi-hot, or None where it would raise."""
    if not isinstance(y, np.ndarray) or y.ndim not in (1, 2) or y.shape[0] != n or y.dtype not in _CODE_DTYPES:
        return None
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()
                                    and (np.abs(y) < 2.0 ** 53).all()):
        return None
    if y.ndim == 2:                     # (n, 0): no label columns at all, left to evaluate
        return y.astype(bool) if y.shape[1] and ((y == 0) | (y == 1)).all() else None
    return y.astype(np.int64)


def _evaluate(q, d, ql, dl, database, cutoffs, n_eff, *, convention, ties, exclude_no_hit, hamming_radius,
              exclude_self, distance) -> dict:
    """core._evaluate's kernel path (engine 'faiss', kernels usable, map_at_r) in numpy."""
    n_db, n_q, dim = d.shape[0], q.shape[0], q.shape[1]
    step = max(max(1, 2 ** 22 // n_db), 4096)     # core: max(chunk, 4096) with the CPU chunk
    R_all = relevant_counts(ql, dl, max(1, 2 ** 22 // n_db))
    self_rel = None
    if exclude_self:
        self_rel = np.ones(n_q, dtype=F64) if ql.ndim == 1 else ql.any(1).astype(F64)
        R_all = R_all - self_rel
    kvec = np.array([k for _, k in cutoffs], dtype=np.int64)
    nk = len(cutoffs)
    grouped = ties == "tie-aware"
    harm = harmonic_table(NUMPY, n_db) if grouped else None
    packed = database(d, dl)
    per = {name: [] for name in ("hits", "ap", "p", "r", "mapr", "rprec", "hr_prec", "hr_n")}
    for s in range(0, n_q, step):
        qc, qlc, R = q[s:s + step], ql[s:s + step], R_all[s:s + step]
        nq = qc.shape[0]
        cut = np.concatenate([np.broadcast_to(kvec, (nq, nk)), R.astype(np.int64)[:, None]], 1)
        if not grouped:                 # the kernel leaves the own item out of its sums and histograms
            hits, S, n, r = packed.ranked_sums(qc, qlc, cut, s if exclude_self else -1)
            ap_hits = np.divide(S, hits, out=np.zeros_like(S), where=hits > 0)
            n, r = n.astype(F64), r.astype(F64)
        else:
            n, r = (x.astype(F64) for x in packed.histograms(qc, qlc))
            if exclude_self:            # the own item leaves level 0
                n[:, 0] -= 1
                r[:, 0] -= self_rel[s:s + nq]
            hits, S, ap_hits = grouped_sums(NUMPY, n, r, cut, harm, need_ap_hits=convention == "hits", ap_columns=nk)
        kf = cut[:, :nk].astype(F64)
        Rk = np.broadcast_to(R[:, None], (nq, nk))
        per["hits"].append(hits[:, :nk])
        per["ap"].append(apply_convention(NUMPY, convention, hits[:, :nk], S[:, :nk],
                                          None if ap_hits is None else ap_hits[:, :nk], kf, Rk))
        per["p"].append(hits[:, :nk] / kf)
        per["r"].append(np.where(Rk > 0, hits[:, :nk] / np.maximum(Rk, 1), 0.0))
        pos = R > 0
        per["mapr"].append(np.where(pos, S[:, nk] / np.maximum(R, 1), 0.0))
        per["rprec"].append(np.where(pos, hits[:, nk] / np.maximum(R, 1), 0.0))
        if hamming_radius is not None:
            rad = min(int(hamming_radius), dim)
            got, good = n[:, :rad + 1].sum(1), r[:, :rad + 1].sum(1)
            per["hr_prec"].append(np.where(got > 0, good / np.maximum(got, 1), 0.0))
            per["hr_n"].append(got)

    cat = {k: np.concatenate(v) for k, v in per.items() if v}
    res, no_hit, _ = summarise(cat, cutoffs, R_all, exclude_no_hit, hamming_radius=hamming_radius, dim=dim)
    res["protocol"] = {
        "convention": convention, "ties": ties,
        "no_hit": "excluded" if exclude_no_hit else "count-as-zero",
        "no_hit_queries": no_hit, "distance": distance, "ks": [name for name, _ in cutoffs],
        "k_effective": {name: k for name, k in cutoffs}, "engine": "faiss", "device": "cpu",
        "n_queries": n_q, "n_db": n_db, "bits": dim,
        "multi_label": ql.ndim == 2, "queries_without_relevant": int((R_all == 0).sum()),
        "hamming_radius": hamming_radius, "same_set": exclude_self,
    }
    return res


def relevant_counts(ql: np.ndarray, dl: np.ndarray, chunk: int) -> np.ndarray:
    """core.relevant_counts in numpy: R per query (float64; integer sums, so exact)."""
    if ql.ndim == 1:
        classes, counts = np.unique(dl, return_counts=True)
        pos = np.searchsorted(classes, ql).clip(max=classes.size - 1)
        return np.where(classes[pos] == ql, counts[pos], 0).astype(F64)
    combos, counts = np.unique(dl.astype(np.uint8), axis=0, return_counts=True)
    combos_f, counts = combos.astype(np.float32).T, counts.astype(F64)
    return np.concatenate([(((ql[i:i + chunk].astype(np.float32) @ combos_f) > 0) * counts).sum(1)
                           for i in range(0, ql.shape[0], chunk)])
