"""The one training loop: :func:`fit` runs any registered method under any :class:`Session`.

Per epoch: a seeded plan of index batches (each worker takes its column), on-device
augmentation, forward under bf16 autocast on GPUs, the method's loss, one optimizer step;
then (rank 0, ``precise_bn``) the batch-norm statistics re-estimated over the train split, and the
validation mAP@100 of val queries against the train database, broadcast to every rank; the scheduler
step (a plateau scheduler with the val mAP or the epoch's mean training loss, ``plateau_on``); early
stopping; a checkpoint through ``session.report``.
At the end: the best-validation weights, ``method.finalize``, encoding of the train (database)
and test (query) splits, evaluation, and the run directory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import ModelContext
from hashbench.platform.training.batches import SplitData, class_balanced_plan, random_plan
from hashbench.platform.training.config import TrainConfig
from hashbench.platform.training.graphed import GraphedStep
from hashbench.platform.training.plateau import orient_plateau, step_scheduler
from hashbench.platform.training.precise_bn import even_batches, recompute_bn_stats
from hashbench.platform.training.session import Session

STATE_FILE = "state.pt"
#: test hook: "EPOCH" raises at the start of that epoch; "EPOCH:kill" SIGKILLs the worker 5 s into it
#: (Ray Train's controller registers a reported checkpoint when it next polls the workers, every 2 s;
#: a worker killed before that poll loses its last report). Only on an attempt that did not resume from
#: a checkpoint, so the retry resumes and finishes.
FAIL_ENV = "HASHBENCH_FAIL_AT_EPOCH"
#: FAIL_ENV is a test hook: it is honoured only when this is also set to 1 (the tests set both), so a
#: stray HASHBENCH_FAIL_AT_EPOCH in a production environment (forwarded to every worker) does nothing
TESTING_ENV = "HASHBENCH_TESTING"
KILL_DELAY_S = 5.0


@dataclass
class RunResult:
    """What one finished run produced (also saved as the run directory's metrics.json)."""

    run_id: str
    run_dir: str
    config: dict
    metrics: dict
    protocol: dict
    timings: dict
    throughput: dict
    device: str
    epochs_run: int
    history: list = field(default_factory=list)
    best_epoch: int = -1
    resumed_from: Optional[int] = None
    #: the extra readouts of the same model (``Method.readouts``): name -> {code_type, distance,
    #: storage_bits, metrics, protocol}; the primary readout's numbers are ``metrics`` / ``protocol``
    readouts: dict = field(default_factory=dict)
    #: when the run first started (ISO 8601, UTC), kept across resumes from checkpoints
    started_at: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, run_dir: str) -> "RunResult":
        """Read a finished run directory (its metrics.json)."""
        path = os.path.join(run_dir, "metrics.json")
        if not os.path.isfile(path):
            raise HashbenchError(f"{run_dir}: not a finished run (no metrics.json)")
        with open(path) as f:
            d = json.load(f)
        d["run_dir"] = os.path.abspath(run_dir)
        return cls(**d)


#: the run directory's per-query test values (``hashbench compare``, docs/statistics.md)
PER_QUERY_FILE = "per_query.npz"


def _now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: prepared splits already on a device, per process: ``(fingerprint, path, split, device, masks) -> SplitData``.
#: A warm trial process (Tune reuses actors) trains trial after trial on the same data; it loads and
#: transfers each split once. Splits are never modified in place (batches are new tensors).
_SPLITS: dict = {}
CACHED_DATASETS = 2  # distinct stores kept per process (oldest dropped first)


def cached_split(ds, split: str, device, masks: bool = False) -> SplitData:
    """``SplitData.from_store(ds, split, device, masks)``, once per process and store fingerprint."""
    key = (ds.fingerprint, str(ds.path), split, str(torch.device(device)), bool(masks))
    hit = _SPLITS.pop(key, None)
    if hit is None:
        hit = SplitData.from_store(ds, split, device, masks=masks)
        stores = list(dict.fromkeys(k[:2] for k in _SPLITS))
        if key[:2] not in stores and len(stores) >= CACHED_DATASETS:
            for k in [k for k in _SPLITS if k[:2] == stores[0]]:
                del _SPLITS[k]
    _SPLITS[key] = hit  # most recently used last
    return hit


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (run seed, epoch, rank, stream)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019 + ((h << 6) & (2**64 - 1)) + (h >> 2))) & (2**64 - 1)
    return h & (2**63 - 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_codes(z: torch.Tensor, code_type: str) -> torch.Tensor:
    """Binary methods: sign with zeros to +1, as int8 {-1, +1}; float methods: float32 as they are."""
    if code_type == "binary":
        return torch.where(z >= 0, 1, -1).to(torch.int8)
    return z.float()


@torch.no_grad()
def encode_split(model, split: SplitData, batch_size: int, code_type: str, autocast: bool,
                 on_device: bool = False) -> torch.Tensor:
    """Codes of every item of ``split`` (model in eval mode), on the CPU (``on_device``: where the
    model runs, with no host round trip but the one finiteness check at the end)."""
    was = model.training
    model.eval()
    out, finite = [], []
    for b in split.iter_batches(batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            z = model.encode(b.images).float()
        finite.append(torch.isfinite(z).all())
        out.append(_to_codes(z, code_type))
    model.train(was)
    if not bool(torch.stack(finite).all()):
        raise HashbenchError("the model produced NaN or infinite codes while encoding")
    codes = torch.cat(out)
    return codes if on_device else codes.cpu()


def _evaluate(q_codes, db_codes, q_labels, db_labels, method, ks, device, multi_label: bool,
              distance: Optional[str] = None, **kw) -> dict:
    """``evaluate`` with the method's distance; labels as class ids for single-label data."""
    from hashbench.platform.evaluation import evaluate

    if multi_label:
        q_labels, db_labels = q_labels.to(torch.uint8), db_labels.to(torch.uint8)
    else:
        q_labels, db_labels = q_labels.argmax(1), db_labels.argmax(1)
    if device.type != "cuda":  # CPU engines take numpy; on a GPU the tensors stay where they are
        q_codes, db_codes, q_labels, db_labels = (t.cpu().numpy() for t in (q_codes, db_codes, q_labels, db_labels))
    return evaluate(q_codes, db_codes, q_labels, db_labels, distance=distance or method.distance, ks=ks,
                    device=str(device) if device.type == "cuda" else None, **kw)


def readout_codes(z: torch.Tensor, readout) -> torch.Tensor:
    """The codes a readout compares: ``sign`` of the continuous codes (int8, zeros to +1) or the floats."""
    return _to_codes(z, readout.code_type)


def storage_bits(codes: torch.Tensor, code_type: str, bits: int) -> int:
    """Bits one database item takes: ``bits`` for binary codes, dims x bits per value for floats."""
    if code_type == "binary":
        return int(bits)
    return int(bits) * torch.finfo(codes.dtype).bits


def _number_metrics(res: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in res.items()
            if k != "protocol" and isinstance(v, (int, float, np.floating, np.integer))}


def evaluate_readout(q_codes, db_codes, q_labels, db_labels, method, readout, cfg, device, multi_label: bool,
                     pr_curve: bool = False, per_query: Optional[dict] = None) -> tuple:
    """Test metrics of one readout under ``cfg.evaluation`` (docs/protocol.md); ``(metrics, protocol)``.

    Cut-offs: ``cfg.eval_ks`` plus the rank-based PR curve's; ``P@H<=r`` for every radius of a binary
    readout (one extra engine call per further radius); kNN balanced accuracy and the silhouette /
    Davies-Bouldin of the test embeddings where asked for (single-label data only).
    ``per_query`` (a dict): filled with ``test_<metric>`` -> float16 array of each test query's value
    (``evaluate(per_query=True)``; NaN where the metric's mean leaves the query out).
    """
    from hashbench.platform.training.config import pr_rank_cutoffs

    ev = cfg.evaluation
    pr_ks = pr_rank_cutoffs(ev)
    ks = tuple(dict.fromkeys([*cfg.eval_ks, *pr_ks]))
    binary = readout.code_type == "binary"
    radii = ev["hamming_radii"] if binary else [None]
    knn_k = ev["knn_k"] if not multi_label else None
    same = bool(ev.get("same_set", False))
    if same:  # leave-one-out among the test queries (docs/metrics.md "Same-set retrieval")
        db_codes, db_labels = q_codes, q_labels
    common = dict(distance=readout.distance, ties=ev["ties"], convention=ev["convention"], exclude_self=same)
    res = _evaluate(q_codes, db_codes, q_labels, db_labels, method, ks, device, multi_label,
                    hamming_radius=radii[0], pr_curve=pr_curve, knn_k=knn_k, per_query=per_query is not None,
                    **common)
    if per_query is not None:
        per_query.update({f"test_{k}": np.asarray(v, dtype=np.float16) for k, v in res.pop("per_query").items()})
    metrics = _number_metrics(res, "test_")
    for r in radii[1:]:
        extra = _evaluate(q_codes, db_codes, q_labels, db_labels, method, (1,), device, multi_label,
                          hamming_radius=r, map_at_r=False, **common)
        metrics.update({f"test_{k}": float(v) for k, v in extra.items() if k.startswith(("P@H<=", "H<="))})
    if pr_curve and res.get("pr_curve") is not None:  # the test queries' precision-recall points (dashboard)
        metrics["pr_curve"] = _jsonable(res["pr_curve"])
    if pr_ks:
        metrics["pr_curve_ranks"] = {"k": pr_ks, "precision": [metrics[f"test_P@{k}"] for k in pr_ks],
                                     "recall": [metrics[f"test_R@{k}"] for k in pr_ks]}
    if ev["embedding"] and not binary and not multi_label:
        from hashbench.platform.evaluation import davies_bouldin_score, silhouette_score

        y = q_labels.argmax(1).numpy()
        metrics["test_silhouette"] = float(silhouette_score(q_codes.numpy(), y))
        metrics["test_davies_bouldin"] = float(davies_bouldin_score(q_codes.numpy(), y))
    protocol = dict(res.get("protocol", {}))
    protocol.update({"readout": readout.name, "code_type": readout.code_type, "hamming_radii": radii
                     if binary else [], "pr_ranks": ev["pr_ranks"], "knn_k": knn_k,
                     "embedding": bool(ev["embedding"] and not binary and not multi_label)})
    return metrics, _jsonable(protocol)


def _jsonable(value):
    """Numpy arrays and scalars inside ``value`` as plain lists and floats (for JSON and Ray reports)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _float_out(out: dict) -> dict:
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _atomic_json(path: str, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _check_fault_hook(epoch: int, resumed: bool) -> None:
    spec = os.environ.get(FAIL_ENV, "")
    if not spec or resumed or os.environ.get(TESTING_ENV) != "1":
        return
    at, _, how = spec.partition(":")
    if int(at) != epoch:
        return
    if how == "kill":
        import signal

        time.sleep(KILL_DELAY_S)
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"{FAIL_ENV}={spec}: injected failure at the start of epoch {epoch}")


def fit(cfg: TrainConfig, session: Session) -> Optional[RunResult]:
    """Train ``cfg`` under ``session``; return the :class:`RunResult` on rank 0 (None elsewhere).

    Every rank runs this same code. Resumes from ``session.get_checkpoint_dir()`` when it gives one.
    Raises HashbenchError when the loss becomes NaN or infinite (naming the epoch and step).
    """
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)  # recorded in the config: CPU results depend on it
    from hashbench.platform.data import load_dataset

    method = cfg.method_spec
    hp = cfg.hp
    rank, world, device = session.world_rank, session.world_size, torch.device(session.device)
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    use_amp = device.type == "cuda"
    if use_amp:  # fixed input sizes: let cuDNN time its kernels once per shape (or take its heuristic pick)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    ph = {"setup_s": time.perf_counter() - t_start}  # phase times (timings, benchmarks/bench_trial.py)
    t_ph = time.perf_counter()
    ds = load_dataset(cfg.dataset_path or cfg.dataset)
    if ds.fingerprint != cfg.dataset_fingerprint:
        raise HashbenchError(f"dataset {cfg.dataset!r} changed since the run was configured "
                             f"(fingerprint {ds.fingerprint[:12]} != {cfg.dataset_fingerprint[:12]})")
    ctx = ModelContext(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                       bits=cfg.bits, multi_label=ds.multi_label, mask_classes=ds.mask_classes or 2)

    train = cached_split(ds, "train", device, masks=method.requires.masks)
    val = cached_split(ds, "val", device) if rank == 0 else None
    _sync(device)
    ph["load_s"] = time.perf_counter() - t_ph

    t_ph = time.perf_counter()
    torch.manual_seed(_seed_for(cfg.seed, 0xC0DE))
    model = method.build_model(ctx, hp).to(device)
    loss_fn = method.build_loss(ctx, hp).to(device)
    optimizer = method.build_optimizer(model.parameters(), hp)
    scheduler = method.build_scheduler(optimizer, hp) if method.build_scheduler else None
    scheduler = orient_plateau(scheduler, cfg.plateau_on)  # max for the val mAP, min for the training loss
    _sync(device)
    ph["build_s"] = time.perf_counter() - t_ph

    st = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [], "best_state": None,
          "times": {"train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0, "elapsed_s": 0.0}, "images": 0,
          "stopped_early": False, "started_at": _now_iso()}
    resumed_from = None
    ckpt = session.get_checkpoint_dir()
    if ckpt:
        saved = torch.load(os.path.join(ckpt, STATE_FILE), map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        loss_fn.load_state_dict(saved["loss"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        st = saved["state"]
        st.setdefault("started_at", None)
        for key in ("checkpoint_s", "elapsed_s"):
            st["times"].setdefault(key, 0.0)
        resumed_from = st["epoch"]
    elapsed_before = st["times"]["elapsed_s"]  # wall time of earlier attempts, up to their last checkpoint

    if rank == 0:
        os.makedirs(cfg.run_dir, exist_ok=True)
        _atomic_json(os.path.join(cfg.run_dir, "config.json"), cfg.to_dict())

    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    if cfg.compile:
        net = torch.compile(net, mode=cfg.compile)  # the training forward; encoding stays eager

    # one CUDA graph per training step: a single device, data on it, and a method whose step allows it
    graphed = (cfg.cuda_graph and device.type == "cuda" and not distributed and not cfg.compile
               and train.store_device == device and method.graph_safe(hp))
    names: list = []  # the loss terms' names, in the order of each step's record row
    aug_gen = None    # this epoch's augmentation generator (eager steps; set at each epoch's start)

    def run_step(rows, zero_grad=True):
        """One training step on the rows ``rows``; returns its loss terms (in ``names`` order)."""
        batch = train.batch(rows, cfg.augment, None if graphed else aug_gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp, cache_enabled=not graphed):
            out = net(batch.images)
        terms = loss_fn(_float_out(out), batch, model)
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if not names:
            names.extend(sorted(terms))
        return torch.stack([torch.as_tensor(terms[k], device=device).detach().float() for k in names])

    stepper = GraphedStep(run_step, optimizer, device) if graphed else None

    # the continuous codes of the database and val splits at the best and at the last epoch (rank 0): the
    # final phase reuses those of the weights it evaluates instead of encoding the database again
    best_z = last_z = None
    epochs = cfg.epochs
    while st["epoch"] < epochs and not st["stopped_early"]:
        epoch = st["epoch"]
        _check_fault_hook(epoch, resumed_from is not None)
        torch.manual_seed(_seed_for(cfg.seed, epoch, rank, 1))  # dropout & co.
        plan_gen = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, 2))  # same on every rank
        aug_gen = torch.Generator(device=device).manual_seed(_seed_for(cfg.seed, epoch, rank, 3))
        if method.sampler == "class-balanced":
            plan = class_balanced_plan(train.targets, cfg.batch_size, world, hp["spc"], plan_gen)
        else:
            plan = random_plan(len(train), cfg.batch_size, world, plan_gen)
        mine = plan[:, rank].to(device)

        _sync(device)
        t0 = time.perf_counter()
        model.train()
        steps = mine.shape[0]
        record = None  # (steps, terms): every loss term of every step, kept on the device
        for step in range(steps):
            vec = stepper(mine[step]) if graphed else run_step(mine[step])
            if record is None:
                record = torch.empty(steps, len(names), device=device)
            record[step] = vec
        bad = ~torch.isfinite(record[:, names.index("loss")])
        flag = torch.where(bad.any(), bad.long().argmax(), torch.full((), 2**62, device=device))
        packed = record.mean(0)
        if distributed:
            dist.all_reduce(packed)
            packed /= world
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        _sync(device)
        train_s = time.perf_counter() - t0
        if int(flag) < 2**62:
            raise HashbenchError(
                f"the loss became NaN or infinite at epoch {epoch}, step {int(flag)} (method {method.id!r}, "
                f"hyperparameters {hp}); lower the learning rate or check the data")
        loss_terms = dict(zip(names, packed.tolist()))
        st["times"]["train_s"] += train_s
        st["images"] += mine.numel() * world

        t1 = time.perf_counter()
        model.eval()  # on every rank: models may count epochs by their train()/eval() switches
        val_map = torch.zeros((), dtype=torch.float64, device=device)
        if cfg.precise_bn and rank == 0:  # the bare model, whole train split: no collective (docs/training.md)
            t_bn = time.perf_counter()
            recompute_bn_stats(model, (train.batch(rows) for rows in even_batches(
                len(train), cfg.batch_size // world, device)), autocast=use_amp)
            _sync(device)
            st["times"]["precise_bn_s"] = st["times"].get("precise_bn_s", 0.0) + time.perf_counter() - t_bn
        if rank == 0:
            val_z = encode_split(model, val, cfg.eval_batch_size, "float", use_amp, on_device=True)
            db_z = encode_split(model, train, cfg.eval_batch_size, "float", use_amp, on_device=True)
            q, db = _to_codes(val_z, method.code_type), _to_codes(db_z, method.code_type)
            res = _evaluate(q, db, val.labels, train.labels, method, (100,), device, ds.multi_label)
            last_z = {"epoch": epoch, "db": db_z, "val": val_z}
            val_map.fill_(float(res["mAP@100"]))
        if distributed:
            dist.broadcast(val_map, src=0)
        vmap = float(val_map)
        st["times"]["val_s"] += time.perf_counter() - t1

        step_scheduler(scheduler, cfg.plateau_on, vmap, loss_terms["loss"])
        if vmap > st["best"]:
            best_z = last_z
            st["best"], st["best_epoch"], st["bad_epochs"] = vmap, epoch, 0
            st["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            st["bad_epochs"] += 1
            if cfg.patience is not None and st["bad_epochs"] >= cfg.patience:
                st["stopped_early"] = True
        lr = float(optimizer.param_groups[0]["lr"])
        row = {"epoch": epoch, "val_mAP@100": vmap, **loss_terms, "lr": lr,
               "train_s": train_s, "train_images_per_s": mine.numel() * world / max(train_s, 1e-9),
               "torch_threads": torch.get_num_threads()}  # in effect while the epoch trained
        if stepper is not None:
            row["cuda_graph"] = stepper.failed is None and stepper.captures > 0
        st["history"].append(row)
        st["epoch"] = epoch + 1
        # the last epoch of this run (all epochs, or early stopping): the test evaluation follows at once.
        # A scheduler (the sweep's ASHA) must never end a trial on this report (docs/sweeps.md).
        last = st["epoch"] >= epochs or st["stopped_early"]
        st["times"]["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
        t_ck = time.perf_counter()
        _report(session, rank, {**row, "last_epoch": last}, model, loss_fn, optimizer, scheduler, st, files=None,
                checkpoint=session.wants_checkpoint(epoch, last))
        st["times"]["checkpoint_s"] += time.perf_counter() - t_ck  # the report (and checkpoint, if one)

    # --- final phase: best (or last) weights, finalize, encode, evaluate every readout, save ------------
    if st["best_state"] is not None and cfg.restore_best:
        model.load_state_dict(st["best_state"])
    result = None
    final = {"epoch": st["epoch"] - 1, "done": True}
    files = None
    t_final = time.perf_counter()
    if rank == 0:
        if method.finalize is not None:
            model.eval()
            method.finalize(model, train.iter_batches(cfg.batch_size), hp)
        _sync(device)
        t2 = time.perf_counter()
        test = cached_split(ds, "test", device)
        primary = method.primary_readout
        # continuous codes once; every readout (sign / float) is taken from them
        reuse = best_z if cfg.restore_best else last_z  # codes of exactly these weights, when this run has them
        if reuse is None or method.finalize is not None or reuse["epoch"] != (
                st["best_epoch"] if cfg.restore_best else st["epoch"] - 1):
            reuse = None
        db_z = reuse["db"].cpu() if reuse else encode_split(model, train, cfg.eval_batch_size, "float", use_amp)
        q_z = encode_split(model, test, cfg.eval_batch_size, "float", use_amp)
        db_codes, q_codes = readout_codes(db_z, primary), readout_codes(q_z, primary)
        encode_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        test_labels, db_labels = test.labels.cpu(), train.labels.cpu()
        per_query = {primary.name: {}}  # per-query test values of every readout (paired comparisons)
        test_metrics, protocol = evaluate_readout(q_codes, db_codes, test_labels, db_labels, method, primary, cfg,
                                                  device, ds.multi_label, pr_curve=True,
                                                  per_query=per_query[primary.name])
        eval_s = time.perf_counter() - t3
        # the selection metric of the weights evaluated: the best epoch's, or the last epoch's (no selection)
        last_val = st["history"][-1]["val_mAP@100"] if st["history"] else -1.0
        metrics = {"val_mAP@100": st["best"] if cfg.restore_best else last_val}
        val_z = None
        if method.finalize is not None or method.readouts:
            val_z = reuse["val"].cpu() if reuse else encode_split(model, val, cfg.eval_batch_size, "float", use_amp)
        if method.finalize is not None:  # two-stage: select on the fitted hash function, not the proxy
            res_v = _evaluate(readout_codes(val_z, primary), db_codes, val.labels.cpu(), db_labels, method, (100,),
                              device, ds.multi_label)
            metrics["val_mAP@100"] = float(res_v["mAP@100"])
        metrics.update(test_metrics)
        readouts = {}
        for ro in method.readouts:  # the same model read out another way: its own leaderboard row
            q_r, db_r = readout_codes(q_z, ro), readout_codes(db_z, ro)
            per_query[ro.name] = {}
            m_r, p_r = evaluate_readout(q_r, db_r, test_labels, db_labels, method, ro, cfg, device, ds.multi_label,
                                        per_query=per_query[ro.name])
            res_v = _evaluate(readout_codes(val_z, ro), db_r, val.labels.cpu(), db_labels, method, (100,), device,
                              ds.multi_label, distance=ro.distance)
            readouts[ro.name] = {"code_type": ro.code_type, "distance": ro.distance,
                                 "storage_bits": storage_bits(db_r, ro.code_type, cfg.bits),
                                 "metrics": {"val_mAP@100": float(res_v["mAP@100"]), **m_r}, "protocol": p_r}
        protocol["storage_bits"] = storage_bits(db_codes, primary.code_type, cfg.bits)
        protocol["restore_best"] = cfg.restore_best
        protocol["protocol"] = cfg.protocol
        timings = {"train_s": st["times"]["train_s"], "val_s": st["times"]["val_s"], "encode_s": encode_s,
                   "eval_s": eval_s, "total_s": 0.0, **ph, "checkpoint_s": st["times"]["checkpoint_s"],
                   "graph_capture_s": stepper.capture_s if stepper is not None else 0.0,
                   "precise_bn_s": st["times"].get("precise_bn_s", 0.0)}
        n_enc = len(train) + len(test)
        throughput = {"train_images_per_s": st["images"] / max(st["times"]["train_s"], 1e-9),
                      "encode_images_per_s": n_enc / max(encode_s, 1e-9),
                      "queries_per_s": len(test) / max(eval_s, 1e-9)}
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        result = RunResult(
            run_id=cfg.run_id, run_dir=cfg.run_dir, config=cfg.to_dict(), metrics=metrics, protocol=protocol,
            timings=timings, throughput=throughput, device=f"{world}x {dev_name}", epochs_run=st["epoch"],
            history=st["history"], best_epoch=st["best_epoch"] if cfg.restore_best else st["epoch"] - 1,
            resumed_from=resumed_from, readouts=readouts, started_at=st.get("started_at"))
        codes = {"query_codes": q_codes.numpy(), "db_codes": db_codes.numpy(),
                 "query_labels": test.labels.cpu().numpy().astype(np.uint8),
                 "db_labels": train.labels.cpu().numpy().astype(np.uint8),
                 "query_index": test.index.cpu().numpy(), "db_index": train.index.cpu().numpy(),
                 "bits": np.int64(cfg.bits), "code_type": np.str_(method.code_type),
                 "distance": np.str_(method.distance)}
        timings["final_s"] = time.perf_counter() - t_final  # finalize, encode, evaluate (every readout)
        t_ph = time.perf_counter()
        files = {"codes.npz": _npz_bytes(**codes),
                 "model.pt": _torch_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()}),
                 "config.json": (json.dumps(cfg.to_dict(), indent=2) + "\n").encode(),
                 # "<readout>:test_<metric>" -> float16 per test query (row order of codes.npz's queries)
                 PER_QUERY_FILE: _npz_bytes(query_index=test.index.cpu().numpy(), **{
                     f"{ro_name}:{k}": v for ro_name, vals in per_query.items() for k, v in vals.items()})}
        for name, data in files.items():
            _atomic_write_bytes(os.path.join(cfg.run_dir, name), data)
        timings["write_s"] = time.perf_counter() - t_ph  # the run directory's files
        # every attempt's time (earlier ones up to their last checkpoint): never below train_s on a resume
        timings["total_s"] = elapsed_before + time.perf_counter() - t_start
        _atomic_json(os.path.join(cfg.run_dir, "metrics.json"), _result_json(result))  # last: marks done
        files["metrics.json"] = (json.dumps(_result_json(result), indent=2, default=str) + "\n").encode()
        final.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})  # scalars: no curves
        final["best_epoch"] = st["best_epoch"]
        final.update(session.on_result(result) or {})  # e.g. the sweep trial writes its leaderboard row here
    _report(session, rank, final, model, loss_fn, optimizer, scheduler, st, files=files,
            checkpoint=session.final_checkpoint)
    return result


def _result_json(result: RunResult) -> dict:
    d = result.to_dict()
    d.pop("run_dir")
    return d


def _report(session, rank, metrics, model, loss_fn, optimizer, scheduler, st, files, checkpoint=True) -> None:
    """Rank 0 writes a checkpoint directory and reports it (``checkpoint``); the others, or a report
    the session wants no checkpoint for, report metrics only."""
    if rank != 0 or not checkpoint:
        session.report(metrics, None)
        return
    tmp = tempfile.mkdtemp(prefix="hashbench-ckpt-")
    try:
        state = {"model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None, "state": st}
        torch.save(state, os.path.join(tmp, STATE_FILE))
        for name, data in (files or {}).items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        session.report(metrics, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["RunResult", "fit", "encode_split", "FAIL_ENV"]
