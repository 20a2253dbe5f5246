"""Shared parts of the supervised two-stage baselines ``dch-ksh``, ``dch-sdh``, ``dch-cca-itq``, ``drn-ksh``.

Stage 1 trains a *trunk* through the one training loop; stage 2 runs in the registry's
``finalize`` hook: the features of the train split are collected once and a supervised hash
function (KSH, SDH, CCA-ITQ: ``ksh.py``, ``sdh.py``, ``cca_itq.py``) is fitted on them with the
train labels. The fitted function lives in the model's buffers, so ``encode`` returns its
continuous output and ``model.pt`` carries it. Trunks (``TRUNKS``):

* ``"dch-cnn"`` — the "+CNNF" features of the DCH paper: the DCH network of Table I without its
  LBE layer, trained with cross-entropy only (the same stage 1 as ``lsh`` / ``itq``,
  :class:`hashbench.methods._two_stage.CNNFeatureHasher`); features = the 2048-unit FC layer.
* ``"drn"`` — the DRN of the DRH paper's DRN-KSH row: DRH's residual network
  (:class:`hashbench.methods.drh.DRHNet`, its parameters and optimiser) trained with the
  supervised retrieval loss J_S alone; features = the K tanh units it trains.

Before ``finalize`` (the per-epoch validation while training) ``encode`` is the trunk's own proxy
code (DCH CNN: seeded random hyperplanes through the origin, as ``lsh``; DRN: its tanh layer).
Kernel hashers (KSH, SDH) map a feature ``x`` to ``k̄(x) = [k(x, a_1) − μ_1, …, k(x, a_m) − μ_m]``
with ``m`` anchors ``a_j`` drawn from the train features, the Gaussian kernel
``k(x, a) = exp(−‖x − a‖² / (2σ²))`` and ``μ_j`` the mean of ``k(·, a_j)`` over the train split;
linear hashers (CCA-ITQ) use ``x − mean``. Equations and choices: docs/methods/supervised-two-stage.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from hashbench.methods import _two_stage as ts
from hashbench.methods import drh
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, ModelContext, Param, Requirements, register


# ---------------------------------------------------------------- trunks

class DRNTrunk(drh.DRHNet):
    """DRH's residual network; its features are the tanh outputs ``h`` that J_S trains."""

    def features(self, x):
        return self.forward(x)["h"]


def _build_dch_cnn(ctx: ModelContext, hp: dict) -> nn.Module:
    return ts.CNNFeatureHasher(ctx, hp["seed"])


def _build_drn(ctx: ModelContext, hp: dict) -> nn.Module:
    return DRNTrunk(ctx, hp["depth"], hp["width"], True, hp["stem"])


def _drn_loss(ctx: ModelContext, hp: dict) -> nn.Module:
    """J_S alone (DRH eq. 1): no quantization, no bit balance, no orthogonality."""
    return drh.DRHLoss(lambda_q=0.0, lambda_b=0.0, lambda_o=0.0)


SEED = Param("seed", 0, type="int", bounds=(0, None),
             help="seed of the anchors / initial codes / rotation (mixed with the run's seed)")


@dataclass(frozen=True)
class Trunk:
    """Stage 1 of a two-stage method: how to build, train and read features from the network."""

    name: str
    summary: str
    build_model: Callable
    build_loss: Callable
    build_optimizer: Callable
    params: tuple
    feature_dim: Callable            # (ctx, hp) -> int
    build_scheduler: Optional[Callable] = None
    batch_size: int = 32
    epochs: int = 30
    cuda_graph: bool = False
    plateau_on: str = "val_map"  # what the trunk's plateau scheduler is stepped with (Method.plateau_on)


TRUNKS = {
    "dch-cnn": Trunk(
        "dch-cnn", "the DCH CNN (Table I, no LBE layer) trained with cross-entropy; 2048 FC features",
        _build_dch_cnn, ts.build_loss, ts.build_optimizer, ts.stage_one_params(),
        feature_dim=lambda ctx, hp: ts.FEATURES, batch_size=32, epochs=30),
    "drn": Trunk(
        "drn", "DRH's residual network + tanh layer (K units) trained with J_S only",
        _build_drn, _drn_loss, drh._build_sgd, drh._network_params() + (SEED,),
        feature_dim=lambda ctx, hp: ctx.bits, build_scheduler=drh._build_plateau,
        batch_size=128, epochs=100, cuda_graph=True, plateau_on=drh.PLATEAU_ON),
}


def get_trunk(name: str, where: str = "") -> Trunk:
    if name not in TRUNKS:
        raise HashbenchError(f"{where}parameter 'trunk' = {name!r} is not a known trunk; "
                             f"valid trunks: {', '.join(sorted(TRUNKS))}")
    return TRUNKS[name]


# ---------------------------------------------------------------- the model: trunk + fitted hash function

class SupervisedTwoStage(nn.Module):
    """A trunk plus the buffers of a fitted hash function (kernel: ``anchors`` > 0, else linear).

    ``encode(x) = k̄(f(x)) @ projection`` (kernel) or ``(f(x) − mean) @ projection`` (linear) once
    ``fitted``; before that, the trunk's own proxy code. The platform takes the sign.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, bits: int, anchors: int = 0):
        super().__init__()
        self.trunk = trunk
        self.kernel = anchors > 0
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if self.kernel:
            self.register_buffer("anchors", torch.zeros(anchors, feature_dim))
            self.register_buffer("inv_two_sigma2", torch.ones(()))     # 1 / (2σ²)
            self.register_buffer("kernel_mean", torch.zeros(anchors))  # μ_j
        else:
            self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("projection", torch.zeros(anchors if self.kernel else feature_dim, bits))

    def forward(self, x) -> dict:
        return self.trunk(x)

    def features(self, x):
        return self.trunk.features(x)

    def hash_input(self, f: torch.Tensor) -> torch.Tensor:
        """``k̄(f)`` (kernel) or ``f − mean`` (linear), in the buffers' precision."""
        f = f.to(self.projection.dtype)
        if self.kernel:
            return kernel_map(f, self.anchors, self.inv_two_sigma2) - self.kernel_mean
        return f - self.mean

    def encode(self, x):
        if not bool(self.fitted):
            return self.trunk.encode(x)
        f = self.features(x)
        with torch.autocast(device_type=f.device.type, enabled=False):
            return self.hash_input(f) @ self.projection


def kernel_map(f: torch.Tensor, anchors: torch.Tensor, inv_two_sigma2) -> torch.Tensor:
    """``K_ij = exp(−‖f_i − a_j‖² / (2σ²))`` (n, m), with ``inv_two_sigma2 = 1 / (2σ²)``."""
    d2 = (f.pow(2).sum(1, keepdim=True) + anchors.pow(2).sum(1)[None, :] - 2.0 * f @ anchors.T).clamp_min(0)
    return torch.exp(-d2 * inv_two_sigma2)


def fit_kernel(feats: torch.Tensor, m: int, sigma_scale: float, generator: torch.Generator, method_id: str):
    """Anchors, bandwidth and centred kernel features of the train set.

    ``m`` anchors are drawn without replacement from the ``n`` train features (valid: 1 <= m <= n).
    σ² = ``sigma_scale``² · mean over (item, anchor) of ‖x_i − a_j‖² (KSH's reference heuristic: the
    mean squared distance sets the width). Returns ``(anchors, inv_two_sigma2, kernel_mean, K̄)``.
    """
    n = feats.shape[0]
    if not 1 <= m <= n:
        raise HashbenchError(
            f"method {method_id!r}: parameter 'anchors' = {m} but the train split has only {n} items to draw "
            f"anchors from; valid range: 1 <= anchors <= {n} (e.g. --set anchors={max(1, min(n, m) // 2)})")
    idx = torch.randperm(n, generator=generator)[:m].to(feats.device)
    anchors = feats[idx]
    d2 = (feats.pow(2).sum(1, keepdim=True) + anchors.pow(2).sum(1)[None, :] - 2.0 * feats @ anchors.T).clamp_min(0)
    sigma2 = sigma_scale ** 2 * d2.mean()
    if not float(sigma2) > 0:
        raise HashbenchError(f"method {method_id!r}: all train features are identical, the kernel width is 0; "
                             f"the trunk did not learn any features")
    inv = 1.0 / (2.0 * sigma2)
    k = torch.exp(-d2 * inv)
    mu = k.mean(dim=0)
    return anchors, inv, mu, k - mu


# ---------------------------------------------------------------- finalize plumbing

@torch.no_grad()
def collect(model: SupervisedTwoStage, batches):
    """Float64 trunk features and multi-hot labels of every item in ``batches`` (the train split)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for b in batches:
        f = model.features(b.images)
        feats.append(f.double())
        labels.append(b.labels.to(f.device).double())
    model.train(was_training)
    if not feats:
        raise HashbenchError("the train split is empty: the hash function cannot be fitted")
    return torch.cat(feats), torch.cat(labels)


def run_generator(hp: dict) -> torch.Generator:
    """A CPU generator from the method's ``seed`` and the run's torch seed (so seeds of a run differ)."""
    return torch.Generator().manual_seed((hp.get("seed", 0) * 1_000_003 + torch.initial_seed()) % (2 ** 63 - 1))


@dataclass(frozen=True)
class Hasher:
    """Stage 2: ``fit(feats, labels, bits, hp, generator, method_id) -> {buffer name: tensor}``."""

    name: str
    fit: Callable
    params: tuple
    kernel: bool
    needs_bits_le_dim: bool = False  # the projection lives in the feature space (CCA): bits <= d


def register_two_stage(method_id: str, *, trunk: str, hasher: Hasher, summary: str, citation: str,
                       paper: str, family: str) -> Method:
    """Register ``method_id`` = trunk ``trunk`` trained by the loop, then ``hasher`` fitted in finalize."""
    spec = get_trunk(trunk, where=f"two-stage method {method_id!r}: ")

    def build_model(ctx: ModelContext, hp: dict) -> SupervisedTwoStage:
        dim = spec.feature_dim(ctx, hp)
        if hasher.needs_bits_le_dim and ctx.bits > dim:
            raise HashbenchError(
                f"method {method_id!r}: bits={ctx.bits} exceeds the {dim}-dimensional features of trunk "
                f"{trunk!r} that {hasher.name} projects; valid range: 1 <= bits <= {dim}")
        return SupervisedTwoStage(spec.build_model(ctx, hp), dim, ctx.bits,
                                  hp["anchors"] if hasher.kernel else 0)

    @torch.no_grad()
    def finalize(model, batches, hp) -> None:
        model = getattr(model, "module", model)
        feats, labels = collect(model, batches)
        bits = model.projection.shape[1]
        buffers = hasher.fit(feats, labels, bits, hp, run_generator(hp), method_id)
        for name, value in buffers.items():
            buf = getattr(model, name)
            buf.copy_(torch.as_tensor(value).to(device=buf.device, dtype=buf.dtype))
        model.fitted.fill_(True)

    names = {p.name for p in spec.params}
    clash = [p.name for p in hasher.params if p.name in names]
    if clash:
        raise ValueError(f"method {method_id!r}: hasher parameters {clash} clash with trunk {trunk!r}")
    return register(Method(
        id=method_id, family=family, summary=summary, citation=citation, paper=paper,
        build_model=build_model, build_loss=spec.build_loss, build_optimizer=spec.build_optimizer,
        build_scheduler=spec.build_scheduler, finalize=finalize, params=spec.params + hasher.params,
        code_type="binary", distance="hamming", batch_size=spec.batch_size, epochs=spec.epochs,
        cuda_graph=spec.cuda_graph, plateau_on=spec.plateau_on,
        requires=Requirements(labels=True, multi_label=True, min_image_size=8)))


def sign(x: torch.Tensor) -> torch.Tensor:
    """sgn with sgn(0) = +1, as the platform binarises codes."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def anchors_param(default: int, search: tuple, paper: str) -> Param:
    """``anchors``: the paper's m as default; sweeps search ``search`` (log), kept within every built-in
    dataset's train size so that no trial fails for want of train items."""
    return Param("anchors", default, type="int", search=search, log=True, bounds=(1, None),
                 help=f"m, kernel anchors drawn from the train split ({paper}); at most the train size")


SIGMA_SCALE = Param("sigma_scale", 1.0, search=(0.25, 4.0), log=True, bounds=(1e-6, None),
                    help="kernel width σ as a multiple of the RMS train-to-anchor distance (1 = KSH's "
                         "reference heuristic)")
