"""DRH family (drh, dph, drh-nq, drh-nb): each loss term against independent references,
gradients, the network, registration and a few optimisation steps."""

from __future__ import annotations

import math

import pytest
import torch

from hashbench.methods import drh
from hashbench.methods._resnet import BasicBlock
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method

IDS = ("drh", "dph", "drh-nq")   # drh-nb is drh's float readout (tests/test_storage_protocol.py)


def _multi_hot(classes, num_classes):
    y = torch.zeros(len(classes), num_classes, dtype=torch.float64)
    for i, cs in enumerate(classes):
        for c in (cs if isinstance(cs, (list, tuple)) else [cs]):
            y[i, c] = 1.0
    return y


def _ref_retrieval(h, y):
    """J_S with explicit loops over pairs (eq. 1, 2 relaxed)."""
    n = len(h)
    d2 = [[sum((h[i][k] - h[j][k]) ** 2 for k in range(len(h[i]))) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        z = sum(math.exp(-d2[i][l]) for l in range(n) if l != i)
        for j in range(n):
            s = 1.0 if j != i and any(a > 0 and b > 0 for a, b in zip(y[i], y[j])) else 0.0
            if j != i:
                total += math.exp(-d2[i][j]) / z * s
    return 1.0 - total / n


# ---------------------------------------------------------------- J_S

def test_retrieval_loss_hand_value():
    # 1-bit codes 0, 0, 1; labels a, a, b: d(0,1) = 0, d(0,2) = d(1,2) = 1
    h = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    y = _multi_hot([0, 0, 1], 2)
    p01 = 1.0 / (1.0 + math.exp(-1.0))        # rows 0 and 1: the similar neighbour at distance 0
    expected = 1.0 - (2 * p01 + 0.0) / 3.0     # row 2 has no similar item
    assert drh.retrieval_loss(h, y).item() == pytest.approx(expected, abs=1e-12)


def test_retrieval_loss_matches_loops_multilabel():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = _multi_hot([[0], [0, 2], [1], [2], [1, 3], [3]], 4)
    ref = _ref_retrieval(h.tolist(), y.tolist())
    assert drh.retrieval_loss(h, y).item() == pytest.approx(ref, abs=1e-12)


def test_retrieval_loss_is_stable_for_far_codes_and_small_batches():
    h = torch.tensor([[30.0] * 64, [-30.0] * 64, [29.0] * 64])   # squared distances up to 230400
    y = _multi_hot([0, 1, 0], 2)
    v = drh.retrieval_loss(h, y)
    assert torch.isfinite(v)
    # rows 0 and 2 find their (only, nearest) similar item with p = 1; row 1 has none
    assert v.item() == pytest.approx(1.0 - 2.0 / 3.0, abs=1e-6)
    one = torch.zeros(1, 4, requires_grad=True)
    v1 = drh.retrieval_loss(one, _multi_hot([0], 2).float())
    assert v1.item() == 1.0
    v1.backward()
    assert torch.equal(one.grad, torch.zeros_like(one))


def _paper_eq4(h, s):
    """Eq. (4) with explicit loops: ∂(Σ_ij p_ij s_ij)/∂h_i (J_S's gradient is -1/N of it)."""
    n, k = h.shape
    d = [[h[i] - h[j] for j in range(n)] for i in range(n)]
    logits = [[-float((h[i] - h[j]).pow(2).sum()) for j in range(n)] for i in range(n)]
    p = [[0.0] * n for _ in range(n)]
    for i in range(n):
        z = sum(math.exp(logits[i][l]) for l in range(n) if l != i)
        for j in range(n):
            p[i][j] = 0.0 if j == i else math.exp(logits[i][j]) / z
    big_p = [sum(p[l][q] for q in range(n) if s[l][q] > 0) for l in range(n)]
    grads = []
    for i in range(n):
        first = sum((p[l][i] * d[l][i] for l in range(n) if s[l][i] > 0), torch.zeros(k, dtype=h.dtype))
        first = first - sum((big_p[l] * p[l][i] * d[l][i] for l in range(n) if l != i),
                            torch.zeros(k, dtype=h.dtype))
        avg_i = sum((p[i][z] * d[i][z] for z in range(n) if z != i), torch.zeros(k, dtype=h.dtype))
        second = sum((p[i][j] * d[i][j] for j in range(n) if s[i][j] > 0), torch.zeros(k, dtype=h.dtype))
        second = second - big_p[i] * avg_i
        grads.append(2 * first - 2 * second)
    return torch.stack(grads)


def test_retrieval_loss_gradient_matches_paper_eq4_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    h = (torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    y = _multi_hot([0, 0, 1, [1, 2], 2], 3)
    s = [[1.0 if i != j and float(y[i] @ y[j]) > 0 else 0.0 for j in range(5)] for i in range(5)]
    drh.retrieval_loss(h, y).backward()
    expected = -_paper_eq4(h.detach(), s) / 5
    torch.testing.assert_close(h.grad, expected, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: drh.retrieval_loss(t, y), (h.detach().clone().requires_grad_(),))


# ---------------------------------------------------------------- J_Q, J_B, R_O

def test_quantization_loss_hand_values_and_gradient():
    h = torch.tensor([[0.0, 1.0, -0.5], [0.9, -0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    ref = sum(math.log(math.cosh(abs(v) - 1.0)) for row in h.tolist() for v in row) / 2
    j_q = drh.quantization_loss(h)
    assert j_q.item() == pytest.approx(ref, abs=1e-12)
    j_q.backward()
    hd = h.detach()
    paper = torch.tanh(hd.abs() - 1) * torch.sign(hd) / 2     # Sec. 3.4: tanh(|h| - 1) sgn(h), over N
    torch.testing.assert_close(h.grad, paper)
    away = torch.tensor([[0.3, -0.7], [1.5, -0.05]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(drh.quantization_loss, (away,))


def test_log_cosh_is_stable():
    x = torch.tensor([-1000.0, -3.0, 0.0, 0.5, 1000.0])
    got = drh.log_cosh(x)
    assert torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(1000 - math.log(2), rel=1e-6)
    assert got[4].item() == pytest.approx(1000 - math.log(2), rel=1e-6)
    for i in (1, 2, 3):
        assert got[i].item() == pytest.approx(math.log(math.cosh(x[i].item())), abs=1e-6)


def test_bit_balance_loss_hand_value_and_gradient():
    h = torch.tensor([[1.0, -0.5], [0.2, 0.0], [-1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    trace = sum(v * v for row in h.tolist() for v in row)        # tr(HHᵀ) = Σ_i ‖h_i‖²
    j_b = drh.bit_balance_loss(h)
    assert j_b.item() == pytest.approx(-trace / 6, abs=1e-12)
    j_b.backward()
    torch.testing.assert_close(h.grad, -h.detach() / 3)         # ∂J_B/∂h_i = -h_i (over N)


def test_orthogonality_reg_hand_value_and_gradient():
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    r = drh.orthogonality_reg(w)          # W Wᵀ - I = diag(0, 3) -> ½ * 9
    assert r.item() == pytest.approx(4.5)
    r.backward()
    wd = w.detach()
    torch.testing.assert_close(w.grad, 2 * (wd @ wd.T - torch.eye(2, dtype=wd.dtype)) @ wd)
    g = torch.Generator().manual_seed(2)
    w2 = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(drh.orthogonality_reg, (w2,))
    q, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))
    assert drh.orthogonality_reg(q.T).item() == pytest.approx(0.0, abs=1e-20)   # orthonormal rows


def _batch(labels):
    y = labels.float()
    return Batch(images=None, labels=y, targets=y.argmax(1))


class _Stub(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.hash_layer = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.hash_layer.weight.copy_(w)


def _ref_total(h, y, w, lambda_q, lambda_b, lambda_o):
    """Eq. (3) without weight decay, every term written out with Python loops over items, bits, rows."""
    n, k = len(h), len(h[0])
    j_s = _ref_retrieval(h, y)
    j_q = sum(math.log(math.cosh(abs(v) - 1.0)) for row in h for v in row) / n
    j_b = -sum(v * v for row in h for v in row) / (2 * n)
    gram = [[sum(w[a][d] * w[b][d] for d in range(len(w[0]))) for b in range(k)] for a in range(k)]
    r_o = 0.5 * sum((gram[a][b] - (1.0 if a == b else 0.0)) ** 2 for a in range(k) for b in range(k))
    return j_s + lambda_q * j_q + lambda_b * j_b + lambda_o * r_o, (j_s, j_q, j_b, r_o)


@pytest.mark.parametrize("mid", IDS)
def test_total_loss_is_the_weighted_sum(mid):
    m = get_method(mid)
    hp = m.resolve()
    ctx = ModelContext(in_channels=1, image_size=8, num_classes=3, bits=4)
    g = torch.Generator().manual_seed(3)
    h = torch.rand(6, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9
    y = _multi_hot([0, 1, 2, 0, 1, 2], 3)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    out = m.build_loss(ctx, hp)({"h": h}, _batch(y), _Stub(w.float()))
    hashing = mid != "drh-nq"
    expected, (j_s, j_q, _, r_o) = _ref_total(h.tolist(), y.tolist(), w.float().double().tolist(),
                                              hp["lambda_q"] if hashing else 0.0,
                                              hp["lambda_b"] if hashing else 0.0, hp["lambda_o"])
    assert out["J_S"].item() == pytest.approx(j_s, rel=1e-6)
    assert out["R_O"].item() == pytest.approx(r_o, rel=1e-5)
    if hashing:
        assert out["J_Q"].item() == pytest.approx(j_q, rel=1e-6)
    else:
        assert "J_Q" not in out and "J_B" not in out
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- network

@pytest.mark.parametrize("mid", ["drh", "dph"])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 8), (1, 28), (3, 33), (3, 64)])
def test_model_shapes_and_code_range(mid, channels, size):
    torch.manual_seed(0)
    m = get_method(mid)
    ctx = ModelContext(in_channels=channels, image_size=size, num_classes=2, bits=12)
    net = m.build_model(ctx, m.resolve({"depth": 18, "width": 2}))
    x = torch.rand(3, channels, size, size)
    out = net(x)
    assert set(out) == {"h"} and out["h"].shape == (3, 12)
    net.eval()
    code = net.encode(x)
    assert code.shape == (3, 12) and (code.abs() <= 1).all()   # tanh range
    assert net.trunk.stem_kind == ("imagenet" if size >= 64 else "small")


def test_residual_and_plain_networks_and_paper_size():
    ctx = ModelContext(in_channels=1, image_size=224, num_classes=9, bits=48)   # width 6 up to 48 bits
    res = get_method("drh").build_model(ctx, get_method("drh").resolve())
    plain = get_method("dph").build_model(ctx, get_method("dph").resolve())
    blocks = [b for b in res.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 16 and all(b.residual for b in blocks)             # 3+4+6+3 blocks
    assert sum(b.shortcut is not None for b in blocks) == 3                   # projections at stages 3-5
    assert not any(b.residual or b.shortcut is not None
                   for b in plain.modules() if isinstance(b, BasicBlock))
    n = sum(p.numel() for p in res.parameters())
    assert 150_000 < n < 220_000                                             # paper's DRH-34: 0.183 M
    n18 = sum(p.numel() for p in get_method("drh").build_model(ctx, {**get_method("drh").resolve(),
                                                                      "depth": 18}).parameters())
    assert n18 < n


def test_plain_block_has_no_identity_path():
    torch.manual_seed(0)
    block = BasicBlock(4, 4, 1, residual=False)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    x = torch.rand(1, 4, 5, 5)
    assert torch.equal(block(x), torch.zeros_like(x))                       # no x added back
    res = BasicBlock(4, 4, 1, residual=True)
    with torch.no_grad():
        for p in res.parameters():
            p.zero_()
    torch.testing.assert_close(res(x), torch.relu(x))


def _min_orthogonality(k, d, steps=400):
    """The smallest R_O = ½‖W Wᵀ − I‖²_F over (k, d) matrices found by gradient descent (float64)."""
    w = (torch.randn(k, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / d ** 0.5)
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        r = drh.orthogonality_reg(w)
        r.backward()
        opt.step()
    return drh.orthogonality_reg(w).item()


def test_default_width_lets_64_bit_codes_be_orthogonal():
    """R_O = ½‖W_h W_hᵀ − I‖²_F (Sec. 3.3) on a (K, D) hashing layer is at least ½(K − D) when D < K
    (W_h W_hᵀ has rank <= D, so K − D of its eigenvalues are 0): width 6 (D = 48) cannot reach 0 at
    64 bits (minimum 8); the default width scales so that D >= K and R_O can reach 0."""
    m = get_method("drh")
    ctx = ModelContext(in_channels=1, image_size=16, num_classes=2, bits=64)
    net = m.build_model(ctx, m.resolve())
    assert m.resolve()["width"] == 0 and net.width == 8 and net.trunk.out_dim == 64
    assert net.hash_layer.weight.shape == (64, 64)
    old = m.build_model(ctx, m.resolve({"width": 6}))
    assert old.trunk.out_dim == 48
    assert _min_orthogonality(64, 48) == pytest.approx((64 - 48) / 2, abs=1e-3)
    assert _min_orthogonality(64, 64) < 1e-9                               # vs 8 at D = 48
    # the features themselves: 80 images give a full-rank (80, 64) feature matrix, so no code bit is
    # a fixed linear combination of the others
    torch.manual_seed(0)
    with torch.no_grad():
        feats = net.trunk(torch.rand(80, 1, 16, 16)).double()
    assert torch.linalg.matrix_rank(feats - feats.mean(0)).item() == 64
    widths = {bits: m.build_model(ModelContext(1, 16, 2, bits), m.resolve()).width for bits in (16, 48, 49, 128)}
    assert widths == {16: 6, 48: 6, 49: 7, 128: 16}
    assert m.build_model(ModelContext(1, 16, 2, 128), m.resolve({"width": 5})).width == 5   # explicit wins


# ---------------------------------------------------------------- registration

def test_registration_and_defaults():
    for mid in IDS:
        m = get_method(mid)
        assert m.family == "drh" and m.batch_size == 128 and m.paper.endswith("002_5b43c5926db2a9a1.txt")
        assert "Deep Residual Hashing" in m.citation
    (nb,) = get_method("drh").readouts
    assert (nb.code_type, nb.distance, get_method("drh").entry(nb)) == ("float", "l2", "drh-nb")
    for mid in ("drh", "dph", "drh-nq"):
        assert (get_method(mid).code_type, get_method(mid).distance) == ("binary", "hamming")
    hp = get_method("drh").resolve()
    assert (hp["lambda_q"], hp["lambda_b"], hp["lambda_o"], hp["lr"], hp["momentum"], hp["depth"]) == \
        (0.05, 0.025, 0.01, 1e-2, 0.9, 34)
    assert set(get_method("drh").search_space()) >= {"lambda_q", "lambda_b", "lambda_o", "lr"}
    assert "lambda_q" not in get_method("drh-nq").param_map and "lambda_o" in get_method("drh-nq").search_space()


def test_param_validation():
    m = get_method("drh")
    with pytest.raises(HashbenchError, match=r"depth.*\[18, 34\]"):
        m.resolve({"depth": 50})
    with pytest.raises(HashbenchError, match="lambda_q.*outside"):
        m.resolve({"lambda_q": -0.1})
    with pytest.raises(HashbenchError, match="no parameter 'gamma'.*lambda_b, lambda_o, lambda_q"):
        m.resolve({"gamma": 1})
    with pytest.raises(HashbenchError, match="no parameter 'lambda_q'"):
        get_method("drh-nq").resolve({"lambda_q": 0.1})
    assert m.resolve({"depth": "18", "lambda_b": "0.1"})["depth"] == 18


def test_optimizer_and_plateau_scheduler():
    m = get_method("drh")
    hp = m.resolve({"lr_patience": 1})
    p = torch.nn.Parameter(torch.zeros(2))
    opt = m.build_optimizer([p], hp)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["lr"] == 1e-2
    sched = m.build_scheduler(opt, hp)
    for val_map in (0.5, 0.6, 0.6, 0.55):        # two epochs without improvement > patience 1
        sched.step(val_map)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


# ---------------------------------------------------------------- learning

@pytest.mark.parametrize("mid", ["drh", "drh-nq"])
def test_a_few_steps_reduce_the_loss(mid):
    torch.manual_seed(0)
    m = get_method(mid)
    ctx = ModelContext(in_channels=1, image_size=8, num_classes=2, bits=8)
    hp = m.resolve({"depth": 18, "width": 4})
    net, loss_fn = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    opt = m.build_optimizer(net.parameters(), hp)
    x = torch.rand(16, 1, 8, 8) * 0.6
    x[:8, :, :, :4] += 0.4                         # class 0: brighter left half
    x[8:, :, :, 4:] += 0.4                         # class 1: brighter right half
    y = _multi_hot([0] * 8 + [1] * 8, 2).float()
    batch = Batch(images=x, labels=y, targets=y.argmax(1))
    losses = []
    for _ in range(15):
        out = loss_fn(net(x), batch, net)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert out["J_S"].item() < 0.1
    with torch.no_grad():
        codes = net.encode(x) >= 0                              # the sign bits (0 -> +1)
    ham = (codes[:, None, :] != codes[None, :, :]).sum(-1).float()
    same = y @ y.T > 0
    assert ham[same].mean() < ham[~same].mean()
