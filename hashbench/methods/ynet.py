"""Y-Net (Fang et al.): hash codes aggregated from a core node trained by circle loss on an R-MAC branch
and pixel-wise cross-entropy on an FPN branch. Registers ``ynet`` and its ablations ``ynet-no-fpn``,
``ynet-no-rmac`` and ``ynet-ce``. Choices where the paper is ambiguous: ``docs/methods/ynet.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.methods._ynet_parts import CORE_CHANNELS, YNet, circle_loss, pairwise_masks
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, ModelContext, Param, Requirements, register

CITATION = ("Fang J, Fu H, Zeng D, Yan X, Yan Y, Liu J. Combating Ambiguity for Hash-code Learning in Medical "
            "Instance Retrieval. IEEE Journal of Biomedical and Health Informatics, 2021.")
PAPER = "../shared/papers/003_f78fd417245629b2.txt"

OMEGA_MODES = ("balance", "fixed", "descent")
OMEGA = Param("omega", 0.5, search=(0.1, 0.9), bounds=(0.0, 1.0),
              help="ω in L = ω·L_circle + (1-ω)·L_seg (Eq. 2): its initial value (paper: 0.5), or its "
                   "value when omega_mode=fixed")
OMEGA_MODE = Param("omega_mode", "balance", type="choice", choices=OMEGA_MODES, search=("balance", "fixed"),
                   help="balance: ω = sigmoid(θ) learned so that ω·L_circle = (1-ω)·L_seg (the paper's "
                        "'same order of magnitude'); fixed: ω stays; descent: θ by gradient on L "
                        "(the released code; drifts to the smaller loss)")
GAMMA = Param("gamma", 32.0, search=(8.0, 128.0), log=True, bounds=(1.0, 1024.0), help="circle loss scale γ")
MARGIN = Param("margin", 0.25, search=(0.05, 0.45), bounds=(0.0, 0.5), help="circle loss relaxation margin m")
CIRCLE_FORM = Param("circle_form", "class", type="choice", choices=("class", "pairwise"),
                    help="class: s_p, s_n are cosines to the classifier's class vectors; "
                         "pairwise: cosines between the batch's R-MAC descriptors (released code)")
RMAC_LEVELS = Param("rmac_levels", 3, type="int", bounds=(1, 6),
                    help="R-MAC scales s = 0..rmac_levels-1 (3: the paper's 14 regions on 8x8)")
LR = Param("lr", 0.01, search=(1e-4, 1e-1), log=True, bounds=(1e-7, 10.0), help="SGD learning rate")
WEIGHT_DECAY = Param("weight_decay", 1e-3, bounds=(0.0, 1.0), help="SGD weight decay (paper: 0.001)")


def _model_builder(head, fpn: bool):
    def build_model(ctx: ModelContext, hp: dict) -> YNet:
        mode = hp.get("omega_mode", "fixed")
        learn = mode != "fixed" and head is not None and fpn   # ω exists only with both branches
        omega = hp.get("omega", 0.5)
        if learn and not 0.0 < omega < 1.0:
            raise HashbenchError(f"parameter 'omega' = {omega}: with omega_mode={mode} it must lie strictly "
                                 f"between 0 and 1 (it is the initial value of sigmoid(θ))")
        model = YNet(ctx.in_channels, ctx.image_size, ctx.num_classes, ctx.bits,
                     head=hp.get("circle_form", head) if head == "circle" else head, fpn=fpn,
                     rmac_levels=hp.get("rmac_levels", 3), learn_omega=learn, omega=omega,
                     mask_classes=getattr(ctx, "mask_classes", 2))
        if model.grid is None:
            s = model.core_size
            raise HashbenchError(
                f"bits={ctx.bits}: the core node of a {ctx.image_size} px image is {CORE_CHANNELS}x{s}x{s}, "
                f"which cannot be average-pooled to {ctx.bits} values (need c*h*w = bits with c <= "
                f"{CORE_CHANNELS}, h, w <= {s}); use at most {CORE_CHANNELS * s * s} bits or larger images")
        return model
    return build_model


class YNetLoss(nn.Module):
    """Coupled loss (paper Eq. 2): L = ω·L_cls + (1 − ω)·L_seg.

    L_cls: circle loss (``circle_loss``, Sun et al. Eq. 4) with γ, m on cosine similarities — to the
    class vectors (``class``) or between the batch's descriptors (``pairwise``) — or softmax
    cross-entropy (``ce``); L_seg: pixel-wise cross-entropy of the mask logits (one per mask class)
    against ``batch.masks``. Without an FPN branch ω = 1, without an R-MAC branch ω = 0.

    ω ("initially set as 0.5"; the coupled loss unifies "the losses to the same order of magnitude",
    Sec. III-E) by ``omega_mode``:

    * ``balance`` (default): ω = sigmoid(θ), θ from logit(0.5) = 0. The network is trained on
      ``ω̄·L_cls + (1 − ω̄)·L_seg`` with ω̄ = ω held constant, and θ descends
      ``½(θ − logit(ω*))²`` with ``ω* = L_seg / (L_cls + L_seg)`` (losses held constant): the ω at which
      ``ω·L_cls = (1 − ω)·L_seg``, both weighted terms of the same magnitude. This term's value is
      removed from ``loss`` (it only adds θ's gradient), so ``loss`` is the coupled loss.
    * ``descent``: ω = sigmoid(θ) trained by gradient on L itself, dL/dθ = ω(1 − ω)(L_cls − L_seg):
      ω drifts towards the branch with the smaller loss (the authors' released code).
    * ``fixed``: ω = ``omega``.
    """

    def __init__(self, method_id: str, cls: str | None, seg: bool, hp: dict):
        super().__init__()
        self.method_id, self.cls, self.seg = method_id, cls, seg
        self.gamma, self.margin = hp.get("gamma", 32.0), hp.get("margin", 0.25)
        self.omega = hp.get("omega", 0.5)  # used only when both branches exist
        self.omega_mode = hp.get("omega_mode", "fixed")

    def forward(self, out: dict, batch, model) -> dict:
        terms = {}
        name = "ce" if self.cls == "ce" else "circle"
        if self.cls is not None:
            terms[name] = self._cls_loss(out, batch)
        if self.seg:
            terms["seg"] = seg_loss(out["seg_logits"], batch.masks, self.method_id)
        if self.cls is not None and self.seg:
            learned = model.omega()
            if learned is None:                                            # fixed ω
                w = self.omega
                total = w * terms[name] + (1 - w) * terms["seg"]          # Eq. 2
            elif self.omega_mode == "balance":
                w = learned
                wd = w.detach()
                total = wd * terms[name] + (1 - wd) * terms["seg"]        # Eq. 2 with ω̄ constant
                l_cls, l_seg = terms[name].detach(), terms["seg"].detach()
                target = (l_seg / (l_cls + l_seg).clamp_min(1e-12)).clamp(1e-4, 1 - 1e-4)   # ω*
                balance = 0.5 * (model.omega_logit - torch.logit(target)) ** 2               # θ's objective
                total = total + (balance - balance.detach())              # adds its gradient, not its value
                terms["omega_target"] = target
            else:                                                          # descent: dL/dθ through L
                w = learned
                total = w * terms[name] + (1 - w) * terms["seg"]          # Eq. 2
            terms["omega"] = torch.as_tensor(w, dtype=torch.float32, device=total.device).detach()
        else:
            total = next(iter(terms.values()))
        return {"loss": total, **terms}

    def _cls_loss(self, out: dict, batch) -> torch.Tensor:
        if self.cls == "ce":
            return F.cross_entropy(out["logits"], batch.targets)
        labels = batch.labels > 0
        if self.cls == "circle-pairwise":
            desc = out["descriptor"]   # already L2-normalised: dot product = cosine
            pos, neg = pairwise_masks(labels)
            return circle_loss(desc @ desc.T, pos, neg, self.gamma, self.margin)
        return circle_loss(out["logits"], labels, ~labels, self.gamma, self.margin)


def seg_loss(logits: torch.Tensor, masks, method_id: str) -> torch.Tensor:
    """Pixel-wise cross-entropy (paper Sec. IV-B) of logits (B, M, h, w) vs masks (B, H, W) of class ids
    0..M-1 (M = the store's ``mask_classes``: 2 for a lesion mask, 3 for optic disc / cup / background);
    logits are bilinearly resized to the masks' size when they differ."""
    if masks is None:
        raise HashbenchError(f"method {method_id!r} trains on segmentation masks, but the batch has none; "
                             f"use a dataset with masks (e.g. the built-in 'busi')")
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks.long())


def build_optimizer(parameters, hp: dict) -> torch.optim.Optimizer:
    """SGD, momentum 0.9, weight decay 1e-3 (paper Sec. IV-B)."""
    return torch.optim.SGD(parameters, lr=hp["lr"], momentum=0.9, weight_decay=hp["weight_decay"])


def _loss_builder(method_id: str, cls, seg: bool):
    def build_loss(ctx: ModelContext, hp: dict) -> YNetLoss:
        kind = f"circle-{hp.get('circle_form', 'class')}" if cls == "circle" else cls
        return YNetLoss(method_id, kind, seg, hp)
    return build_loss


_COMMON = dict(citation=CITATION, paper=PAPER, family="ynet", code_type="binary", distance="hamming",
               build_optimizer=build_optimizer, batch_size=32, epochs=500)

register(Method(
    id="ynet", summary="Y-Net: core node trained by circle loss (R-MAC branch) + mask CE (FPN branch), "
                       "codes by parameter-free aggregation",
    build_model=_model_builder("circle", True), build_loss=_loss_builder("ynet", "circle", True),
    params=(OMEGA, OMEGA_MODE, GAMMA, MARGIN, CIRCLE_FORM, RMAC_LEVELS, LR, WEIGHT_DECAY),
    requires=Requirements(masks=True, multi_label=False, min_image_size=16), **_COMMON))

register(Method(
    id="ynet-no-fpn", summary="Y-Net ablation without the FPN branch: circle loss on R-MAC only (ω = 1)",
    build_model=_model_builder("circle", False), build_loss=_loss_builder("ynet-no-fpn", "circle", False),
    params=(GAMMA, MARGIN, CIRCLE_FORM, RMAC_LEVELS, LR, WEIGHT_DECAY),
    requires=Requirements(masks=False, multi_label=False, min_image_size=16), **_COMMON))

register(Method(
    id="ynet-no-rmac", summary="Y-Net ablation without the R-MAC branch: mask CE only (ω = 0)",
    build_model=_model_builder(None, True), build_loss=_loss_builder("ynet-no-rmac", None, True),
    params=(LR, WEIGHT_DECAY),
    requires=Requirements(masks=True, multi_label=True, min_image_size=16), **_COMMON))

register(Method(
    id="ynet-ce", summary="Y-Net ablation with softmax cross-entropy instead of circle loss on R-MAC",
    build_model=_model_builder("ce", True), build_loss=_loss_builder("ynet-ce", "ce", True),
    params=(OMEGA, OMEGA_MODE, RMAC_LEVELS, LR, WEIGHT_DECAY),
    requires=Requirements(masks=True, multi_label=False, min_image_size=16), **_COMMON))
