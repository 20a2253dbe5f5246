"""Constellation loss and the three losses it is compared with (Medela & Picon, J Pathol Inform 2020).

Four methods on one network (:mod:`hashbench.methods._embedding_net`: ResNet, global
average pooling, a ``bits``-wide embedding with a sigmoid, L2-normalised except
for N-pair): ``constellation`` (eq. 4), ``triplet`` (eq. 2 with hard-triplet
mining), ``npair`` (multi-class N-pair, eq. 3) and ``contrastive`` (eq. 1).
Batches hold at least ``spc`` samples per class (the paper's "smart batch selection"), filled to
the batch size on data with few classes.
Retrieval and the paper's kNN evaluation use the Euclidean distance on the
embeddings. Choices the paper leaves open are listed in docs/methods/constellation.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.methods._embedding_net import EmbeddingNet, backbone_params, build_adam
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, Param, Requirements, register

CITATION = ("Medela A, Picon A. Constellation loss: Improving the efficiency of deep metric learning loss "
            "functions for the optimal embedding of histopathological images. J Pathol Inform 2020;11:38.")
PAPER = "../shared/papers/004_d579a509b5c5f3b2.txt"


# ---------------------------------------------------------------- constellation (eq. 4)

def sample_constellations(targets: torch.Tensor, k: int, num_classes: int, generator=None):
    """One random constellation per ordered anchor-positive pair of the batch, as fixed-shape tensors.

    Returns ``(valid, negatives)``: ``valid`` (B, B) bool marks the ordered pairs (a, p), a ≠ p, of one
    class (and is all False when the batch holds a single class); ``negatives`` (B, B, k) are the
    negatives of pair (a, p): ``k`` different classes drawn at random among the classes of the batch
    other than the anchor's (cycling through them again when the batch has fewer than ``k`` other
    classes), one random sample of each. Every pair gets its own draw. No host synchronisation and
    no data-dependent shape (the step can be one CUDA graph): classes are counted with ``one_hot`` over
    the dataset's ``num_classes``, members are picked by index arithmetic on the class-sorted batch.
    """
    dev = targets.device
    b = targets.numel()
    counts = F.one_hot(targets, num_classes).sum(0)                            # items per class (C,)
    present = counts > 0
    n_other = present.sum() - 1                                                # classes besides the anchor's
    eye = torch.eye(b, dtype=torch.bool, device=dev)
    valid = (targets[:, None] == targets[None, :]) & ~eye & (n_other > 0)
    # a random order of the classes per pair; absent classes and the anchor's own class sort last
    key = torch.rand(b, b, num_classes, device=dev, generator=generator)
    own = torch.arange(num_classes, device=dev)[None, :] == targets[:, None]   # (B, C)
    key = key.masked_fill(~present[None, None, :] | own[:, None, :], 2.0)
    slots = torch.arange(k, device=dev) % n_other.clamp_min(1)                 # cycle when n_other < k
    slot_class = key.argsort(dim=2).index_select(2, slots)                     # (B, B, k)
    # one random member of each slot's class: its rank inside the class-sorted batch
    by_class = torch.sort(targets, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    size = counts[slot_class]
    rank = (torch.rand(b, b, k, device=dev, generator=generator) * size).long().clamp_max(size - 1).clamp_min(0)
    return valid, by_class[starts[slot_class] + rank]


def constellation_loss(f: torch.Tensor, valid: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Eq. (4): ``(1/N) Σ_i log(1 + Σ_{j≤K} exp(f_aᵢᵀ f_nⱼ − f_aᵢᵀ f_pᵢ))``.

    ``f`` (B, D) embeddings; the N constellations are the pairs (a, p) with ``valid[a, p]``, their
    negatives ``negatives[a, p]`` (K indices). ``S = f fᵀ``; ``z_apj = S[a, n_apj] − S[a, p]``;
    ``log(1 + Σ_j e^{z}) = logsumexp([0, z_ap1..z_apK])`` (numerically stable); the mean over the
    valid pairs is the ``1/N Σ_i`` (0, with a gradient path, when there is none).
    """
    b, _, k = negatives.shape
    sim = f @ f.T                                                              # S[a, x] = f_aᵀ f_x
    ap = sim[:, :, None]                                                       # f_aᵀ f_p, (B, B, 1)
    an = sim.gather(1, negatives.reshape(b, b * k)).view(b, b, k)              # f_aᵀ f_nⱼ
    z = torch.cat([torch.zeros_like(ap), an - ap], dim=2)                      # [0, z_1 … z_K]
    w = valid.to(f.dtype)
    return (torch.logsumexp(z, dim=2) * w).sum() / w.sum().clamp_min(1.0)      # (1/N) Σ_i log(1 + Σ_j e^z)


class ConstellationLoss(nn.Module):
    def __init__(self, k: int, num_classes: int):
        super().__init__()
        self.k, self.num_classes = k, num_classes

    def forward(self, out, batch, model=None) -> dict:
        f = out["embedding"]
        valid, negatives = sample_constellations(batch.targets, self.k, self.num_classes)
        loss = constellation_loss(f, valid, negatives)
        return {"loss": loss, "constellation": loss.detach()}


def build_constellation_loss(ctx, hp) -> ConstellationLoss:
    """Eq. (4) needs K negatives from K *other* classes: refuse K >= the number of classes (the
    negatives would cycle over the same classes and the loss would no longer be eq. 4)."""
    k, n = hp["K"], ctx.num_classes
    if n < 2:
        raise HashbenchError(f"method 'constellation' needs at least 2 classes (K negatives come from other "
                             f"classes); the dataset has {n}")
    if k >= n:
        raise HashbenchError(f"parameter 'K' = {k}: the constellation loss draws its K negatives from K other "
                             f"classes, so K must lie in [1, {n - 1}] for the {n} classes of this dataset; "
                             f"use --set K={n - 1} or less")
    return ConstellationLoss(k, n)


# ---------------------------------------------------------------- triplet (eq. 2)

def triplet_loss(f: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. (2) with hard-triplet mining: ``L = (1/N) Σ_i max(0, ‖f_aᵢ − f_pᵢ‖² − ‖f_aᵢ − f_nᵢ‖² + α)``.

    The paper's "hard-triplet mining … using for computation only the triplets that give a positive
    loss" makes the N triplets those with a positive term among all (anchor, positive, negative)
    triplets of the batch (a ≠ p of one class, n of another). Every triplet is one entry of a
    (B, B, B) tensor, so the shapes do not depend on the labels and nothing is read back to the host
    (no ``nonzero``, boolean indexing or ``.item()``): the step can be one CUDA graph.

    ``d2[a, x] = ‖f_a − f_x‖²`` (``cdist(f, f) ** 2``, the squared Euclidean distance of
    pytorch-metric-learning's ``LpDistance(p=2, power=2)`` on unnormalised input, so the numbers match
    it). ``ap[a, p] = d2[a, p]`` for a positive (a ≠ p, same class), −∞ otherwise; ``an[a, n] = d2[a, n]``
    for a negative (other class), +∞ otherwise; ``term[a, p, n] = max(0, ap − an + α)`` is the triplet's
    term, and 0 (with a zero gradient) where p or n is not valid. ``N`` = the number of positive terms,
    ``Σ_i`` their sum. With no positive term (one class, or every triplet satisfied) the loss is 0 with a
    zero gradient. Memory O(B³) (2M entries at batch 128).
    """
    d2 = torch.cdist(f, f, p=2) ** 2                                            # ‖f_a − f_x‖²
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=f.device)
    ap = d2.masked_fill(~same | eye, float("-inf"))                            # ‖f_a − f_p‖², p a positive of a
    an = d2.masked_fill(same, float("inf"))                                    # ‖f_a − f_n‖², n a negative of a
    term = F.relu(ap[:, :, None] - an[:, None, :] + margin)                    # max(0, d²_ap − d²_an + α), (B, B, B)
    n = (term > 0).sum().to(term.dtype)                                        # N: triplets with a positive loss
    return term.sum() / n.clamp_min(1.0)                                       # (1/N) Σ_i


class TripletLoss(nn.Module):
    def __init__(self, margin: float):
        super().__init__()
        self.margin = margin

    def forward(self, out, batch, model=None) -> dict:
        loss = triplet_loss(out["embedding"], batch.targets, self.margin)
        return {"loss": loss, "triplet": loss.detach()}


# ---------------------------------------------------------------- multi-class N-pair (eq. 3)

def npair_tuples(targets: torch.Tensor):
    """Split the batch into disjoint N-pair tuples.

    Within each class the samples (in batch order) are paired: ranks 0-1 form the
    pair of tuple 0, ranks 2-3 that of tuple 1, … Tuple r holds one (anchor,
    positive) pair of every class with at least 2r + 2 samples. Returns
    ``(anchor, positive, tuple_id)``, each (P,), of the pairs in tuples of at least
    two classes (a tuple of one class has no negative).
    """
    dev = targets.device
    b = targets.numel()
    order = torch.sort(targets, stable=True).indices
    _, counts = torch.unique_consecutive(targets[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    first = torch.repeat_interleave(starts, counts)                  # first sorted position of the class
    rank = torch.empty(b, dtype=torch.long, device=dev)
    rank[order] = torch.arange(b, device=dev) - first
    pos_sorted = (torch.arange(b, device=dev) - first) % 2 == 1      # odd ranks are positives
    positive = order[pos_sorted]
    anchor = order[pos_sorted.nonzero(as_tuple=True)[0] - 1]         # the even rank just before
    tuple_id = rank[positive] // 2
    size = torch.bincount(tuple_id)
    keep = size[tuple_id] >= 2
    return anchor[keep], positive[keep], tuple_id[keep]


def npair_loss(f: torch.Tensor, anchor, positive, tuple_id, reg_lambda: float = 0.0):
    """Eq. (3): ``(1/N) Σ_i log(1 + Σ_{j≠i} exp(f_aᵢᵀ f_pⱼ − f_aᵢᵀ f_pᵢ))`` per N-pair tuple.

    ``j`` runs over the other pairs of the same tuple (``tuple_id``); pairs of
    other tuples are masked. ``log(1 + Σ_{j≠i} e^{s_ij − s_ii}) = logsumexp_j s_ij − s_ii``
    with ``s_ij = f_aᵢᵀ f_pⱼ``; the mean over all pairs of all tuples is ``1/N Σ_i``.
    ``reg_lambda`` adds Sohn's (2016) embedding-norm regulariser in the form of
    TensorFlow's ``npairs_loss`` the paper used: ``0.25·λ·(mean‖f_a‖² + mean‖f_p‖²)``.
    """
    if anchor.numel() == 0:
        return f.sum() * 0.0
    fa, fp = f[anchor], f[positive]
    s = fa @ fp.T                                                    # s_ij = f_aᵢᵀ f_pⱼ
    s = s.masked_fill(tuple_id[:, None] != tuple_id[None, :], float("-inf"))
    loss = (torch.logsumexp(s, dim=1) - s.diagonal()).mean()
    if reg_lambda:
        loss = loss + 0.25 * reg_lambda * ((fa ** 2).sum(1).mean() + (fp ** 2).sum(1).mean())
    return loss


class NPairLoss(nn.Module):
    def __init__(self, reg_lambda: float):
        super().__init__()
        self.reg_lambda = reg_lambda

    def forward(self, out, batch, model=None) -> dict:
        a, p, t = npair_tuples(batch.targets)
        loss = npair_loss(out["embedding"], a, p, t, self.reg_lambda)
        return {"loss": loss, "npair": loss.detach()}


# ---------------------------------------------------------------- contrastive (eq. 1)

def contrastive_loss(f: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. (1): ``1/(2N) Σ_i [(1 − yᵢ)·dᵢ² + yᵢ·max(0, m − dᵢ)²]`` over all N pairs of the batch.

    A pair is two different samples (i < j); ``yᵢ = 0`` for the same class, 1
    otherwise; ``dᵢ = ‖f₁ᵢ − f₂ᵢ‖₂`` (not squared inside the hinge).
    """
    i, j = torch.triu_indices(len(targets), len(targets), offset=1, device=f.device)
    if i.numel() == 0:
        return f.sum() * 0.0
    d2 = ((f[i] - f[j]) ** 2).sum(dim=1)                             # dᵢ²
    y = (targets[i] != targets[j]).to(f.dtype)                       # yᵢ
    d = torch.sqrt(d2.clamp_min(1e-12))                              # dᵢ (finite gradient at 0)
    return ((1 - y) * d2 + y * F.relu(margin - d) ** 2).sum() / (2 * i.numel())


class ContrastiveLoss(nn.Module):
    def __init__(self, margin: float):
        super().__init__()
        self.margin = margin

    def forward(self, out, batch, model=None) -> dict:
        loss = contrastive_loss(out["embedding"], batch.targets, self.margin)
        return {"loss": loss, "contrastive": loss.detach()}


# ---------------------------------------------------------------- registration

SPC = Param("spc", 4, type="int", search=(2, 10), bounds=(2, None),
            help="samples per class in a batch (class-balanced sampler)")


def _model(normalize: bool):
    def build(ctx, hp):
        return EmbeddingNet(ctx, hp["arch"], hp["width"], normalize, hp["weights"])
    return build


def _method(mid: str, summary: str, loss, extra: tuple, normalize: bool = True,
            cuda_graph: bool = False) -> Method:
    return register(Method(
        id=mid, family="constellation", summary=summary, citation=CITATION, paper=PAPER,
        build_model=_model(normalize), build_loss=loss, build_optimizer=build_adam,
        params=backbone_params() + (SPC,) + extra, code_type="float", distance="l2",
        batch_size=40, epochs=30, sampler="class-balanced", cuda_graph=cuda_graph,
        requires=Requirements(multi_label=False, min_image_size=8)))


_method("constellation", "Constellation loss: anchor-positive vs K negatives from K other classes (eq. 4)",
        build_constellation_loss,
        (Param("K", 3, type="int", search=(2, 7), bounds=(1, None),
               help="negatives per anchor-positive pair, from K other classes: K < number of classes "
                    "(paper: 3, 5, 7)"),),
        cuda_graph=True)   # sampling and loss are fixed-shape tensor arithmetic without host syncs
_method("triplet", "Triplet loss with hard-triplet mining (positive-loss triplets), Medela & Picon eq. 2",
        lambda ctx, hp: TripletLoss(hp["margin"]),
        (Param("margin", 0.2, search=(0.05, 1.0), bounds=(0, None),
               help="triplet margin α on squared distances (FaceNet's 0.2)"),),
        cuda_graph=True)   # all B³ triplets as one fixed-shape tensor, no host syncs
_method("npair", "Multi-class N-pair loss (Sohn 2016), Medela & Picon eq. 3; embedding not L2-normalised",
        lambda ctx, hp: NPairLoss(hp["reg_lambda"]),
        (Param("reg_lambda", 0.002, bounds=(0, None),
               help="embedding-norm regulariser λ of TensorFlow's npairs_loss (0 = eq. 3 alone)"),),
        normalize=False)
_method("contrastive", "Contrastive loss (Chopra et al. 2005), Medela & Picon eq. 1",
        lambda ctx, hp: ContrastiveLoss(hp["margin"]),
        (Param("margin", 1.0, search=(0.25, 1.5), bounds=(0, None),
               help="margin m on the Euclidean distance (paper: 1)"),))
