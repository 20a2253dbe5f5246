"""JTANet: mining modes on a hand-built batch, each loss term vs explicit loops, shapes at several sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hashbench.methods.jtanet import JTANet, JTANetLoss, loss_weights, mine_triplets
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method


def _circle(degrees):
    t = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1)


def _onehot(targets, c=None):
    t = torch.as_tensor(targets)
    return F.one_hot(t, c or int(t.max()) + 1).float()


# Hand-built batch on the unit circle (squared distance = 2 − 2cos Δθ), margin 0.5.
# Anchor A = 0°, positive P = 90°: d(A,P) = 2. Negatives of class 1 and their scores d(A,P) − d(A,N) + 0.5:
#   N1 = 30°:  d = 2 − √3 ≈ 0.268 → score 2.232 (hard)
#   N2 = 60°:  d = 1              → score 1.5
#   N3 = 150°: d = 2 + √3         → score −1.232 (never chosen)
#   N4 = acos(−0.1): d = 2.2      → score 0.3 (the only semi-hard one)
ANGLES = [0.0, 90.0, 30.0, 60.0, 150.0, math.degrees(math.acos(-0.1))]


def _hand_batch():
    f = _circle(ANGLES)
    labels = _onehot([0, 0, 1, 1, 1, 1])
    return f, labels


def _row(a, p, n, anchor=0, positive=1):
    sel = (a == anchor) & (p == positive)
    return n[sel].tolist()


def test_hard_picks_the_largest_score():
    f, labels = _hand_batch()
    a, p, n = mine_triplets(f, labels, 0.5, "hard")
    assert _row(a, p, n) == [2]


def test_semihard_picks_the_only_negative_inside_the_margin():
    f, labels = _hand_batch()
    for seed in range(5):
        a, p, n = mine_triplets(f, labels, 0.5, "semihard", torch.Generator().manual_seed(seed))
        assert _row(a, p, n) == [5]


def test_random_hard_picks_each_positive_score_negative_and_nothing_else():
    f, labels = _hand_batch()
    seen = set()
    for seed in range(40):
        a, p, n = mine_triplets(f, labels, 0.5, "random-hard", torch.Generator().manual_seed(seed))
        seen.update(_row(a, p, n))
    assert seen == {2, 3, 5}


def _reference_candidates(f, labels, margin, mode):
    """Explicit loops: {(a, p): [allowed negatives]} and the hard choice per pair."""
    b = len(f)
    d = [[float(((f[i] - f[j]) ** 2).sum()) for j in range(b)] for i in range(b)]
    share = [[bool((labels[i] * labels[j]).sum() > 0) for j in range(b)] for i in range(b)]
    out = {}
    for i in range(b):
        for j in range(i + 1, b):
            if not share[i][j]:
                continue
            scores = {k: d[i][j] - d[i][k] + margin for k in range(b) if not share[i][k]}
            if mode == "hard":
                if scores and max(scores.values()) > 0:
                    best = max(scores.values())
                    out[(i, j)] = [min(k for k, s in scores.items() if s == best)]
            else:
                ok = [k for k, s in scores.items() if s > 0 and (mode == "random-hard" or s < margin)]
                if ok:
                    out[(i, j)] = ok
    return out


@pytest.mark.parametrize("mode", ["hard", "semihard", "random-hard"])
def test_mining_matches_a_brute_force_loop(mode):
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(14, 5, generator=g, dtype=torch.float64), dim=1)
    labels = _onehot(torch.randint(0, 3, (14,), generator=g), 3)
    labels[0, 2] = 1  # one multi-label sample: shares a label with classes 0 and 2
    ref = _reference_candidates(f, labels, 0.5, mode)
    a, p, n = mine_triplets(f, labels, 0.5, mode, torch.Generator().manual_seed(0))
    got = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n)}
    assert set(got) == set(ref)
    for pair, k in got.items():
        assert k in ref[pair]


def test_mining_with_one_class_gives_no_triplet():
    f = F.normalize(torch.randn(4, 3), dim=1)
    a, p, n = mine_triplets(f, _onehot([1, 1, 1, 1]), 0.5, "hard")
    assert a.numel() == p.numel() == n.numel() == 0


def _out(latent, recon):
    return {"latent": latent, "feature": F.normalize(latent, dim=1), "recon": recon}


def test_autoencoder_and_feature_terms_hand_values():
    latent = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.ones(2, 1, 2, 2)
    recon = torch.zeros(2, 1, 2, 2)
    recon[0, 0, 0, 0] = 1.0  # image 0: 3 of 4 pixels wrong → 0.75; image 1: all wrong → 1
    batch = Batch(images=x, labels=_onehot([0, 0]), targets=torch.tensor([0, 0]))
    res = JTANetLoss(1, 1, 1, 0.5, "hard")(_out(latent, recon), batch)
    assert res["ae"].item() == pytest.approx((0.75 + 1.0) / 2)
    # the paper's L_FR: "calculating the L2-Norm of feature vector F_i", averaged over the batch:
    # ‖(1, 2)‖ = √5, ‖(3, 4)‖ = 5
    assert res["fr"].item() == pytest.approx((math.sqrt(5) + 5) / 2)
    assert res["sm"].item() == 0.0  # one class: no triplet
    assert res["loss"].item() == pytest.approx(0.875 + (math.sqrt(5) + 5) / 2)
    old = JTANetLoss(1, 1, 1, 0.5, "hard", fr_form="mean-square")(_out(latent, recon), batch)
    assert old["fr"].item() == pytest.approx((1 + 4 + 9 + 16) / 4)  # (1/B) Σ (1/dim)‖F_i‖²


def test_feature_regularisation_is_the_l2_norm_of_f_i_with_its_gradient():
    """Paper, Sec. II: L_FR is computed by "calculating the L2-Norm of feature vector F_i"; its gradient
    per image is F_i / ‖F_i‖ / B (unit length), not the 2 F_i / (dim·B) of the mean square."""
    latent = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], requires_grad=True)
    batch = Batch(images=torch.zeros(2, 1, 2, 2), labels=_onehot([0, 0]), targets=torch.tensor([0, 0]))
    res = JTANetLoss(0, 0, 1, 0.5, "hard")(_out(latent, torch.zeros(2, 1, 2, 2)), batch)
    assert res["loss"].item() == pytest.approx((5 + 2) / 2)
    res["loss"].backward()
    expected = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) / 2
    torch.testing.assert_close(latent.grad, expected)
    with pytest.raises(ValueError, match="fr_form"):
        JTANetLoss(1, 1, 1, 0.5, "hard", fr_form="l1")


def test_siamese_term_and_total_vs_loops():
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(10, 6, generator=g, dtype=torch.float64)
    x = torch.rand(10, 1, 3, 3, generator=g, dtype=torch.float64)
    recon = torch.rand(10, 1, 3, 3, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    batch = Batch(images=x, labels=_onehot(targets), targets=targets)
    lam = (0.7, 2.0, 0.3)
    res = JTANetLoss(*lam, 0.5, "hard")(_out(latent, recon), batch)
    f = F.normalize(latent, dim=1)
    triplets = [(i, j, k[0]) for (i, j), k in _reference_candidates(f, batch.labels, 0.5, "hard").items()]
    assert triplets
    intra = sum(float(((f[i] - f[j]) ** 2).sum()) for i, j, _ in triplets) / len(triplets)
    inter = sum(float(((f[i] - f[k]) ** 2).sum()) for i, _, k in triplets) / len(triplets)
    hinge = sum(max(0.0, float(((f[i] - f[j]) ** 2).sum() - ((f[i] - f[k]) ** 2).sum()) + 0.5)
                for i, j, k in triplets) / len(triplets)
    ae = sum(float(((x[i] - recon[i]) ** 2).mean()) for i in range(10)) / 10
    fr = sum(math.sqrt(sum(float(v) ** 2 for v in latent[i])) for i in range(10)) / 10
    assert res["sm_intra"].item() == pytest.approx(intra)
    assert res["sm_inter"].item() == pytest.approx(inter)
    assert res["sm"].item() == pytest.approx(max(0.0, intra - inter + 0.5))
    assert res["sm"].item() == pytest.approx(hinge)  # same as the per-triplet hinge (all scores > 0)
    assert res["loss"].item() == pytest.approx(lam[0] * ae + lam[1] * hinge + lam[2] * fr)
    assert res["triplets"].item() == len(triplets)


def test_siamese_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    latent = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    batch = Batch(images=torch.zeros(8, 1, 2, 2, dtype=torch.float64), labels=_onehot(targets), targets=targets)
    loss = JTANetLoss(0.0, 1.0, 0.5, 0.5, "hard")

    def fn(z):
        return loss(_out(z, torch.zeros(8, 1, 2, 2, dtype=torch.float64)), batch)["loss"]

    assert fn(latent).item() > 0
    assert torch.autograd.gradcheck(fn, (latent,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3), (45, 1)])
def test_network_shapes_and_layer_counts(size, channels):
    ctx = ModelContext(in_channels=channels, image_size=size, num_classes=2, bits=12)
    net = JTANet(ctx)
    x = torch.rand(3, channels, size, size)
    out = net(x)
    assert out["recon"].shape == x.shape
    assert out["recon"].min() >= 0 and out["recon"].max() <= 1
    assert out["latent"].shape == (3, 12)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.encoder.modules()) == 7
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.decoder.modules()) == 7
    net.eval()
    code = net.encode(x)
    assert torch.allclose(code.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (code < 0).any() and (code > 0).any()  # the latent keeps its sign: sign codes are informative


def test_registered_defaults_and_bad_values():
    m = get_method("jtanet")
    hp = m.defaults()
    assert (hp["weights"], hp["margin"], hp["fr_form"]) == ("1-1-1", 0.5, "l2norm")
    assert (hp["lambda_ae"], hp["lambda_sm"], hp["lambda_fr"]) == (1.0, 1.0, 1.0)
    assert m.batch_size == 256 and m.code_type == "float" and m.distance == "l2"
    assert set(m.search_space()) == {"weights", "margin", "mining"}
    with pytest.raises(HashbenchError, match="mining"):
        m.resolve({"mining": "hardest"})
    with pytest.raises(HashbenchError, match="lambda_ae"):
        m.resolve({"lambda_ae": -1})
    with pytest.raises(HashbenchError, match="weights"):
        m.resolve({"weights": "2-2-2"})
    with pytest.raises(HashbenchError, match="fr_form"):
        m.resolve({"fr_form": "l1"})


def test_weight_search_space_is_the_papers_grid_with_zero_weights():
    """Paper, Sec. V (Table 3): AE:SM:FR = 1:1:1, 5:1:1, 1:5:1, 1:1:5, 10:1:1, 1:10:1, 1:1:10, 0:1:1, 1:0:1
    and 1:1:0. The sweep explores exactly these as one categorical dimension (zeros reachable)."""
    from hashbench.platform.sweep.config import _default_dims

    paper = [(1, 1, 1), (5, 1, 1), (1, 5, 1), (1, 1, 5), (10, 1, 1), (1, 10, 1), (1, 1, 10), (0, 1, 1),
             (1, 0, 1), (1, 1, 0)]
    m = get_method("jtanet")
    dim = _default_dims(m)["weights"]
    assert dim.type == "choice"
    got = [loss_weights(m.resolve({"weights": c})) for c in dim.choices]
    assert got == [tuple(float(v) for v in w) for w in paper]
    # the multipliers scale single terms beyond the grid
    assert loss_weights(m.resolve({"weights": "1-5-1", "lambda_fr": 0.5})) == (1.0, 5.0, 0.5)


def test_zero_weights_drop_their_terms():
    g = torch.Generator().manual_seed(4)
    latent = torch.randn(8, 4, generator=g, dtype=torch.float64)
    x = torch.rand(8, 1, 2, 2, generator=g, dtype=torch.float64)
    recon = torch.rand(8, 1, 2, 2, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    batch = Batch(images=x, labels=_onehot(targets), targets=targets)
    m = get_method("jtanet")
    ctx = ModelContext(in_channels=1, image_size=2, num_classes=3, bits=4)
    full = m.build_loss(ctx, m.resolve({"mining": "hard"}))(_out(latent, recon), batch)
    assert full["sm"].item() > 0
    for grid, keep in (("0-1-1", ("sm", "fr")), ("1-0-1", ("ae", "fr")), ("1-1-0", ("ae", "sm"))):
        res = m.build_loss(ctx, m.resolve({"weights": grid, "mining": "hard"}))(_out(latent, recon), batch)
        assert res["loss"].item() == pytest.approx(sum(full[k].item() for k in keep))


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = get_method("jtanet")
    hp = m.defaults()
    ctx = ModelContext(in_channels=1, image_size=16, num_classes=2, bits=8)
    model, loss = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    opt = m.build_optimizer(model.parameters(), hp)
    targets = torch.arange(16) % 2
    x = torch.rand(16, 1, 16, 16) * 0.2 + targets.view(-1, 1, 1, 1) * 0.6
    batch = Batch(images=x, labels=_onehot(targets), targets=targets)
    values = []
    for _ in range(15):
        res = loss(model(x), batch)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        values.append(res["loss"].item())
    assert values[-1] < values[0]
