"""LSH and ITQ on CNN features: the fitted hash functions against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.methods.itq import itq_rotation, pca
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method

CTX = ModelContext(in_channels=1, image_size=16, num_classes=3, bits=8)


def _model(mid, ctx=CTX, **over):
    m = get_method(mid)
    hp = m.resolve(over)
    return m, m.build_model(ctx, hp), hp


def _batches(n=60, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    t = torch.randint(0, 3, (n,), generator=g)
    return [Batch(images=x[i:i + 16], labels=F.one_hot(t[i:i + 16], 3).float(), targets=t[i:i + 16])
            for i in range(0, n, 16)]


def test_itq_loss_decreases_monotonically_and_r_stays_orthogonal():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    r, losses = itq_rotation(v, 50, torch.Generator().manual_seed(1))
    assert len(losses) == 51
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]
    assert torch.allclose(r.T @ r, torch.eye(6, dtype=torch.float64), atol=1e-10)
    # the final R is the Procrustes optimum for its own B: no orthogonal matrix from an SVD of a
    # perturbed problem does better (independent check with numpy)
    b = np.where((v @ r).numpy() >= 0, 1.0, -1.0)
    u, _, wt = np.linalg.svd(v.numpy().T @ b)
    best = u @ wt
    q_ours = ((b - (v @ r).numpy()) ** 2).sum()
    q_best = ((b - v.numpy() @ best) ** 2).sum()
    assert q_ours == pytest.approx(q_best, rel=1e-6)


def test_pca_matches_numpy_svd_subspace():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64) * torch.arange(1, 11, dtype=torch.float64)
    mu, p = pca(x, 3)
    xc = (x - x.mean(0)).numpy()
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ref = vt[:3].T
    assert np.allclose(mu.numpy(), x.numpy().mean(0))
    assert np.allclose(np.abs(p.numpy().T @ ref), np.eye(3), atol=1e-8)  # same directions up to sign


def test_lsh_codes_are_signs_of_seeded_gaussian_projections_of_centred_features():
    m, model, hp = _model("lsh", seed=7)
    batches = _batches()
    m.finalize(model, batches, hp)
    model.eval()
    x = torch.cat([b.images for b in batches])
    with torch.no_grad():
        feats = model.features(x).double()
        w = torch.randn(2048, 8, generator=torch.Generator().manual_seed(7))  # drawn independently here
        expect = np.sign((feats - feats.mean(0)).numpy() @ w.double().numpy())
        got = np.sign(model.encode(x).numpy())
    assert (got == expect).mean() > 0.999  # float32 vs float64 may flip a value at exactly ~0
    _, other, _ = _model("lsh", seed=8)
    assert not torch.equal(other.projection, model.projection)


def test_itq_finalize_stores_the_projection_in_the_state_dict():
    m, model, hp = _model("itq")
    batches = _batches()
    before = model.projection.clone()
    m.finalize(model, batches, hp)
    assert not torch.equal(before, model.projection)
    x = torch.cat([b.images for b in batches])
    model.eval()
    with torch.no_grad():
        feats = model.features(x).double()
        mu = feats.mean(0)
        # the PCA subspace from numpy's SVD, independent of the module's pca()
        p = torch.from_numpy(np.linalg.svd((feats - mu).numpy(), full_matrices=False)[2][:8].T.copy())
        v = (feats - mu) @ p
        # the fitted projection = P·R with R orthogonal: PᵀW = R
        r = p.T @ model.projection.double()
        assert torch.allclose(r.T @ r, torch.eye(8, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(model.mean.double(), feats.mean(0), atol=1e-5)
        codes = torch.sign(model.encode(x).double())
        q = ((codes - v @ r) ** 2).sum()
        q_pca = ((torch.sign(v) - v) ** 2).sum()  # no rotation: ITQ must do at least as well
        assert q <= q_pca + 1e-6
    _, fresh, _ = _model("itq")
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.encode(x), model.encode(x))


def test_classification_loss_is_cross_entropy():
    m, model, hp = _model("lsh")
    b = _batches(16)[0]
    out = model(b.images)
    res = m.build_loss(CTX, hp)(out, b)
    logits = out["logits"].detach().double()
    ref = -np.mean([float(torch.log_softmax(logits[i], 0)[b.targets[i]]) for i in range(16)])
    assert res["loss"].item() == pytest.approx(ref, rel=1e-5)
    ml = ModelContext(in_channels=1, image_size=16, num_classes=3, bits=8, multi_label=True)
    res = m.build_loss(ml, hp)(out, b)
    p = torch.sigmoid(logits)
    y = b.labels.double()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum(1).mean()  # summed over classes, as DCH
    assert res["loss"].item() == pytest.approx(bce.item(), rel=1e-5)


def test_bad_sizes_are_user_errors():
    with pytest.raises(HashbenchError, match="2048 CNN features"):
        _model("itq", ModelContext(in_channels=1, image_size=16, num_classes=3, bits=4096))
    m, model, hp = _model("itq")
    with pytest.raises(HashbenchError, match="at least bits=8"):
        m.finalize(model, _batches(5), hp)
    with pytest.raises(HashbenchError, match="empty"):
        m.finalize(model, [], hp)


def test_registration():
    for mid in ("lsh", "itq"):
        m = get_method(mid)
        assert m.finalize is not None and m.code_type == "binary" and m.distance == "hamming"
        assert m.defaults()["lr"] == 1.0
    assert get_method("itq").defaults()["iterations"] == 50
