"""dch: the network of Table I, each loss term of eq. (9) against independent references,
the quantization gradient of eq. (14), pre-training, registration and a few optimisation steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hashbench.methods import dch
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method


def _ctx(channels=1, size=16, classes=3, bits=8, multi_label=False):
    return ModelContext(in_channels=channels, image_size=size, num_classes=classes, bits=bits,
                        multi_label=multi_label)


def _model(ctx, **overrides):
    m = get_method("dch")
    return m.build_model(ctx, m.resolve(overrides))


def _batch(targets, classes):
    t = torch.tensor(targets)
    return Batch(images=None, labels=torch.eye(classes)[t], targets=t)


# ---------------------------------------------------------------- network

@pytest.mark.parametrize("size,pad,side", [(128, 0, 29), (28, 0, 4), (16, 0, 1), (15, 1, 3), (8, 1, 2)])
def test_feature_side_follows_table1(size, pad, side):
    assert dch.feature_side(size) == (pad, side)
    net = _model(_ctx(size=size), grid=1)          # grid only acts after the features
    fmap = net.features(torch.rand(2, 1, size, size))
    assert fmap.shape == (2, 64, side, side)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 15, 28, 40])
def test_shapes_for_channels_and_sizes(channels, size):
    torch.manual_seed(0)
    net = _model(_ctx(channels=channels, size=size, classes=4, bits=12))
    x = torch.rand(3, channels, size, size)
    out = net(x)
    assert out["code"].shape == (3, 12) and out["logits"].shape == (3, 4)
    net.eval()
    code = net.encode(x)
    assert code.shape == (3, 12) and (code.abs() <= 1).all()


def test_grid_caps_the_feature_map():
    net = _model(_ctx(size=40), grid=3)            # 40 px -> 7 x 7 map, pooled to 3 x 3
    assert isinstance(net.pool, nn.AdaptiveMaxPool2d)
    assert net.fc[1].in_features == 64 * 3 * 3
    assert net(torch.rand(2, 1, 40, 40))["code"].shape == (2, 8)
    assert isinstance(_model(_ctx(size=28)).pool, nn.Identity)              # 4 x 4 <= 29: untouched
    with torch.device("meta"):                     # 110 M parameters: shapes only, no memory
        paper = _model(_ctx(channels=3, size=128, classes=4, bits=8))
        big = _model(_ctx(channels=3, size=224, classes=4, bits=8))
    assert paper.fc[1].in_features == 64 * 29 * 29                          # Table I at 128 px
    assert isinstance(paper.pool, nn.Identity)
    assert big.fc[1].in_features == 64 * 29 * 29 and isinstance(big.pool, nn.AdaptiveMaxPool2d)


def test_batch_norm_before_every_relu_and_glorot_init():
    torch.manual_seed(0)
    net = _model(_ctx(size=28))
    layers = list(net.features) + list(net.fc)
    relus = [i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)]
    assert len(relus) == 5                                                    # 4 conv + FC 2048
    assert all(isinstance(layers[i - 1], (nn.BatchNorm2d, nn.BatchNorm1d)) for i in relus)
    assert isinstance(net.lbe_bn, nn.BatchNorm1d)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.dim() > 2 else 1)
            limit = math.sqrt(6.0 / (fan_in + fan_out))                       # Glorot-uniform bound
            assert m.weight.abs().max() <= limit
            assert m.weight.abs().max() > 0.8 * limit
            if m.bias is not None:
                assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert not isinstance(_model(_ctx(), lbe_bn=False).lbe_bn, nn.BatchNorm1d)


# ---------------------------------------------------------------- loss terms

def test_sign_convention():
    code = torch.tensor([[0.0, -0.0, 0.3, -0.3, 1.0, -1.0]])
    assert dch.sign_codes(code).tolist() == [[1.0, 1.0, 1.0, -1.0, 1.0, -1.0]]


def test_quantization_loss_hand_value():
    code = torch.tensor([[0.5, -0.2], [0.0, 0.9]])
    # b = [[1, -1], [1, 1]]: (0.25 + 0.64) + (1 + 0.01), mean over the 2 items
    assert dch.quantization_loss(code).item() == pytest.approx(0.95)


def test_classification_loss_softmax_and_multilabel():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = [0, 1]
    ce = 0.0
    for row, t in zip(logits.tolist(), targets):
        ce += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    got = dch.classification_loss(logits, _batch(targets, 3), multi_label=False)
    assert got.item() == pytest.approx(ce / 2, rel=1e-6)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = 0.0
    for row, lab in zip(logits.tolist(), labels.tolist()):
        for v, y in zip(row, lab):
            p = 1.0 / (1.0 + math.exp(-v))
            bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    got = dch.classification_loss(logits, Batch(None, labels, labels.argmax(1)), multi_label=True)
    assert got.item() == pytest.approx(bce / 2, rel=1e-6)


def test_quantization_gradient_is_paper_eq14():
    gamma = 0.3
    a = torch.tensor([[0.4, -1.2, 0.05], [2.0, -0.3, -0.7]], dtype=torch.float64, requires_grad=True)
    code = torch.tanh(a)
    (gamma / 2 * dch.quantization_loss(code)).backward()
    t = torch.tanh(a.detach())
    b = torch.where(t >= 0, 1.0, -1.0).to(t.dtype)
    rho = -2 * (b - t) * (1 - t ** 2)                                       # ϱ of eq. (14)
    torch.testing.assert_close(a.grad, gamma / 2 * rho / 2)                  # γ/2 ϱ, averaged over M_b = 2
    x = torch.tensor([[0.4, -0.8], [0.1, -0.05]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dch.quantization_loss, (x,))


def test_total_loss_and_multilabel_form():
    m = get_method("dch")
    hp = m.resolve({"gamma": 0.5})
    code = torch.tensor([[0.5, -0.2], [0.0, 0.9]])
    logits = torch.tensor([[1.0, -1.0], [0.3, 0.2]])
    batch = _batch([0, 1], 2)
    out = m.build_loss(_ctx(classes=2, bits=2), hp)({"code": code, "logits": logits}, batch, None)
    ce = torch.nn.functional.cross_entropy(logits, batch.targets).item()
    assert out["classification"].item() == pytest.approx(ce)
    assert out["loss"].item() == pytest.approx(ce + 0.25 * 0.95, rel=1e-6)
    ml = m.build_loss(_ctx(classes=2, bits=2, multi_label=True), hp)
    assert ml.multi_label
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") / 2
    assert ml({"code": code, "logits": logits}, batch, None)["classification"].item() == pytest.approx(bce.item())


# ---------------------------------------------------------------- pre-training

def test_pretraining_switches_after_the_epochs_and_survives_a_checkpoint():
    torch.manual_seed(0)
    m = get_method("dch")
    hp = m.resolve({"pretrain_epochs": 2})
    ctx = _ctx(size=8, classes=2, bits=4)
    net, loss_fn = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    x = torch.rand(4, 1, 8, 8)
    batch = _batch([0, 1, 0, 1], 2)

    def step():
        net.zero_grad(set_to_none=True)
        out = loss_fn(net(x), batch, net)
        out["loss"].backward()
        return out, {name: p.grad.abs().sum().item() for name, p in
                     [("lbe", net.lbe.weight), ("head", net.classifier.weight), ("pre", net.pre_classifier.weight),
                      ("fc", net.fc[1].weight)]}

    def validate():                                # what the loop does after each epoch
        net.eval()
        with torch.no_grad():
            net.encode(x)
        net.train(False)

    net.eval()
    net.train()                                    # switches without training are no epoch
    assert int(net.epochs_done) == 0
    out, g = step()                                # epoch 0: pre-training
    assert net.pretraining and out["pretraining"].item() == 1.0
    assert g["lbe"] == 0 and g["head"] == 0 and g["pre"] > 0 and g["fc"] > 0  # LBE path in graph, no signal
    assert out["loss"].item() == pytest.approx(out["classification"].item())
    validate()
    assert int(net.epochs_done) == 1
    state = {k: v.clone() for k, v in net.state_dict().items()}   # the checkpoint of epoch 0
    net.train()
    step()                                         # epoch 1: still pre-training
    assert net.pretraining
    validate()
    net.train()
    out, g = step()                                # epoch 2: fine-tuning with the LBE layer
    assert not net.pretraining and out["pretraining"].item() == 0.0
    assert g["lbe"] > 0 and g["head"] > 0 and g["pre"] == 0
    assert out["loss"].item() > out["classification"].item()          # + γ/2 quantization
    resumed = m.build_model(ctx, hp)
    resumed.load_state_dict(state)                 # resume after epoch 0: epoch 1 pre-trains
    assert int(resumed.epochs_done) == 1 and resumed.pretraining
    plain = _model(ctx)
    assert not plain.pretraining and plain.pre_classifier is None


# ---------------------------------------------------------------- registration

def test_registration_and_defaults():
    m = get_method("dch")
    hp = m.resolve()
    assert hp["gamma"] == 1e-4 and hp["pretrain_epochs"] == 0 and hp["lr"] == 1.0
    assert (m.batch_size, m.code_type, m.distance, m.family) == (32, "binary", "hamming", "dch")
    assert "Deep Convolutional Hashing" in m.citation and m.paper.endswith("001_ccae20c2c51c6ac7.txt")
    space = m.search_space()
    assert space["gamma"].search == (1e-6, 10.0) and space["gamma"].log and "lr" in space
    opt = m.build_optimizer([nn.Parameter(torch.zeros(1))], hp)
    assert isinstance(opt, torch.optim.Adadelta) and opt.param_groups[0]["rho"] == 0.95


def test_param_validation():
    m = get_method("dch")
    with pytest.raises(HashbenchError, match="gamma.*outside"):
        m.resolve({"gamma": -1})
    with pytest.raises(HashbenchError, match="pretrain_epochs.*integer"):
        m.resolve({"pretrain_epochs": 1.5})
    with pytest.raises(HashbenchError, match="no parameter 'lambda_q'; valid parameters: gamma, grid"):
        m.resolve({"lambda_q": 0.1})
    assert m.resolve({"gamma": "1e-3", "lbe_bn": "false"}) == {**m.defaults(), "gamma": 1e-3, "lbe_bn": False}


# ---------------------------------------------------------------- learning

def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = get_method("dch")
    ctx = _ctx(size=8, classes=2, bits=8)
    hp = m.resolve({"gamma": 0.1})
    net, loss_fn = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    opt = m.build_optimizer(net.parameters(), hp)
    x = torch.rand(16, 1, 8, 8) * 0.6
    x[:8, :, :, :4] += 0.4                         # class 0: brighter left half
    x[8:, :, :, 4:] += 0.4                         # class 1: brighter right half
    batch = _batch([0] * 8 + [1] * 8, 2)
    losses = []
    for _ in range(10):
        out = loss_fn(net(x), batch, net)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        codes = dch.sign_codes(net.encode(x))
    ham = (codes[:, None, :] != codes[None, :, :]).sum(-1).float()
    same = batch.targets[:, None] == batch.targets[None, :]
    assert ham[same].mean() < ham[~same].mean()
