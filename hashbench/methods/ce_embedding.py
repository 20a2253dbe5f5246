"""``ce-embedding``: the softmax cross-entropy baseline of the constellation-loss paper (Medela & Picon 2020).

"As a baseline, we trained a classical classification Resnet-50 network by learning with a softmax
loss function" (Sec. Training; the "Imagenet" row of Table 1): the ResNet of the constellation family
(:mod:`hashbench.methods._embedding_net`, global average pooling), a ``bits``-wide linear
embedding layer, and a linear classifier on it, trained with

    L = −(1/N) Σ_i log softmax(W e_i + c)_{y_i},    e_i = E·GAP(ResNet(x_i)) + d          (softmax CE)

(sigmoid + binary cross-entropy summed over classes on multi-label data, as ``dch``). The
embedding ``e`` (the penultimate layer) is the retrieval code: L2-normalised and compared by
Euclidean distance (the ranking of the cosine), and, with ``also_binary``, ``sgn(e)`` compared by
Hamming distance. The embedding has no activation: a sigmoid (as the metric-learning heads have)
would make every sign +1. Same optimiser and schedule as the paper's baseline: Adam 1e-4, batch 40,
30 epochs, random batches. Choices: docs/methods/ce-embedding.md.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from hashbench.methods._embedding_net import ResNet, backbone_params, build_adam, load_weights
from hashbench.methods.constellation import CITATION, PAPER
from hashbench.methods._two_stage import ClassificationLoss
from hashbench.platform.registry import Method, ModelContext, Requirements, register


class CEEmbeddingNet(nn.Module):
    """ResNet → GAP → linear embedding (``bits``) → linear classifier (``num_classes``)."""

    def __init__(self, ctx: ModelContext, arch: str, width: int, weights: str = ""):
        super().__init__()
        self.backbone = ResNet(arch, ctx.in_channels, width)
        if weights:
            load_weights(self.backbone, weights)
        self.embedding = nn.Linear(self.backbone.out_dim, ctx.bits)
        self.classifier = nn.Linear(ctx.bits, ctx.num_classes)

    def forward(self, x) -> dict:
        e = self.embedding(self.backbone(x))                   # the penultimate layer
        return {"embedding": e, "logits": self.classifier(e)}

    def encode(self, x):
        return F.normalize(self.forward(x)["embedding"], dim=1)


register(Method(
    id="ce-embedding", family="constellation", also_binary=True,
    summary="Softmax cross-entropy ResNet classifier; its penultimate (bits-wide) layer is the embedding "
            "(the constellation paper's baseline); also evaluated as sign codes",
    citation=CITATION, paper=PAPER,
    build_model=lambda ctx, hp: CEEmbeddingNet(ctx, hp["arch"], hp["width"], hp["weights"]),
    build_loss=lambda ctx, hp: ClassificationLoss(ctx.multi_label),   # softmax CE of the logits
    build_optimizer=build_adam, params=backbone_params(),
    code_type="float", distance="l2", batch_size=40, epochs=30, sampler="random", cuda_graph=True,
    requires=Requirements(labels=True, multi_label=True, min_image_size=8)))
