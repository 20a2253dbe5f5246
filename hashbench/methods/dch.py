"""Deep Convolutional Hashing (Sapkota, Shi, Xing, Yang, IEEE JBHI), id ``dch``.

Not Deep *Cauchy* Hashing, which shares the acronym. A point-wise method: a small
CNN (Table I) with a latent binary encoding (LBE) layer of K tanh units between
the 2048-unit fully connected layer and the classifier, trained with softmax
cross-entropy plus a quantization penalty pulling ``b̂ = tanh(a)`` towards
``b = sgn(b̂)`` (eq. 9). Codes are ``sgn(b̂)``. Choices the paper leaves open are
listed in docs/methods/dch.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.platform.registry import Method, ModelContext, Param, Requirements, register

CITATION = ("Sapkota M, Shi X, Xing F, Yang L. Deep Convolutional Hashing for Low Dimensional Binary "
            "Embedding of Histopathological Images. IEEE J Biomed Health Inform 2019;23(2):805-816.")
PAPER = "../shared/papers/001_ccae20c2c51c6ac7.txt"


def _conv_bn_relu(cin: int, cout: int, padding: int) -> list:
    return [nn.Conv2d(cin, cout, 3, 1, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def feature_side(image_size: int) -> tuple:
    """``(padding, side)``: conv padding and the side of the last feature map (before ``grid``).

    Table I uses unpadded 3x3 convolutions (128 px -> 29 px). Below 16 px that path
    runs out of pixels, so the convolutions are padded by 1 ("same") there.
    """
    pad = 0 if image_size >= 16 else 1
    side = image_size
    for _ in range(2):                     # two stages: conv, conv, 2x2/2 max-pool
        side = (side - 4 * (1 - pad)) // 2
    return pad, side


class DCHNet(nn.Module):
    """Table I: conv(32)x2 - pool - conv(64)x2 - pool - FC 2048 - LBE (K, tanh) - FC (classes).

    Batch norm sits before every ReLU (and, with ``lbe_bn``, before the LBE tanh: Table I
    normalises every layer but pooling and the last). Weights: Glorot-uniform, biases 0.
    A feature map larger than ``grid`` x ``grid`` is max-pooled adaptively to that size
    (29 = the paper's map at 128 px), so the FC layer keeps the paper's size on large inputs.

    Pre-training (``pretrain_epochs`` > 0, Sec. IV): for the first epochs the loss trains a
    "pure classification model", the FC 2048 layer feeding a classifier directly
    (``pre_logits``); afterwards it trains the LBE path. Epochs are counted in the
    persistent buffer ``epochs_done`` (saved in checkpoints): it grows by one each time
    the model is switched to ``eval()`` (per-epoch validation) after at least one
    forward pass in training mode, so the platform needs no hook.
    """

    def __init__(self, ctx: ModelContext, grid: int = 29, lbe_bn: bool = True, pretrain_epochs: int = 0):
        super().__init__()
        pad, side = feature_side(ctx.image_size)
        self.features = nn.Sequential(
            *_conv_bn_relu(ctx.in_channels, 32, pad), *_conv_bn_relu(32, 32, pad), nn.MaxPool2d(2, 2),
            *_conv_bn_relu(32, 64, pad), *_conv_bn_relu(64, 64, pad), nn.MaxPool2d(2, 2))
        self.pool = nn.AdaptiveMaxPool2d(grid) if side > grid else nn.Identity()
        side = min(side, grid)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 2048, bias=False),
                                nn.BatchNorm1d(2048), nn.ReLU(inplace=True))
        self.lbe = nn.Linear(2048, ctx.bits, bias=not lbe_bn)
        self.lbe_bn = nn.BatchNorm1d(ctx.bits) if lbe_bn else nn.Identity()
        self.classifier = nn.Linear(ctx.bits, ctx.num_classes)
        self.pre_classifier = nn.Linear(2048, ctx.num_classes) if pretrain_epochs > 0 else None
        self.pretrain_epochs = pretrain_epochs
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self._trained = False                  # a training-mode forward since the last count
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def train(self, mode: bool = True):
        if not mode and self._trained:         # end of a training epoch
            self.epochs_done += 1
            self._trained = False
        return super().train(mode)

    @property
    def pretraining(self) -> bool:
        """True while the pure classification model is being pre-trained."""
        return self.pretrain_epochs > 0 and int(self.epochs_done) < self.pretrain_epochs  # no GPU sync when off

    def forward(self, x) -> dict:
        self._trained = self._trained or self.training
        z = self.fc(self.pool(self.features(x)))
        code = torch.tanh(self.lbe_bn(self.lbe(z)))                      # b̂ = tanh(a^{L-1}), eq. (7)
        out = {"code": code, "logits": self.classifier(code)}            # a^L (on b̂: the relaxation)
        if self.pre_classifier is not None:
            out["pre_logits"] = self.pre_classifier(z)
        return out

    def encode(self, x):
        return self.forward(x)["code"]


def sign_codes(code: torch.Tensor) -> torch.Tensor:
    """``b = sgn(b̂)`` in {-1, +1}; zeros go to +1, as the platform binarises stored codes."""
    return torch.where(code >= 0, 1.0, -1.0).to(code.dtype)


def classification_loss(logits: torch.Tensor, batch, multi_label: bool) -> torch.Tensor:
    """Softmax cross-entropy (eq. 9, first sum), or for multi-label data sigmoid + binary
    cross-entropy summed over the classes; both averaged over the batch."""
    if multi_label:
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels.to(logits.dtype), reduction="none")
        return bce.sum(dim=1).mean()
    return F.cross_entropy(logits, batch.targets)


def quantization_loss(code: torch.Tensor) -> torch.Tensor:
    """``(1/M_b) Σ_n ‖b_n - b̂_n‖²`` with ``b = sgn(b̂)`` held constant.

    ``b`` is detached: sgn has zero gradient almost everywhere, and eq. (14)'s error
    ``ϱ = -2 (b - b̂) ⊙ (1 - tanh²(a))`` is exactly the gradient with ``b`` constant.
    """
    b = sign_codes(code).detach()
    return (b - code).pow(2).sum(dim=1).mean()


class DCHLoss(nn.Module):
    """Eq. (9) averaged over the mini-batch: ``E = CE(a^L, y) + γ/2 ‖b - b̂‖²``.

    The paper sums both terms over the M_b items of a batch; dividing both by M_b keeps
    their ratio (γ) and makes the step size independent of the batch size. While the
    model pre-trains, only the cross-entropy of ``pre_logits`` is optimised (the LBE
    path is added with weight 0 so every parameter stays in the graph, as DDP needs).
    """

    def __init__(self, gamma: float, multi_label: bool):
        super().__init__()
        self.gamma = gamma
        self.multi_label = multi_label

    def forward(self, out: dict, batch, model) -> dict:
        code = out["code"].float()
        logits = out["logits"].float()
        quant = quantization_loss(code)                                           # Σ‖b - b̂‖² / M_b
        if getattr(model, "pretraining", False):
            cls = classification_loss(out["pre_logits"].float(), batch, self.multi_label)
            loss = cls + 0.0 * (logits.sum() + code.sum())
            return {"loss": loss, "classification": cls, "quantization": quant.detach(),
                    "pretraining": torch.ones((), device=cls.device)}
        cls = classification_loss(logits, batch, self.multi_label)                # -log softmax(a^L)_y
        loss = cls + self.gamma / 2.0 * quant                                     # + γ/2 ‖b - b̂‖²
        if "pre_logits" in out:
            loss = loss + 0.0 * out["pre_logits"].float().sum()
        terms = {"loss": loss, "classification": cls, "quantization": quant}
        if "pre_logits" in out:
            terms["pretraining"] = torch.zeros((), device=cls.device)
        return terms


def _build_adadelta(parameters, hp):
    return torch.optim.Adadelta(parameters, lr=hp["lr"], rho=hp["rho"], eps=1e-6)


register(Method(
    id="dch", family="dch",
    summary="Deep Convolutional Hashing: CNN with a tanh latent binary encoding layer, softmax "
            "cross-entropy + quantization loss (Sapkota et al.)",
    citation=CITATION, paper=PAPER,
    build_model=lambda ctx, hp: DCHNet(ctx, hp["grid"], hp["lbe_bn"], hp["pretrain_epochs"]),
    build_loss=lambda ctx, hp: DCHLoss(hp["gamma"], ctx.multi_label),
    build_optimizer=_build_adadelta,
    params=(
        Param("gamma", 1e-4, search=(1e-6, 10.0), log=True, bounds=(0, None),
              help="weight γ of the quantization loss (paper: '10e-4', read as 1e-4; swept 10 ... 1e-6)"),
        Param("lr", 1.0, search=(0.05, 2.0), log=True, bounds=(0, None),
              help="Adadelta learning rate (scale of the update; Keras/Zeiler: 1.0)"),
        Param("rho", 0.95, bounds=(0, 1), help="Adadelta decay rate (Zeiler 2012: 0.95)"),
        Param("pretrain_epochs", 0, type="int", bounds=(0, None),
              help="first epochs train the classifier without the LBE layer, then fine-tune with it "
                   "(paper's recipe; 0 = off)"),
        Param("grid", 29, type="int", bounds=(1, None),
              help="largest side of the last feature map; larger maps are max-pooled to it "
                   "(29 = the paper's 128 px input)"),
        Param("lbe_bn", True, type="bool", help="batch norm before the LBE tanh (Table I)"),
    ),
    code_type="binary", distance="hamming", batch_size=32, epochs=200,
    cuda_graph=lambda hp: hp["pretrain_epochs"] == 0,   # the pre-training switch reads an epoch counter
    requires=Requirements(labels=True, multi_label=True, min_image_size=8)))
