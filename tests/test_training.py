"""The training loop (hashbench.platform.training) on tiny synthetic stores, in-process.

Methods used here are registered by this file (a 2-layer network), so the tests check the
loop, not any paper's method. Ray Train runs are in test_training_ray.py.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from torch import nn

from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, Param, Requirements, get_method, register
from hashbench.platform.training import (
    FAIL_ENV, LocalSession, RunResult, TrainConfig, fit, resolve_augment, run_local)
from hashbench.platform.training.batches import augment_batch, class_balanced_plan, random_plan


# --------------------------------------------------------------------------- brute-force reference

def brute_map_at_k(q_codes, db_codes, q_labels, db_labels, k):
    """mAP@k, hamming distance, ties broken by database index, AP over the hits in the top k."""
    aps = []
    for i in range(len(q_codes)):
        d = [(int((q_codes[i] != db_codes[j]).sum()), j) for j in range(len(db_codes))]
        d.sort()
        rel = [bool((q_labels[i] & db_labels[j]).any()) for _, j in d[:k]]
        hits, prec_sum = 0, 0.0
        for r, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                prec_sum += hits / r
        aps.append(prec_sum / hits if hits else 0.0)
    return float(np.mean(aps))


# --------------------------------------------------------------------------- tiny test methods

class TinyNet(nn.Module):
    def __init__(self, ctx, hidden=16):
        super().__init__()
        d = ctx.in_channels * ctx.image_size * ctx.image_size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, ctx.bits))
        self.head = nn.Linear(ctx.bits, ctx.num_classes)
        self.register_buffer("offset", torch.zeros(ctx.bits))
        self.register_buffer("switches", torch.zeros((), dtype=torch.long))

    def train(self, mode=True):
        """Counts eval() -> train() switches, as DCH counts its pre-training epochs."""
        if mode and not self.training:
            self.switches += 1
        return super().train(mode)

    def forward(self, x):
        z = torch.tanh(self.body(x))
        return {"z": z, "logits": self.head(z)}

    def encode(self, x):
        return torch.tanh(self.body(x)) - self.offset


class TinyLoss(nn.Module):
    """CE + quantization; ``nan_at`` poisons the loss from that (0-based) call on."""

    def __init__(self, nan_at):
        super().__init__()
        self.nan_at, self.calls = nan_at, 0

    def forward(self, out, batch, model):
        ce = nn.functional.cross_entropy(out["logits"], batch.targets)
        quant = (out["z"].abs() - 1).pow(2).mean()
        loss = ce + 0.1 * quant
        if 0 <= self.nan_at <= self.calls:
            loss = loss + float("nan")
        self.calls += 1
        return {"loss": loss, "ce": ce, "quant": quant, "switches": model.switches.float()}


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    seen: list = []

    def step(self, metrics):
        RecordingPlateau.seen.append(float(metrics))
        super().step(metrics)


FINALIZE_CALLS: list = []


def _finalize(model, batches, hp):
    seen = torch.cat([b.index for b in batches])
    FINALIZE_CALLS.append(seen.cpu())
    with torch.no_grad():
        model.offset.fill_(0.25)


def _tiny(mid, **kw):
    params = (Param("lr", 0.05, bounds=(0, None), search=(1e-3, 1.0), log=True),
              Param("nan_at", -1, type="int", bounds=(-1, None)),
              Param("plateau", False, type="bool")) + kw.pop("extra", ())
    return register(Method(
        id=mid, summary="tiny test method", citation="none",
        build_model=lambda ctx, hp: TinyNet(ctx),
        build_loss=lambda ctx, hp: TinyLoss(hp["nan_at"]),
        build_optimizer=lambda p, hp: torch.optim.SGD(p, lr=hp["lr"], momentum=0.9),
        build_scheduler=lambda opt, hp: (RecordingPlateau(opt, mode="max", factor=0.5, patience=0)
                                         if hp["plateau"] else None),
        params=params, batch_size=8, epochs=2, **kw))


@pytest.fixture(autouse=True, scope="module")
def _tiny_methods():
    """Register the test-only methods for this module, and remove them afterwards."""
    from hashbench.platform import registry

    registry.list_methods()  # load the real methods first
    saved = dict(registry._REGISTRY)
    _tiny("tiny-test")
    _tiny("tiny-float", code_type="float", distance="l2")
    _tiny("tiny-cb", sampler="class-balanced", extra=(Param("spc", 2, type="int", bounds=(1, None)),))
    _tiny("tiny-masks", requires=Requirements(masks=True))
    _tiny("tiny-single", requires=Requirements(multi_label=False, min_image_size=16))
    _tiny("tiny-2stage", finalize=_finalize)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


# --------------------------------------------------------------------------- tiny stores

def make_store(path, n_train=48, n_val=12, n_test=12, classes=3, size=8, multi_label=False, seed=0):
    """Classes are separable: class c has a bright c-th horizontal band, plus noise."""
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = np.arange(n) % classes
    rng.shuffle(y)
    img = rng.integers(0, 60, size=(n, 1, size, size)).astype(np.uint8)
    band = size // classes
    for c in range(classes):
        img[y == c, :, c * band:(c + 1) * band, :] += 150
    labels = np.eye(classes, dtype=np.uint8)[y]
    if multi_label:
        labels[::5, (y[::5] + 1) % classes] = 1
    split = np.array([0] * n_train + [1] * n_val + [2] * n_test, np.int8)
    return write_store(path, img, labels, split, class_names=[f"c{i}" for i in range(classes)])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(make_store(tmp_path_factory.mktemp("stores") / "tiny").path)


def cfg_for(store, tmp_path, **kw):
    base = dict(method="tiny-test", dataset=store, bits=8, epochs=2, out_dir=str(tmp_path / "runs"),
                device="cpu", eval_ks=(10, 100))
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("kw, needle", [
    (dict(method="no-such-method"), "tiny-test"),          # the message lists the valid ids
    (dict(bits=0), "bits"),
    (dict(bits=-3), "bits"),
    (dict(epochs=0), "epochs"),
    (dict(workers=0), "workers"),
    (dict(params={"nope": 1}), "valid parameters: lr, nan_at, plateau"),
    (dict(params={"lr": "fast"}), "'lr'"),
    (dict(params={"lr": -1}), "outside the valid range"),
    (dict(augment={"sharpen": True}), "valid options: enabled, hflip"),
    (dict(augment={"brightness": 2}), "brightness"),
    (dict(batch_size=2, workers=3), "batch_size 2"),
    (dict(patience=0), "patience"),
    (dict(eval_ks=(0,)), "eval_ks"),
    (dict(method="tiny-masks"), "needs segmentation masks"),
    (dict(method="tiny-single"), "at least 16 px"),
    (dict(method="tiny-cb", params={"spc": 30}), "spc=30"),
    (dict(method="tiny-cb", batch_size=8, workers=8), "fewer than spc=2"),
    (dict(device="tpu"), "device 'tpu'"),
    (dict(run_name="../escape"), "run_name"),
    (dict(compile="fast"), "compile 'fast'"),
    (dict(cuda_graph="yes"), "cuda_graph 'yes'"),
    (dict(gpus_per_worker=-1), "gpus_per_worker"),
    (dict(cpus_per_worker=0, gpus_per_worker=0), "both 0"),
])
def test_config_rejects_bad_input(store, tmp_path, kw, needle):
    with pytest.raises(HashbenchError, match=None) as err:
        cfg_for(store, tmp_path, **kw)
    assert needle in str(err.value), str(err.value)


def test_config_rejects_missing_dataset_and_multilabel_for_single_label_method(tmp_path, data_home):
    with pytest.raises(HashbenchError, match="not found"):
        cfg_for("no-such-dataset", tmp_path)
    multi = str(make_store(tmp_path / "multi", size=16, multi_label=True).path)
    with pytest.raises(HashbenchError, match="single-label data only"):
        cfg_for(multi, tmp_path, method="tiny-single")


def test_config_rejects_store_without_val(tmp_path):
    from hashbench.platform.data import write_store

    img = np.zeros((6, 1, 8, 8), np.uint8)
    s = write_store(tmp_path / "noval", img, np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 0, 2, 2]),
                    class_names=["a", "b"])
    with pytest.raises(HashbenchError, match="no 'val' items"):
        cfg_for(str(s.path), tmp_path)


def test_config_defaults_and_roundtrip(store, tmp_path):
    cfg = cfg_for(store, tmp_path, epochs=None, params={"lr": "0.1"}, augment={"rot90": "true"})
    m = get_method("tiny-test")
    assert cfg.epochs == m.epochs and cfg.batch_size == m.batch_size
    assert cfg.hp == {"lr": 0.1, "nan_at": -1, "plateau": False}
    assert cfg.augment["rot90"] is True and cfg.augment["hflip"] is True
    assert 100 in cfg.eval_ks
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    assert again.run_id == cfg.run_id and os.path.isabs(again.out_dir)


# --------------------------------------------------------------------------- augmentation & samplers

def test_rot90_from_transpose_and_flips_matches_torch_rot90():
    x = torch.arange(4 * 2 * 5 * 5, dtype=torch.float32).view(4, 2, 5, 5)
    m = (torch.arange(4 * 25).view(4, 5, 5) % 2).to(torch.uint8)
    cfg = dict(resolve_augment({"hflip": False, "rot90": True, "brightness": 0, "contrast": 0}))
    g = torch.Generator().manual_seed(3)
    ks = torch.randint(0, 4, (4,), generator=torch.Generator().manual_seed(3))
    y, my = augment_batch(x.clone(), m.clone(), cfg, g)
    for i in range(4):
        k = int(ks[i])
        assert torch.equal(y[i], torch.rot90(x[i], -k, (-2, -1))), k
        assert torch.equal(my[i], torch.rot90(m[i], -k, (-2, -1))), k
    # every rotation is reachable
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        y, _ = augment_batch(x[:1].clone(), None, cfg, g)
        seen.add(next(k for k in range(4) if torch.equal(y[0], torch.rot90(x[0], -k, (-2, -1)))))
    assert seen == {0, 1, 2, 3}


def test_flips_and_jitter_bounds():
    x = torch.rand(64, 1, 6, 6)
    cfg = resolve_augment({"hflip": True, "vflip": True, "brightness": 0.0, "contrast": 0.0})
    y, _ = augment_batch(x.clone(), None, cfg, torch.Generator().manual_seed(1))
    kinds = []
    for i in range(64):
        opts = [x[i], x[i].flip(-1), x[i].flip(-2), x[i].flip(-1).flip(-2)]
        kinds.append(next(j for j, o in enumerate(opts) if torch.equal(y[i], o)))
    assert set(kinds) == {0, 1, 2, 3}
    cfg = resolve_augment({"hflip": False, "brightness": 0.1, "contrast": 0.0})
    x = torch.full((200, 1, 4, 4), 0.5)
    y, _ = augment_batch(x.clone(), None, cfg, torch.Generator().manual_seed(2))
    shift = y[:, 0, 0, 0] - 0.5
    assert torch.allclose(y - 0.5, shift.view(-1, 1, 1, 1).expand_as(y))  # one shift per image
    assert shift.abs().max() <= 0.1 + 1e-6 and shift.std() > 0.03
    cfg = resolve_augment({"hflip": False, "brightness": 1.0, "contrast": 1.0})
    y, _ = augment_batch(torch.rand(100, 1, 4, 4), None, cfg, torch.Generator().manual_seed(2))
    assert y.min() >= 0 and y.max() <= 1
    off = resolve_augment({"enabled": False})
    assert off["enabled"] is False


def test_random_plan_shards_are_disjoint_and_cover_the_epoch():
    plan = random_plan(23, 8, 2, torch.Generator().manual_seed(0))
    assert plan.shape == (2, 2, 4)                       # 23 // 8 = 2 steps, drop the last 7
    flat = plan.flatten()
    assert len(set(flat.tolist())) == 16 and flat.max() < 23
    assert not set(plan[:, 0].flatten().tolist()) & set(plan[:, 1].flatten().tolist())
    small = random_plan(5, 8, 2, torch.Generator().manual_seed(0))
    assert small.shape == (1, 2, 2)
    assert torch.equal(plan, random_plan(23, 8, 2, torch.Generator().manual_seed(0)))


def test_class_balanced_plan():
    targets = torch.tensor([0] * 10 + [1] * 7 + [2] * 5 + [3] * 1)    # class 3 has < spc items
    plan = class_balanced_plan(targets, 12, 2, 3, torch.Generator().manual_seed(0))
    steps, world, per = plan.shape
    assert world == 2 and per == 6                       # 2 classes x 3 per worker batch
    for s in range(steps):
        for w in range(world):
            rows = plan[s, w]
            assert len(set(rows.tolist())) == per        # no item twice in a batch
            cls = targets[rows]
            values, counts = cls.unique(return_counts=True)
            assert len(values) == 2 and (counts == 3).all() and 3 not in values.tolist()
    # about one pass: every usable item is drawn at least once over a few epochs
    seen = set()
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        seen |= set(class_balanced_plan(targets, 12, 2, 3, g).flatten().tolist())
    assert seen == set(range(22))


# --------------------------------------------------------------------------- the loop

def test_fit_writes_a_complete_run_dir_and_metrics_match_the_codes(store, tmp_path):
    reports = []
    res = run_local(cfg_for(store, tmp_path, epochs=3), on_epoch=reports.append)
    assert isinstance(res, RunResult) and res.epochs_run == 3 and len(res.history) == 3
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    for row in res.history:
        assert {"epoch", "val_mAP@100", "loss", "ce", "quant", "lr"} <= set(row)
        assert row["loss"] == pytest.approx(row["ce"] + 0.1 * row["quant"], rel=1e-5)
        assert row["switches"] == row["epoch"]           # one eval() -> train() switch per epoch
    assert reports[-1]["done"] and reports[-1]["test_mAP@100"] == res.metrics["test_mAP@100"]
    assert len(reports) == 4
    files = set(os.listdir(res.run_dir))
    assert files == {"config.json", "metrics.json", "codes.npz", "per_query.npz", "model.pt"}  # no checkpoints
    with np.load(os.path.join(res.run_dir, "per_query.npz")) as pq:   # per-query values: their mean is the metric
        assert pq["sign:test_mAP@100"].dtype == np.float16 and pq["sign:test_mAP@100"].shape == (12,)
        for m in ("test_mAP@10", "test_mAP@100", "test_P@10", "test_MAP@R"):
            assert float(pq[f"sign:{m}"].astype(np.float64).mean()) == pytest.approx(res.metrics[m], abs=1e-3)
        np.testing.assert_array_equal(pq["query_index"], np.arange(60, 72))
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    assert codes["query_codes"].shape == (12, 8) and codes["db_codes"].shape == (48, 8)
    assert set(np.unique(codes["db_codes"])) <= {-1, 1} and codes["db_codes"].dtype == np.int8
    assert str(codes["code_type"]) == "binary" and str(codes["distance"]) == "hamming"
    assert int(codes["bits"]) == 8
    np.testing.assert_array_equal(codes["db_index"], np.arange(48))
    np.testing.assert_array_equal(codes["query_index"], np.arange(60, 72))
    from hashbench.platform.data import load_dataset
    from hashbench.platform.evaluation import evaluate

    ds = load_dataset(store)
    np.testing.assert_array_equal(codes["query_labels"], ds.labels[codes["query_index"]])
    np.testing.assert_array_equal(codes["db_labels"], ds.labels[codes["db_index"]])
    again = evaluate(codes["query_codes"], codes["db_codes"], codes["query_labels"].argmax(1),
                     codes["db_labels"].argmax(1), ks=(10, 100))
    assert res.metrics["test_mAP@10"] == pytest.approx(again["mAP@10"], abs=1e-12)
    # the run's protocol record holds evaluate()'s protocol and adds the run's own choices (code type,
    # radii, kNN, ...): every key evaluate() reports must agree
    assert {k: res.protocol.get(k) for k in again["protocol"]} == again["protocol"]
    curve = evaluate(codes["query_codes"], codes["db_codes"], codes["query_labels"].argmax(1),
                     codes["db_labels"].argmax(1), ks=(10,), pr_curve=True)["pr_curve"]
    assert res.metrics["pr_curve"] == json.loads(json.dumps(curve, default=lambda a: np.asarray(a).tolist()))
    saved = json.load(open(os.path.join(res.run_dir, "metrics.json")))
    assert saved["metrics"]["pr_curve"] == res.metrics["pr_curve"]
    ref = brute_map_at_k(codes["query_codes"], codes["db_codes"], codes["query_labels"].astype(bool),
                         codes["db_labels"].astype(bool), 10)
    by_index = evaluate(codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"],
                        ks=(10,), ties="index")
    assert by_index["mAP@10"] == pytest.approx(ref, abs=1e-9)
    assert res.metrics["test_mAP@10"] > 0.6               # separable classes are learnt
    assert res.metrics["val_mAP@100"] == max(r["val_mAP@100"] for r in res.history)
    state = torch.load(os.path.join(res.run_dir, "model.pt"), weights_only=True)
    assert set(state) == set(TinyNet(types.SimpleNamespace(in_channels=1, image_size=8, bits=8,
                                                            num_classes=3)).state_dict())
    loaded = RunResult.load(res.run_dir)
    assert loaded.metrics == res.metrics and loaded.run_id == res.run_id
    assert set(res.timings) >= {"train_s", "encode_s", "eval_s", "total_s"}
    assert res.throughput["encode_images_per_s"] > 0 and res.device == "1x cpu"
    assert json.load(open(os.path.join(res.run_dir, "config.json")))["hp"]["lr"] == 0.05
    with pytest.raises(HashbenchError, match="already finished"):
        run_local(TrainConfig.from_dict(res.config))


def test_same_seed_same_result_other_seed_differs(store, tmp_path):
    a = run_local(cfg_for(store, tmp_path, run_name="a", augment={"rot90": True}))
    b = run_local(cfg_for(store, tmp_path, run_name="b", augment={"rot90": True}))
    c = run_local(cfg_for(store, tmp_path, run_name="c", seed=1, augment={"rot90": True}))
    assert a.history == [dict(r, train_s=x["train_s"], train_images_per_s=x["train_images_per_s"])
                         for r, x in zip(b.history, a.history)]
    assert a.metrics == b.metrics
    ca, cb = (np.load(os.path.join(r.run_dir, "codes.npz")) for r in (a, b))
    np.testing.assert_array_equal(ca["db_codes"], cb["db_codes"])
    assert [r["loss"] for r in a.history] != [r["loss"] for r in c.history]


def test_multi_label_data_is_evaluated_as_multi_label(store, tmp_path):
    multi = str(make_store(tmp_path / "multi", multi_label=True).path)
    res = run_local(cfg_for(multi, tmp_path, epochs=1))
    assert res.protocol["multi_label"] is True
    single = run_local(cfg_for(store, tmp_path, epochs=1))
    assert single.protocol["multi_label"] is False


def test_float_codes_stay_float(store, tmp_path):
    res = run_local(cfg_for(store, tmp_path, method="tiny-float", epochs=1))
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    assert codes["db_codes"].dtype == np.float32 and str(codes["distance"]) == "l2"
    assert len(np.unique(codes["db_codes"])) > 2


def test_nan_loss_fails_naming_epoch_and_step(store, tmp_path):
    cfg = cfg_for(store, tmp_path, params={"nan_at": 8}, batch_size=8)  # 48 / 8 = 6 steps per epoch
    with pytest.raises(HashbenchError, match=r"NaN or infinite at epoch 1, step 2"):
        run_local(cfg)
    assert not os.path.exists(os.path.join(cfg.run_dir, "metrics.json"))


def test_resume_after_failure_gives_the_uninterrupted_result(store, tmp_path, monkeypatch):
    whole = run_local(cfg_for(store, tmp_path, epochs=3, run_name="whole"))
    cfg = cfg_for(store, tmp_path, epochs=3, run_name="broken")
    monkeypatch.setenv(FAIL_ENV, "1")
    monkeypatch.setenv("HASHBENCH_TESTING", "1")  # the fault hook's test-only switch
    with pytest.raises(RuntimeError, match="injected failure at the start of epoch 1"):
        run_local(cfg)
    assert os.listdir(os.path.join(cfg.run_dir, "checkpoints")) == ["checkpoint_000000"]
    with pytest.raises(HashbenchError, match=r"different configuration \(epochs"):
        run_local(cfg_for(store, tmp_path, epochs=4, run_name="broken"))
    res = run_local(cfg)                                   # same run name: resumes, hook stays quiet
    assert res.resumed_from == 1 and res.epochs_run == 3
    assert res.metrics == whole.metrics
    assert [r["loss"] for r in res.history] == [r["loss"] for r in whole.history]


def test_early_stopping_and_plateau_scheduler(store, tmp_path):
    RecordingPlateau.seen.clear()
    res = run_local(cfg_for(store, tmp_path, epochs=6, params={"lr": 0.0, "plateau": True}, patience=2,
                            augment={"enabled": False}))
    vals = [r["val_mAP@100"] for r in res.history]
    assert res.epochs_run == 3 and vals[0] == vals[1] == vals[2]   # lr 0: nothing improves
    assert RecordingPlateau.seen == vals                  # stepped with the val mAP each epoch
    assert res.best_epoch == 0


def test_class_balanced_method_trains(store, tmp_path):
    res = run_local(cfg_for(store, tmp_path, method="tiny-cb", epochs=1, batch_size=6))
    assert res.epochs_run == 1 and np.isfinite(res.metrics["test_mAP@100"])


def test_finalize_sees_the_train_split_and_its_changes_are_saved(store, tmp_path):
    FINALIZE_CALLS.clear()
    res = run_local(cfg_for(store, tmp_path, method="tiny-2stage", epochs=1))
    assert len(FINALIZE_CALLS) == 1 and sorted(FINALIZE_CALLS[0].tolist()) == list(range(48))
    state = torch.load(os.path.join(res.run_dir, "model.pt"), weights_only=True)
    assert torch.all(state["offset"] == 0.25)
    # the selection metric is measured with the fitted (finalized) hash function
    from hashbench.platform.data import load_dataset
    from hashbench.platform.evaluation import evaluate
    from hashbench.platform.registry import ModelContext

    ds = load_dataset(store)
    ctx = ModelContext(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes, bits=8)
    model = TinyNet(ctx)
    model.load_state_dict(state)
    model.eval()
    val = ds.indices("val")
    with torch.no_grad():
        z = model.encode(torch.from_numpy(np.asarray(ds.images[val])).float() / 255)
    q = torch.where(z >= 0, 1, -1).numpy()
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    ref = evaluate(q, codes["db_codes"], np.asarray(ds.labels[val]).argmax(1), codes["db_labels"].argmax(1),
                   ks=(100,))
    assert res.metrics["val_mAP@100"] == pytest.approx(ref["mAP@100"])


def test_fit_with_a_custom_session_reports_every_epoch_with_a_checkpoint(store, tmp_path):
    class Spy(LocalSession):
        def report(self, metrics, checkpoint_dir=None):
            assert checkpoint_dir is not None and os.path.isfile(os.path.join(checkpoint_dir, "state.pt"))
            if metrics.get("done"):
                assert {"codes.npz", "metrics.json", "model.pt"} <= set(os.listdir(checkpoint_dir))
            super().report(metrics, checkpoint_dir)

    spy = Spy(None, device="cpu")
    res = fit(cfg_for(store, tmp_path, epochs=2), spy)
    assert len(spy.reports) == 3 and spy.reports[-1]["test_mAP@100"] == res.metrics["test_mAP@100"]


# --------------------------------------------------------------------------- CLI

def test_cli_train_json_and_errors(store, tmp_path, capfd):
    from hashbench.platform.cli import main

    rc = main(["train", "tiny-test", "--dataset", store, "--bits", "8", "--epochs", "1", "--local",
               "--device", "cpu", "--out", str(tmp_path / "cli"), "--set", "lr=0.1", "--json"])
    out = capfd.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert doc["config"]["hp"]["lr"] == 0.1 and "test_mAP@100" in doc["metrics"]
    assert os.path.isfile(os.path.join(doc["run_dir"], "metrics.json"))
    assert "epoch" in out.err                             # the progress bar (on the terminal's fd 2)
    rc = main(["train", "tiny-test", "--dataset", store, "--bits", "8", "--set", "nope=1", "--local"])
    err = capfd.readouterr().err
    assert rc == 2 and "valid parameters: lr, nan_at, plateau" in err
    rc = main(["train", "tiny-test", "--dataset", store, "--bits", "0", "--local"])
    assert rc == 2 and "bits" in capfd.readouterr().err
    rc = main(["train", "tiny-test", "--dataset", store, "--bits", "8", "--set", "lr", "--local"])
    assert rc == 2 and "KEY=VALUE" in capfd.readouterr().err
    rc = main(["train", "tiny-test", "--dataset", store, "--bits", "8", "--workers", "2", "--local"])
    assert rc == 2 and "workers=2" in capfd.readouterr().err


def test_worker_hashbench_errors_reach_the_driver_as_hashbench_errors():
    from hashbench.platform.training.runner import _unwrap

    class FakeWorkerGroupError(Exception):
        def __init__(self, failures):
            super().__init__("workers failed")
            self.worker_failures = failures

    inner = HashbenchError("the loss became NaN or infinite at epoch 3, step 7")
    wrapped = RuntimeError("ray task error")
    wrapped.__cause__ = inner
    out = _unwrap(FakeWorkerGroupError({1: RuntimeError("other"), 0: wrapped}))
    assert isinstance(out, HashbenchError) and "epoch 3, step 7" in str(out)
    plain = FakeWorkerGroupError({0: RuntimeError("segfault")})
    assert _unwrap(plain) is plain


def test_session_base_class_and_devices():
    from hashbench.platform.training import Session, default_device

    with pytest.raises(NotImplementedError):
        Session().report({"epoch": 0})
    with pytest.raises(NotImplementedError):
        Session().get_checkpoint_dir()
    assert default_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert default_device(None) == torch.device("cpu")
        with pytest.raises(HashbenchError, match="no CUDA GPU"):
            default_device("cuda")


def test_also_binary_evaluates_sign_codes_with_hamming(store, tmp_path, monkeypatch):
    """A float method with also_binary gets a sign readout whose metrics equal evaluating sign(codes) by Hamming."""
    import dataclasses

    from hashbench.platform import registry
    from hashbench.platform.evaluation import evaluate
    from hashbench.platform.training import TrainConfig, run_local

    base = registry.get_method("drh")
    monkeypatch.setitem(registry._REGISTRY, "drh-nb-sign",
                        dataclasses.replace(base, id="drh-nb-sign", code_type="float", distance="l2",
                                            also_binary=True, readouts=()))
    cfg = TrainConfig(method="drh-nb-sign", dataset=store, bits=8, epochs=1, batch_size=16,
                      params={"depth": 18, "width": 2}, out_dir=str(tmp_path / "runs"), device="cpu")
    res = run_local(cfg)
    codes = np.load(f"{res.run_dir}/codes.npz")
    q, db = np.where(codes["query_codes"] >= 0, 1, -1), np.where(codes["db_codes"] >= 0, 1, -1)
    ref = evaluate(q, db, codes["query_labels"].argmax(1), codes["db_labels"].argmax(1), distance="hamming",
                   ks=(10, 100, 1000, "all"))
    for k in ("mAP@10", "mAP@100", "mAP@all"):
        assert res.readouts["sign"]["metrics"][f"test_{k}"] == pytest.approx(ref[k])


# --------------------------------------------------------------------------- CUDA-graph eligibility

def test_methods_declare_whether_their_step_can_be_a_cuda_graph():
    dch, drh = get_method("dch"), get_method("drh")
    assert dch.graph_safe(dch.resolve())                                  # pure tensor step
    assert not dch.graph_safe(dch.resolve({"pretrain_epochs": 2}))        # reads an epoch counter
    assert all(get_method(m).graph_safe(get_method(m).resolve()) for m in ("drh", "dph", "drh-nq"))
    assert not get_method("jtanet").graph_safe(get_method("jtanet").resolve())   # not declared: eager
    assert drh.describe()["cuda_graph"] is True and get_method("jtanet").describe()["cuda_graph"] is False


def test_cpu_runs_never_use_a_cuda_graph(store, tmp_path):
    res = fit(cfg_for(store, tmp_path, epochs=1), LocalSession(None, device="cpu"))
    assert "cuda_graph" not in res.history[0]


@pytest.mark.parametrize("gpus, given, expected", [
    (0.125, None, False), (0.5, None, False), (1, None, True), (2, None, True), (0, None, True),
    (0.125, True, True), (1, False, False)])
def test_cudnn_benchmark_auto_is_off_only_on_a_shared_gpu(store, tmp_path, gpus, given, expected):
    cfg = cfg_for(store, tmp_path, gpus_per_worker=gpus, cudnn_benchmark=given)
    assert cfg.cudnn_benchmark is expected
    assert TrainConfig.from_dict(cfg.to_dict()).cudnn_benchmark is expected   # recorded resolved


def test_cudnn_benchmark_must_be_a_bool(store, tmp_path):
    with pytest.raises(HashbenchError, match=r"cudnn_benchmark 'yes': expected true, false or none"):
        cfg_for(store, tmp_path, cudnn_benchmark="yes")
