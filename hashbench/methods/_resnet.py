"""Small-width residual (and plain) networks for the DRH family (Conjeti et al., Fig. 2).

The trunk follows He et al. (2016): a stem (Conv 1), four stages of basic
blocks (Conv 2-5, ``blocks`` per stage: 18 layers = (2, 2, 2, 2), 34 layers =
(3, 4, 6, 3)), widths ``w, 2w, 4w, 8w`` with stride 2 at the first block of
stages 3-5, and global average pooling. A basic block is two 3x3 convolutions,
each followed by batch norm, with a ReLU after the first and after the sum.
Shortcuts are identity, or a 1x1 convolution + batch norm where the shape
changes (He et al.'s option B). ``residual=False`` drops every shortcut (the
paper's plain net, DPH) and keeps everything else.

Stem: ``"imagenet"`` is the paper's 7x7/2 convolution and 3x3/2 max-pool (224 px
in, 56 px at stage 2); ``"small"`` is a 3x3/1 convolution without pooling, for
images below 64 px, where a /4 stem would leave stage 2 with a few pixels;
``"auto"`` picks ``"imagenet"`` from 64 px up. Global average pooling makes
every input size >= 1 px valid.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("auto", "imagenet", "small")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) - ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class SmallResNet(nn.Module):
    """Stem, four stages of basic blocks, global average pooling -> ``(n, out_dim)``."""

    def __init__(self, in_channels: int, image_size: int, depth: int = 34, width: int = 6,
                 residual: bool = True, stem: str = "auto"):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if stem == "auto":
            stem = "imagenet" if image_size >= 64 else "small"
        self.stem_kind = stem
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        blocks, cin = [], width
        for i, n in enumerate(DEPTHS[depth]):
            cout = width * 2 ** i
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, residual))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))
