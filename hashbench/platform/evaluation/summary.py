"""The averages every exact evaluation reports, from per-query values: one implementation for the torch
engines (``core.evaluate``) and the CLI's torch-free path (``cpu_eval.evaluate_cpu``).

Works on torch tensors and numpy arrays alike (indexing by a boolean mask, ``.mean()``, ``len``), and
imports neither, so the torch-free path stays torch-free.
"""

from __future__ import annotations


def mean(x, keep=None) -> float:
    """Mean of the 1-D ``x`` over the rows ``keep`` (a boolean mask, or None for all); 0.0 when empty."""
    if keep is not None:
        x = x[keep]
    return float(x.mean()) if len(x) else 0.0


def summarise(cat: dict, cutoffs, R_all, exclude_no_hit: bool, *, map_at_r: bool = True,
              hamming_radius=None, dim: int | None = None) -> tuple:
    """``(metrics, no_hit, keep)`` from the per-query arrays ``cat`` (``hits``, ``ap``, ``p``, ``r`` with one
    column per cut-off of ``cutoffs`` = [(name, k)], ``mapr``/``rprec``, and ``hr_prec``/``hr_n`` when a
    Hamming radius was asked). ``R_all``: relevant items per query. The no-hit policy "excluded" leaves
    queries without any relevant item out of every average (and, for mAP@k, queries with no hit in the top k).
    ``no_hit``: per cut-off, the queries with no hit; ``keep``: the mask of averaged queries, or None."""
    res: dict = {}
    no_hit = {}
    keep = (R_all > 0) if exclude_no_hit else None
    for j, (name, _) in enumerate(cutoffs):
        hit_any = cat["hits"][:, j] > 0
        no_hit[name] = int((~hit_any).sum())
        res[f"mAP@{name}"] = mean(cat["ap"][:, j], hit_any if exclude_no_hit else None)
        res[f"P@{name}"] = mean(cat["p"][:, j], keep)
        res[f"R@{name}"] = mean(cat["r"][:, j], keep)
    if map_at_r:
        res["MAP@R"] = mean(cat["mapr"], keep)
        res["R-precision"] = mean(cat["rprec"], keep)
    if "hr_prec" in cat:
        rad = min(int(hamming_radius), dim)
        res[f"P@H<={rad}"] = mean(cat["hr_prec"], keep)
        res[f"H<={rad}-empty-queries"] = int((cat["hr_n"] == 0).sum())
    return res, no_hit, keep
