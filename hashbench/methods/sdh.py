"""``dch-sdh``: Supervised Discrete Hashing (Shen, Shen, Liu, Shen, CVPR 2015) on DCH CNN features.

The DCH paper's "SDH+CNNF" row (Table II). SDH with items as rows (the paper writes them as
columns; it is not in ../shared/papers: the equations are written out and labelled [S1]-[S4], the
labels docs/methods/supervised-two-stage.md uses):

    min_{B, W, P}  ‖Y − B W‖²_F + λ‖W‖²_F + ν‖B − F(X)‖²_F,   B ∈ {−1, 1}^{n×L}        [S1]

with the hash function ``F(x) = Pᵀ φ(x)`` on ``m`` RBF anchor features φ (centred here, see
below) and ``Y`` the (n, C) label matrix. Alternating minimisation, ``outer_iterations`` times:

* G-step [S2]:  ``W = (BᵀB + λI)⁻¹ BᵀY``;
* F-step [S3]:  ``P = (φᵀφ)⁻¹ φᵀB`` (a ridge ``δ·tr(φᵀφ)/m`` is added, ``δ = ridge``);
* B-step [S4]: ``min_B ‖BW‖² − 2 tr(Bᵀ Q)``, ``Q = Y Wᵀ + ν F(X)``, by discrete cyclic
  coordinate descent (DCC): bit column ``z`` (n) at a time, the others ``B'`` and their rows ``W'``
  of W fixed, ``z = sgn(q − B' W' wᵀ)`` (``q`` and ``w`` the column of Q and row of W of that
  bit), ``dcc_iterations`` sweeps over the bits (fewer when a sweep changes nothing).

After the last B-step, P is fitted once more to the final B, so the hash function reproduces the
learned codes as well as it can. Choices: docs/methods/supervised-two-stage.md.
"""

from __future__ import annotations

import torch

from hashbench.methods import _supervised_hashing as sh
from hashbench.methods._two_stage import DCH_CITATION
from hashbench.platform.registry import Param

CITATION = ("Shen F, Shen C, Liu W, Shen HT. Supervised discrete hashing. CVPR 2015, pp. 37-45.")


def objective(y, b, w, phi, p, lam: float, nu: float) -> float:
    """[S1]: ``‖Y − BW‖² + λ‖W‖² + ν‖B − φP‖²``."""
    return float(((y - b @ w) ** 2).sum() + lam * (w ** 2).sum() + nu * ((b - phi @ p) ** 2).sum())


def g_step(b: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """[S2]: ``W = (BᵀB + λI)⁻¹ BᵀY`` (L, C)."""
    eye = torch.eye(b.shape[1], dtype=b.dtype, device=b.device)
    return torch.linalg.solve(b.T @ b + lam * eye, b.T @ y)


def f_step(phi: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """[S3]: ``P = (φᵀφ + δI)⁻¹ φᵀB`` (m, L), δ = ``ridge``·tr(φᵀφ)/m."""
    gram = phi.T @ phi
    m = gram.shape[0]
    gram = gram + ridge * (torch.trace(gram) / m + 1e-12) * torch.eye(m, dtype=phi.dtype, device=phi.device)
    return torch.linalg.solve(gram, phi.T @ b)


def dcc_bit(b: torch.Tensor, w: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[S4] for bit ``k``: ``z = sgn(q − B' W' w_kᵀ)``, the minimiser of ``‖BW‖² − 2tr(BᵀQ)`` over
    column k of B with the other columns fixed (sgn(0) = +1). Returns the new column (n,)."""
    keep = torch.arange(b.shape[1], device=b.device) != k
    return sh.sign(q[:, k] - b[:, keep] @ (w[keep] @ w[k]))


def dcc(b: torch.Tensor, w: torch.Tensor, q: torch.Tensor, sweeps: int) -> torch.Tensor:
    """Discrete cyclic coordinate descent: ``sweeps`` passes over the bits, stopping early when a pass
    changes no bit. Each update minimises the B-subproblem exactly in its column, so it never increases."""
    b = b.clone()
    for _ in range(sweeps):
        changed = False
        for k in range(b.shape[1]):
            z = dcc_bit(b, w, q, k)
            changed = changed or not torch.equal(z, b[:, k])
            b[:, k] = z
        if not changed:
            break
    return b


def sdh_fit(phi: torch.Tensor, y: torch.Tensor, bits: int, *, lam: float, nu: float, outer: int, sweeps: int,
            ridge: float, generator: torch.Generator):
    """SDH on centred anchor features ``phi`` (n, m) and labels ``y`` (n, C). Returns ``(P, B, W, history)``,
    ``history`` the objective [S1] after each G-, F- and B-step."""
    b = sh.sign(torch.randn(phi.shape[0], bits, generator=generator, dtype=phi.dtype)).to(phi.device)
    history = []
    p = torch.zeros(phi.shape[1], bits, dtype=phi.dtype, device=phi.device)
    for _ in range(outer):
        w = g_step(b, y, lam)                                    # G-step
        history.append(objective(y, b, w, phi, p, lam, nu))
        p = f_step(phi, b, ridge)                                # F-step
        history.append(objective(y, b, w, phi, p, lam, nu))
        b = dcc(b, w, y @ w.T + nu * (phi @ p), sweeps)          # B-step, Q = YWᵀ + νF(X)
        history.append(objective(y, b, w, phi, p, lam, nu))
    p = f_step(phi, b, ridge)                                    # the hash function of the final codes
    return p, b, w, history


def fit(feats: torch.Tensor, labels: torch.Tensor, bits: int, hp: dict, generator: torch.Generator,
        method_id: str) -> dict:
    anchors, inv, mu, phi = sh.fit_kernel(feats, hp["anchors"], hp["sigma_scale"], generator, method_id)
    p, _, _, _ = sdh_fit(phi, labels, bits, lam=hp["lambda"], nu=hp["nu"], outer=hp["outer_iterations"],
                         sweeps=hp["dcc_iterations"], ridge=hp["ridge"], generator=generator)
    return {"anchors": anchors, "inv_two_sigma2": inv, "kernel_mean": mu, "projection": p}


HASHER = sh.Hasher(
    name="SDH", fit=fit, kernel=True,
    params=(
        sh.anchors_param(1000, (64, 512), "SDH: m = 1000"),
        sh.SIGMA_SCALE,
        Param("lambda", 1.0, search=(1e-3, 1e2), log=True, bounds=(0, None),
              help="λ, weight of ‖W‖² in the classification term (SDH: 1)"),
        Param("nu", 1e-5, search=(1e-7, 1.0), log=True, bounds=(0, None),
              help="ν, weight of the hash-function fitting term ‖B − F(X)‖² (SDH: 1e-5)"),
        Param("outer_iterations", 5, type="int", bounds=(1, None), help="alternations of G, F, B steps (SDH: 5)"),
        Param("dcc_iterations", 10, type="int", bounds=(1, None), help="DCC sweeps over the bits per B-step"),
        Param("ridge", 1e-2, search=(1e-6, 1.0), log=True, bounds=(0, None),
              help="ridge of the F-step, relative to the mean diagonal of φᵀφ (our choice; the paper's "
                   "F-step is plain least squares)"),
    ))

sh.register_two_stage(
    "dch-sdh", trunk="dch-cnn", hasher=HASHER, family="two-stage",
    summary="SDH (supervised discrete hashing, DCC bit updates) on the features of the DCH CNN trained with "
            "cross-entropy (DCH paper's SDH+CNNF)",
    citation=CITATION + " Features: " + DCH_CITATION, paper="../shared/papers/001_ccae20c2c51c6ac7.txt")
