"""``dch-cca-itq``: CCA-ITQ (Gong, Lazebnik, Gordo, Perronnin, IEEE TPAMI 2013, Sec. 4) on DCH CNN features.

The DCH paper's "CCA+CNNF" row (Table II). Supervised ITQ: the PCA of plain ITQ is replaced by
canonical correlation analysis between the centred features X (n, d) and the label matrix Y (n, C):

* CCA: ``max_w corr(Xw, Yv)``, the generalised eigenproblem
  ``C_xy C_yy⁻¹ C_yx w = ρ² C_xx w`` with ``C_xx + ηI`` and ``C_yy + ηI`` regularised
  (``η = reg`` times the mean variance of each block); directions with ``wᵀ C_xx w = 1``;
* the top ``bits`` directions are *scaled by their canonical correlations* ρ_k:
  ``V = X W diag(ρ)`` (Gong et al.: "scaled by the eigenvalues", as their reference code does);
* ITQ on V (:func:`hashbench.methods.itq.itq_rotation`): ``B = sgn(VR)``, ``R`` the orthogonal
  Procrustes solution, ``iterations`` alternations; the hash function is ``sgn((x − μ) W diag(ρ) R)``.

``C_xy`` has rank at most C, so at most C correlations are non-zero: the eigenproblem is solved as
the SVD of the whitened cross-covariance ``L⁻¹ C_xy C_yy^{-1/2}`` (d × C, ``C_xx = LLᵀ``), and
directions past the C-th get ρ = 0 (their columns of ``W diag(ρ)`` are 0, whatever they are).
"""

from __future__ import annotations

import torch

from hashbench.methods import _supervised_hashing as sh
from hashbench.methods._two_stage import DCH_CITATION
from hashbench.methods.itq import itq_rotation
from hashbench.platform.registry import Param

CITATION = ("Gong Y, Lazebnik S, Gordo A, Perronnin F. Iterative quantization: A procrustean approach to "
            "learning binary codes for large-scale image retrieval. IEEE TPAMI 2013;35(12):2916-2929.")


def _reg_cov(a: torch.Tensor, reg: float) -> torch.Tensor:
    c = a.T @ a / a.shape[0]
    d = c.shape[0]
    return c + reg * (torch.trace(c) / d + 1e-12) * torch.eye(d, dtype=a.dtype, device=a.device)


def cca(x: torch.Tensor, y: torch.Tensor, k: int, reg: float):
    """Top-``k`` CCA directions of ``x`` (n, d) for ``y`` (n, c): ``(mean_x, W (d, k), ρ (k,))``.

    ``W`` solves ``C_xy C_yy⁻¹ C_yx w = ρ² C_xx w`` with ``wᵀ C_xx w = 1`` (both covariances
    regularised), columns in descending ρ; columns past rank(C_xy) are 0 with ρ = 0.
    """
    mx = x.mean(0)
    xc, yc = x - mx, y - y.mean(0)
    cxx, cyy = _reg_cov(xc, reg), _reg_cov(yc, reg)
    cxy = xc.T @ yc / x.shape[0]
    lx = torch.linalg.cholesky(cxx)                                          # C_xx = L Lᵀ
    ey, vy = torch.linalg.eigh(cyy)
    cyy_isqrt = vy @ torch.diag(ey.clamp_min(1e-300).rsqrt()) @ vy.T         # C_yy^{-1/2}
    g = torch.linalg.solve_triangular(lx, cxy @ cyy_isqrt, upper=False)      # L⁻¹ C_xy C_yy^{-1/2}
    u, s, _ = torch.linalg.svd(g, full_matrices=False)                       # singular values = ρ
    w = torch.linalg.solve_triangular(lx.T, u, upper=True)                   # w = L⁻ᵀ u: wᵀC_xx w = 1
    d = x.shape[1]
    out_w = torch.zeros(d, k, dtype=x.dtype, device=x.device)
    out_r = torch.zeros(k, dtype=x.dtype, device=x.device)
    j = min(k, s.shape[0])
    out_w[:, :j], out_r[:j] = w[:, :j], s[:j]
    return mx, out_w, out_r


def fit(feats: torch.Tensor, labels: torch.Tensor, bits: int, hp: dict, generator: torch.Generator,
        method_id: str) -> dict:
    mu, w, rho = cca(feats, labels, bits, hp["reg"])
    proj = w * rho                                                           # W diag(ρ)
    r, _ = itq_rotation((feats - mu) @ proj, hp["iterations"], generator)
    return {"mean": mu, "projection": proj @ r}


HASHER = sh.Hasher(
    name="CCA", fit=fit, kernel=False, needs_bits_le_dim=True,
    params=(
        Param("reg", 1e-4, search=(1e-6, 1.0), log=True, bounds=(0, None),
              help="η, ridge on both CCA covariances relative to their mean variance (Gong et al.: 1e-4)"),
        Param("iterations", 50, type="int", bounds=(1, None), help="ITQ alternations (Gong et al.: 50)"),
    ))

sh.register_two_stage(
    "dch-cca-itq", trunk="dch-cnn", hasher=HASHER, family="two-stage",
    summary="CCA-ITQ (CCA to the labels, scaled by the correlations, then ITQ) on the features of the DCH "
            "CNN trained with cross-entropy (DCH paper's CCA+CNNF)",
    citation=CITATION + " Features: " + DCH_CITATION, paper="../shared/papers/001_ccae20c2c51c6ac7.txt")
