"""The rest of Y-Net's Table III (Fang et al., IEEE JBHI 2021): ``ynet-sum`` and ``ynet-plain``.

* ``ynet-sum`` — "the sum of the two losses" that the coupled loss (Eq. 2) is compared with
  (Sec. IV-E, Fig. 8): both branches, ``L = L_circle + L_seg`` with the weights fixed at 1 : 1
  (no ω, nothing learned; it does not read ``ynet``'s ω settings).
* ``ynet-plain`` — "Y-Net w/o FPN and R-MAC branch": the main branch alone. With both branches cut
  the class signal reaches the core node directly: ReLU(core) is global-average-pooled,
  L2-normalised and trained with the same circle loss (class-level cosines to a classifier's
  class vectors, or the batch's pairwise cosines). The codes, as for every Y-Net row, are the
  core node's parameter-free aggregation (average pooling to ``bits`` values, tanh, sign).

Both reuse ``ynet``'s network, losses and optimiser (:mod:`hashbench.methods.ynet`,
:mod:`hashbench.methods._ynet_parts`). Choices: docs/methods/ynet-ablations.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.methods import ynet
from hashbench.methods._ynet_parts import CORE_CHANNELS
from hashbench.platform.registry import Method, ModelContext, Requirements, register


# ---------------------------------------------------------------- ynet-sum

def _build_sum_model(ctx: ModelContext, hp: dict):
    """Both branches; ω is fixed (never a parameter of the model), whatever ``ynet``'s default is."""
    return ynet._model_builder("circle", True)(ctx, {**hp, "omega_mode": "fixed", "learn_omega": False})


class YNetSumLoss(ynet.YNetLoss):
    """``L = L_circle + L_seg``: the two losses added with weight 1 each (the paper's "sum")."""

    def forward(self, out: dict, batch, model) -> dict:
        cls = self._cls_loss(out, batch)
        seg = ynet.seg_loss(out["seg_logits"], batch.masks, self.method_id)
        return {"loss": cls + seg, "circle": cls, "seg": seg}              # 1·L_circle + 1·L_seg


def _build_sum_loss(ctx: ModelContext, hp: dict) -> YNetSumLoss:
    return YNetSumLoss("ynet-sum", f"circle-{hp['circle_form']}", True, hp)


# ---------------------------------------------------------------- ynet-plain

class PlainYNet(nn.Module):
    """Y-Net's main branch (stem, b1-b3, core node) without R-MAC and FPN; GAP(ReLU(core)) → L2 →
    cosine classifier for the class-level circle loss (none for the pairwise form, which compares the
    batch's descriptors). ``encode`` is Y-Net's aggregation of the core node."""

    def __init__(self, main: nn.Module, num_classes: int, classifier: bool = True):
        super().__init__()
        self.main = main
        self.classifier = (nn.Parameter(torch.randn(num_classes, CORE_CHANNELS) / CORE_CHANNELS ** 0.5)
                           if classifier else None)

    def forward(self, x) -> dict:
        core = self.main.features(x)[3]
        desc = F.normalize(F.relu(core).float().mean(dim=(2, 3)), dim=1)     # pooled, L2-normalised
        out = {"core": core, "descriptor": desc}
        if self.classifier is not None:                                      # cosines to the class vectors
            out["logits"] = desc @ F.normalize(self.classifier.float(), dim=1).T
        return out

    def encode(self, x):
        return self.main.encode(x)


def _build_plain_model(ctx: ModelContext, hp: dict) -> PlainYNet:
    main = ynet._model_builder(None, False)(ctx, {**hp, "omega_mode": "fixed", "learn_omega": False})
    return PlainYNet(main, ctx.num_classes, classifier=hp["circle_form"] == "class")


def _build_plain_loss(ctx: ModelContext, hp: dict):
    return ynet.YNetLoss("ynet-plain", f"circle-{hp['circle_form']}", False, hp)


_COMMON = dict(citation=ynet.CITATION, paper=ynet.PAPER, family="ynet", code_type="binary", distance="hamming",
               build_optimizer=ynet.build_optimizer, batch_size=32, epochs=500)

register(Method(
    id="ynet-sum", summary="Y-Net ablation: circle loss (R-MAC) + mask CE (FPN) added with fixed equal weights "
                           "1:1 instead of the coupled loss",
    build_model=_build_sum_model, build_loss=_build_sum_loss,
    params=(ynet.GAMMA, ynet.MARGIN, ynet.CIRCLE_FORM, ynet.RMAC_LEVELS, ynet.LR, ynet.WEIGHT_DECAY),
    requires=Requirements(masks=True, multi_label=False, min_image_size=16), **_COMMON))

register(Method(
    id="ynet-plain", summary="Y-Net ablation without FPN and R-MAC: circle loss on the pooled core node, "
                             "codes by the same aggregation",
    build_model=_build_plain_model, build_loss=_build_plain_loss,
    params=(ynet.GAMMA, ynet.MARGIN, ynet.CIRCLE_FORM, ynet.LR, ynet.WEIGHT_DECAY),
    requires=Requirements(masks=False, multi_label=False, min_image_size=16), **_COMMON))
