"""The papers' baselines: KSH, SDH, CCA-ITQ (dch-*, drn-ksh), ce-embedding, ynet-sum, ynet-plain.

References are independent of the code under test: finite differences, scipy's generalised
symmetric eigensolver (LAPACK), scikit-learn's CCA, brute force over every code of a tiny case,
numpy re-computations of the objectives, random codes as the floor.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from hashbench.methods import _supervised_hashing as sh
from hashbench.methods import cca_itq, ksh, sdh
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Batch, ModelContext, get_method

NEW_IDS = ("dch-ksh", "dch-sdh", "dch-cca-itq", "drn-ksh", "ce-embedding", "ynet-sum", "ynet-plain")


def _clusters(n=90, d=6, classes=3, seed=0, spread=0.35):
    """Gaussian clusters, one per class, float64; labels one-hot."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64) * 2.0
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, F.one_hot(y, classes).double(), y


# ================================================================ KSH

def _np_smooth(kbar, r, a):
    b = 2.0 / (1.0 + np.exp(-(kbar @ a))) - 1.0            # the paper's φ, written out
    return -(b @ r @ b)


def test_ksh_smoothed_gradient_matches_finite_differences():
    x, y, _ = _clusters(40, 4)
    g = torch.Generator().manual_seed(1)
    _, _, _, kbar = sh.fit_kernel(x, 10, 1.0, g, "t")
    r = 3 * ksh.similarity(y)
    a = torch.randn(10, generator=g, dtype=torch.float64)
    f, b, rb = ksh.smooth_objective(kbar, r, a)
    grad = ksh.smooth_gradient(kbar, b, rb).numpy()
    kn, rn, an = kbar.numpy(), r.numpy(), a.numpy()
    assert f == pytest.approx(_np_smooth(kn, rn, an), rel=1e-12)
    eps = 1e-6
    num = np.array([(_np_smooth(kn, rn, an + eps * e) - _np_smooth(kn, rn, an - eps * e)) / (2 * eps)
                    for e in np.eye(10)])
    assert np.allclose(grad, num, rtol=1e-6, atol=1e-6)


def test_ksh_spectral_init_is_scipys_top_generalised_eigenvector():
    x, y, _ = _clusters(50, 5)
    _, _, _, kbar = sh.fit_kernel(x, 12, 1.0, torch.Generator().manual_seed(2), "t")
    r = 4 * ksh.similarity(y)
    a = ksh.spectral_init(kbar, r).numpy()
    kn = kbar.numpy()
    gram = kn.T @ kn
    gram = gram + ksh.RIDGE * np.trace(gram) / 12 * np.eye(12)
    vals, vecs = scipy.linalg.eigh(kn.T @ r.numpy() @ kn, gram)       # LAPACK sygvd, B-normalised
    ref = vecs[:, -1] * np.sqrt(50)
    assert abs(a @ ref) / (np.linalg.norm(a) * np.linalg.norm(ref)) == pytest.approx(1.0, abs=1e-8)
    assert a @ gram @ a == pytest.approx(50.0, rel=1e-8)               # aᵀ(K̄ᵀK̄ + δI)a = l
    assert (a @ kn.T @ r.numpy() @ kn @ a) / 50 == pytest.approx(vals[-1], rel=1e-8)


def test_ksh_objective_never_increases_and_codes_match_the_target_better_than_random():
    x, y, _ = _clusters(90, 6, classes=3)
    _, _, _, kbar = sh.fit_kernel(x, 30, 1.0, torch.Generator().manual_seed(3), "t")
    bits = 6
    a, info = ksh.ksh_fit(kbar, y, bits, iterations=300)
    # within every bit: Q̃ over the accepted optimisation steps never increases
    for trace in info["traces"]:
        assert all(b <= a_ + 1e-9 * abs(a_) for a_, b in zip(trace, trace[1:]))
    # the kept solution is at least as good as the spectral one, on the discrete objective (eq. 8)
    assert all(q <= q0 + 1e-9 for q, q0 in zip(info["discrete"], info["discrete_spectral"]))
    # the greedy objective ‖H Hᵀ − r S‖² (eq. 7), recomputed in numpy from the codes, bit by bit
    kn, yn = kbar.numpy(), y.numpy()
    sn = np.where(yn @ yn.T > 0, 1.0, -1.0)                            # S_ij written out independently
    h = np.where(kn @ a.numpy() >= 0, 1.0, -1.0)
    res = [np.sum((h[:, :k] @ h[:, :k].T - bits * sn) ** 2) for k in range(bits + 1)]
    assert np.allclose(res, info["residue"], rtol=1e-10)
    assert all(b <= a_ for a_, b in zip(res, res[1:]))                 # non-increasing over the greedy bits
    # Hamming affinities vs the supervised target: better than 50 sets of random-hyperplane codes
    ours = res[-1]
    rng = np.random.default_rng(0)
    rand = [np.sum((hr @ hr.T - bits * sn) ** 2)
            for hr in (np.where(kn @ rng.standard_normal((30, bits)) >= 0, 1.0, -1.0) for _ in range(50))]
    assert ours < min(rand)
    same = sn > 0
    agree = (h @ h.T) / bits
    assert agree[same].mean() > 0.9 and agree[~same].mean() < -0.2


@pytest.mark.parametrize("multi_label", [False, True])
def test_ksh_residue_operator_equals_the_dense_matrix(multi_label):
    g = torch.Generator().manual_seed(11)
    t = torch.arange(20) % 4
    y = F.one_hot(t, 4).double()
    if multi_label:
        y[::3, 0] = 1.0                                                # some items carry two labels
    res = ksh.Residue(y, 5)
    assert (res.s is None) != multi_label                              # the factored form only for one label
    hs = sh.sign(torch.randn(20, 3, generator=g, dtype=torch.float64))
    for k in range(3):
        res.subtract(hs[:, k])
    yn, hn = y.numpy(), hs.numpy()
    dense = 5 * np.where(yn @ yn.T > 0, 1.0, -1.0) - hn @ hn.T         # r S − Σ h hᵀ, formed in numpy
    v = torch.randn(20, 2, generator=g, dtype=torch.float64)
    assert np.allclose((res @ v).numpy(), dense @ v.numpy(), atol=1e-10)
    assert np.allclose((res @ v[:, 0]).numpy(), dense @ v[:, 0].numpy(), atol=1e-10)
    assert res.frobenius2() == pytest.approx(float((dense ** 2).sum()), rel=1e-12)


def test_ksh_finalize_fills_the_model_and_the_state_dict_reproduces_codes():
    m = get_method("dch-ksh")
    ctx = ModelContext(in_channels=1, image_size=16, num_classes=3, bits=8)
    hp = m.resolve({"anchors": 20, "iterations": 50})
    model = m.build_model(ctx, hp)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(48, 1, 16, 16, generator=g)
    t = torch.arange(48) % 3
    xs[t == 1, :, :5] += 1.0
    xs[t == 2, :, 10:] += 1.0
    batches = [Batch(images=xs[i:i + 16], labels=F.one_hot(t[i:i + 16], 3).float(), targets=t[i:i + 16])
               for i in range(0, 48, 16)]
    model.eval()
    assert not bool(model.fitted)
    m.finalize(model, batches, hp)
    assert bool(model.fitted)
    with torch.no_grad():
        feats = model.features(xs).double()
        anchors = model.anchors.double()
        d2 = ((feats[:, None, :] - anchors[None]) ** 2).sum(-1)        # explicit distances, not the mm form
        kbar = torch.exp(-d2 * float(model.inv_two_sigma2)) - model.kernel_mean.double()
        expect = np.sign((kbar @ model.projection.double()).numpy())
        got = np.sign(model.encode(xs).numpy())
    assert (got == expect).mean() > 0.99
    other = m.build_model(ctx, hp)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        assert torch.equal(other.encode(xs), model.encode(xs))


# ================================================================ SDH

def _b_objective(b, w, q):
    """The B-subproblem of SDH (eq. 9) up to constants: ‖BW‖² − 2 tr(BᵀQ)."""
    return float(((b @ w) ** 2).sum() - 2.0 * (b * q).sum())


def _b_problem(seed, n, bits, c):
    """A random B-subproblem: W (bits, c), Q (n, bits), a start B (n, bits)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(bits, c, generator=g, dtype=torch.float64)
    q = torch.randn(n, bits, generator=g, dtype=torch.float64)
    return w, q, sh.sign(torch.randn(n, bits, generator=g, dtype=torch.float64))


def test_sdh_dcc_bit_update_equals_brute_force_over_all_codes():
    n, bits = 8, 3
    w, q, b = _b_problem(4, n, bits, 2)
    for k in range(bits):
        z = sdh.dcc_bit(b, w, q, k)
        best, best_z = None, None
        for code in itertools.product((-1.0, 1.0), repeat=n):          # all 2^8 columns
            trial = b.clone()
            trial[:, k] = torch.tensor(code, dtype=torch.float64)
            v = _b_objective(trial, w, q)
            if best is None or v < best - 1e-12:
                best, best_z = v, trial[:, k].clone()
        mine = b.clone()
        mine[:, k] = z
        assert _b_objective(mine, w, q) == pytest.approx(best, abs=1e-10)
        assert torch.equal(z, best_z)                                  # unique optimum with random data
        b = mine


def test_sdh_dcc_never_increases_and_ends_coordinatewise_optimal():
    n, bits = 12, 4
    w, q, b = _b_problem(5, n, bits, 3)
    values = [_b_objective(b, w, q)]
    for _ in range(6):
        b = sdh.dcc(b, w, q, 1)
        values.append(_b_objective(b, w, q))
    assert all(v1 <= v0 + 1e-12 for v0, v1 in zip(values, values[1:]))
    # no single bit flip anywhere improves (coordinate-wise optimum), and the objective separates per
    # item, so it is no better than the brute-force optimum over all 2^4 codes of each item
    for i, k in itertools.product(range(n), range(bits)):
        flipped = b.clone()
        flipped[i, k] *= -1
        assert _b_objective(flipped, w, q) >= values[-1] - 1e-12
    codes = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=torch.float64)
    per_code = ((codes @ w) ** 2).sum(1)[None, :] - 2.0 * q @ codes.T  # (n, 16)
    assert values[-1] >= float(per_code.min(1).values.sum()) - 1e-10


def test_sdh_steps_match_closed_forms_and_fit_separates_classes():
    x, y, labels = _clusters(120, 6, classes=3, seed=6)
    g = torch.Generator().manual_seed(7)
    _, _, _, phi = sh.fit_kernel(x, 40, 1.0, g, "t")
    b = sh.sign(torch.randn(120, 8, generator=g, dtype=torch.float64))
    w = sdh.g_step(b, y, 1.0).numpy()
    bn, yn = b.numpy(), y.numpy()
    ref_w = np.linalg.lstsq(np.vstack([bn, np.eye(8)]), np.vstack([yn, np.zeros((8, 3))]), rcond=None)[0]
    assert np.allclose(w, ref_w, atol=1e-10)                           # ridge = augmented least squares
    p, b_fit, w_fit, hist = sdh.sdh_fit(phi, y, 8, lam=1.0, nu=1e-5, outer=4, sweeps=10, ridge=1e-6,
                                        generator=torch.Generator().manual_seed(8))
    for i in range(4):                                                 # every B-step lowers eq. (5)
        assert hist[3 * i + 2] <= hist[3 * i + 1] + 1e-9
    assert hist[-1] < hist[0]
    same = (labels[:, None] == labels[None, :]).numpy()
    for codes in (b_fit.numpy(), sh.sign(phi @ p).numpy()):            # the learned B and the hash function's
        ham = (codes[:, None, :] != codes[None, :, :]).sum(-1)
        assert ham[same].mean() + 2.5 < ham[~same].mean()
    ham_b = (b_fit.numpy()[:, None, :] != b_fit.numpy()[None, :, :]).sum(-1)
    assert ham_b[same].mean() < 0.5                                    # B nearly constant within a class


# ================================================================ CCA-ITQ

def test_cca_matches_scipy_eigenproblem_and_sklearn():
    g = torch.Generator().manual_seed(9)
    n = 400
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)            # shared latent signal
    x = torch.cat([z, torch.randn(n, 3, generator=g, dtype=torch.float64)], 1) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = z @ torch.randn(2, 3, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 3, generator=g,
                                                                                    dtype=torch.float64)
    _, w, rho = cca_itq.cca(x, y, 4, reg=0.0)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    cxx, cyy, cxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
    vals, vecs = scipy.linalg.eigh(cxy @ np.linalg.solve(cyy, cxy.T), cxx)   # C_xx-normalised vectors
    vals, vecs = vals[::-1], vecs[:, ::-1]
    assert np.allclose(rho.numpy()[:3], np.sqrt(np.clip(vals[:3], 0, None)), atol=1e-8)
    assert rho[3] == 0 and torch.all(w[:, 3] == 0)                       # rank(C_xy) = 3 < 4
    for j in range(3):
        assert abs(w[:, j].numpy() @ cxx @ vecs[:, j]) == pytest.approx(1.0, abs=1e-7)  # same up to sign
    # the first canonical correlation as scikit-learn's iterative CCA finds it
    from sklearn.cross_decomposition import CCA

    xs, ys = CCA(n_components=1, max_iter=2000, tol=1e-12).fit_transform(x.numpy(), y.numpy())
    assert abs(np.corrcoef(xs[:, 0], ys[:, 0])[0, 1]) == pytest.approx(float(rho[0]), abs=1e-6)
    # and the correlation of our own projections is ρ
    u = xc @ w[:, 0].numpy()
    vy = yc @ np.linalg.solve(cyy, cxy.T) @ w[:, 0].numpy()
    assert abs(np.corrcoef(u, vy)[0, 1]) == pytest.approx(float(rho[0]), abs=1e-8)


def test_cca_itq_fit_is_scaled_cca_times_a_rotation():
    x, y, labels = _clusters(150, 8, classes=4, seed=10)
    hp = {"reg": 1e-4, "iterations": 30}
    out = cca_itq.fit(x, y, 6, hp, torch.Generator().manual_seed(0), "t")
    mu, w, rho = cca_itq.cca(x, y, 6, 1e-4)
    assert torch.allclose(out["mean"], mu)
    scaled = (w * rho)[:, :3]                                          # 4 classes: 3 non-zero correlations
    coef = torch.linalg.lstsq(scaled, out["projection"]).solution       # projection = W diag(ρ) R
    assert torch.allclose(scaled @ coef, out["projection"], atol=1e-8)
    codes = sh.sign((x - mu) @ out["projection"]).numpy()
    same = (labels[:, None] == labels[None, :]).numpy()
    ham = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    assert ham[same].mean() < ham[~same].mean() - 1.5


# ================================================================ bad input

def test_too_many_anchors_names_the_parameter_and_range():
    x, y, _ = _clusters(30, 4)
    for mod, extra in ((ksh, {"labeled": 10, "iterations": 5}),
                       (sdh, {"lambda": 1.0, "nu": 1e-5, "outer_iterations": 1, "dcc_iterations": 1,
                              "ridge": 1e-2})):
        hp = {"anchors": 31, "sigma_scale": 1.0, **extra}
        with pytest.raises(HashbenchError) as err:
            mod.fit(x, y, 4, hp, torch.Generator().manual_seed(0), "dch-x")
        msg = str(err.value)
        assert "'anchors' = 31" in msg and "1 <= anchors <= 30" in msg and "dch-x" in msg


def test_codes_longer_than_cca_features_and_unknown_trunk_are_clear_errors():
    m = get_method("dch-cca-itq")
    with pytest.raises(HashbenchError, match=r"bits=4096 exceeds the 2048-dimensional features.*1 <= bits <= 2048"):
        m.build_model(ModelContext(1, 16, 3, 4096), m.resolve({}))
    with pytest.raises(HashbenchError, match=r"parameter 'trunk' = 'vgg16' is not a known trunk; valid trunks: "
                                             r"dch-cnn, drn"):
        sh.register_two_stage("vgg-ksh", trunk="vgg16", hasher=ksh.HASHER, summary="", citation="", paper="",
                              family="two-stage")
    with pytest.raises(HashbenchError, match="unknown method 'vgg-ksh'"):
        get_method("vgg-ksh")


def _tiny_store(path, n_train):
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(0)
    n = n_train + 12
    y = np.arange(n) % 2
    img = rng.integers(0, 60, size=(n, 1, 16, 16)).astype(np.uint8)
    img[y == 1, :, :8] += 150
    split = np.array([0] * n_train + [1] * 6 + [2] * 6, np.int8)
    return write_store(path, img, np.eye(2, dtype=np.uint8)[y], split, class_names=["a", "b"])


def test_run_with_more_anchors_than_train_items_fails_before_writing_anything(tmp_path):
    from hashbench.platform.training import TrainConfig, run_local

    store = _tiny_store(tmp_path / "tiny", 24)
    cfg = TrainConfig(method="dch-sdh", dataset=str(store.path), bits=8, epochs=1, out_dir=str(tmp_path / "runs"),
                      device="cpu", eval_ks=(10,))                     # SDH's default: 1000 anchors
    with pytest.raises(HashbenchError, match=r"'anchors' = 1000 .* only 24 items.*1 <= anchors <= 24"):
        run_local(cfg)
    left = set(os.listdir(cfg.run_dir)) if os.path.isdir(cfg.run_dir) else set()
    assert not left & {"metrics.json", "codes.npz", "model.pt"}        # no result a leaderboard could read
    ok = run_local(TrainConfig(method="dch-sdh", dataset=str(store.path), bits=8, epochs=1, params={"anchors": 20},
                               out_dir=str(tmp_path / "runs"), device="cpu", eval_ks=(10,), run_name="ok"))
    assert os.path.isfile(os.path.join(ok.run_dir, "metrics.json")) and 0 <= ok.metrics["test_mAP@10"] <= 1


@pytest.mark.parametrize("mid, params", [("drn-ksh", {"depth": 18, "width": 4, "anchors": 16, "iterations": 20}),
                                         ("dch-cca-itq", {})])
def test_two_stage_runs_end_to_end(tmp_path, mid, params):
    from hashbench.platform.training import TrainConfig, run_local

    store = _tiny_store(tmp_path / "tiny", 40)
    res = run_local(TrainConfig(method=mid, dataset=str(store.path), bits=8, epochs=1, params=params,
                                out_dir=str(tmp_path / "runs"), device="cpu", eval_ks=(10,)))
    codes = np.load(os.path.join(res.run_dir, "codes.npz"))
    assert set(np.unique(codes["db_codes"])) <= {-1, 1} and codes["db_codes"].shape == (40, 8)
    state = torch.load(os.path.join(res.run_dir, "model.pt"), weights_only=True)
    assert bool(state["fitted"]) and float(state["projection"].abs().sum()) > 0


def test_drn_ksh_trains_with_the_retrieval_loss_only():
    m = get_method("drn-ksh")
    hp = m.resolve({"depth": 18, "width": 4})
    ctx = ModelContext(1, 16, 3, 8)
    model, loss = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    from hashbench.methods.drh import retrieval_loss

    x = torch.rand(10, 1, 16, 16)
    t = torch.arange(10) % 3
    lab = F.one_hot(t, 3).float()
    out = model(x)
    terms = loss(out, Batch(images=x, labels=lab, targets=t), model)
    assert set(terms) == {"loss", "J_S"}                               # no J_Q, J_B, R_O
    assert torch.allclose(terms["loss"], retrieval_loss(out["h"].float(), lab))
    assert isinstance(m.build_optimizer(model.parameters(), hp), torch.optim.SGD)
    assert m.finalize is not None and m.family == "drh"


# ================================================================ ce-embedding

def test_ce_embedding_trains_to_separate_two_classes():
    torch.manual_seed(0)
    m = get_method("ce-embedding")
    hp = m.resolve({"arch": "resnet18", "width": 4, "lr": 3e-3})
    ctx = ModelContext(1, 16, 2, 8)
    model, loss = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    opt = m.build_optimizer(model.parameters(), hp)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(32) % 2
    x = 0.3 * torch.rand(32, 1, 16, 16, generator=g)
    x[t == 1, :, :8] += 0.6
    batch = Batch(images=x, labels=F.one_hot(t, 2).float(), targets=t)
    first = None
    for _ in range(40):
        terms = loss(model(x), batch, model)
        first = float(terms["loss"].detach()) if first is None else first
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
        e = model.encode(x)
    assert float(terms["loss"].detach()) < 0.2 * first
    assert (out["logits"].argmax(1) == t).all()
    assert torch.allclose(e.norm(dim=1), torch.ones(32), atol=1e-5)   # L2-normalised embedding
    cos = e @ e.T
    same = t[:, None] == t[None, :]
    assert cos[same].mean() > cos[~same].mean() + 0.5
    s = torch.where(e >= 0, 1.0, -1.0)                                 # the sign readout
    ham = (s[:, None, :] != s[None, :, :]).sum(-1).float()
    assert ham[same].mean() < ham[~same].mean()
    assert (out["embedding"] < 0).any()                                # no activation: signs carry information


def test_ce_loss_matches_direct_log_softmax():
    m = get_method("ce-embedding")
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    t = torch.tensor([0, 1])
    terms = m.build_loss(ModelContext(1, 16, 3, 4), m.resolve({}))(
        {"logits": logits, "embedding": None}, Batch(images=None, labels=F.one_hot(t, 3).float(), targets=t))
    by_hand = -(np.log(np.exp(2) / (np.exp(2) + np.exp(-1) + np.exp(0.5)))
                + np.log(1 / (2 + np.exp(3)))) / 2
    assert float(terms["loss"]) == pytest.approx(by_hand, rel=1e-6)


# ================================================================ Y-Net ablations

def _ynet_batch(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n) % 3
    return Batch(images=torch.rand(n, 1, size, size, generator=g), labels=F.one_hot(t, 3).float(), targets=t,
                 masks=(torch.rand(n, size, size, generator=g) > 0.5).long())


def test_ynet_sum_adds_the_two_losses_with_fixed_weights_one_to_one():
    from hashbench.methods._ynet_parts import circle_loss

    m = get_method("ynet-sum")
    assert not {"omega", "omega_mode", "learn_omega"} & set(m.param_map)
    hp = m.resolve({})
    ctx = ModelContext(1, 32, 3, 16)
    model, loss = m.build_model(ctx, hp), m.build_loss(ctx, hp)
    assert model.omega() is None and model.fpn is not None and model.rmac_conv is not None
    b = _ynet_batch()
    out = model(b.images)
    terms = loss(out, b, model)
    lab = b.labels > 0
    circle = circle_loss(out["logits"], lab, ~lab, 32.0, 0.25)
    seg = F.cross_entropy(F.interpolate(out["seg_logits"], size=(32, 32), mode="bilinear", align_corners=False)
                          if out["seg_logits"].shape[-2:] != (32, 32) else out["seg_logits"], b.masks)
    assert torch.allclose(terms["circle"], circle) and torch.allclose(terms["seg"], seg)
    assert torch.allclose(terms["loss"], circle + seg)                 # 1·L_circle + 1·L_seg
    # the weights stay 1:1 after training steps (nothing learns them)
    opt = m.build_optimizer(model.parameters(), hp)
    for _ in range(2):
        opt.zero_grad()
        loss(model(b.images), b, model)["loss"].backward()
        opt.step()
    terms = loss(model(b.images), b, model)
    assert torch.allclose(terms["loss"], terms["circle"] + terms["seg"])


def test_ynet_plain_has_neither_branch_and_hashes_the_core_node():
    from hashbench.methods._ynet_parts import aggregate

    m = get_method("ynet-plain")
    assert not m.requires.masks
    for form in ("class", "pairwise"):
        hp = m.resolve({"circle_form": form})
        ctx = ModelContext(1, 32, 3, 16)
        model, loss = m.build_model(ctx, hp), m.build_loss(ctx, hp)
        assert model.main.fpn is None and model.main.rmac_conv is None
        b = _ynet_batch()
        b.masks = None
        terms = loss(model(b.images), b, model)
        assert set(terms) == {"loss", "circle"}
        terms["loss"].backward()
        assert all(p.grad is not None for p in model.parameters())     # DDP-safe: no unused parameter
        model.eval()
        with torch.no_grad():
            core = model.main.features(b.images)[3]
            assert torch.equal(model.encode(b.images), aggregate(core, model.main.grid))


# ================================================================ registry

def test_registry_entries_are_valid_and_join_the_quickstart():
    from hashbench.platform.cli.quickstart_cmd import build_config

    for mid in NEW_IDS:
        m = get_method(mid)
        d = m.describe()
        assert d["citation"] and d["summary"] and d["family"]
        hp = m.defaults()
        assert m.resolve({}) == hp
        for p in m.search_space().values():
            if p.type in ("float", "int"):
                lo, hi = p.bounds
                assert (lo is None or p.search[0] >= lo) and (hi is None or p.search[1] <= hi), (mid, p.name)
                if (mid, p.name) != ("dch-sdh", "anchors"):   # SDH's m = 1000 exceeds BUSI: searched below
                    assert p.search[0] <= p.default <= p.search[1], (mid, p.name)
    assert get_method("ce-embedding").also_binary and get_method("ce-embedding").code_type == "float"
    assert all(get_method(i).finalize is not None for i in ("dch-ksh", "dch-sdh", "dch-cca-itq", "drn-ksh"))
    assert get_method("dch-ksh").param_map["anchors"].default == 300                  # KSH: m = 300
    sdh_p = get_method("dch-sdh").param_map
    assert (sdh_p["anchors"].default, sdh_p["lambda"].default, sdh_p["nu"].default) == (1000, 1.0, 1e-5)
    cfg = build_config("/tmp/q", {"pneumoniamnist": "pn", "busi": "bu"}, [16, 32], 1, 0)
    for mid in NEW_IDS:
        assert mid in cfg["methods"]
        assert cfg["methods"][mid]["datasets"] == (["bu"] if mid.startswith("ynet") else ["pn"])
