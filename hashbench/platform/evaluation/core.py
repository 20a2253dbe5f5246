"""``evaluate``: every retrieval metric under one named protocol."""

from __future__ import annotations

import numpy as np
import torch

from hashbench.platform.errors import HashbenchError
from hashbench.platform.evaluation import metrics as M
from hashbench.platform.evaluation.engines import APPROXIMATE, build_engine, choose_engine
from hashbench.platform.evaluation.inputs import Prepared, parse_ks, prepare
from hashbench.platform.evaluation.summary import summarise

CONVENTIONS = ("hits", "min-k-r", "r")
TIES = ("tie-aware", "index")
F64 = torch.float64


def resolve_device(device, *tensors) -> torch.device:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise HashbenchError(f"device: {device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise HashbenchError("device: 'cuda' requested but no CUDA device is available; use 'cpu'")
        return dev
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            return t.device
    return torch.device("cpu")


def relevance(ql: torch.Tensor, dl: torch.Tensor) -> torch.Tensor:
    """(q, N) bool: the items sharing at least one label with each query."""
    if ql.dim() == 1:
        return ql[:, None] == dl[None, :]
    dtype = torch.float16 if ql.device.type == "cuda" and ql.shape[1] <= 2048 else torch.float32
    return (ql.to(dtype) @ dl.to(dtype).T) > 0


def relevant_counts(prep: Prepared, chunk: int, class_counts=None) -> torch.Tensor:
    """R per query: number of relevant database items (float64, on the device). ``class_counts``:
    ``(classes, counts)`` of the database's class ids when the engine has them already (sorted, as
    ``torch.unique`` gives them), so the labels are not sorted twice."""
    ql, dl = prep.query_labels, prep.db_labels
    if ql.dim() == 1:
        classes, counts = class_counts if class_counts is not None else torch.unique(dl, return_counts=True)
        pos = torch.searchsorted(classes, ql).clamp_max(classes.numel() - 1)
        return torch.where(classes[pos] == ql, counts[pos], 0).to(F64)
    # multi-hot: count the distinct label sets once, so no (queries, N) relevance matrix is needed
    combos, counts = torch.unique(dl.to(torch.uint8), dim=0, return_counts=True)
    combos, counts = combos.bool(), counts.to(F64)
    return torch.cat([(relevance(ql[i:i + chunk], combos).to(F64) * counts).sum(1)
                      for i in range(0, ql.shape[0], chunk)])


def float_groups(dist_sorted: torch.Tensor, rel_sorted: torch.Tensor):
    """Tie groups of a full sorted float ranking, packed to the left: (q, N) counts float64."""
    q, n = dist_sorted.shape
    new = torch.ones_like(dist_sorted, dtype=torch.int64)
    new[:, 1:] = (dist_sorted[:, 1:] != dist_sorted[:, :-1]).to(torch.int64)
    gid = torch.cumsum(new, 1) - 1
    cnt = torch.zeros(q, n, dtype=F64, device=dist_sorted.device)
    rel = torch.zeros(q, n, dtype=F64, device=dist_sorted.device)
    cnt.scatter_add_(1, gid, torch.ones_like(gid, dtype=F64))
    rel.scatter_add_(1, gid, rel_sorted.to(F64))
    return cnt, rel


def _chunk_size(prep: Prepared, override: int | None) -> int:
    if override:
        return int(override)
    budget = 2 ** 30 if prep.db.device.type == "cuda" else 2 ** 22
    return max(1, budget // prep.db.shape[0])


def evaluate(query_codes, db_codes, query_labels, db_labels, *, distance: str = "hamming",
             ks=(10, 100, 1000, "all"), convention: str = "hits", ties: str = "tie-aware",
             exclude_no_hit: bool = False, engine: str = "auto", device=None, bits: int | None = None,
             hamming_radius: int | None = 2, pr_curve: bool = False, map_at_r: bool = True,
             knn_k: int | None = None, chunk_size: int | None = None, exclude_self: bool = False,
             per_query: bool = False) -> dict:
    """Retrieval metrics of ``query_codes`` against ``db_codes`` under one named protocol.

    Returns ``mAP@<k>``, ``P@<k>``, ``R@<k>`` for each cut-off, ``MAP@R`` and ``R-precision``
    (``map_at_r``), ``P@H<=<r>`` and ``H<=<r>-empty-queries`` for binary codes (``hamming_radius``),
    ``pr_curve`` (asked for), ``kNN-balanced-accuracy`` (``knn_k``), and ``protocol``. See
    docs/metrics.md for the exact definition of each convention and tie policy.

    ``exclude_self``: same-set retrieval (leave-one-out): the queries ARE the database (same codes and
    labels, row i = item i) and each query's own item is removed from its ranking, its histograms and
    its count of relevant items, so every metric sees a database of ``N - 1`` items (``all`` = N - 1).
    ``exclude_no_hit``: queries without any relevant item are dropped from every average (as
    pytorch-metric-learning does); ``mAP@k`` also drops queries without a hit in the top k.
    ``per_query``: also return ``per_query``, a dict of float64 numpy arrays (one value per query, in
    query order) for ``mAP@<k>``, ``P@<k>``, ``MAP@R`` and ``R-precision``: the values whose mean is the
    metric; a query that a metric's average leaves out (``exclude_no_hit``) is NaN there
    (docs/statistics.md: what paired comparisons are made of).

    On CPU the torch arithmetic runs single-threaded (restored afterwards): it is memory-bound
    bookkeeping, and multi-threaded small ops stall on a busy machine (measured 100x slower);
    the heavy parts run in faiss / numpy kernels, or in the numba kernels of ``cpu_kernels``
    (parallel over queries) for exact Hamming evaluation of at least ``engines.KERNEL_MIN_PAIRS``
    query-item pairs.
    """
    dev = resolve_device(device, query_codes, db_codes)
    if dev.type != "cpu":
        return _evaluate(query_codes, db_codes, query_labels, db_labels, dev, **_locals_kwargs(locals()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate(query_codes, db_codes, query_labels, db_labels, dev, **_locals_kwargs(locals()))
    finally:
        torch.set_num_threads(threads)


def _locals_kwargs(scope: dict) -> dict:
    names = ("distance", "ks", "convention", "ties", "exclude_no_hit", "engine", "bits", "hamming_radius",
             "pr_curve", "map_at_r", "knn_k", "chunk_size", "exclude_self", "per_query")
    return {name: scope[name] for name in names}


def _evaluate(query_codes, db_codes, query_labels, db_labels, dev, *, distance, ks, convention, ties,
              exclude_no_hit, engine, bits, hamming_radius, pr_curve, map_at_r, knn_k, chunk_size,
              exclude_self, per_query=False) -> dict:
    if convention not in CONVENTIONS:
        raise HashbenchError(f"convention: {convention!r} is not one of {', '.join(CONVENTIONS)}")
    if ties not in TIES:
        raise HashbenchError(f"ties: {ties!r} is not one of {', '.join(TIES)}")
    prep = prepare(query_codes, db_codes, query_labels, db_labels, distance=distance, bits=bits, device=dev)
    n_db, n_q = prep.db.shape[0], prep.query.shape[0]
    exclude_self = bool(exclude_self)
    if exclude_self:
        _check_same_set(prep)
    n_eff = n_db - exclude_self               # database items each query is ranked against
    cutoffs = parse_ks(ks, n_eff)
    if hamming_radius is not None and prep.binary and (int(hamming_radius) != hamming_radius or hamming_radius < 0):
        raise HashbenchError(f"hamming_radius: must be an integer >= 0, got {hamming_radius!r}")
    if knn_k is not None and (int(knn_k) != knn_k or knn_k <= 0):
        raise HashbenchError(f"knn_k: must be a positive integer, got {knn_k!r}")
    eng_name = choose_engine(engine, dev)
    if eng_name in APPROXIMATE and ties != "index":
        raise HashbenchError(f"engine={eng_name!r} returns an approximate ranking, which only the 'index' tie "
                             f"policy evaluates; pass ties='index'")
    eng = build_engine(eng_name, prep)
    chunk = _chunk_size(prep, chunk_size)
    # exact Hamming on the CPU: numba kernels give the index-tie sums without a ranking and the
    # histograms without a (queries, N) relevance matrix; their memory does not grow with N, so
    # they take larger query chunks
    kernels = eng_name == "faiss" and eng.kernels_usable(n_q)
    # fused GPU kernels (fused_engine.py): label histograms and top-k without a (queries, N) matrix
    fused = eng_name == "fused" and prep.binary
    step = max(chunk, 4096 if kernels else 32768) if (kernels or fused) and not chunk_size else chunk

    R_all = relevant_counts(prep, chunk, getattr(eng, "class_counts", None))
    self_rel = None
    if exclude_self:                          # the query's own item is relevant when it has a label
        self_rel = (torch.ones(n_q, dtype=F64, device=dev) if prep.query_labels.dim() == 1
                    else prep.query_labels.any(1).to(F64))
        R_all = R_all - self_rel
    ks_int = [int(k) for _, k in cutoffs]
    kvec = torch.tensor(ks_int, device=dev, dtype=torch.int64)
    kmax = max(ks_int)                        # from the host list: no device round trip
    grouped = ties == "tie-aware"
    want_hist = prep.binary and (grouped or hamming_radius is not None or pr_curve)
    # tie-aware Hamming metrics at cut-offs below N only need the buckets up to the k-th distance
    truncated = (want_hist and grouped and not (map_at_r or pr_curve or (hamming_radius is not None and not fused))
                 and eng_name in ("torch", "fused") and kmax < n_eff)
    depth = kmax
    if map_at_r and not grouped:
        depth = max(depth, int(R_all.max().item()))
    depth = min(max(depth, 1), n_eff)
    if grouped and not prep.binary:
        depth = n_eff
    harm = M.harmonic_table(n_db, dev) if grouped else None
    # the fused histograms without a host sync (HASHBENCH_FUSED_RECOUNT=device, the default): the tie-aware
    # sums after them take none either (fused_tie_sums, or the torch form whose tables the cut-offs bound),
    # so the host queues them while the kernels run
    sync_free = fused and eng.sync_free
    labels_np = _compact_labels(prep) if dev.type == "cpu" and not grouped and not kernels else None

    per = {name: [] for name in ("hits", "ap", "p", "r", "mapr", "rprec", "hr_prec", "hr_n",
                                 "pr_p", "pr_r", "pr_n")}
    for s in range(0, n_q, step):
        qc = prep.query[s:s + step]
        qlc = prep.query_labels[s:s + step]
        R = R_all[s:s + step]
        nq = qc.shape[0]
        own = torch.arange(s, s + nq, device=dev) if exclude_self else None       # each query's own item
        rank = _ranker(eng, own)
        kh = kmax + exclude_self   # truncated histograms: the own item takes one place at distance 0
        cut = kvec.unsqueeze(0).expand(nq, -1)
        if map_at_r:
            cut = torch.cat([cut, R.to(torch.int64).unsqueeze(1)], 1)
        n = r = None
        if kernels and not grouped:        # the kernel leaves the own item out of its sums and histograms
            hits, S, ap_hits, n, r = eng.ranked_sums(qc, qlc, cut, **({"self_start": s} if exclude_self else {}))
        elif want_hist:
            if truncated and fused:
                n, r = eng.label_histograms(qc, qlc, kh, int(hamming_radius or 0))
            elif truncated:
                n, r = eng.truncated_histograms(qc, _relevance_of(prep, qlc), kh)
            elif fused and not (grouped or pr_curve):     # P@H<=r only: levels <= r
                n, r = eng.label_histograms(qc, qlc, 1, int(hamming_radius))
            elif kernels or fused:
                n, r = eng.label_histograms(qc, qlc)
            else:
                n, r = eng.histograms(qc, relevance(qlc, prep.db_labels))
            if exclude_self:               # every histogram path: the own item leaves level 0
                n, r = remove_self_from_histograms(n, r, self_rel[s:s + nq])
        if grouped:
            if not prep.binary:
                ids, dist = rank(qc, n_eff)
                n, r = float_groups(dist, _gather_relevance(prep, qlc, ids))
            # fused Hamming: one Triton program per query (fused_tie_sums); None where it is not taken
            sums = (eng.tie_sums(n, r, cut, harm, need_ap_hits=convention == "hits", ap_columns=len(cutoffs),
                                 ks=ks_int) if fused and prep.binary else None)
            if sums is None:
                sums = M.grouped_sums(n, r, cut, harm, need_ap_hits=convention == "hits",
                                      ap_columns=len(cutoffs),   # none for the cut-off R of MAP@R
                                      sync_free_ks=ks_int if sync_free else None)
            hits, S, ap_hits = sums
        elif not kernels:
            ids, _ = rank(qc, depth, with_dist=False)
            cut_d = cut.clamp_max(depth)
            if dev.type == "cpu":
                rel_np = _gather_relevance_np(labels_np, s, ids.numpy())
                if eng_name in APPROXIMATE:
                    rel_np &= ids.numpy() >= 0          # -1: fewer results than asked
                hits, S, ap_hits = M.ranked_sums_np(rel_np, cut_d.numpy())
            else:
                rel_t = _gather_relevance(prep, qlc, ids)
                if eng_name in APPROXIMATE:
                    rel_t &= ids >= 0
                hits, S, ap_hits = M.ranked_sums(rel_t, cut_d)
        nk = len(cutoffs)
        kf = cut[:, :nk].to(F64)
        Rk = R.unsqueeze(1).expand(-1, nk)
        per["hits"].append(hits[:, :nk])
        per["ap"].append(M.apply_convention(convention, hits[:, :nk], S[:, :nk],
                                            None if ap_hits is None else ap_hits[:, :nk], kf, Rk))
        per["p"].append(hits[:, :nk] / kf)
        per["r"].append(torch.where(Rk > 0, hits[:, :nk] / Rk.clamp_min(1), 0.0))
        if map_at_r:
            pos = R > 0
            per["mapr"].append(torch.where(pos, S[:, nk] / R.clamp_min(1), 0.0))
            per["rprec"].append(torch.where(pos, hits[:, nk] / R.clamp_min(1), 0.0))
        if prep.binary and hamming_radius is not None:
            rad = min(int(hamming_radius), prep.dim)
            got, good = n[:, :rad + 1].sum(1), r[:, :rad + 1].sum(1)
            per["hr_prec"].append(torch.where(got > 0, good / got.clamp_min(1), 0.0))
            per["hr_n"].append(got)
        if pr_curve:
            if prep.binary:
                got, good = torch.cumsum(n, 1), torch.cumsum(r, 1)
            else:
                ids, _ = rank(qc, n_eff)
                good = torch.cumsum(_gather_relevance(prep, qlc, ids), 1, dtype=torch.int64)[:, _pr_ranks(n_eff) - 1]
                got = torch.as_tensor(_pr_ranks(n_eff), device=dev).to(F64).expand(nq, -1)
            per["pr_p"].append(torch.where(got > 0, good / got.clamp_min(1), 0.0))
            per["pr_n"].append(got > 0)
            per["pr_r"].append(torch.where(R[:, None] > 0, good / R.clamp_min(1)[:, None], 0.0))

    cat = {k: torch.cat(v) for k, v in per.items() if v}
    res, no_hit, keep = summarise(cat, cutoffs, R_all, exclude_no_hit, map_at_r=map_at_r,
                                  hamming_radius=hamming_radius, dim=prep.dim)
    if per_query:
        res["per_query"] = _per_query(cat, cutoffs, keep, exclude_no_hit, map_at_r)
    if pr_curve:
        rows = slice(None) if keep is None else keep
        valid = cat["pr_n"][rows].to(F64)
        prec = (cat["pr_p"][rows] * valid).sum(0) / valid.sum(0).clamp_min(1)
        rec = cat["pr_r"][rows].sum(0) / max(1, cat["pr_r"][rows].shape[0])
        xs = list(range(prep.dim + 1)) if prep.binary else _pr_ranks(n_eff).tolist()
        res["pr_curve"] = {"x": "hamming_radius" if prep.binary else "rank", "at": xs,
                           "precision": prec.tolist(), "recall": rec.tolist()}
    if knn_k is not None:
        from hashbench.platform.evaluation.embedding import balanced_accuracy_from_ranking

        ids = torch.cat([_ranker(eng, torch.arange(s, min(s + chunk, n_q), device=dev) if exclude_self else None)(
            prep.query[s:s + chunk], min(int(knn_k), n_eff))[0] for s in range(0, n_q, chunk)])
        rows = slice(None) if keep is None else keep
        res["kNN-balanced-accuracy"] = (balanced_accuracy_from_ranking(ids[rows], prep.query_labels[rows],
                                                                      prep.db_labels)
                                        if ids[rows].shape[0] else 0.0)
    if eng_name in APPROXIMATE:
        res["recall_vs_exact"] = _recall_vs_exact(prep, eng, min(ks_int), chunk, exclude_self)
    res["protocol"] = {
        "convention": convention, "ties": ties,
        "no_hit": "excluded" if exclude_no_hit else "count-as-zero",
        "no_hit_queries": no_hit, "distance": distance, "ks": [name for name, _ in cutoffs],
        "k_effective": {name: k for name, k in cutoffs}, "engine": eng_name, "device": str(dev),
        "n_queries": n_q, "n_db": n_db, ("bits" if prep.binary else "dim"): prep.dim,
        "multi_label": prep.multi_label, "queries_without_relevant": int((R_all == 0).sum()),
        "hamming_radius": hamming_radius if prep.binary else None, "same_set": exclude_self,
    }
    return res


def _per_query(cat: dict, cutoffs, keep, exclude_no_hit: bool, map_at_r: bool) -> dict:
    """The per-query values behind the means of ``evaluate`` (float64 numpy, NaN where left out)."""
    def masked(x, mask):
        x = x.to(F64).cpu().clone()
        if mask is not None:
            x[~mask.cpu()] = float("nan")
        return x.numpy()

    out = {}
    for j, (name, _) in enumerate(cutoffs):
        hit_any = cat["hits"][:, j] > 0
        out[f"mAP@{name}"] = masked(cat["ap"][:, j], hit_any if exclude_no_hit else None)
        out[f"P@{name}"] = masked(cat["p"][:, j], keep)
    if map_at_r:
        out["MAP@R"] = masked(cat["mapr"], keep)
        out["R-precision"] = masked(cat["rprec"], keep)
    return out


def _check_same_set(prep: Prepared) -> None:
    """Same-set retrieval needs the queries to be the database, row for row."""
    if prep.query.shape != prep.db.shape:
        raise HashbenchError(f"exclude_self: same-set retrieval needs the queries to be the database, got "
                             f"{prep.query.shape[0]} queries and {prep.db.shape[0]} database items")
    if prep.db.shape[0] < 2:
        raise HashbenchError("exclude_self: same-set retrieval needs at least 2 items (one query, one other item)")
    if not torch.equal(prep.query, prep.db):
        row = int((prep.query != prep.db).any(1).nonzero()[0, 0])
        raise HashbenchError(f"exclude_self: query_codes and db_codes differ (first at row {row}); same-set "
                             f"retrieval needs query i to be database item i")
    if not torch.equal(prep.query_labels, prep.db_labels):
        diff = prep.query_labels != prep.db_labels
        row = int((diff if diff.dim() == 1 else diff.any(1)).nonzero()[0, 0])
        raise HashbenchError(f"exclude_self: query_labels and db_labels differ (first at row {row}); same-set "
                             f"retrieval needs query i to be database item i")


def drop_self(own: torch.Tensor, ids: torch.Tensor, *others: torch.Tensor):
    """Remove each row's own item from a ranking of K + 1 items: ``ids`` (q, K+1) -> (q, K), and the same
    positions of ``others``. A row whose own item is not among its K + 1 (more than K items tie before
    it) loses its last item instead: either way the result is the top K of the ranking without it."""
    mine = ids == own[:, None]
    mine[:, -1] |= ~mine.any(1)
    keep = ~mine
    q, k1 = ids.shape
    return tuple(t[keep].view(q, k1 - 1) for t in (ids,) + others)


def remove_self_from_histograms(n: torch.Tensor, r: torch.Tensor, self_rel: torch.Tensor):
    """Per-distance counts without each query's own item, which sits at Hamming distance 0 (same-set
    codes are equal); ``self_rel`` (q,) float64: whether it was relevant."""
    n, r = n.clone(), r.clone()
    n[:, 0] -= 1
    r[:, 0] -= self_rel
    return n, r


def _ranker(eng, own: torch.Tensor | None):
    """``eng.ranking``, or (same-set) a ranking one item deeper with each query's own item removed."""
    if own is None:
        return eng.ranking

    def rank(q, k, with_dist=True):
        ids, dist = eng.ranking(q, k + 1)
        return drop_self(own, ids) + (None,) if dist is None else drop_self(own, ids, dist)
    return rank


def _pr_ranks(n_db: int) -> np.ndarray:
    """Rank cut-offs of the precision-recall curve of float codes: 1, then 20 log-spaced up to N."""
    return np.unique(np.geomspace(1, n_db, 21).round().astype(np.int64))


def _compact_labels(prep: Prepared):
    """numpy labels for the CPU gather: class ids in the smallest dtype, or bool multi-hot."""
    ql, dl = prep.query_labels.numpy(), prep.db_labels.numpy()
    if ql.ndim == 2:
        return ql, dl
    classes, inv = np.unique(dl, return_inverse=True)
    dtype = np.uint8 if classes.size < 255 else np.uint16 if classes.size < 65535 else np.int64
    pos = np.searchsorted(classes, ql).clip(max=classes.size - 1)
    q_ids = np.where(classes[pos] == ql, pos, classes.size)        # absent class -> a new id
    return q_ids.astype(dtype), inv.reshape(-1).astype(dtype)


def _gather_relevance_np(labels, start: int, ids: np.ndarray) -> np.ndarray:
    ql, dl = labels
    qc = ql[start:start + ids.shape[0]]
    if ql.ndim == 1:
        return np.take(dl, ids) == qc[:, None]
    return (dl[ids] & qc[:, None, :]).any(2)


def _relevance_of(prep: Prepared, qlc: torch.Tensor):
    """``f(ids)``: relevance of database items ``ids`` (q, K) to the queries; ``f(None)``: to all."""
    def rel_of(ids):
        return relevance(qlc, prep.db_labels) if ids is None else _gather_relevance(prep, qlc, ids)
    rel_of.labels = (qlc, prep.db_labels) if qlc.dim() == 1 else None   # class ids: fusable

    # relevance of listed (query row, database item) pairs
    rel_of.pairs = lambda rows, cols: _gather_relevance(prep, qlc[rows], cols[:, None])[:, 0]
    return rel_of


def _gather_relevance(prep: Prepared, qlc: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Relevance of the ranked items ``ids`` (q, K) to each query."""
    if qlc.dim() == 1:
        return prep.db_labels[ids] == qlc[:, None]
    return (prep.db_labels[ids] & qlc[:, None, :]).any(2)


def _recall_vs_exact(prep: Prepared, eng, k: int, chunk: int, exclude_self: bool = False) -> dict:
    """Recall@k of an approximate index: share of the exact top-k (index ties) it returns."""
    from hashbench.platform.evaluation.engines import TorchEngine

    exact = TorchEngine(prep)
    found = 0
    for s in range(0, prep.query.shape[0], chunk):
        qc = prep.query[s:s + chunk]
        own = torch.arange(s, s + qc.shape[0], device=qc.device) if exclude_self else None
        a, _ = _ranker(eng, own)(qc, k)
        e, _ = _ranker(exact, own)(qc, k)
        found += int((a.unsqueeze(2) == e.unsqueeze(1)).any(2).sum())
    return {"k": k, "recall": found / (prep.query.shape[0] * k)}
