"""JTANet: Joint Triplet Autoencoder (Singh, Dubey et al., 2021).

A "Siamcoder" encoder of seven convolution layers maps an image to a latent
vector F whose length is the code length. F is shared by a triplet (Siamese)
branch, which mines triplets online in each batch from the L2-normalised F, and
a decoder of seven transposed convolutions that reconstructs the image:

    L_JTA = λ_AE·L_AE + λ_SM·L_SM + λ_FR·L_FR.

Retrieval uses the Euclidean distance between the L2-normalised features (what
the triplets were mined on); the leaderboard also evaluates their signs as
binary codes. Choices where the paper is silent or cut off: docs/methods/jtanet.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.platform.registry import Method, Param, Requirements, register

CITATION = ("Singh SR, Dubey SR, Shruthi MS, Ventrapragada S, Dasharatha SS. Joint Triplet Autoencoder for "
            "Histopathological Colon Cancer Nuclei Retrieval. arXiv 2105.10262, 2021.")
PAPER = "../shared/papers/000_54fbe8ac14d008ca.txt"
MINING = ("hard", "semihard", "random-hard")
#: the λ_AE:λ_SM:λ_FR settings of the paper's Table 3 (weight analysis), in its order
#: written with '-' (YAML 1.1 reads an unquoted 1:5:1 as the base-60 integer 4201)
WEIGHT_GRID = ("1-1-1", "5-1-1", "1-5-1", "1-1-5", "10-1-1", "1-10-1", "1-1-10", "0-1-1", "1-0-1", "1-1-0")
#: L_FR forms: "l2norm" = the paper's "L2-Norm of feature vector F_i"; "mean-square" = (1/dim)‖F_i‖² (old)
FR_FORMS = ("l2norm", "mean-square")
ENC_CHANNELS = (32, 64, 64, 128, 128, 256)   # conv layers 1-6; layer 7 outputs the latent
DEC_CHANNELS = (256, 128, 128, 64, 64, 32)   # transposed-conv layers 1-6; layer 7 outputs the image


class Siamcoder(nn.Module):
    """Seven conv layers. Layers 1-6: 3×3 conv, BN, ReLU, 2×2 max-pool (the pool is
    skipped once the map is 1 px). Global average pooling then brings any remaining
    map to 1×1; layer 7 (1×1 conv + BN, no activation so the latent keeps its sign)
    gives the ``bits``-long latent F."""

    def __init__(self, in_channels: int, image_size: int, bits: int):
        super().__init__()
        layers, cin, size = [], in_channels, image_size
        for cout in ENC_CHANNELS:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = cout
        self.features = nn.Sequential(*layers)
        self.latent = nn.Sequential(nn.Conv2d(cin, bits, 1, bias=False), nn.BatchNorm2d(bits))

    def forward(self, x):
        h = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.latent(h).flatten(1)


class Decoder(nn.Module):
    """Seven transposed-conv layers from the latent (bits×1×1) back to an image.

    Layer 1 (kernel 4) makes a 4×4 map; then ``n_up = ceil(log2(size/4))`` (at most 5)
    stride-2 layers double it and the remaining stride-1 layers (kernel 3) refine it;
    layers 1-6 have BN + ReLU, layer 7 a sigmoid (images are in [0, 1]). When the
    map does not end at the input size (e.g. 32 → 28), it is resized bilinearly.
    """

    def __init__(self, bits: int, out_channels: int, image_size: int):
        super().__init__()
        self.size = image_size
        n_up = min(5, max(0, math.ceil(math.log2(max(image_size, 1) / 4))))
        layers, cin = [nn.ConvTranspose2d(bits, DEC_CHANNELS[0], 4, bias=False)], DEC_CHANNELS[0]
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        for i, cout in enumerate(list(DEC_CHANNELS[1:]) + [out_channels]):
            last = i == len(DEC_CHANNELS) - 1
            conv = (nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=last) if i < n_up
                    else nn.ConvTranspose2d(cin, cout, 3, 1, 1, bias=last))
            layers += [conv, nn.Sigmoid()] if last else [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.net = nn.Sequential(*layers)

    def forward(self, f):
        r = self.net(f[:, :, None, None])
        if r.shape[-1] != self.size:
            r = F.interpolate(r, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return r


class JTANet(nn.Module):
    def __init__(self, ctx):
        super().__init__()
        self.encoder = Siamcoder(ctx.in_channels, ctx.image_size, ctx.bits)
        self.decoder = Decoder(ctx.bits, ctx.in_channels, ctx.image_size)

    def forward(self, x) -> dict:
        f = self.encoder(x)
        return {"latent": f, "feature": F.normalize(f, dim=1), "recon": self.decoder(f)}

    def encode(self, x):
        """The L2-normalised Siamcoder features (their signs are the binary codes)."""
        return F.normalize(self.encoder(x), dim=1)


def mine_triplets(feature: torch.Tensor, labels: torch.Tensor, margin: float, mode: str, generator=None):
    """Online triplet mining over one batch, vectorised (no loop over anchors).

    ``feature`` (B, D) L2-normalised; ``labels`` (B, C) multi-hot (two samples are
    positives when they share a label, negatives when they share none). Every
    anchor-positive pair (i, j), i < j, is scored against every negative n of i:
    ``score = d(A,P) − d(A,N) + margin`` with d the squared Euclidean distance. One
    negative per pair, as the paper defines the modes:

    * ``hard``: the negative with the largest score, kept if that score is > 0;
    * ``semihard``: a random negative with 0 < score < margin;
    * ``random-hard``: a random negative with score > 0.

    Pairs without a qualifying negative give no triplet. Returns index tensors
    ``(anchor, positive, negative)``.
    """
    with torch.no_grad():
        d = torch.cdist(feature, feature).pow(2)
        lab = labels.float()
        shared = (lab @ lab.T) > 0
        neg = ~shared
        pos = torch.triu(shared, diagonal=1)
        a, p = pos.nonzero(as_tuple=True)
        if a.numel() == 0:
            return a, p, a
        score = (d[a, p][:, None] - d[a] + margin).masked_fill(~neg[a], float("-inf"))  # (P, B)
        if mode == "hard":
            best, n = score.max(dim=1)
            ok = best > 0
        else:
            allowed = (score > 0) & (score < margin) if mode == "semihard" else score > 0
            key = torch.rand(score.shape, device=score.device, generator=generator).masked_fill(~allowed, -1.0)
            n = key.argmax(dim=1)
            ok = allowed.any(dim=1)
        return a[ok], p[ok], n[ok]


class JTANetLoss(nn.Module):
    """``L_JTA = λ_AE·L_AE + λ_SM·L_SM + λ_FR·L_FR``.

    * ``L_AE = (1/B) Σ_i ‖I_i − R_i‖²_avg``: per-image mean squared error, averaged over the batch.
    * ``L_SM = L_S = max(0, L_intra − L_inter + λ_m)`` with ``L_intra = (1/nb) Σ_i ‖F_Aⁱ − F_Pⁱ‖²``
      and ``L_inter = (1/nb) Σ_i ‖F_Aⁱ − F_Nⁱ‖²`` over the nb mined triplets (F normalised).
      Every mined triplet has a positive score, so this equals the per-triplet hinge
      ``(1/nb) Σ_i max(0, ‖F_Aⁱ−F_Pⁱ‖² − ‖F_Aⁱ−F_Nⁱ‖² + λ_m)``; 0 when nb = 0.
    * ``L_FR = (1/B) Σ_i L_FR^i`` on the encoder output F_i before normalisation, with
      ``L_FR^i = ‖F_i‖₂`` ("calculating the L2-Norm of feature vector F_i", ``fr_form="l2norm"``,
      default) or ``L_FR^i = (1/dim)‖F_i‖²₂`` (``fr_form="mean-square"``, hashbench's earlier choice);
      see docs/methods/jtanet.md.
    """

    def __init__(self, lambda_ae: float, lambda_sm: float, lambda_fr: float, margin: float, mining: str,
                 fr_form: str = "l2norm"):
        super().__init__()
        if fr_form not in FR_FORMS:
            raise ValueError(f"fr_form must be one of {FR_FORMS}, got {fr_form!r}")
        self.w = (lambda_ae, lambda_sm, lambda_fr)
        self.margin = margin
        self.mining = mining
        self.fr_form = fr_form

    def forward(self, out, batch, model=None) -> dict:
        x, f, z = batch.images, out["feature"], out["latent"]
        l_ae = ((out["recon"] - x) ** 2).flatten(1).mean(dim=1).mean()
        a, p, n = mine_triplets(f, batch.labels, self.margin, self.mining)
        if a.numel():
            intra = ((f[a] - f[p]) ** 2).sum(dim=1).mean()
            inter = ((f[a] - f[n]) ** 2).sum(dim=1).mean()
            l_sm = F.relu(intra - inter + self.margin)
        else:
            intra = inter = l_sm = f.sum() * 0.0
        if self.fr_form == "l2norm":
            l_fr = torch.linalg.vector_norm(z, dim=1).mean()      # (1/B) Σ_i ‖F_i‖₂
        else:
            l_fr = (z ** 2).mean()                                 # (1/B) Σ_i (1/dim)‖F_i‖²₂
        total = self.w[0] * l_ae + self.w[1] * l_sm + self.w[2] * l_fr
        return {"loss": total, "ae": l_ae.detach(), "sm": l_sm.detach(), "fr": l_fr.detach(),
                "sm_intra": intra.detach(), "sm_inter": inter.detach(),
                "triplets": torch.tensor(float(a.numel()), device=f.device)}


def loss_weights(hp: dict) -> tuple:
    """(λ_AE, λ_SM, λ_FR): the ratio ``hp["weights"]`` (a point of the paper's grid) times the
    per-term multipliers ``lambda_ae``, ``lambda_sm``, ``lambda_fr`` (1 by default)."""
    ratio = [float(v) for v in hp.get("weights", "1-1-1").split("-")]
    return tuple(r * hp[k] for r, k in zip(ratio, ("lambda_ae", "lambda_sm", "lambda_fr")))


def _loss(ctx, hp):
    return JTANetLoss(*loss_weights(hp), hp["margin"], hp["mining"], hp.get("fr_form", "l2norm"))


register(Method(
    id="jtanet", family="jtanet", also_binary=True,
    summary="Joint Triplet Autoencoder: Siamcoder shared by online-mined triplet loss and a decoder",
    citation=CITATION, paper=PAPER,
    build_model=lambda ctx, hp: JTANet(ctx), build_loss=_loss,
    build_optimizer=lambda params, hp: torch.optim.Adam(params, lr=hp["lr"]),
    params=(
        Param("weights", "1-1-1", type="choice", choices=WEIGHT_GRID, search=WEIGHT_GRID,
              help="λ_AE:λ_SM:λ_FR, a setting of the paper's Table 3 (zeros drop a term)"),
        Param("lambda_ae", 1.0, bounds=(0, None), help="multiplier of λ_AE (outside the paper's grid)"),
        Param("lambda_sm", 1.0, bounds=(0, None), help="multiplier of λ_SM (outside the paper's grid)"),
        Param("lambda_fr", 1.0, bounds=(0, None), help="multiplier of λ_FR (outside the paper's grid)"),
        Param("fr_form", "l2norm", type="choice", choices=FR_FORMS,
              help="L_FR per image: l2norm = ‖F_i‖₂ (paper), mean-square = (1/dim)‖F_i‖²"),
        Param("margin", 0.5, search=(0.1, 1.0), bounds=(0, None), help="triplet margin λ_m"),
        Param("mining", "semihard", type="choice", choices=MINING, search=MINING,
              help="negative selection (paper's best: semihard)"),
        Param("lr", 1e-3, bounds=(0, None), help="Adam learning rate"),
    ),
    code_type="float", distance="l2", batch_size=256, epochs=50,
    requires=Requirements(multi_label=True, min_image_size=8)))
