"""Validation and conversion of evaluation inputs (codes, labels, cut-offs).

Everything is turned into torch tensors on the evaluation device:

* binary codes -> ``uint8`` ``{0, 1}`` matrix ``(n, bits)`` (from ``{-1,+1}``, ``{0,1}``, ``bool`` or
  bit-packed ``uint8`` with ``bits=``);
* float embeddings -> ``float32`` ``(n, dim)`` (L2-normalised for cosine);
* labels -> ``int64`` class ids ``(n,)`` or ``bool`` multi-hot ``(n, C)``.

Every problem raises :class:`HashbenchError` naming the argument, the value and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench.platform.errors import HashbenchError

# torch is imported inside the functions that convert arrays, so that ``parse_ks`` and ``DISTANCES``
# (used by the torch-free CPU path, ``cpu_eval``) do not load it.

DISTANCES = ("hamming", "l2", "cosine")


@dataclass
class Prepared:
    """Validated inputs on one device."""

    query: torch.Tensor        # (nq, bits) uint8 {0,1}  or (nq, dim) float32
    db: torch.Tensor
    query_labels: torch.Tensor  # (nq,) int64 or (nq, C) bool
    db_labels: torch.Tensor
    distance: str
    dim: int                   # bits for hamming, embedding size otherwise

    @property
    def binary(self) -> bool:
        return self.distance == "hamming"

    @property
    def multi_label(self) -> bool:
        return self.query_labels.dim() == 2


def as_tensor(x, name: str, device: torch.device | None = None) -> torch.Tensor:
    """numpy array / torch tensor / nested list -> tensor (no copy when possible)."""
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is a user error
            raise HashbenchError(f"{name}: cannot be read as an array ({exc})") from exc
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise HashbenchError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if device is None else t.to(device)


def _binary_codes(x: torch.Tensor, name: str, bits: int | None) -> torch.Tensor:
    import torch

    if x.dim() != 2:
        raise HashbenchError(f"{name}: expected a 2-D array (n, bits), got shape {tuple(x.shape)}")
    if bits is not None:
        if x.dtype != torch.uint8:
            raise HashbenchError(f"{name}: bits={bits} means bit-packed uint8 codes, got dtype {x.dtype}")
        nbytes = (bits + 7) // 8
        if x.shape[1] != nbytes:
            raise HashbenchError(f"{name}: bits={bits} needs {nbytes} packed bytes per code, "
                                 f"got {x.shape[1]}")
        shifts = torch.arange(7, -1, -1, device=x.device, dtype=torch.uint8)
        unpacked = (x.unsqueeze(-1) >> shifts) & 1            # big-endian like np.packbits
        return unpacked.reshape(x.shape[0], nbytes * 8)[:, :bits].contiguous()
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
        raise HashbenchError(f"{name}: NaN or inf in binary codes; expected only -1/+1 or 0/1")
    if not x.numel():
        is01 = True
    elif x.dtype == torch.uint8:        # one reduction instead of two comparisons and an or
        is01 = int(x.max()) <= 1
    else:
        is01 = bool(((x == 0) | (x == 1)).all())
    if is01:
        return x.to(torch.uint8)
    if x.dtype != torch.uint8 and bool(((x == -1) | (x == 1)).all()):   # uint8 would read -1 as 255
        return (x > 0).to(torch.uint8)
    bad = x[~((x == 0) | (x == 1))] if x.dtype == torch.uint8 else x[~((x == -1) | (x == 0) | (x == 1))]
    example = bad[0].item() if bad.numel() else "a mix of -1 and 0"
    hint = " (uint8 codes look bit-packed: pass bits=)" if x.dtype == torch.uint8 else \
        " (binarise first, e.g. sign())"
    raise HashbenchError(f"{name}: binary codes must be all -1/+1 or all 0/1, found {example}{hint}")


def _float_codes(x: torch.Tensor, name: str, distance: str) -> torch.Tensor:
    import torch

    if x.dim() != 2:
        raise HashbenchError(f"{name}: expected a 2-D array (n, dim), got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise HashbenchError(f"{name}: expected float embeddings, got dtype {x.dtype}")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        row = int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
        raise HashbenchError(f"{name}: NaN or inf in float codes (first at row {row}); all values must be finite")
    if distance == "cosine":
        norms = x.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            row = int((norms[:, 0] == 0).nonzero()[0, 0])
            raise HashbenchError(f"{name}: row {row} is all zeros; cosine distance needs non-zero vectors")
        x = x / norms
    return x.contiguous()


def _labels(y: torch.Tensor, name: str, n: int, codes_name: str) -> torch.Tensor:
    import torch

    if y.dim() not in (1, 2):
        raise HashbenchError(f"{name}: expected class ids (n,) or multi-hot (n, C), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise HashbenchError(f"{name}: {y.shape[0]} labels for {n} codes in {codes_name}; counts must match")
    if y.dtype.is_floating_point:
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise HashbenchError(f"{name}: labels must be integers (class ids or 0/1 multi-hot)")
    if y.dim() == 2:
        if not bool(((y == 0) | (y == 1)).all()):
            raise HashbenchError(f"{name}: multi-hot labels must contain only 0 and 1")
        return y.to(torch.bool)
    return y.to(torch.int64)


def prepare(query_codes, db_codes, query_labels, db_labels, *, distance: str, bits: int | None,
            device: torch.device) -> Prepared:
    """Validate and convert the four inputs of :func:`evaluate`."""
    if distance not in DISTANCES:
        raise HashbenchError(f"distance: {distance!r} is not one of {', '.join(DISTANCES)}")
    if bits is not None and (not isinstance(bits, (int, np.integer)) or bits <= 0):
        raise HashbenchError(f"bits: must be a positive integer (the code length of packed codes), got {bits!r}")
    if bits is not None and distance != "hamming":
        raise HashbenchError(f"bits: packed codes need distance='hamming', got distance={distance!r}")
    q = as_tensor(query_codes, "query_codes", device)
    d = as_tensor(db_codes, "db_codes", device)
    if distance == "hamming":
        q, d = _binary_codes(q, "query_codes", bits), _binary_codes(d, "db_codes", bits)
    else:
        q, d = _float_codes(q, "query_codes", distance), _float_codes(d, "db_codes", distance)
    if q.shape[0] == 0:
        raise HashbenchError("query_codes: no queries (0 rows)")
    if d.shape[0] == 0:
        raise HashbenchError("db_codes: empty database (0 rows); nothing to retrieve from")
    if q.shape[1] != d.shape[1]:
        raise HashbenchError(f"query_codes has {q.shape[1]} dimensions but db_codes has {d.shape[1]}; "
                             f"they must match")
    if q.shape[1] == 0:
        raise HashbenchError("query_codes: codes have 0 dimensions")
    ql = _labels(as_tensor(query_labels, "query_labels", device), "query_labels", q.shape[0], "query_codes")
    dl = _labels(as_tensor(db_labels, "db_labels", device), "db_labels", d.shape[0], "db_codes")
    if ql.dim() != dl.dim() or (ql.dim() == 2 and ql.shape[1] != dl.shape[1]):
        raise HashbenchError(f"query_labels shape {tuple(ql.shape)} and db_labels shape {tuple(dl.shape)} "
                             f"disagree; use class ids (n,) for both or multi-hot (n, C) with the same C")
    return Prepared(q, d, ql, dl, distance, int(q.shape[1]))


def parse_ks(ks, n_db: int) -> list[tuple[str, int]]:
    """``(10, 100, "all", "N-1")`` -> ``[("10", 10), ("100", 100), ("all", n_db), ("N-1", n_db - 1)]``;
    cut-offs above the database size are clipped to it (the key keeps the requested value). ``"N-m"``
    counts from the end of the ranking (DeepHash-pytorch's ``topK=-1`` is ``N-1``)."""
    if isinstance(ks, (str, int)):
        ks = [ks]
    out: list[tuple[str, int]] = []
    for k in ks:
        if isinstance(k, str) and k.strip().lower() == "all":
            out.append(("all", n_db))
            continue
        if isinstance(k, str) and k.strip()[:1] in "nN" and k.strip()[1:].lstrip().startswith("-"):
            m = k.strip()[1:].strip()[1:].strip()
            if not m.isdigit() or not 0 <= int(m) < n_db:
                raise HashbenchError(f"ks: {k!r}: 'N-m' needs an integer 0 <= m < N = {n_db} (the database size)")
            out.append((f"N-{int(m)}", n_db - int(m)))
            continue
        try:
            kv = int(k)
            if isinstance(k, float) and k != kv:
                raise ValueError
        except (TypeError, ValueError):
            raise HashbenchError(f"ks: {k!r} is not a positive integer, 'all' or 'N-m'") from None
        if kv <= 0:
            raise HashbenchError(f"ks: k must be >= 1 or 'all', got {kv}")
        out.append((str(kv), min(kv, n_db)))
    if not out:
        raise HashbenchError("ks: give at least one cut-off (a positive integer, 'all' or 'N-m')")
    return out
