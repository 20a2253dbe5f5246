"""The method registry: one file per method, no platform code touched.

A method file in ``hashbench/methods/`` builds a :class:`Method` and calls
:func:`register`. The platform (training loop, sweeps, CLI) only ever talks to
methods through this contract:

* ``build_model(ctx, hp) -> nn.Module`` whose ``forward(x)`` returns a dict of
  tensors (whatever its loss needs) and whose ``encode(x)`` returns the
  continuous code ``(n, bits)``. For ``code_type == "binary"`` the platform
  takes ``sign`` of it (zeros become +1) to get ``{-1, +1}`` codes; for
  ``"float"`` the values are used as they are.
* ``build_loss(ctx, hp) -> nn.Module`` whose ``forward(out, batch, model)``
  returns a dict with the total under ``"loss"`` and every term by name
  (logged per epoch). ``batch`` is a :class:`Batch`; ``model`` is the bare
  module (not the DDP wrapper), for losses on weights.
* ``build_optimizer(parameters, hp)`` and optionally
  ``build_scheduler(optimizer, hp)``; a scheduler whose ``step`` takes a
  metric (ReduceLROnPlateau) is stepped each epoch with the validation mAP, or
  with the epoch's mean training loss when ``plateau_on`` is ``"train_loss"``
  (the platform sets the scheduler's mode to match: ``training/plateau.py``).
* optionally ``finalize(model, batches, hp)``, called once after training
  with an iterable of :class:`Batch` over the train split (two-stage baselines
  fit their projection here).

Hyperparameters are declared as :class:`Param` objects: their default is the
paper's, ``search`` is the range the sweep explores, ``bounds`` the values that
are valid at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from hashbench.platform.errors import HashbenchError

PARAM_TYPES = ("float", "int", "bool", "choice", "str")
CODE_TYPES = ("binary", "float")
DISTANCES = ("hamming", "l2", "cosine")
#: what a plateau scheduler can be stepped with (docs/training.md, training/plateau.py)
PLATEAU_ON = ("val_map", "train_loss")
SAMPLERS = ("random", "class-balanced")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default, its valid values and its search space.

    ``search`` is ``(low, high)`` for float/int (log-uniform when ``log``), or
    a tuple of choices for ``choice``/``bool``; ``None`` keeps it out of sweeps.
    ``bounds`` is ``(min, max)`` (inclusive, ``None`` for open) for any value.
    """

    name: str
    default: Any
    type: str = "float"
    search: Optional[tuple] = None
    log: bool = False
    bounds: tuple = (None, None)
    choices: Optional[tuple] = None
    help: str = ""

    def __post_init__(self):
        if self.type not in PARAM_TYPES:
            raise ValueError(f"Param {self.name!r}: type must be one of {PARAM_TYPES}, got {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"Param {self.name!r}: type 'choice' needs choices=(...)")
        if self.search is not None and self.type in ("float", "int"):
            lo, hi = self.search
            if not lo < hi:
                raise ValueError(f"Param {self.name!r}: search range {self.search} must have low < high")
            if self.log and lo <= 0:
                raise ValueError(f"Param {self.name!r}: a log search range needs low > 0, got {lo}")
        # the default itself must be valid
        self.coerce(self.default)

    def coerce(self, value: Any, where: str = "") -> Any:
        """Return ``value`` converted to this parameter's type, or raise HashbenchError."""
        label = f"{where}parameter {self.name!r}"
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise HashbenchError(f"{label}: expected true or false, got {value!r}")
        if self.type == "str":
            if isinstance(value, str):
                return value
            raise HashbenchError(f"{label}: expected a string, got {value!r}")
        if self.type == "choice":
            for c in self.choices:
                if value == c or (isinstance(value, str) and value == str(c)):
                    return c
            raise HashbenchError(f"{label}: {value!r} is not one of {list(self.choices)}")
        try:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if self.type == "int":
                if not v.is_integer():
                    raise ValueError
                v = int(v)
        except (TypeError, ValueError, OverflowError):
            want = "an integer" if self.type == "int" else "a number"
            raise HashbenchError(f"{label}: expected {want}, got {value!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise HashbenchError(f"{label}: must be finite, got {value!r}")
        lo, hi = self.bounds
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise HashbenchError(f"{label}: {v} is outside the valid range {rng}")
        return v

    def describe(self) -> dict:
        return {
            "name": self.name, "type": self.type, "default": self.default,
            "search": list(self.search) if self.search is not None else None,
            "log": self.log, "bounds": list(self.bounds),
            "choices": list(self.choices) if self.choices else None, "help": self.help,
        }


@dataclass(frozen=True)
class ModelContext:
    """What a model or loss builder knows about the data and the code."""

    in_channels: int
    image_size: int
    num_classes: int
    bits: int
    multi_label: bool = False
    mask_classes: int = 2  # segmentation classes of the store's masks (meta "mask_classes"; 0 background)


@dataclass(frozen=True)
class Requirements:
    """What a method needs from a dataset."""

    labels: bool = True
    masks: bool = False
    multi_label: bool = True  # False: the method cannot train on multi-label data
    min_image_size: int = 8


@dataclass
class Batch:
    """One training batch, already on the device and augmented.

    images: float (B, C, H, W) in [0, 1]; labels: float multi-hot (B, num_classes);
    targets: long (B,) the first label of each item (for single-label losses);
    masks: long (B, H, W) in {0, 1} or None; index: long (B,) positions in the store.
    """

    images: Any
    labels: Any
    targets: Any
    masks: Any = None
    index: Any = None


@dataclass(frozen=True)
class Readout:
    """One way of reading a trained model's continuous codes ``encode(x)`` out for retrieval.

    ``code_type`` decides the transform: ``binary`` takes ``sign`` (zeros to +1) and compares by
    Hamming distance, ``float`` keeps the values (float32) and compares by ``distance``. Every
    readout of a run gets its own leaderboard row (same ``run_id``, its own ``readout`` and
    ``entry``), so one training can compete both as a hash and as an embedding. ``label`` is the
    name the row competes under (the ``entry`` column); empty: ``<method>-<name>``.
    """

    name: str
    code_type: str
    distance: str
    label: str = ""
    summary: str = ""

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"readout name {self.name!r}: use letters, digits, '-' and '_'")
        if self.code_type not in CODE_TYPES:
            raise ValueError(f"readout {self.name!r}: code_type must be one of {CODE_TYPES}")
        if self.distance not in DISTANCES:
            raise ValueError(f"readout {self.name!r}: distance must be one of {DISTANCES}")
        if self.code_type == "binary" and self.distance != "hamming":
            raise ValueError(f"readout {self.name!r}: binary codes are compared by hamming distance")

    def describe(self) -> dict:
        return dataclasses.asdict(self)


#: the readout ``Method.also_binary`` adds: the float codes' signs, by Hamming distance, at equal bits
SIGN_READOUT = Readout("sign", "binary", "hamming", summary="sign of the float embedding, Hamming distance")

#: method ids that no longer exist, with what replaced them (``get_method`` says so)
RETIRED = {
    "drh-nb": "'drh-nb' is now the float readout of 'drh': one drh training writes both rows, the sign "
              "codes (entry 'drh') and the continuous tanh outputs by L2 (entry 'drh-nb', readout 'float'); "
              "train or sweep 'drh'",
}


@dataclass(frozen=True)
class Method:
    """Everything the platform needs to train, evaluate and sweep one method."""

    id: str
    summary: str
    citation: str
    build_model: Callable
    build_loss: Callable
    build_optimizer: Callable
    params: tuple = ()
    code_type: str = "binary"
    distance: str = "hamming"
    build_scheduler: Optional[Callable] = None
    finalize: Optional[Callable] = None
    batch_size: int = 32
    epochs: int = 30
    sampler: str = "random"
    requires: Requirements = field(default_factory=Requirements)
    paper: str = ""
    family: str = ""
    also_binary: bool = False  # float methods: also evaluate sign(codes) by Hamming distance at equal bits
    #: the training step may be captured as one CUDA graph (no host sync, no data-dependent shapes, no
    #: Python state that changes between steps): True/False, or a function of the hyperparameters
    cuda_graph: Any = False
    #: further readouts of the same trained model, each its own leaderboard row (``also_binary`` adds
    #: ``SIGN_READOUT``); the primary readout (the method's own code_type/distance) is implicit
    readouts: tuple = ()
    #: what a ReduceLROnPlateau scheduler is stepped with: "val_map" (validation mAP@100, mode max) or
    #: "train_loss" (the epoch's mean training loss, mode min); ``TrainConfig.plateau_on`` overrides it
    plateau_on: str = "val_map"

    def __post_init__(self):
        if not self.id or not all(c.isalnum() or c in "-_" for c in self.id):
            raise ValueError(f"method id {self.id!r}: use letters, digits, '-' and '_'")
        if self.code_type not in CODE_TYPES:
            raise ValueError(f"method {self.id!r}: code_type must be one of {CODE_TYPES}")
        if self.distance not in DISTANCES:
            raise ValueError(f"method {self.id!r}: distance must be one of {DISTANCES}")
        if self.also_binary and self.code_type != "float":
            raise ValueError(f"method {self.id!r}: also_binary applies to float codes only")
        if self.code_type == "binary" and self.distance != "hamming":
            raise ValueError(f"method {self.id!r}: binary codes are compared by hamming distance")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"method {self.id!r}: sampler must be one of {SAMPLERS}")
        if self.plateau_on not in PLATEAU_ON:
            raise ValueError(f"method {self.id!r}: plateau_on must be one of {PLATEAU_ON}, got {self.plateau_on!r}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.id!r}: duplicate parameter names in {names}")
        extra = tuple(self.readouts)
        if self.also_binary and not any(r.name == SIGN_READOUT.name for r in extra):
            extra = extra + (SIGN_READOUT,)
        if not all(isinstance(r, Readout) for r in extra):
            raise ValueError(f"method {self.id!r}: readouts must be Readout objects")
        ro_names = [self.primary_readout.name] + [r.name for r in extra]
        if len(set(ro_names)) != len(ro_names):
            raise ValueError(f"method {self.id!r}: readout names repeat: {ro_names}")
        object.__setattr__(self, "readouts", extra)

    @property
    def primary_readout(self) -> Readout:
        """The readout the method trains for: ``sign`` for binary methods, ``float`` for float ones."""
        return Readout("sign" if self.code_type == "binary" else "float", self.code_type, self.distance,
                       label=self.id, summary="the method's own codes")

    def all_readouts(self) -> tuple:
        """The primary readout, then the extra ones."""
        return (self.primary_readout,) + tuple(self.readouts)

    def entry(self, readout: Readout) -> str:
        """The leaderboard entry a readout's row competes under: the method id, or the readout's label."""
        if readout.name == self.primary_readout.name:
            return self.id
        return readout.label or f"{self.id}-{readout.name}"

    def graph_safe(self, hp: dict) -> bool:
        """Whether the training step with hyperparameters ``hp`` may be captured as a CUDA graph."""
        return bool(self.cuda_graph(hp) if callable(self.cuda_graph) else self.cuda_graph)

    @property
    def param_map(self) -> dict:
        return {p.name: p for p in self.params}

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def resolve(self, overrides: Optional[dict] = None, where: str = "") -> dict:
        """Defaults updated with ``overrides``, each validated; unknown names are errors."""
        hp = self.defaults()
        pmap = self.param_map
        for key, value in (overrides or {}).items():
            if key not in pmap:
                raise HashbenchError(
                    f"{where}method {self.id!r} has no parameter {key!r}; valid parameters: "
                    f"{', '.join(sorted(pmap)) or '(none)'}")
            hp[key] = pmap[key].coerce(value, where=f"{where}method {self.id!r} ")
        return hp

    def search_space(self) -> dict:
        """``{name: Param}`` of the parameters that sweeps explore."""
        return {p.name: p for p in self.params if p.search is not None}

    def describe(self) -> dict:
        return {
            "id": self.id, "family": self.family, "summary": self.summary, "citation": self.citation,
            "paper": self.paper, "code_type": self.code_type, "distance": self.distance,
            "batch_size": self.batch_size, "epochs": self.epochs, "sampler": self.sampler,
            "requires": dataclasses.asdict(self.requires),
            "params": [p.describe() for p in self.params],
            "two_stage": self.finalize is not None, "also_binary": self.also_binary,
            "readouts": [{**r.describe(), "entry": self.entry(r)} for r in self.all_readouts()],
            "cuda_graph": self.graph_safe(self.defaults()),
            "plateau_on": self.plateau_on,
        }


_REGISTRY: dict = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a second registration of an id is an error)."""
    if method.id in _REGISTRY and _REGISTRY[method.id] is not method:
        raise ValueError(f"method id {method.id!r} is registered twice")
    _REGISTRY[method.id] = method
    return method


def _load_all() -> None:
    importlib.import_module("hashbench.methods")


def list_methods() -> list:
    """Sorted ids of every registered method."""
    _load_all()
    return sorted(_REGISTRY)


def get_method(method_id: str) -> Method:
    """The registered method ``method_id``; the error lists the valid ids."""
    _load_all()
    if method_id not in _REGISTRY and method_id in RETIRED:
        raise HashbenchError(f"unknown method {method_id!r}: {RETIRED[method_id]}")
    if method_id not in _REGISTRY:
        raise HashbenchError(
            f"unknown method {method_id!r}; registered methods: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[method_id]


def create_model(method_id: str, ctx: ModelContext, **overrides):
    """Build the model of ``method_id`` for ``ctx`` with validated hyperparameters."""
    method = get_method(method_id)
    return method.build_model(ctx, method.resolve(overrides))


def check_requirements(method: Method, *, has_masks: bool, multi_label: bool, image_size: int,
                       dataset: str = "") -> None:
    """Raise HashbenchError when a dataset lacks what ``method`` needs."""
    req = method.requires
    name = f"dataset {dataset!r}" if dataset else "the dataset"
    if req.masks and not has_masks:
        raise HashbenchError(
            f"method {method.id!r} needs segmentation masks, but {name} has none; "
            f"prepare a dataset with masks (e.g. the built-in 'busi')")
    if multi_label and not req.multi_label:
        raise HashbenchError(f"method {method.id!r} supports single-label data only, but {name} is multi-label")
    if image_size < req.min_image_size:
        raise HashbenchError(
            f"method {method.id!r} needs images of at least {req.min_image_size} px, {name} has {image_size} px; "
            f"prepare it again with --size {req.min_image_size} or more")


def iter_methods() -> Iterable[Method]:
    for mid in list_methods():
        yield _REGISTRY[mid]
