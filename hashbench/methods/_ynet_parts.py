"""Building blocks of Y-Net (Fang et al.): R-MAC pooling, circle loss, hash aggregation, the network.

See ``docs/methods/ynet.md`` for every choice made where the paper is ambiguous.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

CORE_CHANNELS = 256     # core node: 256 x 8 x 8 at 256 px (paper, Fig. 5)
RMAC_CHANNELS = 512     # R-MAC descriptor length (paper, Sec. III-C)
FPN_CHANNELS = 32       # top-down blocks t3, t2, t1 (paper, Sec. III-D)
STAGE_OUT = (32, 64, 128)  # bottom-up blocks b1, b2, b3 (paper, Sec. III-D)
RMAC_OVERLAP = 0.4      # documented overlap of neighbouring windows; see rmac_regions


# --------------------------------------------------------------------------- R-MAC
@functools.lru_cache(maxsize=64)
def rmac_regions(height: int, width: int, levels: int) -> tuple:
    """Square R-MAC regions ``(top, left, size)`` of a ``height x width`` map, each listed once.

    Scale s = 0 .. levels-1 (level l = s + 1 of Tolias et al.) uses windows of side
    ``R_s = floor(2 * min(H, W) / (s + 2))`` (paper Eq. 1), ``s + 1`` of them along each side, spread
    evenly from one border to the other: start ``floor(i * (D - R_s) / s)``. On an 8 x 8 map this gives
    consecutive windows overlapping by 2/5 = 0.4 at s = 1 and 1/2 at s = 2 (Tolias' rule: overlap as
    close to 0.4 as the integer grid allows), and 1 + 4 + 9 = 14 regions for three scales, the count the
    paper states. Scales whose side would be < 1 cell are dropped, and a region produced by two scales
    (maps under ~6 cells) is kept once. Computed once per map size (cached).
    """
    regions = []
    for s in range(levels):
        size = (2 * min(height, width)) // (s + 2)
        if size < 1:
            continue
        tops = _starts(height, size, s + 1)
        lefts = _starts(width, size, s + 1)
        regions.extend((t, lft, size) for t in tops for lft in lefts)
    return tuple(dict.fromkeys(regions))  # drop duplicates, keep order


def _starts(length: int, size: int, count: int) -> list:
    if count == 1:
        return [0]
    step = (length - size) / (count - 1)
    return sorted({math.floor(i * step) for i in range(count)})


def rmac_pool(x: torch.Tensor, levels: int, eps: float = 1e-6) -> torch.Tensor:
    """R-MAC descriptor (B, C) of feature maps ``x`` (B, C, H, W).

    Each region is max-pooled to a C-vector and L2-normalised, the region vectors are summed and the
    sum is L2-normalised (Tolias et al. 2016; paper Sec. III-C). Vectorised: one stride-1 max-pool per
    distinct region size gives the maxima of every window of that size; the regions' windows are then
    gathered by index, so there is no loop over samples or regions.
    """
    b, c, h, w = x.shape
    by_size: dict = {}
    for top, left, size in rmac_regions(h, w, levels):
        by_size.setdefault(size, []).append(top * (w - size + 1) + left)
    total = x.new_zeros(b, c)
    for size, flat in by_size.items():
        window_max = F.max_pool2d(x, size, stride=1).flatten(2)          # (B, C, positions)
        pooled = window_max[:, :, torch.tensor(flat, device=x.device)]    # (B, C, regions)
        total = total + F.normalize(pooled, dim=1, eps=eps).sum(dim=2)
    return F.normalize(total, dim=1, eps=eps)


# --------------------------------------------------------------------------- circle loss
def circle_loss(sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, gamma: float,
                margin: float) -> torch.Tensor:
    """Circle loss (Sun et al. 2020, Eq. 4), averaged over the rows that have a positive and a negative.

    Row i of ``sim`` holds the similarities s of anchor i; ``pos``/``neg`` (bool, same shape) say which
    are within-class (s_p) and between-class (s_n). Per anchor:

        L = log(1 + sum_n exp(gamma * a_n * (s_n - D_n)) * sum_p exp(-gamma * a_p * (s_p - D_p)))
          = softplus(logsumexp_n(...) + logsumexp_p(...))                       # the code below

    with a_p = [1 + m - s_p]_+, a_n = [s_n + m]_+ (optimum O_p = 1 + m, O_n = -m), D_p = 1 - m,
    D_n = m. a_p and a_n are weights, not differentiated (as in the authors' reference code).
    """
    alpha_p = (1 + margin - sim).clamp_min(0).detach()
    alpha_n = (sim + margin).clamp_min(0).detach()
    logit_p = -gamma * alpha_p * (sim - (1 - margin))
    logit_n = gamma * alpha_n * (sim - margin)
    neg_inf = torch.finfo(sim.dtype).min
    lse_p = torch.logsumexp(logit_p.masked_fill(~pos, neg_inf), dim=1)
    lse_n = torch.logsumexp(logit_n.masked_fill(~neg, neg_inf), dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return sim.sum() * 0.0
    return F.softplus(lse_p + lse_n)[valid].mean()


def pairwise_masks(labels: torch.Tensor) -> tuple:
    """Positive / negative pair masks (B, B) from multi-hot labels: positives share a label, not self."""
    shared = labels.float() @ labels.float().T > 0
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return shared & ~eye, ~shared


# --------------------------------------------------------------------------- hash aggregation
def aggregation_grid(bits: int, channels: int, height: int, width: int) -> Optional[tuple]:
    """The ``(c, h, w)`` with c*h*w = bits that the core node C x H x W is average-pooled to.

    Keeps as many spatial cells as possible (h <= H, w <= W, c <= C, as square as possible), so 64
    bits from 256 x 8 x 8 is 1 x 8 x 8, the paper's example. None when no such grid exists.
    """
    best = None
    for h in range(1, height + 1):
        for w in range(1, width + 1):
            if bits % (h * w) or bits // (h * w) > channels:
                continue
            key = (h * w, -abs(h - w))
            if best is None or key > best[0]:
                best = (key, (bits // (h * w), h, w))
    return None if best is None else best[1]


def aggregate(core: torch.Tensor, grid: tuple) -> torch.Tensor:
    """Parameter-free aggregation (paper Sec. III-B): average-pool (C, H, W) to ``grid``, flatten, tanh."""
    return torch.tanh(F.adaptive_avg_pool3d(core.unsqueeze(1), grid).flatten(1))


# --------------------------------------------------------------------------- network
class Bottleneck(nn.Module):
    """Residual bottleneck block (He et al. 2016): 1x1, 3x3 (stride), 1x1 with 4x expansion."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(cin if i == 0 else cout, cout // 4, 2 if i == 0 else 1)
                           for i in range(blocks)])


def _half(n: int, times: int) -> int:
    for _ in range(times):
        n = (n + 1) // 2
    return n


class YNet(nn.Module):
    """Main branch (stem, bottom-up blocks b1-b3, core node) with optional R-MAC and FPN branches.

    ``head``: "class" (R-MAC + L2 + cosine classifier, class-level circle loss), "pairwise" (R-MAC +
    L2, pairwise circle loss: no classifier), "ce" (R-MAC + L2 + linear classifier, cross-entropy) or
    None (no R-MAC branch). ``fpn``: build the segmentation branch, predicting ``mask_classes`` classes
    per pixel. ``learn_omega``: ω = sigmoid(θ) with θ a parameter initialised at logit(omega).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, bits: int, *,
                 head: Optional[str], fpn: bool, rmac_levels: int = 3, blocks: int = 2,
                 learn_omega: bool = False, omega: float = 0.5, mask_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True))
        self.b1 = _stage(8, STAGE_OUT[0], blocks)
        self.b2 = _stage(STAGE_OUT[0], STAGE_OUT[1], blocks)
        self.b3 = _stage(STAGE_OUT[1], STAGE_OUT[2], blocks)
        # the core node is a convolutional layer; its (signed) batch-normalised output is hashed
        self.core = nn.Sequential(nn.Conv2d(STAGE_OUT[2], CORE_CHANNELS, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(CORE_CHANNELS))
        self.core_size = _half(image_size, 5)
        self.grid = aggregation_grid(bits, CORE_CHANNELS, self.core_size, self.core_size)
        self.head, self.rmac_levels = head, rmac_levels
        self.rmac_conv = self.classifier = self.fpn = self.omega_logit = None
        if head is not None:
            self.rmac_conv = nn.Sequential(nn.Conv2d(CORE_CHANNELS, RMAC_CHANNELS, 3, 1, 1, bias=False),
                                           nn.BatchNorm2d(RMAC_CHANNELS))
            if head == "class":
                self.classifier = nn.Parameter(torch.randn(num_classes, RMAC_CHANNELS) / RMAC_CHANNELS ** 0.5)
            elif head == "ce":
                self.classifier = nn.Linear(RMAC_CHANNELS, num_classes)
        if fpn:
            self.fpn = FPN(mask_classes)
        if learn_omega:
            self.omega_logit = nn.Parameter(torch.tensor(math.log(omega / (1 - omega))))

    def features(self, x: torch.Tensor) -> tuple:
        b1 = self.b1(self.stem(x))
        b2 = self.b2(b1)
        b3 = self.b3(b2)
        return b1, b2, b3, self.core(b3)

    def forward(self, x: torch.Tensor) -> dict:
        b1, b2, b3, core = self.features(x)
        out = {"core": core}
        act = F.relu(core)
        if self.rmac_conv is not None:
            feat = self.rmac_conv(act)
            with torch.autocast(x.device.type, enabled=False):   # cheap: pooling and classifier in fp32
                desc = rmac_pool(feat.float(), self.rmac_levels)
                out["descriptor"] = desc
                if self.head == "class":   # cosine similarity to each class's weight vector
                    out["logits"] = desc @ F.normalize(self.classifier, dim=1).T
                elif self.head == "ce":
                    out["logits"] = self.classifier(desc)
        if self.fpn is not None:
            out["seg_logits"] = self.fpn(act, b1, b2, b3, x.shape[-2:])
        return out

    def omega(self) -> Optional[torch.Tensor]:
        """The learned ω in (0, 1), or None when ω is fixed."""
        return None if self.omega_logit is None else torch.sigmoid(self.omega_logit)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return aggregate(self.features(x)[3], self.grid)


class FPN(nn.Module):
    """FPN branch (paper Sec. III-D): top conv on the core node, three top-down blocks t3, t2, t1 made by
    bilinear up-sampling and element-wise addition of the bottom-up blocks b3, b2, b1 (b3, b2 brought to
    32 channels by 1x1 lateral convolutions), and a 3x3 predictor giving ``mask_classes`` logits per pixel
    at input size (2 for a binary lesion mask; 3 for optic disc and cup plus background)."""

    def __init__(self, mask_classes: int = 2):
        super().__init__()
        self.top = nn.Conv2d(CORE_CHANNELS, FPN_CHANNELS, 1)
        self.lat3 = nn.Conv2d(STAGE_OUT[2], FPN_CHANNELS, 1)
        self.lat2 = nn.Conv2d(STAGE_OUT[1], FPN_CHANNELS, 1)
        self.predict = nn.Conv2d(FPN_CHANNELS, mask_classes, 3, 1, 1)

    @staticmethod
    def _up_add(x, y):
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False) + y

    def forward(self, core, b1, b2, b3, size) -> torch.Tensor:
        t3 = self._up_add(self.top(core), self.lat3(b3))
        t2 = self._up_add(t3, self.lat2(b2))
        t1 = self._up_add(t2, b1)
        return self.predict(F.interpolate(t1, size=tuple(size), mode="bilinear", align_corners=False))
