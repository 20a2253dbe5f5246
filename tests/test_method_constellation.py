"""Constellation family: every loss vs a direct loop over its formula, hand values, PML as a reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hashbench.methods._embedding_net import EmbeddingNet, ResNet, load_weights
from hashbench.methods.constellation import (ContrastiveLoss, NPairLoss, TripletLoss, constellation_loss,
                                             contrastive_loss, npair_loss, npair_tuples, sample_constellations,
                                             triplet_loss)
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method


def _batch(targets):
    t = torch.as_tensor(targets)
    return Batch(images=None, labels=F.one_hot(t).float(), targets=t)


def _emb(n, d=6, seed=0, normalize=True):
    f = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.normalize(f, dim=1) if normalize else f


# ---------------------------------------------------------------- constellation

def test_constellation_hand_value():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # anchor 0, positive 1 (f_aᵀf_p = 1), negatives 2 (0) and 3 (1): log(1 + e^{-1} + e^{0})
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[0, 1] = True
    negatives = torch.zeros(4, 4, 2, dtype=torch.long)
    negatives[0, 1] = torch.tensor([2, 3])
    loss = constellation_loss(f, valid, negatives)
    assert loss.item() == pytest.approx(math.log(2 + math.exp(-1)))


def test_constellation_matches_a_loop_over_eq4():
    f = _emb(12, seed=1)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    valid, n = sample_constellations(targets, 3, 4, torch.Generator().manual_seed(0))
    ref, count = 0.0, 0
    for a in range(12):
        for p in range(12):
            if a != p and targets[a] == targets[p]:
                s = sum(math.exp(float(f[a] @ f[n[a, p, j]] - f[a] @ f[p])) for j in range(3))
                ref += math.log(1 + s)
                count += 1
    assert count == 4 * 6
    assert constellation_loss(f, valid, n).item() == pytest.approx(ref / count)


def test_constellation_value_equals_the_previous_sampler_on_a_fixed_batch():
    """Class 0 has three members, classes 1-3 one each, K = 3: every pair's negatives are the three
    singletons, so the draw is fixed. 1.404095168966871 is what the previous implementation (index lists
    from nonzero/unique, commit c235c77) gave on this batch; a loop over eq. (4) gives it too."""
    g = torch.Generator().manual_seed(5)
    f = F.normalize(torch.rand(6, 5, generator=g, dtype=torch.float64), dim=1)
    targets = torch.tensor([0, 0, 1, 2, 3, 0])
    members = [0, 1, 5]
    ref = [math.log(1 + sum(math.exp(float(f[a] @ f[x] - f[a] @ f[p])) for x in (2, 3, 4)))
           for a in members for p in members if a != p]
    assert sum(ref) / 6 == pytest.approx(1.404095168966871, abs=1e-12)
    for seed in range(3):
        valid, n = sample_constellations(targets, 3, 4, torch.Generator().manual_seed(seed))
        assert constellation_loss(f, valid, n).item() == pytest.approx(1.404095168966871, abs=1e-12)


def test_constellation_sampling_uses_k_distinct_other_classes():
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0])
    for seed in range(5):
        valid, n = sample_constellations(targets, 3, 6, torch.Generator().manual_seed(seed))
        # every ordered anchor-positive pair once: class 0 has 3 samples (6 pairs), the others 2 each
        assert int(valid.sum()) == 6 + 4 * 2
        assert {(int(a), int(p)) for a, p in valid.nonzero()} == {(i, j) for i in range(11) for j in range(11)
                                                                  if i != j and targets[i] == targets[j]}
        for a, p in valid.nonzero().tolist():
            neg_classes = targets[n[a, p]].tolist()
            assert len(set(neg_classes)) == 3 and int(targets[a]) not in neg_classes


def test_constellation_sampling_draws_each_class_member_and_class():
    """Over many draws every other class and every member of it appears as a negative (uniform draws)."""
    targets = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    seen = set()
    for seed in range(30):
        _, n = sample_constellations(targets, 2, 4, torch.Generator().manual_seed(seed))
        seen |= set(n[0, 1].tolist())
    assert seen == {2, 3, 4, 5, 6}


def test_constellation_sampling_cycles_when_fewer_classes_than_k():
    targets = torch.tensor([0, 0, 0, 1, 1, 1])
    valid, n = sample_constellations(targets, 4, 2, torch.Generator().manual_seed(0))
    assert int(valid.sum()) == 12 and n.shape == (6, 6, 4)
    for a, p in valid.nonzero().tolist():
        assert bool((targets[n[a, p]] != targets[a]).all())
    one, _ = sample_constellations(torch.tensor([2, 2, 2]), 3, 3)
    assert not one.any()


def _ctx(classes):
    return ModelContext(in_channels=1, image_size=8, num_classes=classes, bits=4)


def test_constellation_loss_module_on_one_class_is_zero_with_grad():
    f = _emb(4).requires_grad_()
    res = get_method("constellation").build_loss(_ctx(4), {"K": 3})({"embedding": f}, _batch([1, 1, 1, 1]))
    res["loss"].backward()
    assert res["loss"].item() == 0.0 and f.grad is not None


def test_k_must_be_below_the_number_of_classes():
    """Eq. (4) takes K negatives "from K different classes" other than the anchor's: K <= classes - 1."""
    m = get_method("constellation")
    with pytest.raises(HashbenchError, match=r"'K' = 2: .* K must lie in \[1, 1\] for the 2 classes"):
        m.build_loss(_ctx(2), m.resolve({"K": 2}))
    with pytest.raises(HashbenchError, match=r"'K' = 3: .* \[1, 2\] for the 3 classes"):
        m.build_loss(_ctx(3), m.resolve())                               # the default K = 3
    with pytest.raises(HashbenchError, match="at least 2 classes"):
        m.build_loss(_ctx(1), m.resolve({"K": 1}))
    assert m.build_loss(_ctx(2), m.resolve({"K": 1})).k == 1
    assert m.build_loss(_ctx(8), m.resolve({"K": 7})).k == 7


@pytest.mark.parametrize("counts,batch,world,spc,per_class", [
    ([300, 200], 40, 1, 4, {20}),                  # 2 classes: 2 x 20, not 2 x 4 = 8
    ([60] * 3, 40, 2, 4, {6, 7}),                  # 3 classes, 20 per worker: 7 + 7 + 6
    ([50] * 13, 40, 1, 3, {3, 4}),                 # 13 classes x 3 = 39, one class gets a 4th item
    ([50] * 12, 40, 1, 4, {4}),                    # the paper's case: 10 classes x 4
])
def test_few_class_batches_are_filled_to_the_batch_size(counts, batch, world, spc, per_class):
    from hashbench.platform.training.batches import class_balanced_plan

    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    plan = class_balanced_plan(targets, batch, world, spc, torch.Generator().manual_seed(0))
    assert plan.shape[1:] == (world, batch // world)
    for s in range(plan.shape[0]):
        for w in range(world):
            rows = plan[s, w].tolist()
            assert len(set(rows)) == len(rows)                          # no item twice in a batch
            per = {}
            for r in rows:
                per[int(targets[r])] = per.get(int(targets[r]), 0) + 1
            assert set(per.values()) <= per_class and min(per.values()) >= spc
            assert len(per) == min((batch // world) // spc, len(counts))


def test_batches_never_repeat_an_item_when_classes_are_tiny():
    from hashbench.platform.training.batches import class_balanced_plan

    targets = torch.tensor([0] * 4 + [1] * 5 + [2] * 6)                 # 15 items, batch 40
    plan = class_balanced_plan(targets, 40, 1, 4, torch.Generator().manual_seed(0))
    assert plan.shape == (1, 1, 12)                                     # 3 classes x 4 (the smallest class)
    assert len(set(plan.flatten().tolist())) == 12


# ---------------------------------------------------------------- triplet

def _triplet_reference(f, targets, margin):
    terms = []
    for a in range(len(f)):
        for p in range(len(f)):
            if p == a or targets[p] != targets[a]:
                continue
            for n in range(len(f)):
                if targets[n] == targets[a]:
                    continue
                t = float(((f[a] - f[p]) ** 2).sum() - ((f[a] - f[n]) ** 2).sum()) + margin
                terms.append(max(0.0, t))
    positive = [t for t in terms if t > 0]
    return sum(positive) / len(positive) if positive else 0.0


def test_triplet_hand_value():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    # a=0,p=1: 1 − 0.25 + 0.2 = 0.95; a=1,p=0: 1 − 1.25 + 0.2 = −0.05 → only 0.95 is active
    loss = TripletLoss(0.2)({"embedding": f}, _batch([0, 0, 1]))["loss"]
    assert loss.item() == pytest.approx(0.95)


def test_triplet_hand_value_and_gradient_in_one_dimension():
    """x = 0, 1 (class 0) and 0.5, 3 (class 1), α = 0.5; term(a,p,n) = (x_a−x_p)² − (x_a−x_n)² + α.

    (0,1,2): 1 − 0.25 + .5 = 1.25   (0,1,3): 1 − 9 + .5 < 0    (1,0,2): 1 − 0.25 + .5 = 1.25
    (1,0,3): 1 − 4 + .5 < 0         (2,3,0): 6.25 − 0.25 + .5 = 6.5   (2,3,1): 6.25 − 0.25 + .5 = 6.5
    (3,2,0): 6.25 − 9 + .5 < 0      (3,2,1): 6.25 − 4 + .5 = 2.75
    N = 5 positive terms: L = (1.25 + 1.25 + 6.5 + 6.5 + 2.75) / 5 = 3.65.
    dL/dx_0 = (2(x0−x1) − 2(x0−x2) [a of (0,1,2)] − 2(x1−x0) [p of (1,0,2)] + 2(x2−x0) [n of (2,3,0)]) / 5
            = (−1 − 2 + 1) / 5 = −0.4; likewise dL/dx = (−0.4, 1.2, −3, 2.2) (sums to 0: a shift of all
    points changes no distance).
    """
    f = torch.tensor([[0.0], [1.0], [0.5], [3.0]], dtype=torch.float64, requires_grad=True)
    loss = triplet_loss(f, torch.tensor([0, 0, 1, 1]), 0.5)
    loss.backward()
    assert loss.item() == pytest.approx(3.65, abs=1e-12)
    assert f.grad.flatten().tolist() == pytest.approx([-0.4, 1.2, -3.0, 2.2], abs=1e-12)


@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_eq2_with_positive_loss_mining(margin):
    f = _emb(10, seed=2)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    loss = TripletLoss(margin)({"embedding": f}, _batch(targets))["loss"]
    assert loss.item() == pytest.approx(_triplet_reference(f, targets, margin), rel=1e-6)


def _triplet_targets(kind, seed):
    g = torch.Generator().manual_seed(100 + seed)
    if kind == "balanced":                                   # the sampler's batch 40 on 8 classes: 8 x 5
        t = torch.arange(8).repeat_interleave(5)
    elif kind == "unbalanced":                               # 40 items: 20 / 10 / 6 / 3 / 1
        t = torch.tensor([0] * 20 + [1] * 10 + [2] * 6 + [3] * 3 + [4])
    else:                                                    # small (cdist's direct path, < 25 rows): 12 items
        t = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    return t[torch.randperm(len(t), generator=g)]


def _triplet_both(f, targets, margin):
    """(loss, gradient) of the native loss and of pytorch-metric-learning's TripletMarginLoss."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import LpDistance

    pml = pml_losses.TripletMarginLoss(margin=margin, distance=LpDistance(p=2, power=2, normalize_embeddings=False))
    out = []
    for fn in (lambda x: triplet_loss(x, targets, margin), lambda x: pml(x, targets)):
        x = f.clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        out.append((loss.detach(), x.grad))
    return out


@pytest.mark.parametrize("kind", ["balanced", "unbalanced", "small"])
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_equals_pytorch_metric_learning(kind, margin, seed):
    """The native loss is pml's TripletMarginLoss + LpDistance(p=2, power=2, unnormalised) + its default
    AvgNonZeroReducer (the previous implementation): value and gradient, float32 as in training."""
    targets = _triplet_targets(kind, seed)
    f = F.normalize(torch.rand(len(targets), 32, generator=torch.Generator().manual_seed(seed)), dim=1)
    (ours, g_ours), (ref, g_ref) = _triplet_both(f, targets, margin)
    assert ours > 0 and ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g_ours, g_ref, rtol=0, atol=1e-6) and g_ref.abs().max() > 1e-3


@pytest.mark.parametrize("targets", [[0, 0, 0, 1, 1, 1, 2, 2], [4] * 8], ids=["all-satisfied", "one-class"])
def test_triplet_without_positive_terms_is_zero_with_zero_gradient(targets):
    """No positive term: well-separated classes at margin 0 (every d²_ap < d²_an), or a one-class batch
    (no triplet at all). pml gives ``sum(embeddings * 0)``; the native loss 0 / max(N, 1)."""
    targets = torch.tensor(targets)
    g = torch.Generator().manual_seed(7)
    f = F.one_hot(targets % 4, 4).float() + 0.01 * torch.rand(8, 4, generator=g)
    (ours, g_ours), (ref, g_ref) = _triplet_both(f, targets, 0.0)
    assert ours.item() == 0.0 and ref.item() == 0.0
    assert torch.equal(g_ours, torch.zeros_like(f)) and torch.equal(g_ref, torch.zeros_like(f))


def test_triplet_loss_traces_as_one_graph_without_host_syncs():
    """The step may be a CUDA graph only if the loss has no data-dependent shape or host read
    (``nonzero``, boolean indexing, ``.item()``, ``bool()``): TorchDynamo with ``fullgraph=True`` refuses
    exactly those. pml's TripletMarginLoss (torch.where on the triplet mask, ``losses[losses > 0]``)
    fails this check; the registration relies on it."""
    import torch._dynamo

    torch._dynamo.reset()
    fn = torch.compile(triplet_loss, backend="eager", fullgraph=True, dynamic=False)
    f, targets = _emb(6, seed=3), torch.tensor([0, 0, 1, 1, 2, 2])
    assert fn(f, targets, 0.2).item() == pytest.approx(_triplet_reference(f, targets, 0.2))
    assert get_method("triplet").graph_safe(get_method("triplet").defaults())


# ---------------------------------------------------------------- N-pair

def _npair_reference(f, targets):
    """Eq. 3 per tuple by loops: pair r of class c = (r-th even, next odd) sample of c in batch order."""
    members = {}
    for i, t in enumerate(targets.tolist()):
        members.setdefault(t, []).append(i)
    tuples = {}
    for c, idx in members.items():
        for r in range(len(idx) // 2):
            tuples.setdefault(r, []).append((idx[2 * r], idx[2 * r + 1]))
    terms = []
    for pairs in tuples.values():
        if len(pairs) < 2:
            continue
        for i, (a, p) in enumerate(pairs):
            s = sum(math.exp(float(f[a] @ f[pj] - f[a] @ f[p])) for j, (_, pj) in enumerate(pairs) if j != i)
            terms.append(math.log(1 + s))
    return sum(terms) / len(terms)


def test_npair_hand_value():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    # pairs (0,1) and (2,3): a0·p1=1, a0·p3=0 → log(1+e^{-1}); a2·p3=2, a2·p1=0 → log(1+e^{-2})
    a, p, t = npair_tuples(torch.tensor([0, 0, 1, 1]))
    expect = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert npair_loss(f, a, p, t).item() == pytest.approx(expect)
    reg = 0.25 * 0.1 * ((1 + 1) / 2 + (1 + 4) / 2)  # 0.25·λ·(mean‖f_a‖² + mean‖f_p‖²)
    assert npair_loss(f, a, p, t, 0.1).item() == pytest.approx(expect + reg)


def test_npair_matches_a_loop_over_eq3_with_several_tuples():
    targets = torch.tensor([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1, 3])
    f = _emb(13, seed=3, normalize=False)
    a, p, t = npair_tuples(targets)
    assert npair_loss(f, a, p, t).item() == pytest.approx(_npair_reference(f, targets))


def test_npair_matches_pytorch_metric_learning_on_one_tuple():
    NPairsLoss = pytest.importorskip("pytorch_metric_learning.losses").NPairsLoss
    from pytorch_metric_learning.distances import DotProductSimilarity

    targets = torch.tensor([3, 1, 0, 1, 2, 0, 3, 2])  # two samples per class: one N-pair tuple
    f = _emb(8, seed=4, normalize=False)
    ours = NPairLoss(0.0)({"embedding": f}, _batch(targets))["loss"]
    # PML normalises embeddings by default; eq. 3 (and the paper's N-pair network) does not
    pml = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    assert ours.item() == pytest.approx(pml(f, targets).item())


# ---------------------------------------------------------------- contrastive

def test_contrastive_hand_value():
    f = torch.tensor([[0.0, 0.0], [0.6, 0.0], [0.0, 0.8]])
    # pairs: (0,1) same, d=0.6 → 0.36; (0,2) diff, d=0.8 → (1−0.8)² = 0.04; (1,2) diff, d=1 → 0
    assert contrastive_loss(f, torch.tensor([0, 0, 1]), 1.0).item() == pytest.approx((0.36 + 0.04) / 6)


def test_contrastive_matches_a_loop_over_eq1():
    f = _emb(9, seed=5)
    targets = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3])
    ref, n = 0.0, 0
    for i in range(9):
        for j in range(i + 1, 9):
            d = math.sqrt(float(((f[i] - f[j]) ** 2).sum()))
            y = float(targets[i] != targets[j])
            ref += (1 - y) * d ** 2 + y * max(0.0, 0.7 - d) ** 2
            n += 1
    loss = ContrastiveLoss(0.7)({"embedding": f}, _batch(targets))["loss"]
    assert loss.item() == pytest.approx(ref / (2 * n))


def test_contrastive_gradient_is_finite_for_coincident_negatives():
    f = torch.tensor([[0.5, 0.5], [0.5, 0.5]], requires_grad=True)
    contrastive_loss(f, torch.tensor([0, 1]), 1.0).backward()
    assert torch.isfinite(f.grad).all()


# ---------------------------------------------------------------- network and registration

def test_embedding_is_sigmoid_then_l2_normalised_except_npair():
    ctx = ModelContext(in_channels=1, image_size=28, num_classes=3, bits=16)
    x = torch.rand(4, 1, 28, 28)
    net = EmbeddingNet(ctx, "resnet18", 8, normalize=True).eval()
    e = net.encode(x)
    assert e.shape == (4, 16) and (e > 0).all()
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    raw = torch.sigmoid(net.embedding(net.backbone(x)))
    assert torch.allclose(e, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)
    npair = get_method("npair").build_model(ctx, get_method("npair").resolve({"arch": "resnet18", "width": 8}))
    assert torch.allclose(npair.eval().encode(x), torch.sigmoid(npair.embedding(npair.backbone(x))))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_local_weights_load_with_torchvision_names_and_grey_conv1(tmp_path, arch):
    src = ResNet(arch, 3, 8)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, src.out_dim)  # classifier head: ignored
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    assert "layer1.0.conv1.weight" in src.state_dict() and "layer2.0.downsample.0.weight" in src.state_dict()
    rgb = ResNet(arch, 3, 8)
    load_weights(rgb, str(path))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(rgb.eval()(x), src.eval()(x))
    grey = ResNet(arch, 1, 8)
    load_weights(grey, str(path))
    assert torch.allclose(grey.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))


def test_bad_weights_files_are_user_errors(tmp_path):
    with pytest.raises(HashbenchError, match="does not exist"):
        load_weights(ResNet("resnet18", 3, 8), str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HashbenchError, match="cannot read"):
        load_weights(ResNet("resnet18", 3, 8), str(tmp_path / "junk.pt"))
    torch.save(ResNet("resnet18", 3, 8).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(HashbenchError, match="does not fit"):
        load_weights(ResNet("resnet50", 3, 8), str(tmp_path / "r18.pt"))


def test_registered_family():
    for mid, space in [("constellation", {"K", "spc"}), ("triplet", {"margin", "spc"}),
                       ("npair", {"spc"}), ("contrastive", {"margin", "spc"})]:
        m = get_method(mid)
        assert set(m.search_space()) == space
        assert m.sampler == "class-balanced" and m.code_type == "float" and m.distance == "l2"
        hp = m.defaults()
        assert hp["lr"] == 1e-4 and hp["arch"] == "resnet50"
        with pytest.raises(HashbenchError, match="spc"):
            m.resolve({"spc": 1})
    assert get_method("constellation").defaults()["K"] == 3
    assert get_method("contrastive").defaults()["margin"] == 1.0
    with pytest.raises(HashbenchError, match="weights"):
        get_method("triplet").resolve({"weights": 3})
