"""The embedding network shared by ``constellation``, ``triplet``, ``npair`` and ``contrastive``.

Medela & Picon (2020) replace the classifier of a ResNet-50 by global average
pooling and a 128-neuron embedding layer with a sigmoid, L2-normalised for the
triplet and constellation losses (not for N-pair, whose loss carries its own
norm regulariser). The ResNet here is written from scratch in plain ``torch.nn``
with torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, …,
``downsample.0``), so a locally stored torchvision ResNet state dict can be
loaded with the ``weights`` parameter; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import ModelContext, Param

# blocks per stage and block type, as in He et al. (2016), Table 1
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# ImageNet statistics: the input normalisation torchvision's weights expect
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(cin: int, cout: int, stride: int):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet trunk up to global average pooling; ``out_dim`` features."""

    def __init__(self, arch: str, in_channels: int, width: int = 64):
        super().__init__()
        kind, layers = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_dim = cin
        c = in_channels
        mean = _MEAN if c == 3 else (sum(_MEAN) / 3,) * c
        std = _STD if c == 3 else (sum(_STD) / 3,) * c
        self.register_buffer("in_mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(std).view(1, c, 1, 1), persistent=False)

    def forward(self, x):
        x = (x - self.in_mean) / self.in_std
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))  # global average pooling


def load_weights(net: ResNet, path: str) -> None:
    """Load a local torchvision-style ResNet state dict into ``net`` (``fc.*`` ignored).

    A 3-channel ``conv1`` is summed over its input channels for grey images.
    Every trunk tensor must be present with the right shape.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise HashbenchError(f"parameter 'weights': file {str(p)!r} does not exist; give a local "
                             f"torchvision ResNet state dict (.pt/.pth) or leave it empty")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise HashbenchError(f"parameter 'weights': cannot read {str(p)!r} as a state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HashbenchError(f"parameter 'weights': {str(p)!r} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
    own = net.state_dict()
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] != own["conv1.weight"].shape[1] and own["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise HashbenchError(
            f"parameter 'weights': {str(p)!r} does not fit this backbone; missing {missing[:3]}"
            f"{' …' if len(missing) > 3 else ''}, wrong shapes {wrong[:3]}; use the same 'arch' and width 64")
    net.load_state_dict({k: state[k] for k in own})


class EmbeddingNet(nn.Module):
    """ResNet → GAP → linear embedding (``bits`` wide) → sigmoid → optional L2 normalisation."""

    def __init__(self, ctx: ModelContext, arch: str, width: int, normalize: bool, weights: str = ""):
        super().__init__()
        self.backbone = ResNet(arch, ctx.in_channels, width)
        if weights:
            load_weights(self.backbone, weights)
        self.embedding = nn.Linear(self.backbone.out_dim, ctx.bits)
        self.normalize = normalize

    def forward(self, x) -> dict:
        f = torch.sigmoid(self.embedding(self.backbone(x)))
        if self.normalize:
            f = F.normalize(f, dim=1)
        return {"embedding": f}

    def encode(self, x):
        return self.forward(x)["embedding"]


def backbone_params(arch: str = "resnet50") -> tuple:
    """The network parameters every method of the constellation family shares."""
    return (
        Param("arch", arch, type="choice", choices=tuple(ARCHS),
              help="residual backbone (paper: ResNet-50)"),
        Param("width", 64, type="int", bounds=(4, 256),
              help="channels of the first stage (64 = standard ResNet; needed for 'weights')"),
        Param("weights", "", type="str",
              help="optional local torchvision ResNet state dict to start from (paper: ImageNet)"),
        Param("lr", 1e-4, bounds=(0, None), help="Adam learning rate (paper: 1e-4)"),
    )


def build_adam(parameters, hp):
    return torch.optim.Adam(parameters, lr=hp["lr"])
