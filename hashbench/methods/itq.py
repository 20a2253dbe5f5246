"""``itq``: Iterative Quantization (Gong & Lazebnik, CVPR 2011) of CNN features — a two-stage baseline.

PCA of the centred train features to ``bits`` dimensions, ``V = (F − μ)P``; then
``iterations`` alternations of ``B = sgn(VR)`` and the orthogonal Procrustes
solution ``R = S̃Sᵀ`` from the SVD ``BᵀV = S Ω S̃ᵀ`` (i.e. ``VᵀB = S̃ Ω Sᵀ``),
which minimise the quantisation loss ``Q(B, R) = ‖B − VR‖²_F``. The fitted
``μ`` and ``P·R`` are the model's buffers. See docs/methods/lsh-itq.md.
"""

from __future__ import annotations

import torch

from hashbench.methods import _two_stage as ts
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, Param, Requirements, register

CITATION = ("Gong Y, Lazebnik S. Iterative quantization: A procrustean approach to learning binary codes. "
            "CVPR 2011. Features: " + ts.DCH_CITATION)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def pca(x: torch.Tensor, k: int):
    """Mean ``μ`` (d,) and the top-``k`` principal directions ``P`` (d, k) of ``x`` (n, d)."""
    mu = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mu, full_matrices=False)  # singular values in descending order
    return mu, vh[:k].T


def itq_rotation(v: torch.Tensor, iterations: int, generator=None):
    """Rotation ``R`` (k, k) minimising ``‖sgn(VR) − VR‖²_F`` and the loss after each update.

    Starts from a random orthogonal matrix (QR of a Gaussian). Returns ``(R, losses)``,
    ``losses[t] = min_B Q(B, R_t) = ‖sgn(VR_t) − VR_t‖²_F`` for t = 0 … iterations
    (non-increasing: each half-step minimises Q over one variable).
    """
    k = v.shape[1]
    r, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=v.dtype).to(v.device))
    losses = []
    for _ in range(iterations):
        vr = v @ r
        b = _sign(vr)                                   # B-step: B = sgn(VR)
        losses.append(float(((b - vr) ** 2).sum()))
        u, _, wt = torch.linalg.svd(v.T @ b)            # R-step: VᵀB = U Ω Wᵀ → R = U Wᵀ
        r = u @ wt
    vr = v @ r
    losses.append(float(((_sign(vr) - vr) ** 2).sum()))
    return r, losses


@torch.no_grad()
def finalize(model, batches, hp) -> None:
    """Fit PCA + ITQ on the train features and store ``μ`` and ``P·R`` in the model."""
    model = getattr(model, "module", model)
    feats = ts.collect_features(model, batches)
    bits = model.projection.shape[1]
    if feats.shape[0] < bits:
        raise HashbenchError(f"itq needs at least bits={bits} train images for PCA, got {feats.shape[0]}")
    mu, p = pca(feats, bits)
    gen = torch.Generator().manual_seed(hp["seed"])
    r, _ = itq_rotation((feats - mu) @ p, hp["iterations"], gen)
    model.mean.copy_(mu.to(model.mean.dtype))
    model.projection.copy_((p @ r).to(model.projection.dtype))


register(Method(
    id="itq", family="two-stage",
    summary="PCA + Iterative Quantization on the features of a CNN trained with cross-entropy (DCH net, no LBE)",
    citation=CITATION, paper="../shared/papers/001_ccae20c2c51c6ac7.txt",
    build_model=ts.build_model, build_loss=ts.build_loss, build_optimizer=ts.build_optimizer,
    finalize=finalize,
    params=ts.stage_one_params() + (
        Param("iterations", 50, type="int", bounds=(1, None), help="ITQ alternations (Gong & Lazebnik: 50)"),),
    code_type="binary", distance="hamming", batch_size=32, epochs=30, requires=Requirements(min_image_size=8)))
