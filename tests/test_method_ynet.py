"""Y-Net and its ablations: every loss term and the R-MAC / aggregation geometry against independent
references (hand-derived values, explicit loops), the registry contract, and a few training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.methods._ynet_parts import (aggregate, aggregation_grid, circle_loss, pairwise_masks,
                                           rmac_pool, rmac_regions)
from hashbench.methods.ynet import seg_loss
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, check_requirements, get_method

IDS = ("ynet", "ynet-no-fpn", "ynet-no-rmac", "ynet-ce")


def _build(method_id, size=32, channels=1, classes=3, bits=16, mask_classes=2, **overrides):
    method = get_method(method_id)
    ctx = ModelContext(in_channels=channels, image_size=size, num_classes=classes, bits=bits,
                       mask_classes=mask_classes)
    hp = method.resolve(overrides)
    return method, method.build_model(ctx, hp), method.build_loss(ctx, hp), hp


def _batch(n=8, size=32, channels=1, classes=3, seed=0):
    """Class-dependent images with a bright square whose mask is given (learnable on purpose)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % classes
    images = 0.1 * torch.rand(n, channels, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        lo = 2 + 4 * int(targets[i])
        images[i, :, lo:lo + 8, lo:lo + 8] += 0.8
        masks[i, lo:lo + 8, lo:lo + 8] = 1
    return Batch(images=images, labels=F.one_hot(targets, classes).float(), targets=targets, masks=masks)


# ----------------------------------------------------------------------------- circle loss
def _circle_direct(sim, pos, neg, gamma, m):
    """Sun et al. Eq. 4 written out with Python sums, one anchor (row) at a time."""
    losses = []
    for i in range(len(sim)):
        sp = [float(sim[i, j]) for j in range(sim.shape[1]) if pos[i, j]]
        sn = [float(sim[i, j]) for j in range(sim.shape[1]) if neg[i, j]]
        if not sp or not sn:
            continue
        sum_n = sum(math.exp(gamma * max(s + m, 0) * (s - m)) for s in sn)
        sum_p = sum(math.exp(-gamma * max(1 + m - s, 0) * (s - (1 - m))) for s in sp)
        losses.append(math.log(1 + sum_n * sum_p))
    return sum(losses) / len(losses)


def test_circle_loss_hand_case():
    # s_p = 0.8, s_n = 0.1, γ = 32, m = 0.25: a_p = 1.25 - 0.8 = 0.45, a_n = 0.1 + 0.25 = 0.35,
    # exponent = 32*0.35*(0.1-0.25) - 32*0.45*(0.8-0.75) = -1.68 - 0.72 = -2.4
    sim = torch.tensor([[0.8, 0.1]])
    pos = torch.tensor([[True, False]])
    got = circle_loss(sim, pos, ~pos, 32.0, 0.25)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2.4)), rel=1e-5)
    assert got.item() == pytest.approx(0.08676, abs=1e-4)


def test_circle_loss_matches_direct_formula_class_and_pairwise():
    g = torch.Generator().manual_seed(1)
    sim = torch.rand(5, 4, generator=g) * 2 - 1
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]).bool()
    assert circle_loss(sim, labels, ~labels, 32.0, 0.25).item() == pytest.approx(
        _circle_direct(sim, labels, ~labels, 32.0, 0.25), rel=1e-5)
    # pairwise: anchors 2 and 3 have no positive and are left out of the mean
    feats = F.normalize(torch.randn(5, 6, generator=g), dim=1)
    pos, neg = pairwise_masks(labels)
    assert pos.sum().item() == 2 and not pos.diagonal().any() and not neg.diagonal().any()
    s = feats @ feats.T
    assert circle_loss(s, pos, neg, 16.0, 0.3).item() == pytest.approx(
        _circle_direct(s, pos, neg, 16.0, 0.3), rel=1e-5)


def test_circle_loss_weights_are_not_differentiated():
    # dL/ds_p = sigmoid(z) * (-γ a_p) with a_p held constant (z the exponent of the hand case)
    sim = torch.tensor([[0.8, 0.1]], requires_grad=True)
    pos = torch.tensor([[True, False]])
    circle_loss(sim, pos, ~pos, 32.0, 0.25).backward()
    z = torch.tensor(-2.4)
    assert sim.grad[0, 0].item() == pytest.approx((torch.sigmoid(z) * -32 * 0.45).item(), rel=1e-5)
    assert sim.grad[0, 1].item() == pytest.approx((torch.sigmoid(z) * 32 * 0.35).item(), rel=1e-5)


def test_circle_loss_without_any_pair_is_zero_and_differentiable():
    sim = torch.rand(3, 3, requires_grad=True)
    none = torch.zeros(3, 3, dtype=torch.bool)
    loss = circle_loss(sim, none, ~none, 32.0, 0.25)
    loss.backward()
    assert loss.item() == 0.0 and sim.grad is not None


# ----------------------------------------------------------------------------- R-MAC
def test_rmac_regions_8x8_hand_derived():
    # s=0: side 8; s=1: side floor(16/3)=5 at 0 and 3 (overlap 2/5 = 0.4); s=2: side 4 at 0, 2, 4
    expected = [(0, 0, 8)] + [(t, l, 5) for t in (0, 3) for l in (0, 3)] + \
               [(t, l, 4) for t in (0, 2, 4) for l in (0, 2, 4)]
    assert list(rmac_regions(8, 8, 3)) == expected and len(expected) == 14     # the paper's 14 regions
    four = rmac_regions(8, 8, 4)                        # s = 0..3: + side floor(16/5)=3 at 0, 1, 3, 5
    assert len(four) == 30 and [r for r in four if r[2] == 3] == [(t, l, 3) for t in (0, 1, 3, 5)
                                                                  for l in (0, 1, 3, 5)]


def test_rmac_regions_tiny_maps():
    assert rmac_regions(1, 1, 3) == ((0, 0, 1),)                               # s=1, 2 have side 0
    # 2x2: s=1 and s=2 both give the four 1x1 cells; each is kept once
    assert rmac_regions(2, 2, 3) == ((0, 0, 2), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1))
    four = rmac_regions(4, 4, 3)
    assert len(four) == 10 and len(set(four)) == 10
    assert all(t + s <= 4 and l + s <= 4 for t, l, s in four)


@pytest.mark.parametrize("size,levels", [(8, 3), (8, 4), (5, 3), (2, 3), (1, 3)])
def test_rmac_pool_matches_explicit_loops(size, levels):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, size, size, generator=g)
    ref = torch.zeros(2, 3)
    for b in range(2):
        total = torch.zeros(3)
        for t, l, s in rmac_regions(size, size, levels):
            v = torch.tensor([x[b, c, t:t + s, l:l + s].max().item() for c in range(3)])
            total += v / v.norm()
        ref[b] = total / total.norm()
    assert torch.allclose(rmac_pool(x, levels), ref, atol=1e-6)


# ----------------------------------------------------------------------------- segmentation
def test_seg_loss_matches_per_pixel_cross_entropy():
    logits = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [1.0, 3.0]]]])   # (1, 2, 2, 2)
    masks = torch.tensor([[[0, 1], [1, 0]]])
    ref = 0.0
    for i in range(2):
        for j in range(2):
            a, b = logits[0, 0, i, j].item(), logits[0, 1, i, j].item()
            chosen = (a, b)[int(masks[0, i, j])]
            ref += -(chosen - math.log(math.exp(a) + math.exp(b)))
    assert seg_loss(logits, masks, "ynet").item() == pytest.approx(ref / 4, rel=1e-6)
    # logits smaller than the masks are up-sampled bilinearly to the masks' size
    big = torch.randint(0, 2, (1, 4, 4))
    up = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    assert seg_loss(logits, big, "ynet").item() == pytest.approx(F.cross_entropy(up, big).item())
    with pytest.raises(HashbenchError, match="ynet.*masks"):
        seg_loss(logits, None, "ynet")


def test_seg_loss_with_three_mask_classes_by_hand():
    """One logit per mask class (background, disc, cup): −log softmax of the pixel's class, by hand."""
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[0.0, 0.0]]]])      # (1, 3, 1, 2)
    masks = torch.tensor([[[2, 1]]])                                         # pixel 0: cup, pixel 1: disc
    p0 = -(0.0 - math.log(math.e + 1 + 1))                                   # class 2 at pixel 0
    p1 = -(2.0 - math.log(1 + math.exp(2) + 1))                              # class 1 at pixel 1
    assert seg_loss(logits, masks, "ynet").item() == pytest.approx((p0 + p1) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- coupling, ω
def test_fixed_omega_couples_terms():
    _, model, loss_fn, _ = _build("ynet", omega=0.3, omega_mode="fixed")
    out = model(_batch().images)
    terms = loss_fn(out, _batch(), model)
    assert terms["loss"].item() == pytest.approx(0.3 * terms["circle"].item() + 0.7 * terms["seg"].item(),
                                                 rel=1e-6)
    assert terms["omega"].item() == pytest.approx(0.3)
    assert model.omega_logit is None


def test_descent_omega_stays_in_unit_interval_and_gets_gradient():
    _, model, loss_fn, _ = _build("ynet", omega_mode="descent", omega=0.2)
    assert model.omega().item() == pytest.approx(0.2)
    terms = loss_fn(model(_batch().images), _batch(), model)
    terms["loss"].backward()
    w = 0.2
    expected = w * (1 - w) * (terms["circle"].item() - terms["seg"].item())   # dL/dθ for ω = sigmoid(θ)
    assert model.omega_logit.grad.item() == pytest.approx(expected, rel=1e-4)
    for theta in (-50.0, 50.0):                                              # far out, still inside (0, 1)
        with torch.no_grad():
            model.omega_logit.fill_(theta)
        assert 0.0 <= model.omega().item() <= 1.0 and torch.isfinite(model.omega_logit)
    with pytest.raises(HashbenchError, match="strictly between 0 and 1"):
        _build("ynet", omega_mode="balance", omega=1.0)
    with pytest.raises(HashbenchError, match="omega"):
        get_method("ynet").resolve({"omega": 1.5})
    with pytest.raises(HashbenchError, match="omega_mode"):
        get_method("ynet").resolve({"omega_mode": "learned"})


def test_balance_omega_starts_at_half_and_its_gradient_targets_equal_magnitudes():
    """Paper: "The weight factor ω in the coupled loss is initially set as 0.5", and the coupled loss
    unifies "the losses to the same order of magnitude". Default: ω = sigmoid(θ), θ = 0; ``loss`` is
    0.5·L_circle + 0.5·L_seg; dloss/dθ = θ − logit(ω*) with ω* = L_seg/(L_circle + L_seg), i.e.
    log(L_circle/L_seg) at θ = 0; the network's gradient is that of Eq. 2 with ω held at 0.5."""
    torch.manual_seed(0)
    _, model, loss_fn, hp = _build("ynet")
    assert hp["omega_mode"] == "balance" and model.omega().item() == 0.5
    b = _batch()
    terms = loss_fn(model(b.images), b, model)
    lc, ls = terms["circle"].item(), terms["seg"].item()
    assert terms["loss"].item() == pytest.approx(0.5 * lc + 0.5 * ls, rel=1e-6)
    assert terms["omega_target"].item() == pytest.approx(ls / (lc + ls), rel=1e-6)
    terms["loss"].backward()
    assert model.omega_logit.grad.item() == pytest.approx(math.log(lc / ls), rel=1e-5)
    got = model.stem[0].weight.grad.clone()
    model.zero_grad()
    out = model(b.images)
    plain = 0.5 * loss_fn._cls_loss(out, b) + 0.5 * seg_loss(out["seg_logits"], b.masks, "ynet")
    plain.backward()
    torch.testing.assert_close(got, model.stem[0].weight.grad)


class _OmegaOnly(torch.nn.Module):
    """A Y-Net stand-in with only θ: the circle loss is pinned at 27.8 and the seg logits are 0 (L_seg = ln 2),
    the magnitudes measured at initialisation on BUSI (issue 11: 27.8 vs 0.687)."""

    def __init__(self, learn):
        super().__init__()
        self.omega_logit = torch.nn.Parameter(torch.zeros(())) if learn else None

    def omega(self):
        return None if self.omega_logit is None else torch.sigmoid(self.omega_logit)


def _omega_after(mode, steps=300):
    _, _, loss_fn, hp = _build("ynet", omega_mode=mode)
    loss_fn._cls_loss = lambda out, batch: torch.tensor(27.8)
    model = _OmegaOnly(mode != "fixed")
    opt = get_method("ynet").build_optimizer(list(model.parameters()), hp) if mode != "fixed" else None
    out = {"seg_logits": torch.zeros(1, 2, 2, 2)}
    batch = Batch(images=None, labels=None, targets=None, masks=torch.zeros(1, 2, 2, dtype=torch.long))
    for _ in range(steps if opt else 1):
        terms = loss_fn(out, batch, model)
        if opt:
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
    return loss_fn(out, batch, model)["omega"].item()


def test_balance_omega_brings_both_weighted_losses_to_the_same_magnitude():
    lc, ls = 27.8, math.log(2)
    w = _omega_after("balance")
    assert w * lc == pytest.approx((1 - w) * ls, rel=0.02)            # ω·L_circle = (1 − ω)·L_seg
    assert w == pytest.approx(ls / (lc + ls), rel=0.02)
    assert _omega_after("fixed") == 0.5                                 # half the plain sum: 40× apart
    assert _omega_after("descent") < 0.5 * ls / (lc + ls)               # gradient on L overshoots to 0


def test_ablations_build_and_omit_the_right_parts():
    parts = {}
    for mid in IDS:
        _, model, loss_fn, _ = _build(mid)
        terms = loss_fn(model(_batch().images), _batch(), model)
        parts[mid] = (model.rmac_conv is not None, model.fpn is not None, sorted(terms))
        names = {n.split(".")[0] for n, _ in model.named_parameters()}
        assert ("fpn" in names) == parts[mid][1] and ("rmac_conv" in names) == parts[mid][0]
    assert parts["ynet"] == (True, True, ["circle", "loss", "omega", "omega_target", "seg"])
    assert parts["ynet-no-fpn"] == (True, False, ["circle", "loss"])
    assert parts["ynet-no-rmac"] == (False, True, ["loss", "seg"])
    assert parts["ynet-ce"] == (True, True, ["ce", "loss", "omega", "omega_target", "seg"])
    # pairwise circle form has no classifier; ynet-ce's CE equals F.cross_entropy on its logits
    _, model, _, _ = _build("ynet", circle_form="pairwise")
    assert model.classifier is None
    _, model, loss_fn, _ = _build("ynet-ce", omega=1.0, omega_mode="fixed")
    model.eval()
    b = _batch()
    out = model(b.images)
    assert loss_fn(out, b, model)["loss"].item() == pytest.approx(
        F.cross_entropy(out["logits"], b.targets).item(), rel=1e-6)


def test_every_parameter_gets_a_gradient():
    """No unused parameter (DistributedDataParallel would fail on one)."""
    for mid, extra in [("ynet", {}), ("ynet", {"omega_mode": "descent"}), ("ynet", {"circle_form": "pairwise"}),
                       ("ynet-no-fpn", {}), ("ynet-no-rmac", {}), ("ynet-ce", {})]:
        _, model, loss_fn, _ = _build(mid, **extra)
        loss_fn(model(_batch().images), _batch(), model)["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (mid, extra, missing)


# ----------------------------------------------------------------------------- hash codes
def test_aggregation_grid_choices():
    assert aggregation_grid(64, 256, 8, 8) == (1, 8, 8)      # the paper's 1x8x8 example
    assert aggregation_grid(36, 256, 8, 8) == (1, 6, 6)      # the paper's 36 bits
    assert aggregation_grid(32, 256, 8, 8) == (1, 4, 8)
    assert aggregation_grid(128, 256, 8, 8) == (2, 8, 8)
    assert aggregation_grid(16, 256, 1, 1) == (16, 1, 1)     # 28 px input: 1x1 core node
    assert aggregation_grid(300, 256, 1, 1) is None


def test_aggregate_is_average_pool_then_tanh():
    core = torch.randn(2, 4, 2, 2)
    got = aggregate(core, (2, 1, 2))          # channels {0,1},{2,3}; rows {0,1}; columns kept
    ref = torch.stack([core[:, 0:2].mean(dim=(1, 2)), core[:, 2:4].mean(dim=(1, 2))], dim=1).flatten(1)
    assert torch.allclose(got, torch.tanh(ref), atol=1e-6)


@pytest.mark.parametrize("channels,size,bits", [(1, 28, 16), (3, 28, 64), (1, 64, 32), (3, 64, 16)])
def test_encode_and_forward_shapes(channels, size, bits):
    torch.manual_seed(size + bits)
    _, model, _, _ = _build("ynet", size=size, channels=channels, bits=bits)
    x = torch.rand(3, channels, size, size)
    out = model(x)
    assert out["seg_logits"].shape == (3, 2, size, size)
    _, model3, _, _ = _build("ynet", size=size, channels=channels, bits=bits, mask_classes=3)
    assert model3(x)["seg_logits"].shape == (3, 3, size, size)    # one logit per mask class
    assert out["logits"].shape == (3, 3) and out["descriptor"].shape == (3, 512)
    model.eval()
    codes = model.encode(x)
    assert codes.shape == (3, bits) and codes.abs().max() <= 1
    assert torch.allclose(codes, aggregate(model.features(x)[3], model.grid))
    assert len(torch.sign(codes).unique()) == 2                # signed core node: both code values occur


def test_too_many_bits_is_a_clear_error():
    with pytest.raises(HashbenchError, match="bits=512.*256x1x1"):
        _build("ynet", size=28, bits=512)


# ----------------------------------------------------------------------------- registry
def test_registry_contract_and_mask_requirement():
    m = get_method("ynet")
    assert m.code_type == "binary" and m.batch_size == 32 and m.requires.masks
    assert set(m.search_space()) == {"omega", "omega_mode", "gamma", "margin", "lr"}
    assert set(m.search_space()["omega_mode"].search) == {"balance", "fixed"}     # learned vs fixed ω
    assert (m.defaults()["gamma"], m.defaults()["margin"], m.defaults()["omega"]) == (32.0, 0.25, 0.5)
    assert set(get_method("ynet-ce").search_space()) == {"omega", "omega_mode", "lr"}
    assert set(get_method("ynet-no-fpn").search_space()) == {"gamma", "margin", "lr"}
    for mid in ("ynet", "ynet-no-rmac", "ynet-ce"):
        with pytest.raises(HashbenchError, match=f"'{mid}' needs segmentation masks.*pneumoniamnist"):
            check_requirements(get_method(mid), has_masks=False, multi_label=False, image_size=28,
                               dataset="pneumoniamnist")
    check_requirements(get_method("ynet-no-fpn"), has_masks=False, multi_label=False, image_size=28)
    _, model, _, hp = _build("ynet")
    opt = m.build_optimizer(model.parameters(), hp)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and (group["momentum"], group["weight_decay"]) == (0.9, 1e-3)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("method_id,extra", [
    ("ynet", {}), ("ynet", {"omega_mode": "descent", "circle_form": "pairwise"}), ("ynet", {"omega_mode": "fixed"}),
    ("ynet-no-fpn", {}), ("ynet-no-rmac", {}), ("ynet-ce", {})])
def test_a_few_steps_reduce_the_loss(method_id, extra):
    torch.manual_seed(0)
    m, model, loss_fn, hp = _build(method_id, **extra)
    opt = m.build_optimizer(model.parameters(), hp)
    batch = _batch()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn(model(batch.images), batch, model)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ----------------------------------------------------------------------------- multi-class masks
@pytest.mark.timeout(120)
def test_three_class_mask_store_trains_through_the_loop(tmp_path):
    """A synthetic Fundus-like store (background 0, disc 1, cup 2): the store's mask_classes (3) reaches
    the model through the training loop; the FPN predicts 3 logits per pixel."""
    from hashbench.platform.data import write_store
    from hashbench.platform.training import TrainConfig, run_local

    rng = np.random.default_rng(0)
    n, size = 24, 16
    images = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        r = 3 + 2 * labels[i]                       # glaucoma: a larger cup inside the disc
        masks[i, 8 - 5:8 + 5, 8 - 5:8 + 5] = 1
        masks[i, 8 - r // 2 - 1:8 + r // 2 + 1, 8 - r // 2 - 1:8 + r // 2 + 1] = 2
        images[i, 0][masks[i] > 0] += 100 + 50 * masks[i][masks[i] > 0].astype(np.uint8)
    split = np.array([0] * 16 + [1] * 4 + [2] * 4)
    ds = write_store(tmp_path / "fundus", images, labels, split, class_names=["normal", "glaucoma"], masks=masks)
    assert ds.mask_classes == 3
    cfg = TrainConfig(method="ynet", dataset=str(ds.path), bits=16, epochs=1, batch_size=8, device="cpu",
                      out_dir=str(tmp_path / "runs"), augment={"enabled": False})
    res = run_local(cfg)
    state = torch.load(f"{res.run_dir}/model.pt", weights_only=True)
    assert state["fpn.predict.weight"].shape[0] == 3
    assert math.isfinite(res.history[-1]["seg"])
