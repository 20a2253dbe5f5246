"""Deep Residual Hashing (Conjeti, Guha Roy, Katouzian, Navab, arXiv 1612.05400) and its variants.

Four methods share one network, a small-width ResNet (:mod:`hashbench.methods._resnet`)
followed by a fully connected hashing layer (FCH) with tanh, ``h = tanh(W_h f̂ + c)``, where ``f̂`` is
the pooled feature vector centred and scaled per channel over the batch (``fch_input="centred"``, the
default; not in the paper: without it the codes collapse to a few constant bits, issue 19 and
docs/methods/drh.md "Why DRH trailed DCH: diagnosis"; ``fch_input="raw"`` is the paper's ``f``):

* ``drh``    — the full objective, eq. (3): ``J = J_S + λ_q J_Q + λ_b J_B + λ_o R_O``
  (+ ``λ_w R_W`` as the optimiser's weight decay); codes ``sgn(h)``.
* ``dph``    — the same without residual connections (Deep Plain-net Hashing).
* ``drh-nq`` — no hashing losses (``λ_q = λ_b = 0``; ``R_O`` is a regulariser and stays):
  codes only through tanh then sign.
* ``drh-nb`` — not a separate training: the **float readout** of the same ``drh`` run
  (``Readout("float")``, entry ``drh-nb``), the continuous ``h`` compared by Euclidean
  distance, the paper's upper bound. As in the paper's Table 2, one trained model is read
  out twice, binarised (``drh``) and continuous (``drh-nb``); both rows share the run id.

Normalisation choices (the paper mixes sums and means) are in docs/methods/drh.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.methods._resnet import DEPTHS, STEMS, SmallResNet
from hashbench.platform.registry import Method, ModelContext, Param, Readout, Requirements, register

CITATION = "Conjeti S, Guha Roy A, Katouzian A, Navab N. Deep Residual Hashing. arXiv:1612.05400, 2016."
PAPER = "../shared/papers/002_5b43c5926db2a9a1.txt"
_LOG2 = math.log(2.0)


# ---------------------------------------------------------------- loss terms

def retrieval_loss(h: torch.Tensor, labels: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Supervised retrieval loss, eq. (1) with the relaxed p_ij of Sec. 3.2.

    ``J_S = 1 - (1/N) Σ_i Σ_{j≠i} p_ij s_ij`` with
    ``p_ij = exp(-‖h_i - h_j‖²) / Σ_{l≠i} exp(-‖h_i - h_l‖²)`` and ``s_ij = 1`` when
    items i and j share at least one label (multi-hot ``labels``, (N, C)). N is the
    batch size. The row softmax runs through ``log_softmax`` (log-sum-exp) with the
    diagonal at -inf, so ``p_ii = 0`` and no distance overflows. Fewer than two
    items: no neighbour exists, the sum is empty and ``J_S = 1`` (no gradient).

    ``scale`` multiplies the squared distances: 1 is the paper's sum over the K bits (the default);
    ``1/K`` makes it a per-bit mean (``distance="mean"``, measured to collapse the codes: docs).
    """
    n = h.shape[0]
    if n < 2:
        return h.sum() * 0.0 + 1.0
    d2 = (h[:, None, :] - h[None, :, :]).pow(2).sum(-1) * scale               # ‖h_i - h_j‖²
    eye = torch.eye(n, dtype=torch.bool, device=h.device)
    p = torch.softmax((-d2).masked_fill(eye, float("-inf")), dim=1)           # p_ij, p_ii = 0
    lab = labels.to(h.dtype)
    s = ((lab @ lab.T) > 0).to(h.dtype).masked_fill(eye, 0.0)                  # s_ij
    return 1.0 - (p * s).sum() / n


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """``log cosh x = |x| + log1p(exp(-2|x|)) - log 2``: no overflow for large ``|x|``."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - _LOG2


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """Quantization loss ``J_Q = (1/N) Σ_i Σ_k log cosh(|h_ik| - 1)`` (Sec. 3.3).

    The paper writes ``Σ_i log cosh(|h_i| - 1)``; its gradient, ``(1/N) Σ_i ∂J/∂h_i``
    (Sec. 3.4), averages over the N items, as ``J_B`` does, so the mean over items is
    used and the K bits are summed. Gradient per item: ``tanh(|h| - 1) sgn(h) / N``.
    """
    return log_cosh(h.abs() - 1.0).sum() / h.shape[0]


def bit_balance_loss(h: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """Bit balance loss ``J_B = -tr(H Hᵀ) / (2N)``, H the (N, K) matrix of codes (Sec. 3.3).

    ``centred``: H's columns (bits) centred over the batch first, ``-tr(H_c H_cᵀ) / (2N)`` =
    ``-½ Σ_k var_k`` (biased variance of each bit over the N items).
    """
    if centred:
        h = h - h.mean(dim=0, keepdim=True)
    return -(h * h).sum() / (2.0 * h.shape[0])                                  # tr(HHᵀ) = Σ_i ‖h_i‖²


def orthogonality_reg(w: torch.Tensor) -> torch.Tensor:
    """``R_O = ½ ‖W_h W_hᵀ - I‖²_F`` on the (K, D) hashing-layer weights (Sec. 3.3).

    Computed in float32 or wider with autocast off (a bf16 Gram matrix would be
    too coarse). Its gradient is ``2 (W_h W_hᵀ - I) W_h``; the paper's printed
    ``W_h (W_h W_hᵀ - I)`` drops the factor 2 and, for a (K, D) matrix, the order.
    """
    with torch.autocast(device_type=w.device.type, enabled=False):
        w = w if w.dtype == torch.float64 else w.float()
        gram = w @ w.T
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return 0.5 * (gram - eye).pow(2).sum()


class DRHLoss(nn.Module):
    """Eq. (3) without ``λ_w R_W`` (weight decay, applied by the optimiser).

    ``J = J_S + λ_q·J_Q + λ_b·J_B + λ_o·R_O`` (lines marked below). ``out["h"]`` are the
    tanh outputs, ``batch.labels`` multi-hot, ``model.hash_layer.weight`` is W_h.
    Terms are computed in float32 even under bf16 autocast.
    """

    def __init__(self, lambda_q: float, lambda_b: float, lambda_o: float, scale: float = 1.0,
                 centred_balance: bool = False):
        super().__init__()
        self.lambda_q, self.lambda_b, self.lambda_o = lambda_q, lambda_b, lambda_o
        self.scale, self.centred_balance = float(scale), bool(centred_balance)

    def forward(self, out: dict, batch, model) -> dict:
        h = out["h"].float()
        j_s = retrieval_loss(h, batch.labels, self.scale)                         # J_S, eq. (1)
        terms = {"J_S": j_s}
        loss = j_s
        if self.lambda_q:
            terms["J_Q"] = quantization_loss(h)
            loss = loss + self.lambda_q * terms["J_Q"]                          # + λ_q J_Q
        if self.lambda_b:
            terms["J_B"] = bit_balance_loss(h, self.centred_balance)
            loss = loss + self.lambda_b * terms["J_B"]                          # + λ_b J_B
        if self.lambda_o:
            terms["R_O"] = orthogonality_reg(model.hash_layer.weight)
            loss = loss + self.lambda_o * terms["R_O"]                          # + λ_o R_O
        return {"loss": loss, **terms}


# ---------------------------------------------------------------- network

def drh_width(width: int, bits: int) -> int:
    """Stage-2 channels: ``width``, or for ``width = 0`` (auto, the default) ``max(6, ceil(bits / 8))``.

    The last stage has 8w channels, the rank of the features the FCH layer sees, so a (K, 8w) W_h
    can have orthonormal rows (R_O = 0) only when 8w >= K. w = 6 (0.19 M parameters at depth 34, the
    paper's 0.183 M) up to 48 bits; above, the smallest w with 8w >= K (64 bits: 8, 128 bits: 16).
    """
    return int(width) if width else max(6, math.ceil(bits / 8))


class DRHNet(nn.Module):
    """Residual (or plain) trunk -> global average pooling -> [centring] -> FCH layer (K units) -> tanh.

    ``centre`` (default, the ``fch_input="centred"`` parameter): the pooled features are standardised
    per channel over the batch (batch norm without scale or shift; running statistics at evaluation)
    before the FCH layer, ``h = tanh(W_h f̂ + c)``. Pooled post-ReLU features are positive with a
    large item-independent mean, so without it ``W_h f`` carries a per-bit offset that the saturating
    hashing losses turn into constant bits (docs/methods/drh.md, "Why DRH trailed DCH: diagnosis").
    """

    def __init__(self, ctx: ModelContext, depth: int, width: int, residual: bool, stem: str,
                 centre: bool = True):
        super().__init__()
        self.width = drh_width(width, ctx.bits)
        self.trunk = SmallResNet(ctx.in_channels, ctx.image_size, depth, self.width, residual, stem)
        self.centre = nn.BatchNorm1d(self.trunk.out_dim, affine=False) if centre else None
        self.hash_layer = nn.Linear(self.trunk.out_dim, ctx.bits)
        nn.init.xavier_uniform_(self.hash_layer.weight)
        nn.init.zeros_(self.hash_layer.bias)

    def _centred(self, f):
        bn = self.centre
        if bn is None:
            return f
        if self.training and f.shape[0] < 2:       # one item has no batch statistics: the running ones
            return F.batch_norm(f, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
        return bn(f)

    def forward(self, x) -> dict:
        return {"h": torch.tanh(self.hash_layer(self._centred(self.trunk(x))))}

    def encode(self, x):
        return self.forward(x)["h"]


# ---------------------------------------------------------------- registration

def _network_params() -> tuple:
    return (
        Param("depth", 34, type="choice", choices=tuple(DEPTHS),
              help="layers: 18 = blocks (2,2,2,2), 34 = (3,4,6,3) (paper's best: 34)"),
        Param("width", 0, type="int", bounds=(0, 256),
              help="channels of stage 2 (stages: w,2w,4w,8w); 0 = auto: max(6, ceil(bits/8)), so the last "
                   "stage has >= bits channels (6 gives ~0.19 M params at depth 34, paper: 0.183 M)"),
        Param("stem", "auto", type="choice", choices=STEMS,
              help="'imagenet' 7x7/2 conv + max-pool (paper, 224 px), 'small' 3x3/1 conv, "
                   "'auto' = imagenet from 64 px up"),
        Param("lr", 1e-2, search=(1e-3, 1e-1), log=True, bounds=(0, None),
              help="initial SGD learning rate η (paper: 1e-2)"),
        Param("momentum", 0.9, bounds=(0, 1), help="SGD momentum (paper: 0.9)"),
        Param("weight_decay", 5e-4, search=(1e-5, 1e-3), log=True, bounds=(0, None),
              help="λ_w R_W as SGD weight decay (value not in the paper; MatConvNet's default)"),
        Param("lr_patience", 15, type="int", bounds=(0, None),
              help="epochs without improvement before lr is divided by 10 (of the mean training loss: "
                   "plateau_on=train_loss, the family's default; or of the val mAP)"),
    )


#: DRH-family choices around the losses (not drn-ksh's: its loss and network are built with the defaults)
_FAMILY_PARAMS = (
    Param("fch_input", "centred", type="choice", choices=("centred", "raw"),
          help="FCH layer input: 'centred' = pooled features standardised per channel over the batch "
               "(default, issue 19: 'raw' lets the hashing losses saturate bits to constants), "
               "'raw' = as the paper's figure"),
    Param("distance", "sum", type="choice", choices=("sum", "mean"),
          help="J_S's squared distance: 'sum' over the K bits (paper) or 'mean' (sum / K)"),
)
_BIT_BALANCE = Param("bit_balance", "printed", type="choice", choices=("printed", "centred"),
                     help="J_B = -tr(HHᵀ)/2N on H as printed, or on H centred per bit over the batch")

_LAMBDA_O = Param("lambda_o", 0.01, search=(1e-3, 1e-1), log=True, bounds=(0, None),
                  help="weight of the orthogonality regulariser R_O (paper: 0.01)")
_HASH_LAMBDAS = (
    Param("lambda_q", 0.05, search=(5e-3, 0.5), log=True, bounds=(0, None),
          help="weight of the quantization loss J_Q (paper: 0.05)"),
    Param("lambda_b", 0.025, search=(2.5e-3, 0.25), log=True, bounds=(0, None),
          help="weight of the bit balance loss J_B (paper: 0.025)"),
)


def _build_sgd(parameters, hp):
    return torch.optim.SGD(parameters, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def _build_plateau(optimizer, hp):
    """lr / 10 after ``lr_patience`` epochs without improvement. The platform steps it with what
    ``plateau_on`` names and sets its mode to match: for the DRH family the epoch's mean training
    loss (``PLATEAU_ON``, the paper's "upon convergence"), else the validation mAP."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1,
                                                      patience=hp["lr_patience"])


#: the DRH family's plateau quantity: "upon convergence at a particular setting of η, we scale the learning
#: rate multiplicatively by a factor of 0.1", where η is chosen as "the largest learning rate that stably
#: decreases the objective function": convergence of the training objective, not of a validation metric
PLATEAU_ON = "train_loss"


#: DRH-NB (Conjeti et al., Table 2): the drh model's continuous tanh outputs, no sign, by L2
NB_READOUT = Readout("float", "float", "l2", label="drh-nb",
                     summary="DRH-NB: the continuous tanh embedding h of the same model, Euclidean distance")


def _register(mid: str, summary: str, *, residual: bool, hashing_losses: bool, float_codes: bool,
              readouts: tuple = ()) -> Method:
    def build_model(ctx: ModelContext, hp: dict) -> DRHNet:
        return DRHNet(ctx, hp["depth"], hp["width"], residual, hp["stem"], centre=hp["fch_input"] == "centred")

    def build_loss(ctx: ModelContext, hp: dict) -> DRHLoss:
        return DRHLoss(hp.get("lambda_q", 0.0), hp.get("lambda_b", 0.0), hp["lambda_o"],
                       scale=1.0 / ctx.bits if hp["distance"] == "mean" else 1.0,
                       centred_balance=hp.get("bit_balance", "printed") == "centred")

    lambdas = (_HASH_LAMBDAS + (_BIT_BALANCE,) if hashing_losses else ()) + (_LAMBDA_O,)
    return register(Method(
        id=mid, family="drh", summary=summary, citation=CITATION, paper=PAPER,
        build_model=build_model, build_loss=build_loss, build_optimizer=_build_sgd,
        build_scheduler=_build_plateau, params=_network_params() + _FAMILY_PARAMS + lambdas,
        code_type="float" if float_codes else "binary", distance="l2" if float_codes else "hamming",
        batch_size=128, epochs=100, cuda_graph=True, readouts=readouts, plateau_on=PLATEAU_ON,
        requires=Requirements(labels=True, multi_label=True, min_image_size=8)))


_register("drh", "Deep Residual Hashing: ResNet + tanh hash layer, NCA retrieval loss + quantization, "
                 "bit balance, orthogonality (Conjeti et al.)",
          residual=True, hashing_losses=True, float_codes=False, readouts=(NB_READOUT,))
_register("dph", "DRH ablation: the same plain network without residual connections (DPH)",
          residual=False, hashing_losses=True, float_codes=False)
_register("drh-nq", "DRH ablation: no quantization / bit balance losses, codes through tanh then sign",
          residual=True, hashing_losses=False, float_codes=False)
