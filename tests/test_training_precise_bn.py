"""Two training-loop options (issue 19, docs/methods/drh.md findings 4 and 5): precise batch-norm
statistics before encoding (``TrainConfig.precise_bn``) and plateau schedulers stepped on the epoch's
mean training loss (``plateau_on``). References are computed by hand here, not with the code tested.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, Param, get_method, register
from hashbench.platform.training import TrainConfig, run_local
from hashbench.platform.training.plateau import orient_plateau, step_scheduler
from hashbench.platform.training.precise_bn import even_batches, recompute_bn_stats


# --------------------------------------------------------------------------- recompute_bn_stats, by hand

class Counting(nn.Module):
    """Conv -> BN2d -> ReLU -> pool -> dropout -> Linear -> BN1d; counts its own train() calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3, 2)
        self.bn1 = nn.BatchNorm1d(2)
        self.train_calls = 0

    def train(self, mode=True):
        self.train_calls += 1
        return super().train(mode)

    def forward(self, x):
        f = torch.relu(self.bn2(self.conv(x))).mean((2, 3))
        return self.bn1(self.fc(self.drop(f)))


def _by_hand(model, batches):
    """The exact mean / unbiased variance of each BN's input over all items, in float64 numpy: the
    first BN's input is conv(x); the second's is fc(pool(relu(BN2d in training mode on the batch)))."""
    w, b = model.conv.weight.detach().double().numpy(), model.conv.bias.detach().double().numpy()
    g2, b2 = model.bn2.weight.detach().double().numpy(), model.bn2.bias.detach().double().numpy()
    wf, bf = model.fc.weight.detach().double().numpy(), model.fc.bias.detach().double().numpy()
    conv_all, fc_all = [], []
    for x in batches:
        x = np.pad(x.double().numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
        n, _, hp, wp = x.shape
        c = np.zeros((n, 3, hp - 2, wp - 2))
        for o in range(3):
            for i in range(3):
                for j in range(3):
                    c[:, o] += w[o, 0, i, j] * x[:, 0, i:i + hp - 2, j:j + wp - 2]
            c[:, o] += b[o]
        conv_all.append(c)
        mu = c.mean((0, 2, 3), keepdims=True)
        var = c.var((0, 2, 3), keepdims=True)  # training-mode BN normalises by the biased variance
        y = (c - mu) / np.sqrt(var + model.bn2.eps) * g2[None, :, None, None] + b2[None, :, None, None]
        f = np.maximum(y, 0).mean((2, 3))  # dropout is off in the pass
        fc_all.append(f @ wf.T + bf)
    per_batch_var = np.mean([c.var((0, 2, 3), ddof=1) for c in conv_all], axis=0)  # what momentum=None keeps
    c = np.concatenate(conv_all).transpose(1, 0, 2, 3).reshape(3, -1)
    fcs = np.concatenate(fc_all)
    return (c.mean(1), c.var(1, ddof=1)), (fcs.mean(0), fcs.var(0, ddof=1)), per_batch_var


def test_recompute_bn_stats_gives_the_exact_mean_and_variance_of_the_train_features():
    torch.manual_seed(0)
    model = Counting()
    x = torch.rand(10, 1, 5, 5) * 3 + 1
    batches = [x[:4], x[4:7], x[7:]]                  # unequal sizes: not a mean of per-batch variances
    for bn in (model.bn2, model.bn1):                 # deliberately stale statistics
        bn.running_mean.fill_(100.0)
        bn.running_var.fill_(1e-3)
        bn.num_batches_tracked.fill_(7)
    model.eval()
    model.bn1.train()                                 # a mixed state, to be restored as it was
    calls = model.train_calls
    ptrs = [t.data_ptr() for t in (model.bn2.running_mean, model.bn2.running_var, model.bn1.running_mean)]
    (m2, v2), (m1, v1), per_batch_var = _by_hand(model, batches)

    assert recompute_bn_stats(model, batches) == 10
    np.testing.assert_allclose(model.bn2.running_mean.numpy(), m2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn2.running_var.numpy(), v2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn1.running_mean.numpy(), m1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn1.running_var.numpy(), v1, rtol=1e-5, atol=1e-6)
    # the mean of the three batches' variances is a different number (the batch means spread)
    assert np.abs(per_batch_var - v2).max() > 1e-4
    # modes as they were, the model's own train() never called, buffers written in place
    assert not model.training and not model.bn2.training and model.bn1.training and not model.drop.training
    assert model.train_calls == calls
    assert ptrs == [t.data_ptr() for t in (model.bn2.running_mean, model.bn2.running_var, model.bn1.running_mean)]
    assert int(model.bn2.num_batches_tracked) == 7


def test_a_batch_norm_the_forward_never_reaches_keeps_its_statistics():
    model = nn.ModuleList([nn.Linear(3, 2), nn.BatchNorm1d(2)])
    model.forward = lambda x: model[1](model[0](x))
    model.unused = nn.BatchNorm1d(5)                  # not in forward
    model.unused.running_mean.fill_(3.0)
    x = torch.randn(6, 3)
    recompute_bn_stats(model, [x[:3], x[3:]])
    assert torch.equal(model.unused.running_mean, torch.full((5,), 3.0))
    assert torch.equal(model.unused.running_var, torch.ones(5))
    f = model[0](x).double()
    torch.testing.assert_close(model[1].running_var.double(), f.var(0), rtol=1e-5, atol=1e-6)


def test_recompute_bn_stats_without_batch_norm_runs_nothing():
    seen = []
    model = nn.Linear(3, 2)
    model.register_forward_hook(lambda *a: seen.append(1))
    assert recompute_bn_stats(model, [torch.zeros(4, 3)]) == 0 and seen == []


def test_even_batches_never_leave_one_item_alone():
    sizes = [len(b) for b in even_batches(129, 128, "cpu")]
    assert sizes == [65, 64]
    assert torch.equal(torch.cat(even_batches(129, 128, "cpu")), torch.arange(129))
    assert [len(b) for b in even_batches(5, 8, "cpu")] == [5]
    assert [len(b) for b in even_batches(5, 1, "cpu")] == [3, 2]
    assert [len(b) for b in even_batches(5, 2, "cpu")] == [3, 2]
    assert [len(b) for b in even_batches(40, 8, "cpu")] == [8] * 5


# --------------------------------------------------------------------------- plateau on the training loss

def _plateau(lr=0.1):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=2)


def test_plateau_on_the_training_loss_divides_the_lr_after_patience_epochs_without_a_lower_loss():
    losses = [1.0, 0.9, 0.9, 0.95, 0.92, 0.5]
    opt, sched = _plateau()
    sched = orient_plateau(sched, "train_loss")
    lrs = []
    for loss in losses:
        step_scheduler(sched, "train_loss", val_map=0.5, train_loss=loss)   # the val mAP is not used
        lrs.append(opt.param_groups[0]["lr"])
    # 1.0 best, 0.9 better, then 0.9 / 0.95 / 0.92: three epochs not lower (> patience 2) -> lr / 10
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    # the same numbers as a val mAP (mode max): 1.0 is the best, the next three are worse
    opt, sched = _plateau()
    assert orient_plateau(sched, "val_map") is sched      # already mode max: kept as it is
    lrs = []
    for v in losses:
        step_scheduler(sched, "val_map", val_map=v, train_loss=0.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def _two_group_plateau():
    """Two parameter groups (lr 0.2 and 0.02), mode max as the methods build it, and every setting
    away from torch's defaults so that a rebuild that dropped one would show."""
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.2},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.02}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=0.5, patience=1, threshold=0.01, threshold_mode="abs", cooldown=2,
        min_lr=[0.08, 0.0], eps=1e-6)
    return opt, sched


# By hand, mode min, abs threshold 0.01, patience 1, cooldown 2, factor 0.5, min_lr [0.08, 0]:
#   1 1.0   best 1.0                                     lr [0.2, 0.02]
#   2 0.9   0.9 < 1.0 - 0.01: best 0.9                   lr [0.2, 0.02]
#   3 0.95  not < 0.89: 1 bad (not > patience 1)         lr [0.2, 0.02]
#   4 0.96  2 bad > 1: halve, cooldown 2, bad 0          lr [0.1, 0.01]
#   5 0.97  bad, but cooldown (2 -> 1) zeroes it         lr [0.1, 0.01]
#   6 0.98  bad, but cooldown (1 -> 0) zeroes it         lr [0.1, 0.01]
#   7 0.99  1 bad                                        lr [0.1, 0.01]
#   8 0.891 not < 0.89 (abs threshold): 2 bad > 1:
#           0.1 * 0.5 = 0.05 -> min_lr 0.08; 0.005       lr [0.08, 0.005]
PLATEAU_LOSSES = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.891]
PLATEAU_LRS = [[0.2, 0.02]] * 3 + [[0.1, 0.01]] * 4 + [[0.08, 0.005]]


def _step_losses(opt, sched, losses):
    lrs = []
    for loss in losses:
        step_scheduler(sched, "train_loss", val_map=0.0, train_loss=loss)
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


def test_orienting_a_plateau_for_the_training_loss_keeps_its_settings_and_the_learning_rates():
    opt, built = _two_group_plateau()
    sched = orient_plateau(built, "train_loss")
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.optimizer is opt
    assert sched.mode == "min" and built.mode == "max"
    assert (sched.factor, sched.patience, sched.threshold, sched.threshold_mode, sched.cooldown,
            sched.min_lrs, sched.eps) == (0.5, 1, 0.01, "abs", 2, [0.08, 0.0], 1e-6)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.02]
    np.testing.assert_allclose(_step_losses(opt, sched, PLATEAU_LOSSES), PLATEAU_LRS)


def test_an_oriented_plateau_restores_from_its_state_dict_and_goes_on_where_it_was():
    # as the loop does on a resume: build, orient, then load the saved optimizer and scheduler states
    opt, sched = _two_group_plateau()
    sched = orient_plateau(sched, "train_loss")
    np.testing.assert_allclose(_step_losses(opt, sched, PLATEAU_LOSSES[:5]), PLATEAU_LRS[:5])
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2, sched2 = _two_group_plateau()
    sched2 = orient_plateau(sched2, "train_loss")
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.mode == "min" and sched2.best == 0.9 and sched2.cooldown_counter == 1
    np.testing.assert_allclose(_step_losses(opt2, sched2, PLATEAU_LOSSES[5:]), PLATEAU_LRS[5:])


def test_a_plateau_subclass_is_rebuilt_as_itself_or_named_when_it_cannot_be():
    opt, _ = _two_group_plateau()
    rebuilt = orient_plateau(Recording(opt, mode="max", patience=3), "train_loss")
    assert type(rebuilt) is Recording and (rebuilt.mode, rebuilt.patience) == ("min", 3)

    class Fixed(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def __init__(self, optimizer):
            super().__init__(optimizer, mode="max")

    with pytest.raises(HashbenchError, match="plateau_on 'train_loss' needs a Fixed with mode 'min', built with "
                                             "mode 'max': rebuilding it failed .*build it with mode='min'"):
        orient_plateau(Fixed(opt), "train_loss")


def test_non_plateau_schedulers_step_without_a_metric():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert orient_plateau(sched, "train_loss") is sched
    assert orient_plateau(None, "train_loss") is None
    opt.step()
    step_scheduler(sched, "train_loss", val_map=0.3, train_loss=0.7)
    assert opt.param_groups[0]["lr"] == 0.5
    step_scheduler(None, "train_loss", 0.0, 0.0)      # no scheduler: nothing to do


# --------------------------------------------------------------------------- through the loop

FAKE_LOSSES = [1.0, 0.9, 0.9, 0.95, 0.92]


class BNNet(nn.Module):
    """Flatten -> Linear -> BatchNorm1d -> tanh: the codes; the BN's input is x @ Wᵀ + b."""

    def __init__(self, ctx):
        super().__init__()
        self.fc = nn.Linear(ctx.in_channels * ctx.image_size ** 2, ctx.bits)
        self.bn = nn.BatchNorm1d(ctx.bits)
        self.head = nn.Linear(ctx.bits, ctx.num_classes)

    def forward(self, x):
        z = torch.tanh(self.bn(self.fc(x.flatten(1))))
        return {"z": z, "logits": self.head(z)}

    def encode(self, x):
        return torch.tanh(self.bn(self.fc(x.flatten(1))))


class FakeLoss(nn.Module):
    """Cross-entropy's gradient, but the value ``fake[epoch]`` (``steps`` steps an epoch): an injected
    sequence of epoch-mean training losses."""

    def __init__(self, fake, steps):
        super().__init__()
        self.fake, self.steps, self.calls = fake, steps, 0

    def forward(self, out, batch, model):
        ce = nn.functional.cross_entropy(out["logits"], batch.targets)
        value = self.fake[min(self.calls // self.steps, len(self.fake) - 1)] if self.fake else None
        self.calls += 1
        loss = ce if value is None else ce - ce.detach() + value
        return {"loss": loss, "ce": ce}


SEEN: list = []


class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def step(self, metrics):
        SEEN.append((self.mode, float(metrics)))
        super().step(metrics)


@pytest.fixture(scope="module", autouse=True)
def _methods():
    from hashbench.platform import registry

    registry.list_methods()
    saved = dict(registry._REGISTRY)
    common = dict(summary="test", citation="none", build_model=lambda ctx, hp: BNNet(ctx),
                  build_optimizer=lambda p, hp: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                  params=(Param("fake", False, type="bool"),), batch_size=8, epochs=2)
    register(Method(id="pbn-loss", plateau_on="train_loss", **common,
                    build_loss=lambda ctx, hp: FakeLoss(FAKE_LOSSES if hp["fake"] else None, 48 // 8),
                    build_scheduler=lambda opt, hp: Recording(opt, mode="max", factor=0.1, patience=2)))
    register(Method(id="pbn-none", **common, build_loss=lambda ctx, hp: FakeLoss(None, 6)))
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(0)
    n = 48 + 12 + 12
    y = np.arange(n) % 3
    img = rng.integers(0, 60, size=(n, 1, 8, 8)).astype(np.uint8)
    for c in range(3):
        img[y == c, :, 2 * c:2 * c + 2, :] += 150
    split = np.array([0] * 48 + [1] * 12 + [2] * 12, np.int8)
    return str(write_store(tmp_path_factory.mktemp("pbn") / "s", img, np.eye(3, dtype=np.uint8)[y], split,
                           class_names=["a", "b", "c"]).path)


def _cfg(store, tmp_path, **kw):
    base = dict(method="pbn-loss", dataset=store, bits=4, epochs=2, out_dir=str(tmp_path / "runs"), device="cpu",
                eval_ks=(10, 100))
    return TrainConfig(**{**base, **kw})


def test_the_loop_steps_the_plateau_with_the_epoch_mean_training_loss(store, tmp_path):
    SEEN.clear()
    res = run_local(_cfg(store, tmp_path, epochs=5, params={"fake": True}))
    assert [h["loss"] for h in res.history] == pytest.approx(FAKE_LOSSES)
    assert SEEN == [("min", pytest.approx(v)) for v in FAKE_LOSSES]
    # lr after each epoch's step: three epochs without a lower loss than 0.9 (patience 2) -> / 10
    assert [h["lr"] for h in res.history] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01])
    assert res.config["plateau_on"] == "train_loss"

    SEEN.clear()   # the same method with the val mAP: the scheduler is stepped with it, mode max
    res = run_local(_cfg(store, tmp_path, epochs=2, params={"fake": True}, plateau_on="val_map"))
    assert SEEN == [("max", pytest.approx(h["val_mAP@100"])) for h in res.history]


def _features_by_hand(run_dir, store):
    """Mean / unbiased variance of fc(x) over the train split with the saved weights (numpy, float64)."""
    from hashbench.platform.data import load_dataset

    state = torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)
    ds = load_dataset(store)
    x = np.asarray(ds.images[ds.indices("train")], np.float64).reshape(48, -1) / 255.0
    f = x @ state["fc.weight"].double().numpy().T + state["fc.bias"].double().numpy()
    return state, f.mean(0), f.var(0, ddof=1)


def test_precise_bn_leaves_the_saved_model_with_the_exact_train_statistics(store, tmp_path):
    on = run_local(_cfg(store, tmp_path, method="pbn-none", precise_bn=True, restore_best=False, run_name="on"))
    state, mean, var = _features_by_hand(on.run_dir, store)
    np.testing.assert_allclose(state["bn.running_mean"].numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["bn.running_var"].numpy(), var, rtol=1e-5, atol=1e-6)
    assert on.timings["precise_bn_s"] > 0

    off = run_local(_cfg(store, tmp_path, method="pbn-none", restore_best=False, run_name="off"))
    state_off, mean_off, var_off = _features_by_hand(off.run_dir, store)
    assert np.abs(state_off["bn.running_mean"].numpy() - mean_off).max() > 1e-3   # the momentum average lags
    # the pass changes no training step: same losses, same weights, only the statistics differ
    assert [h["loss"] for h in on.history] == [h["loss"] for h in off.history]
    assert torch.equal(state["fc.weight"], state_off["fc.weight"])
    assert on.timings["precise_bn_s"] > 0 and off.timings["precise_bn_s"] == 0


# --------------------------------------------------------------------------- validation and defaults

@pytest.mark.parametrize("kw, needle", [
    (dict(plateau_on="loss"), "plateau_on 'loss': expected one of val_map, train_loss"),
    (dict(plateau_on=3), "plateau_on 3: expected one of val_map, train_loss"),
    (dict(method="pbn-none", plateau_on="train_loss"), "method 'pbn-none' has no learning-rate scheduler"),
    (dict(precise_bn="maybe"), "precise_bn: expected true or false, got 'maybe'"),
    (dict(precise_bn=2), "precise_bn: expected true or false, got 2"),
])
def test_bad_values_are_refused(store, tmp_path, kw, needle):
    with pytest.raises(HashbenchError) as err:
        _cfg(store, tmp_path, **kw)
    assert needle in str(err.value), str(err.value)


def test_defaults_and_method_validation(store, tmp_path):
    cfg = _cfg(store, tmp_path, method="pbn-none", precise_bn="true")
    assert cfg.plateau_on == "val_map" and cfg.precise_bn is True
    assert TrainConfig.from_dict(cfg.to_dict()).plateau_on == "val_map"
    with pytest.raises(ValueError, match="plateau_on must be one of"):
        Method(id="bad-plateau", summary="", citation="", build_model=None, build_loss=None,
               build_optimizer=None, plateau_on="val_loss")


@pytest.mark.parametrize("mid", ["drh", "dph", "drh-nq", "drn-ksh"])
def test_the_drh_family_decays_on_its_training_objective(mid):
    assert get_method(mid).plateau_on == "train_loss"
    assert get_method(mid).describe()["plateau_on"] == "train_loss"


# --------------------------------------------------------------------------- DDP (2 CPU processes, gloo)

def _ddp_worker(rank, init, cfg_dict):
    import torch.distributed as dist

    from hashbench.platform.training import fit
    from hashbench.platform.training.session import Session

    class TwoRanks(Session):
        world_rank, world_size, device = rank, 2, torch.device("cpu")

        def report(self, metrics, checkpoint_dir=None):
            pass

        def get_checkpoint_dir(self):
            return None

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        fit(TrainConfig.from_dict(cfg_dict), TwoRanks())
        dist.barrier()   # rank 1 returns while rank 0 still writes the run: tear gloo down together
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_precise_bn_under_ddp_uses_rank_0_and_the_whole_train_split(tmp_path):
    """drh-nq (residual trunk: BN2d layers, BN1d centring) on 2 gloo workers: no collective in the
    pass (it would hang), and the saved model's statistics are those of its weights over all 40 train
    items in batches of 16 // 2, not of rank 0's shard."""
    import torch.multiprocessing as mp

    from hashbench.platform.data import load_dataset, write_store
    from hashbench.platform.registry import ModelContext
    from hashbench.platform.training.batches import SplitData
    from hashbench.platform.training.precise_bn import batch_norm_layers

    rng = np.random.default_rng(1)
    y = np.arange(60) % 2
    img = rng.integers(0, 80, size=(60, 1, 8, 8)).astype(np.uint8)
    img[y == 1, :, :4, :] += 150
    store = str(write_store(tmp_path / "s", img, y, np.array([0] * 40 + [1] * 10 + [2] * 10, np.int8),
                            class_names=["a", "b"]).path)
    cfg = TrainConfig(method="drh-nq", dataset=store, bits=8, epochs=2, batch_size=16, workers=2,
                      params={"depth": 18, "width": 2}, out_dir=str(tmp_path / "runs"), eval_ks=(10, 100),
                      precise_bn=True, restore_best=False, run_name="ddp")
    mp.spawn(_ddp_worker, args=(f"file://{tmp_path / 'pg'}", cfg.to_dict()), nprocs=2, join=True)

    state = torch.load(os.path.join(cfg.run_dir, "model.pt"), weights_only=True)
    ds = load_dataset(store)
    ctx = ModelContext(in_channels=1, image_size=8, num_classes=2, bits=8, multi_label=False)
    model = get_method("drh-nq").build_model(ctx, cfg.hp)
    model.load_state_dict(state)
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batch_norm_layers(model)]
    assert len(saved) > 10
    train = SplitData.from_store(ds, "train", "cpu")

    def stats(rows_list):
        recompute_bn_stats(model, [train.batch(r).images for r in rows_list])
        return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batch_norm_layers(model)]

    for (m_s, v_s), (m_r, v_r) in zip(saved, stats(even_batches(40, 8, "cpu"))):
        torch.testing.assert_close(m_s, m_r, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v_s, v_r, rtol=1e-4, atol=1e-5)
    shard = stats(even_batches(20, 8, "cpu"))   # half the split alone gives other numbers
    assert max((a - b).abs().max().item() for (a, _), (b, _) in zip(saved, shard)) > 1e-3


def test_sweep_configs_and_the_train_command_pass_both_options(store, tmp_path):
    import textwrap

    from hashbench.platform.cli import build_parser
    from hashbench.platform.sweep import parse_text

    sweep = parse_text(textwrap.dedent("""\
        name: t
        methods: {drh: {}}
        datasets: [pneumoniamnist]
        bits: [16]
        train: {plateau_on: val_map, precise_bn: true}
        """), "cfg.yaml")
    assert sweep.train["plateau_on"] == "val_map" and sweep.train["precise_bn"] is True
    args = build_parser().parse_args(["train", "pbn-loss", "--dataset", store, "--bits", "4",
                                      "--plateau-on", "val_map", "--precise-bn"])
    assert (args.plateau_on, args.precise_bn) == ("val_map", True)
