"""``engine="fused"``: Hamming metrics from the Triton kernels of :mod:`fused_triton`, float top-k by
tiles (:mod:`fused_float`); the torch engine stays the fallback.

Binary codes: ``label_histograms`` (per-level counts of all / relevant items, from the labels, no
(queries, N) relevance matrix) and ``ranking`` (exact top-k, (distance, index) order) run the
kernels. If a kernel fails to compile or launch, the engine warns once, retries with the portable
popcount (``USE_POPC=False``), and then answers with the torch engine - same numbers, its speed.
Float codes: the torch engine, except that top-k rankings (k < N) never build the whole distance
matrix (:func:`fused_float.tiled_float_ranking`).
"""

from __future__ import annotations

import warnings

import torch

from hashbench.platform.evaluation.engines import TorchEngine, hamming_histograms
from hashbench.platform.evaluation.inputs import Prepared
from hashbench.platform.errors import HashbenchError

F64 = torch.float64
#: tie groups (Hamming levels) up to which the tie-aware sums take the kernel (codes of up to 2048 bits)
TIE_SUMS_MAX_GROUPS = 2049
#: the last kernel failure of this process (None: none), for diagnostics (benchmarks print it)
LAST_ERROR: list = []


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on ``device``: Triton importable and CUDA (or the interpreter)."""
    try:
        from hashbench.platform.evaluation import fused_triton
    except HashbenchError:  # a bad HASHBENCH_FUSED_* setting: said, not hidden behind the torch engine
        raise
    except Exception:  # noqa: BLE001 - no (or a broken) Triton: the torch engine
        return False
    return device.type == "cuda" or fused_triton.INTERPRET


class FusedEngine(TorchEngine):
    name = "fused"

    def __init__(self, prep: Prepared):
        self._prep = prep
        self._torch = None
        self.failed = None
        if not prep.binary:
            super().__init__(prep)
            return
        from hashbench.platform.evaluation.fused_triton import FusedHamming

        self.distance, self.n, self.device, self.bits = prep.distance, prep.db.shape[0], prep.db.device, prep.dim
        self.kern = FusedHamming(prep.db, prep.db_labels)
        self._lf = None

    # ---- fallback ------------------------------------------------------------------------------
    def _fallback(self) -> TorchEngine:
        if self._torch is None:
            self._torch = TorchEngine(self._prep)
        return self._torch

    def _run(self, what: str, fn, *args):
        """``fn(*args)`` on the kernels; on failure: portable popcount, then None (use torch)."""
        if self.failed is None:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - compiler / driver errors: retry, then torch
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                if self.kern.use_popc:
                    warnings.warn(f"fused {what}: kernel failed with the hardware popcount ({msg}); "
                                  f"retrying with the portable one")
                    self.kern.use_popc = False
                    return self._run(what, fn, *args)
                self.failed = msg
                LAST_ERROR.append(f"{what}: {msg}")
                warnings.warn(f"fused {what}: kernel failed ({msg}); using the torch engine (same numbers)")
        return None

    @property
    def class_counts(self):
        """``(classes, counts)`` of the database's class ids (single-label Hamming; else None), from the
        kernels' label compaction: ``core.relevant_counts`` need not sort the labels again."""
        kern = getattr(self, "kern", None)
        return (kern.classes, kern.class_counts) if kern is not None and not kern.multi else None

    @property
    def sync_free(self) -> bool:
        """Whether the histograms come without a host sync (``HASHBENCH_FUSED_RECOUNT=device``, the default;
        read when asked): ``core.evaluate`` then computes the tie-aware sums after them without one either."""
        from hashbench.platform.evaluation.fused_triton import RECOUNT

        return self._prep.binary and RECOUNT == "device"

    def tie_sums(self, n, r, cutoffs, harm, need_ap_hits: bool, ap_columns: int, ks: list):
        """``metrics.grouped_sums`` of the Hamming histograms by :mod:`fused_tie_sums` (one program per
        query, no host sync), or None - the caller then takes the torch form - if the kernel fails or
        there are more than :data:`TIE_SUMS_MAX_GROUPS` levels."""
        if n.shape[1] > TIE_SUMS_MAX_GROUPS:
            return None
        return self._run("tie sums", self._tie_sums, n, r, cutoffs, harm, need_ap_hits, ap_columns, ks)

    def _tie_sums(self, n, r, cutoffs, harm, need_ap_hits, ap_columns, ks):
        from hashbench.platform.evaluation import fused_tie_sums as FTS

        if self._lf is None:                       # log x! up to the database size, once per engine
            self._lf = FTS.log_factorials(self.n, self.device)
        return FTS.grouped_sums(n, r, cutoffs, harm, self._lf, ks, need_ap_hits=need_ap_hits, ap_columns=ap_columns)

    # ---- interface -----------------------------------------------------------------------------
    def label_histograms(self, q: torch.Tensor, q_labels: torch.Tensor, k: int | None = None, min_level: int = 0):
        """(q, bits+1) float64 counts of all / relevant items per distance, exact up to the k-th
        smallest distance and up to ``min_level`` (``k=None``: every level)."""
        out = self._run("histograms", self.kern.histograms, q, q_labels, k, min_level)
        if out is None:
            ql, dl = q_labels, self._prep.db_labels
            rel = ql[:, None] == dl[None, :] if ql.dim() == 1 else (ql.float() @ dl.float().T) > 0
            return hamming_histograms(self._fallback().distances(q), rel, self.bits)
        return out[0].to(F64), out[1].to(F64)

    def ranking(self, q: torch.Tensor, k: int, with_dist: bool = True):
        if self.distance != "hamming":
            if k < self.n:
                from hashbench.platform.evaluation.fused_float import tiled_float_ranking

                return tiled_float_ranking(q, self.db, k, self.distance, self.db_norm)
            return super().ranking(q, k, with_dist)
        out = self._run("ranking", self.kern.ranking, q, k)
        if out is None:
            return self._fallback().ranking(q, k, with_dist)
        return out[0], out[1].to(torch.int32)

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        if self.distance != "hamming":
            return super().distances(q)
        return self._fallback().distances(q)

    def histograms(self, q: torch.Tensor, rel: torch.Tensor):
        if self.distance != "hamming":
            return super().histograms(q, rel)
        return self._fallback().histograms(q, rel)
