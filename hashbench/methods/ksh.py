"""``dch-ksh``: Kernel-Based Supervised Hashing (Liu, Wang, Ji, Jiang, Chang, CVPR 2012) on DCH CNN features.

The DCH paper's "KSH+CNNF" row (Table II). The KSH fit is also used by ``drn-ksh``.

KSH (the paper is not in ../shared/papers; its equations are written out here and labelled [K1]-[K6],
the labels docs/methods/supervised-two-stage.md uses):

* hash functions ``h_k(x) = sgn(a_kᵀ k̄(x))`` on the centred kernel features
  ``k̄(x) = [k(x_(1), x) − μ_1, …, k(x_(m), x) − μ_m]ᵀ`` of ``m`` anchors [K1]
  (:func:`hashbench.methods._supervised_hashing.fit_kernel`);
* on ``l`` labelled items, pairwise labels ``S_ij = +1`` (share a label) / ``−1`` and
  the code inner-product objective ``min ‖H_l H_lᵀ − r S‖²_F`` over ``H_l = sgn(K̄_l A)`` [K2];
* greedy, one bit at a time, on the residue ``R_{k−1} = r S − Σ_{t<k} h_t h_tᵀ``:
  ``min_a −sgn(K̄_l a)ᵀ R_{k−1} sgn(K̄_l a)`` [K3], initialised by the spectral relaxation
  ``K̄_lᵀ R_{k−1} K̄_l a = λ K̄_lᵀ K̄_l a`` ([K4], largest λ, scaled so aᵀK̄_lᵀK̄_l a = l), then the
  sigmoid smoothing ``φ(x) = 2/(1 + e^{−x}) − 1`` of sgn: ``min Q̃(a) = −φ(K̄_l a)ᵀ R_{k−1} φ(K̄_l a)``
  [K5] with gradient ``∇Q̃ = −K̄_lᵀ((R_{k−1} b) ⊙ (1 − b ⊙ b))``, ``b = φ(K̄_l a)`` [K6];
  the smoothed solution is kept only if its discrete objective beats the spectral one;
* ``R_k = R_{k−1} − h_k h_kᵀ``.

Choices (docs/methods/supervised-two-stage.md): Nesterov's method is run with backtracking and a
momentum restart whenever a step would increase Q̃, so Q̃ never increases; the generalised
eigenproblem gets a ridge ``1e-6·tr(K̄_lᵀK̄_l)/m`` on its right-hand side.
"""

from __future__ import annotations

import math

import torch

from hashbench.methods import _supervised_hashing as sh
from hashbench.methods._two_stage import DCH_CITATION
from hashbench.platform.registry import Param

CITATION = ("Liu W, Wang J, Ji R, Jiang YG, Chang SF. Supervised hashing with kernels. CVPR 2012, "
            "pp. 2074-2081.")
RIDGE = 1e-6


def similarity(labels: torch.Tensor) -> torch.Tensor:
    """``S_ij = +1`` when items i and j share a label, else ``−1`` (multi-hot ``labels`` (l, C))."""
    return torch.where(labels @ labels.T > 0, 1.0, -1.0).to(labels.dtype)


def spectral_init(kbar: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """[K4]: the top generalised eigenvector of ``(K̄ᵀRK̄, K̄ᵀK̄ + δI)``, scaled to aᵀ(K̄ᵀK̄ + δI)a = l."""
    l, m = kbar.shape
    gram = kbar.T @ kbar
    gram = gram + RIDGE * (torch.trace(gram) / m + 1e-12) * torch.eye(m, dtype=kbar.dtype, device=kbar.device)
    chol = torch.linalg.cholesky(gram)                                        # K̄ᵀK̄ + δI = LLᵀ
    lhs = kbar.T @ (r @ kbar)                                                 # K̄ᵀ R K̄
    c = torch.linalg.solve_triangular(chol, lhs, upper=False)                 # L⁻¹ K̄ᵀRK̄
    c = torch.linalg.solve_triangular(chol, c.T, upper=False)                 # L⁻¹ K̄ᵀRK̄ L⁻ᵀ (symmetric)
    _, vecs = torch.linalg.eigh(0.5 * (c + c.T))                              # ascending eigenvalues
    a = torch.linalg.solve_triangular(chol.T, vecs[:, -1:], upper=True)[:, 0]  # a = L⁻ᵀ v
    return a * math.sqrt(l)


def smooth_objective(kbar: torch.Tensor, r: torch.Tensor, a: torch.Tensor):
    """[K5]: ``Q̃(a) = −φ(K̄a)ᵀ R φ(K̄a)``, φ(x) = 2/(1 + e^{−x}) − 1 = tanh(x/2). Returns (Q̃, b, Rb)."""
    b = torch.tanh(0.5 * (kbar @ a))
    rb = r @ b
    return -float(b @ rb), b, rb


def smooth_gradient(kbar: torch.Tensor, b: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """[K6]: ``∇Q̃ = −K̄ᵀ((R b) ⊙ (1 − b ⊙ b))`` (φ'(x) = (1 − φ²)/2 and ∂(bᵀRb)/∂b = 2Rb)."""
    return -(kbar.T @ (rb * (1.0 - b * b)))


def optimise_bit(kbar: torch.Tensor, r: torch.Tensor, a0: torch.Tensor, iterations: int, tol: float = 1e-7):
    """Minimise Q̃ from ``a0`` by Nesterov's accelerated gradient with backtracking (Armijo) and a
    restart of the momentum whenever the accelerated step would raise Q̃ above the last iterate.
    Returns ``(a, trace)`` with ``trace[t]`` = Q̃ after t accepted steps (non-increasing)."""
    a = a0.clone()
    f, b, rb = smooth_objective(kbar, r, a)
    trace = [f]
    y, fy, by, rby = a, f, b, rb
    t = 1.0
    step = None
    for _ in range(iterations):
        g = smooth_gradient(kbar, by, rby)
        gn2 = float(g @ g)
        if gn2 <= 0.0:
            break
        step = float(a0.norm()) / math.sqrt(gn2) if step is None else step * 2.0
        while True:                                        # Armijo backtracking from y
            cand = y - step * g
            fc, bc, rbc = smooth_objective(kbar, r, cand)
            if fc <= fy - 1e-4 * step * gn2 or step < 1e-30:
                break
            step *= 0.5
        if fc > f:                                         # the momentum overshot: restart from a
            if y is a:
                break
            y, fy, by, rby, t = a, f, b, rb, 1.0
            continue
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        prev = f
        mom = (t - 1.0) / t_next
        y = cand if mom == 0.0 else cand + mom * (cand - a)
        a, f, b, rb, t = cand, fc, bc, rbc, t_next
        trace.append(f)
        fy, by, rby = (f, b, rb) if y is a else smooth_objective(kbar, r, y)
        if prev - f <= tol * abs(prev):
            break
    return a, trace


def ksh_fit(kbar: torch.Tensor, s: torch.Tensor, bits: int, iterations: int):
    """Greedy KSH on labelled centred kernel features ``kbar`` (l, m) and pairwise labels ``s`` (l, l).

    Returns ``(A, info)``: ``A`` (m, bits) and ``info`` with per-bit ``traces`` (Q̃ over the
    optimisation), ``discrete`` / ``discrete_spectral`` (−hᵀR_{k−1}h of the kept / spectral
    solution) and ``residue`` (‖R_k‖²_F for k = 0 … bits, the objective [K2] after k bits).
    """
    r = bits * s                                                               # R_0 = r S
    cols, info = [], {"traces": [], "discrete": [], "discrete_spectral": [], "residue": [float((r * r).sum())]}
    for _ in range(bits):
        a0 = spectral_init(kbar, r)
        a, trace = optimise_bit(kbar, r, a0, iterations)
        h, h0 = sh.sign(kbar @ a), sh.sign(kbar @ a0)
        q, q0 = -float(h @ (r @ h)), -float(h0 @ (r @ h0))
        if q > q0:                                                             # keep the better of the two
            a, h, q = a0, h0, q0
        r = r - torch.outer(h, h)                                              # R_k = R_{k−1} − h hᵀ
        cols.append(a)
        info["traces"].append(trace)
        info["discrete"].append(q)
        info["discrete_spectral"].append(q0)
        info["residue"].append(float((r * r).sum()))
    return torch.stack(cols, dim=1), info


def fit(feats: torch.Tensor, labels: torch.Tensor, bits: int, hp: dict, generator: torch.Generator,
        method_id: str) -> dict:
    """KSH on train features: anchors and kernel on all n items, the greedy fit on ``labeled`` of them."""
    anchors, inv, mu, kbar = sh.fit_kernel(feats, hp["anchors"], hp["sigma_scale"], generator, method_id)
    n = feats.shape[0]
    lab = torch.randperm(n, generator=generator)[:min(hp["labeled"], n)].to(feats.device)
    a, _ = ksh_fit(kbar[lab], similarity(labels[lab]), bits, hp["iterations"])
    return {"anchors": anchors, "inv_two_sigma2": inv, "kernel_mean": mu, "projection": a}


HASHER = sh.Hasher(
    name="KSH", fit=fit, kernel=True,
    params=(
        sh.anchors_param(300, (64, 512), "KSH: m = 300"),
        sh.SIGMA_SCALE,
        Param("labeled", 2000, type="int", search=(500, 5000), log=True, bounds=(2, None),
              help="l, train items with pairwise labels (KSH: 1000 and 2000); all when fewer"),
        Param("iterations", 500, type="int", bounds=(0, None),
              help="gradient iterations per bit on the smoothed objective (0 = spectral relaxation only)"),
    ))

sh.register_two_stage(
    "dch-ksh", trunk="dch-cnn", hasher=HASHER, family="two-stage",
    summary="KSH (kernel supervised hashing) on the features of the DCH CNN trained with cross-entropy "
            "(DCH paper's KSH+CNNF)",
    citation=CITATION + " Features: " + DCH_CITATION, paper="../shared/papers/001_ccae20c2c51c6ac7.txt")
