"""``TrainConfig``: everything one training run needs, validated on construction."""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from hashbench.platform.errors import HashbenchError

#: Augmentation done on the device, per sample, inside the step loop.
#: hflip / vflip: random horizontal / vertical flips (p = 0.5 each);
#: rot90: a random multiple of 90 degrees (images are square);
#: brightness / contrast: x -> (x - 0.5) * (1 + c) + 0.5 + b with b ~ U(-brightness, brightness),
#: c ~ U(-contrast, contrast), clamped to [0, 1]. ``enabled=False`` turns all of it off.
AUGMENT_DEFAULTS = {"enabled": True, "hflip": True, "vflip": False, "rot90": False,
                    "brightness": 0.1, "contrast": 0.1}
_AUGMENT_BOOLS = ("enabled", "hflip", "vflip", "rot90")
_AUGMENT_FLOATS = ("brightness", "contrast")
_EVAL_K_WORDS = ("all",)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise HashbenchError(f"{where}: expected true or false, got {value!r}")


def resolve_augment(augment: Optional[dict]) -> dict:
    """Defaults updated with ``augment``; unknown keys and bad values are errors."""
    out = dict(AUGMENT_DEFAULTS)
    for key, value in (augment or {}).items():
        where = f"augment {key!r}"
        if key in _AUGMENT_BOOLS:
            out[key] = _parse_bool(value, where)
        elif key in _AUGMENT_FLOATS:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise HashbenchError(f"{where}: expected a number in [0, 1], got {value!r}") from None
            if not 0.0 <= v <= 1.0:
                raise HashbenchError(f"{where}: expected a number in [0, 1], got {value!r}")
            out[key] = v
        else:
            raise HashbenchError(f"unknown augment option {key!r}; valid options: {', '.join(AUGMENT_DEFAULTS)}")
    return out


#: How the final (test) evaluation is run, per readout (docs/protocol.md "Paper protocols"):
#: ties / convention: the evaluation engine's tie policy and AP convention; hamming_radii: P@H<=r for each r
#: (binary readouts); knn_k: kNN balanced accuracy with k neighbours (single-label data; None: off);
#: embedding: silhouette and Davies-Bouldin of the test embeddings (float readouts, single-label data);
#: pr_ranks: [start, stop, step] of a rank-based precision-recall curve (P@k, R@k at those k) or [];
#: same_set: the test queries are retrieved among themselves, each query's own item excluded (leave-one-out,
#: docs/metrics.md "Same-set retrieval") instead of against the train database.
EVALUATION_DEFAULTS = {"ties": "tie-aware", "convention": "hits", "hamming_radii": [2], "knn_k": None,
                       "embedding": False, "pr_ranks": [], "same_set": False}
PROTOCOL_COMMON = "common"


def check_protocol(value: Any) -> str:
    """``common`` or ``paper:<registered method id>``; anything else is a HashbenchError."""
    from hashbench.platform.registry import list_methods

    if value == PROTOCOL_COMMON:
        return value
    if isinstance(value, str) and value.startswith("paper:") and value[len("paper:"):] in list_methods():
        return value
    raise HashbenchError(f"protocol {value!r}: expected 'common' or 'paper:<method id>' with a registered "
                         f"method id ({', '.join('paper:' + m for m in list_methods())})")


def resolve_evaluation(evaluation: Optional[dict]) -> dict:
    """``EVALUATION_DEFAULTS`` updated with ``evaluation``; unknown keys and bad values are errors."""
    from hashbench.platform.evaluation import CONVENTIONS, TIES

    if evaluation is None:
        evaluation = {}
    if not isinstance(evaluation, dict):
        raise HashbenchError(f"evaluation must be a mapping with keys {', '.join(EVALUATION_DEFAULTS)}, "
                             f"got {evaluation!r}")
    out = {**EVALUATION_DEFAULTS, "hamming_radii": list(EVALUATION_DEFAULTS["hamming_radii"]),
           "pr_ranks": list(EVALUATION_DEFAULTS["pr_ranks"])}
    for key, value in evaluation.items():
        where = f"evaluation {key!r}"
        if key == "ties":
            if value not in TIES:
                raise HashbenchError(f"{where}: {value!r} is not one of {', '.join(TIES)}")
        elif key == "convention":
            if value not in CONVENTIONS:
                raise HashbenchError(f"{where}: {value!r} is not one of {', '.join(CONVENTIONS)}")
        elif key == "hamming_radii":
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise HashbenchError(f"{where}: expected a non-empty list of integers >= 0, got {value!r}")
            value = sorted({_int_at_least(v, f"{where} entry", 0) for v in value})
        elif key == "knn_k":
            value = None if value is None else _positive_int(value, f"{where}")
        elif key in ("embedding", "same_set"):
            value = _parse_bool(value, where)
        elif key == "pr_ranks":
            if value in (None, []):
                value = []
            elif not isinstance(value, (list, tuple)) or len(value) != 3:
                raise HashbenchError(f"{where}: expected [start, stop, step] (e.g. [300, 6000, 300]) or [], "
                                     f"got {value!r}")
            else:
                value = [_positive_int(v, f"{where} entry") for v in value]
                if value[1] < value[0]:
                    raise HashbenchError(f"{where}: stop {value[1]} is below start {value[0]}")
        else:
            raise HashbenchError(f"unknown evaluation option {key!r}; valid options: "
                                 f"{', '.join(EVALUATION_DEFAULTS)}")
        out[key] = value
    return out


def pr_rank_cutoffs(evaluation: dict) -> list:
    """The cut-offs of the rank-based precision-recall curve of ``evaluation`` (``[]`` when off)."""
    if not evaluation.get("pr_ranks"):
        return []
    start, stop, step = evaluation["pr_ranks"]
    return list(range(start, stop + 1, step))


@dataclass
class TrainConfig:
    """One training run. Construction validates every field against the method and the dataset.

    ``params`` are the method's hyperparameter overrides (``Method.resolve`` checks them; the
    resolved set is ``hp``). ``epochs`` / ``batch_size`` default to the method's. ``batch_size``
    is the global batch: each of the ``workers`` trains on ``batch_size // workers`` items per step.
    ``patience``: stop after this many epochs without a better validation mAP@100 (None: never).
    ``device``: ``"cpu"``, ``"cuda"`` or None (a GPU when there is one) for in-process runs;
    Ray Train workers use the device Ray gives them. ``compile``: a ``torch.compile`` mode
    (``default``, ``reduce-overhead``, ``max-autotune``) for the training forward, or None.
    ``cuda_graph``: on a single GPU, capture the whole training step as one CUDA graph when the
    method allows it (``Method.cuda_graph``; see ``training/graphed.py``).
    ``protocol``: ``common`` (the benchmark's protocol) or ``paper:<method>`` (a paper's own protocol,
    ``configs/papers/``), recorded on every leaderboard row. ``restore_best``: evaluate the weights of
    the epoch with the best validation mAP@100 (default), or, when false, those of the last epoch
    (fixed epochs, no selection). ``evaluation``: test-evaluation options (``EVALUATION_DEFAULTS``).
    ``torch_threads``: torch's intra-op CPU threads while the run trains and evaluates (default 1,
    what a Ray worker with one CPU gets). Part of the recorded configuration because CPU results
    depend on it: the same config and seed give the same metrics in every entry point.
    ``plateau_on``: what a ``ReduceLROnPlateau`` scheduler is stepped with each epoch, ``val_map``
    (validation mAP@100) or ``train_loss`` (the epoch's mean training loss); None: the method's
    default (``Method.plateau_on``), resolved on construction (``training/plateau.py``).
    ``cudnn_benchmark``: on a GPU, let cuDNN time its candidate kernels for each convolution shape the
    first time it runs and keep the fastest (``torch.backends.cudnn.benchmark``), paid once per shape
    per process (sweeps run every trial of a process on one thread, docs/sweeps.md); false takes
    cuDNN's heuristic choice at once. None (default) resolves on construction: false when the worker
    has a fraction of a GPU (``0 < gpus_per_worker < 1``: trials sharing a GPU would all time kernels
    at once, on a GPU busy with each other's work), else true (docs/training.md, "cuDNN autotuning").
    ``precise_bn``: after each epoch's training steps, before its validation encoding, re-estimate
    every BatchNorm's running statistics with the current weights over the train split
    (``training/precise_bn.py``); so the selected weights and the test codes carry them too.
    """

    method: str
    dataset: str
    bits: int
    epochs: Optional[int] = None
    params: dict = field(default_factory=dict)
    batch_size: Optional[int] = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    seed: int = 0
    out_dir: str = "runs"
    run_name: Optional[str] = None
    augment: dict = field(default_factory=dict)
    eval_ks: tuple = (10, 100, 1000, "all")
    patience: Optional[int] = None
    max_failures: int = 1
    storage_path: Optional[str] = None
    device: Optional[str] = None
    eval_batch_size: int = 1024
    compile: Optional[str] = None
    cuda_graph: bool = True
    protocol: str = "common"
    restore_best: bool = True
    evaluation: dict = field(default_factory=dict)
    torch_threads: int = 1
    plateau_on: Optional[str] = None
    precise_bn: bool = False
    cudnn_benchmark: Optional[bool] = None
    hp: dict = field(init=False, default_factory=dict)
    dataset_path: str = field(init=False, default="")
    dataset_fingerprint: str = field(init=False, default="")
    dataset_name: str = field(init=False, default="")

    def __post_init__(self):
        from hashbench.platform.registry import check_requirements, get_method

        m = get_method(self.method)  # unknown id -> HashbenchError listing the valid ones
        self.bits = check_bits(self.bits)
        self.epochs = m.epochs if self.epochs is None else _positive_int(self.epochs, "epochs")
        self.batch_size = m.batch_size if self.batch_size is None else _positive_int(self.batch_size, "batch_size")
        self.workers = _positive_int(self.workers, "workers")
        self.eval_batch_size = _positive_int(self.eval_batch_size, "eval_batch_size")
        self.torch_threads = _positive_int(self.torch_threads, "torch_threads")
        self.max_failures = _int_at_least(self.max_failures, "max_failures", -1)
        self.seed = _int_at_least(self.seed, "seed", 0)
        if self.patience is not None:
            self.patience = _positive_int(self.patience, "patience")
        self.gpus_per_worker = _number_at_least(self.gpus_per_worker, "gpus_per_worker", 0.0)
        self.cpus_per_worker = _number_at_least(self.cpus_per_worker, "cpus_per_worker", 0.0)
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise HashbenchError("cpus_per_worker and gpus_per_worker are both 0; a worker needs some resource")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise HashbenchError(f"device {self.device!r}: expected 'cpu', 'cuda', 'cuda:N' or none (auto)")
        if self.compile not in COMPILE_MODES:
            raise HashbenchError(f"compile {self.compile!r}: expected one of {list(COMPILE_MODES)}")
        if self.cudnn_benchmark is None:
            self.cudnn_benchmark = not (0 < self.gpus_per_worker < 1)
        if not isinstance(self.cudnn_benchmark, bool):
            raise HashbenchError(f"cudnn_benchmark {self.cudnn_benchmark!r}: expected true, false or none "
                                 f"(auto: false on a fraction of a GPU, else true)")
        if not isinstance(self.cuda_graph, bool):
            raise HashbenchError(f"cuda_graph {self.cuda_graph!r}: expected true or false")
        if not isinstance(self.params, dict):
            raise HashbenchError(f"params must be a mapping of hyperparameter names to values, got {self.params!r}")
        self.hp = m.resolve(self.params)
        self.augment = resolve_augment(self.augment)
        self.protocol = check_protocol(self.protocol)
        if not isinstance(self.restore_best, bool):
            raise HashbenchError(f"restore_best {self.restore_best!r}: expected true or false")
        self.evaluation = resolve_evaluation(self.evaluation)
        self.plateau_on = _plateau_on(self.plateau_on, m)
        self.precise_bn = _parse_bool(self.precise_bn, "precise_bn")
        self.eval_ks = _eval_ks(self.eval_ks)
        if self.batch_size < self.workers:
            raise HashbenchError(
                f"batch_size {self.batch_size} is smaller than workers {self.workers}; each worker needs "
                f"at least one item per step")
        if m.sampler == "class-balanced":
            spc = self.hp.get("spc")
            if spc is None:
                raise HashbenchError(f"method {m.id!r} uses the class-balanced sampler but has no 'spc' parameter")
            if self.batch_size // self.workers < spc:
                raise HashbenchError(
                    f"batch_size {self.batch_size} over {self.workers} worker(s) leaves "
                    f"{self.batch_size // self.workers} items per worker step, fewer than spc={spc} "
                    f"samples per class; raise batch_size or lower spc")
        ds = self._dataset_info()
        check_requirements(m, has_masks=ds.has_masks, multi_label=ds.multi_label,
                           image_size=ds.image_size, dataset=self.dataset)
        if m.requires.labels and ds.num_classes < 1:
            raise HashbenchError(f"method {m.id!r} needs labels, but dataset {self.dataset!r} has none")
        for split in ("train", "val", "test"):
            if len(ds.indices(split)) == 0:
                raise HashbenchError(
                    f"dataset {self.dataset!r} has no {split!r} items; training needs train (database), "
                    f"val (early stopping, sweeps) and test (queries) splits")
        if m.sampler == "class-balanced":
            self._check_class_balanced(ds)
        self.out_dir = os.path.abspath(os.fspath(self.out_dir))
        if self.storage_path is not None and "://" not in str(self.storage_path):
            self.storage_path = os.path.abspath(os.fspath(self.storage_path))
        if self.run_name is None:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self.run_name = f"{m.id}-{self.dataset_name}-{self.bits}b-s{self.seed}-{stamp}-{secrets.token_hex(3)}"
        elif not self.run_name or not all(c.isalnum() or c in "-_.=" for c in self.run_name) \
                or self.run_name.startswith("."):
            raise HashbenchError(
                f"run_name {self.run_name!r}: use letters, digits and '-', '_', '.', '=' (not starting with '.')")

    def _dataset_info(self):
        from hashbench.platform.data import load_dataset

        self.dataset = os.fspath(self.dataset)
        ds = load_dataset(self.dataset)
        self.dataset_path = str(ds.path.resolve()) if ds.path is not None else ""
        self.dataset_fingerprint, self.dataset_name = ds.fingerprint, ds.name
        return ds

    def _check_class_balanced(self, ds) -> None:
        import numpy as np

        spc = self.hp["spc"]
        train = ds.indices("train")
        counts = np.bincount(np.asarray(ds.labels[train]).argmax(1), minlength=ds.num_classes)
        usable = int((counts >= spc).sum())
        if usable < 2:
            raise HashbenchError(
                f"the class-balanced sampler needs at least 2 classes with spc={spc} training items; "
                f"dataset {self.dataset!r} has {usable}; lower spc")

    @property
    def method_spec(self):
        from hashbench.platform.registry import get_method

        return get_method(self.method)

    @property
    def run_id(self) -> str:
        return self.run_name

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.run_name)

    def to_dict(self) -> dict:
        """A JSON-able dict; ``TrainConfig.from_dict`` rebuilds (and revalidates) the config."""
        d = dataclasses.asdict(self)
        d["eval_ks"] = list(d["eval_ks"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = {k: v for k, v in d.items() if k not in _DERIVED}
        d.setdefault("plateau_on", "val_map")  # recorded before the field existed: every plateau used the val mAP
        d["eval_ks"] = tuple(d.get("eval_ks", cls.eval_ks))
        return cls(**d)


_DERIVED = ("hp", "dataset_path", "dataset_fingerprint", "dataset_name")


#: The largest code length / embedding dimension (``--bits``, a sweep's ``bits``), documented in
#: docs/training.md: far above the papers' 8-128 bits and the largest float embeddings (2048), and
#: small enough that a typo such as ``--bits 10000`` is refused instead of building a huge model.
MAX_BITS = 4096


def check_bits(value, name: str = "bits") -> int:
    """``value`` as a code length in 1..MAX_BITS, else HashbenchError naming it."""
    bits = _positive_int(value, name)
    if bits > MAX_BITS:
        raise HashbenchError(f"{name} {bits} is too large: code lengths (embedding dimensions) go from 1 to "
                             f"{MAX_BITS}; the papers use 8 to 256 bits and 2 to 1024 embedding dimensions")
    return bits


def _plateau_on(value, method) -> str:
    """``value`` (or the method's default when None) as one of ``PLATEAU_ON``, else HashbenchError."""
    from hashbench.platform.registry import PLATEAU_ON

    if value is None:
        return method.plateau_on
    if value not in PLATEAU_ON:
        raise HashbenchError(f"plateau_on {value!r}: expected one of {', '.join(PLATEAU_ON)} "
                             f"(or none: the method's default, {method.plateau_on!r})")
    if value == "train_loss" and method.build_scheduler is None:
        raise HashbenchError(f"plateau_on 'train_loss': method {method.id!r} has no learning-rate scheduler "
                             f"to step; leave plateau_on unset")
    return value


def _positive_int(value, name: str) -> int:
    return _int_at_least(value, name, 1)


def _int_at_least(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HashbenchError(f"{name} must be an integer >= {low}, got {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise HashbenchError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if not v.is_integer() or v < low:
        raise HashbenchError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(v)


def _number_at_least(value, name: str, low: float) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value)
    except (TypeError, ValueError):
        raise HashbenchError(f"{name} must be a number >= {low}, got {value!r}") from None
    if not (v >= low and v < float("inf")):
        raise HashbenchError(f"{name} must be a finite number >= {low}, got {value!r}")
    return v


def _eval_ks(ks) -> tuple:
    if isinstance(ks, (str, int)):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, str) and k in _EVAL_K_WORDS:
            out.append(k)
            continue
        v = _positive_int(k, "eval_ks entry")
        out.append(v)
    if 100 not in out:
        out.append(100)  # mAP@100 drives early stopping, sweeps and the leaderboard
    return tuple(out)
