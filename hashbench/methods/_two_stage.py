"""Shared parts of the two-stage baselines ``lsh`` and ``itq``: unsupervised hashing on CNN features.

Not a row of either paper: the DCH paper's "+CNNF" rows (KSDH, KSH, SDH, CCA, COSDISH) and the DRH
paper's DRN-KSH are *supervised* hashing on CNN features (``ksh``, ``sdh``, ``cca-itq``, ``drn-ksh``);
the DRH paper's LSH and ITQ rows hash hand-crafted descriptors. These two are the unsupervised
counterpart on the same CNN features (docs/methods/lsh-itq.md).

Stage 1 trains a CNN with cross-entropy only: the DCH network of Sapkota et al.
(Table I, :class:`hashbench.methods.dch.DCHNet`) without its LBE layer — conv(32)×2,
max-pool, conv(64)×2, max-pool, a dense layer of 2048 units + BN + ReLU (the "CNN
features", CNNF) and a linear classifier on them. Stage 2 runs in the registry's
``finalize`` hook: the platform passes the train split once, the hash projection
is fitted on the CNN features and stored as buffers, so ``encode`` returns
``(feature − mean) @ projection`` and the state dict carries the fitted hash function.
"""

from __future__ import annotations

import torch
from torch import nn

from hashbench.methods.dch import CITATION as DCH_CITATION
from hashbench.methods.dch import DCHNet, classification_loss
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import ModelContext, Param

FEATURES = 2048  # DCH's dense layer


class CNNFeatureHasher(nn.Module):
    """The DCH trunk (conv layers, pooling, FC 2048) + a classifier, plus a hash projection."""

    def __init__(self, ctx: ModelContext, seed: int):
        super().__init__()
        if ctx.bits > FEATURES:
            raise HashbenchError(f"code length {ctx.bits} exceeds the {FEATURES} CNN features; "
                                 f"use bits <= {FEATURES}")
        dch = DCHNet(ctx)  # its LBE layer and LBE classifier are not kept
        self.conv, self.pool, self.fc = dch.features, dch.pool, dch.fc
        self.classifier = nn.Linear(FEATURES, ctx.num_classes)
        gen = torch.Generator().manual_seed(seed)
        # before finalize: random hyperplanes through the origin (replaced by the fitted hash function)
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("projection", torch.randn(FEATURES, ctx.bits, generator=gen))

    def features(self, x):
        return self.fc(self.pool(self.conv(x)))

    def forward(self, x) -> dict:
        f = self.features(x)
        return {"feature": f, "logits": self.classifier(f)}

    def encode(self, x):
        return (self.features(x) - self.mean) @ self.projection


class ClassificationLoss(nn.Module):
    """DCH's classification loss alone: softmax CE (sigmoid BCE summed over classes on multi-label data)."""

    def __init__(self, multi_label: bool):
        super().__init__()
        self.multi_label = multi_label

    def forward(self, out, batch, model=None) -> dict:
        loss = classification_loss(out["logits"].float(), batch, self.multi_label)
        return {"loss": loss, "ce": loss.detach()}


@torch.no_grad()
def collect_features(model: CNNFeatureHasher, batches) -> torch.Tensor:
    """Float64 CNN features of every image in ``batches`` (the train split), on the model's device."""
    was_training = model.training
    model.eval()
    feats = [model.features(b.images).double() for b in batches]
    model.train(was_training)
    if not feats:
        raise HashbenchError("the train split is empty: the hash projection cannot be fitted")
    return torch.cat(feats)


def stage_one_params() -> tuple:
    return (
        Param("seed", 0, type="int", bounds=(0, None), help="seed of the random projection / rotation"),
        Param("lr", 1.0, bounds=(0, None), help="ADADELTA learning rate (DCH: ADADELTA)"),
    )


def build_model(ctx, hp):
    return CNNFeatureHasher(ctx, hp["seed"])


def build_loss(ctx, hp):
    return ClassificationLoss(ctx.multi_label)


def build_optimizer(parameters, hp):
    return torch.optim.Adadelta(parameters, lr=hp["lr"])
