"""The sweep configuration file: parsed with ``yaml.safe_load`` semantics (duplicate keys refused,
:mod:`hashbench.platform.yaml_util`) and validated before anything runs.

Every mistake is a :class:`HashbenchError` naming the file, the line where known, the field, the
value and what would be valid. See docs/sweeps.md for the format.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from hashbench.platform.errors import HashbenchError
from hashbench.platform.yaml_util import load_yaml

TOP_KEYS = ("name", "methods", "datasets", "bits", "trials", "epochs", "seed", "seeds", "asha",
            "resources", "max_failures", "train", "storage", "leaderboard", "out_dir", "protocol",
            "checkpoint_interval_s")
METHOD_KEYS = ("datasets", "bits", "params", "search", "trials", "epochs", "batch_size")
ASHA_KEYS = ("grace_period", "reduction_factor")
RESOURCE_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker", "max_concurrent", "mps")
TRAIN_KEYS = ("batch_size", "augment", "patience", "eval_ks", "max_failures", "device", "eval_batch_size",
              "cuda_graph", "restore_best", "evaluation", "torch_threads", "plateau_on",
              "precise_bn", "cudnn_benchmark")
SEARCH_KEYS = ("low", "high", "log", "choices")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SearchDim:
    """One searched hyperparameter: a numeric range or a set of choices."""

    name: str
    type: str  # "float" | "int" | "choice"
    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple = ()

    def to_tune(self):
        from ray import tune

        if self.type == "choice":
            return tune.choice(list(self.choices))
        if self.type == "int":
            return tune.lograndint(self.low, self.high + 1) if self.log else tune.randint(self.low, self.high + 1)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)


@dataclass
class Study:
    """One (method, dataset, bits) of the sweep: its fixed parameters, search space and budget."""

    method: str
    dataset: str
    bits: int
    params: dict
    search: dict  # name -> SearchDim
    trials: int
    epochs: int
    batch_size: Optional[int]

    @property
    def key(self) -> str:
        ds = os.path.basename(os.path.normpath(self.dataset))
        return f"{self.method}-{ds}-{self.bits}b"


@dataclass
class SweepConfig:
    """A validated sweep: its studies plus everything shared by them."""

    name: str
    source: str
    studies: list
    seed: int = 0
    seeds: int = 0
    asha: Optional[dict] = field(default_factory=lambda: {"grace_period": 1, "reduction_factor": 2})
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: Any = 0.0  # a number or "auto"
    max_concurrent: Optional[int] = None
    #: run the trials under an NVIDIA MPS daemon that the sweep starts (local Ray only; sweep/mps.py)
    mps: bool = False
    max_failures: int = 1
    train: dict = field(default_factory=dict)
    storage: str = "runs/sweeps"
    leaderboard: str = "leaderboard"
    out_dir: str = "runs"
    #: a one-worker trial checkpoints at most this often (seconds; 0: every epoch but the last)
    checkpoint_interval_s: float = 30.0

    @property
    def total_trials(self) -> int:
        return sum(s.trials for s in self.studies)


def _key_lines(text: str) -> dict:
    """``{key path tuple: 1-based line}`` of every mapping key in ``text`` (for error messages)."""
    out: dict = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                out[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return out


class _Where:
    """Formats ``file:line: field`` prefixes for messages."""

    def __init__(self, source: str, lines: dict):
        self.source, self.lines = source, lines

    def __call__(self, *path) -> str:
        line = None
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line:
                break
        loc = f"{self.source}:{line}" if line else self.source
        dotted = ".".join(str(p) for p in path)
        return f"{loc}: {dotted}" if dotted else loc


def _check_keys(d: Any, valid: tuple, where: _Where, *path) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise HashbenchError(f"{where(*path)}: expected a mapping with keys {', '.join(valid)}, got {d!r}")
    for k in d:
        if k not in valid:
            raise HashbenchError(f"{where(*path, k)}: unknown key {k!r}; valid keys: {', '.join(valid)}")
    return d


def _int(v: Any, where: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v) or v < low:
        raise HashbenchError(f"{where}: expected an integer >= {low}, got {v!r}")
    return int(v)


def _num(v: Any, where: str, low: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (low <= v < float("inf")):
        raise HashbenchError(f"{where}: expected a number >= {low}, got {v!r}")
    return float(v)


def _list(v: Any, where: str) -> list:
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise HashbenchError(f"{where}: expected a non-empty list, got {v!r}")
    return v


def _bits(v: Any, where: str) -> list:
    out = []
    for b in _list(v, where):
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise HashbenchError(f"{where}: code lengths must be integers > 0, got {b!r}")
        from hashbench.platform.training.config import MAX_BITS

        if b > MAX_BITS:
            raise HashbenchError(f"{where}: code length {b} is too large; code lengths go from 1 to {MAX_BITS}")
        out.append(b)
    if len(set(out)) != len(out):
        raise HashbenchError(f"{where}: code lengths repeat: {out}")
    return out


def _search_dim(method, name: str, spec: Any, where: str) -> Optional[SearchDim]:
    """A search override: ``[low, high]``, ``{low, high, log}``, ``{choices: [...]}``."""
    p = method.param_map[name]
    if spec is None:
        return None
    if isinstance(spec, list) and p.type in ("float", "int"):
        if len(spec) != 2:
            raise HashbenchError(f"{where}: a range is [low, high], got {spec!r}")
        spec = {"low": spec[0], "high": spec[1]}
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise HashbenchError(f"{where}: expected [low, high], {{low, high, log}} or {{choices: [...]}}, "
                             f"got {spec!r}")
    for k in spec:
        if k not in SEARCH_KEYS:
            raise HashbenchError(f"{where}: unknown key {k!r}; valid keys: {', '.join(SEARCH_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise HashbenchError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        vals = tuple(p.coerce(c, where=f"{where}: ") for c in choices)
        return SearchDim(name, "choice", choices=vals)
    if p.type not in ("float", "int"):
        raise HashbenchError(f"{where}: parameter {name!r} is {p.type}; give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise HashbenchError(f"{where}: a range needs both low and high, got {spec!r}")
    low = p.coerce(spec["low"], where=f"{where}.low: ")
    high = p.coerce(spec["high"], where=f"{where}.high: ")
    if not low < high:
        kind = "empty" if low == high else "inverted"
        raise HashbenchError(f"{where}: {kind} range [{spec['low']}, {spec['high']}]; low must be below high")
    log = spec.get("log", p.log)
    if not isinstance(log, bool):
        raise HashbenchError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise HashbenchError(f"{where}: a log range needs low > 0, got {low}")
    return SearchDim(name, p.type, low=low, high=high, log=log)


def _default_dims(method) -> dict:
    dims = {}
    for name, p in method.search_space().items():
        if p.type in ("float", "int"):
            dims[name] = SearchDim(name, p.type, low=p.search[0], high=p.search[1], log=p.log)
        else:
            dims[name] = SearchDim(name, "choice", choices=tuple(p.search))
    return dims


def parse_text(text: str, source: str = "<config>", *, check_data: bool = True,
               check_mps_gpus: bool = True) -> SweepConfig:
    """Validate the YAML ``text`` of a sweep config (``source`` names it in messages).

    ``check_mps_gpus=False``: ``resources.mps: true`` with ``gpus_per_worker: 0`` is not refused here,
    for a caller that overrides ``gpus_per_worker`` afterwards and checks the result (the CLI's
    ``--gpus-per-worker``); ``run_sweep`` checks it again in any case."""
    from hashbench.platform.registry import get_method, list_methods

    raw = load_yaml(text, source)  # safe_load semantics; a duplicate key is refused, naming its line
    where = _Where(source, _key_lines(text))
    if not isinstance(raw, dict):
        raise HashbenchError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}, got {raw!r}")
    _check_keys(raw, TOP_KEYS, where)
    if "methods" not in raw:
        raise HashbenchError(f"{source}: missing key 'methods' (a list of method ids, 'all', or a mapping)")

    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise HashbenchError(f"{where('name')}: {name!r}; use letters, digits, '.', '_', '-'")
    registered = list_methods()
    methods = raw["methods"]
    if methods == "all":
        methods = {m: {} for m in registered}
    elif isinstance(methods, (list, str)):
        methods = {m: {} for m in _list(methods, where("methods"))}
    elif not isinstance(methods, dict) or not methods:
        raise HashbenchError(f"{where('methods')}: expected 'all', a list of ids or a mapping, got {methods!r}")
    elif "all" in methods:  # every registered method not listed by name gets the options of 'all'
        rest = methods["all"]
        methods = {**{m: copy.deepcopy(rest) for m in registered if m not in methods},
                   **{k: v for k, v in methods.items() if k != "all"}}
    default_datasets = raw.get("datasets")
    default_bits = _bits(raw["bits"], where("bits")) if "bits" in raw else None
    trials = _int(raw.get("trials", 8), where("trials"), 1)
    epochs = _int(raw["epochs"], where("epochs"), 1) if "epochs" in raw else None
    seed = _int(raw.get("seed", 0), where("seed"), 0)
    seeds = _int(raw.get("seeds", 0), where("seeds"), 0)
    max_failures = _int(raw.get("max_failures", 1), where("max_failures"), -1)
    ckpt_interval = _num(raw.get("checkpoint_interval_s", 30.0), where("checkpoint_interval_s"), 0)

    asha = raw.get("asha", {})
    if asha is False or asha is None:
        asha = None
    else:
        _check_keys(asha, ASHA_KEYS, where, "asha")
        asha = {"grace_period": _int(asha.get("grace_period", 1), where("asha", "grace_period"), 1),
                "reduction_factor": _num(asha.get("reduction_factor", 2), where("asha", "reduction_factor"), 1.01)}

    res = _check_keys(raw.get("resources"), RESOURCE_KEYS, where, "resources")
    workers = _int(res.get("workers", 1), where("resources", "workers"), 1)
    cpus = _num(res.get("cpus_per_worker", 1), where("resources", "cpus_per_worker"), 0)
    gpus = res.get("gpus_per_worker", 0)
    if gpus != "auto":
        gpus = _num(gpus, where("resources", "gpus_per_worker"), 0)
        if gpus > 1 and gpus != int(gpus):
            raise HashbenchError(f"{where('resources', 'gpus_per_worker')}: fractions are for sharing one GPU; "
                                 f"give a value <= 1 or a whole number, got {gpus}")
        if cpus == 0 and gpus == 0:
            raise HashbenchError(f"{where('resources')}: cpus_per_worker and gpus_per_worker are both 0")
    max_conc = res.get("max_concurrent")
    if max_conc is not None:
        max_conc = _int(max_conc, where("resources", "max_concurrent"), 1)
    mps = res.get("mps", False)
    if not isinstance(mps, bool):
        raise HashbenchError(f"{where('resources', 'mps')}: expected true or false, got {mps!r}")
    if mps and check_mps_gpus:
        from hashbench.platform.sweep.mps import check_mps_gpus as check_gpus

        check_gpus(gpus, where("resources", "gpus_per_worker"))

    train = dict(_check_keys(raw.get("train"), TRAIN_KEYS, where, "train"))
    if "max_failures" in train:
        train["max_failures"] = _int(train["max_failures"], where("train", "max_failures"), -1)

    if "protocol" in raw:  # common, or paper:<method>: recorded on every row of this sweep
        from hashbench.platform.training.config import check_protocol

        try:
            train["protocol"] = check_protocol(raw["protocol"])
        except HashbenchError as exc:
            raise HashbenchError(f"{where('protocol')}: {exc}") from None
    studies = []
    for mid, opts in methods.items():
        if mid not in registered:
            raise HashbenchError(f"{where('methods', mid)}: unknown method {mid!r}; registered methods: "
                                 f"{', '.join(registered)}")
        m = get_method(mid)
        opts = _check_keys(opts, METHOD_KEYS, where, "methods", mid)
        params = opts.get("params") or {}
        if not isinstance(params, dict):
            raise HashbenchError(f"{where('methods', mid, 'params')}: expected a mapping, got {params!r}")
        params = m.resolve(params, where=f"{where('methods', mid, 'params')}: ")
        fixed = {k: params[k] for k in (opts.get("params") or {})}
        dims = _default_dims(m)
        overrides = opts.get("search") or {}
        if not isinstance(overrides, dict):
            raise HashbenchError(f"{where('methods', mid, 'search')}: expected a mapping, got {overrides!r}")
        for pname, spec in overrides.items():
            if pname not in m.param_map:
                raise HashbenchError(f"{where('methods', mid, 'search', pname)}: method {mid!r} has no parameter "
                                     f"{pname!r}; valid parameters: {', '.join(sorted(m.param_map)) or '(none)'}")
            dim = _search_dim(m, pname, spec, where("methods", mid, "search", pname))
            if dim is None:
                dims.pop(pname, None)
            else:
                dims[pname] = dim
        for pname in fixed:
            dims.pop(pname, None)
        ds_list = opts.get("datasets", default_datasets)
        if ds_list is None:
            raise HashbenchError(f"{where('methods', mid)}: no datasets; give 'datasets' at the top or per method")
        ds_list = _list(ds_list, where("methods", mid, "datasets") if "datasets" in opts else where("datasets"))
        bits_list = _bits(opts["bits"], where("methods", mid, "bits")) if "bits" in opts else default_bits
        if bits_list is None:
            raise HashbenchError(f"{where('methods', mid)}: no code lengths; give 'bits' at the top or per method")
        m_trials = _int(opts.get("trials", trials), where("methods", mid, "trials"), 1)
        m_epochs = _int(opts["epochs"], where("methods", mid, "epochs"), 1) if "epochs" in opts else epochs
        batch = opts.get("batch_size", train.get("batch_size"))
        for ds in ds_list:
            if not isinstance(ds, str):
                raise HashbenchError(f"{where('datasets')}: dataset names are strings, got {ds!r}")
            for b in bits_list:
                studies.append(Study(mid, ds, b, fixed, dims, m_trials if dims else 1, m_epochs or m.epochs, batch))
    cfg = SweepConfig(name=name, source=source, studies=studies, seed=seed, seeds=seeds, asha=asha,
                      workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus, max_concurrent=max_conc, mps=mps,
                      max_failures=max_failures, train=train,
                      storage=str(raw.get("storage", "runs/sweeps")),
                      leaderboard=str(raw.get("leaderboard", "leaderboard")),
                      out_dir=str(raw.get("out_dir", "runs")), checkpoint_interval_s=ckpt_interval)
    if check_data:
        for study in studies:
            train_config(cfg, study, {}, check=True)  # dataset names, method/data fit, batch sizes
    return cfg


def load_config(path: str | os.PathLike, *, check_data: bool = True, check_mps_gpus: bool = True) -> SweepConfig:
    """Read and validate the sweep config file ``path`` (keywords: :func:`parse_text`)."""
    p = Path(path)
    if not p.is_file():
        raise HashbenchError(f"sweep config {p}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HashbenchError(f"sweep config {p}: cannot read it ({exc})") from None
    return parse_text(text, str(p), check_data=check_data, check_mps_gpus=check_mps_gpus)


def train_config(cfg: SweepConfig, study: Study, hp: dict, *, seed: Optional[int] = None,
                 run_name: Optional[str] = None, gpus: Optional[float] = None, check: bool = False):
    """The :class:`TrainConfig` of one trial of ``study`` with the sampled hyperparameters ``hp``."""
    from hashbench.platform.training.config import TrainConfig

    train = copy.deepcopy(cfg.train)
    train.pop("batch_size", None)
    train_failures = train.pop("max_failures", 1)
    gpus_per_worker = gpus if gpus is not None else (0.0 if cfg.gpus_per_worker == "auto" else cfg.gpus_per_worker)
    try:
        return TrainConfig(method=study.method, dataset=study.dataset, bits=study.bits, epochs=study.epochs,
                           params={**study.params, **hp}, batch_size=study.batch_size, workers=cfg.workers,
                           gpus_per_worker=gpus_per_worker, cpus_per_worker=cfg.cpus_per_worker,
                           seed=cfg.seed if seed is None else seed, out_dir=cfg.out_dir, run_name=run_name,
                           max_failures=train_failures, **train)
    except HashbenchError as exc:
        if check:
            raise HashbenchError(f"{cfg.source}: {study.key}: {exc}") from None
        raise


#: what ``hashbench sweep CONFIG --set KEY=VALUE`` may override after the config is validated
OVERRIDE_KEYS = ("epochs", "trials", "seeds", "bits", "datasets", "methods")


def apply_overrides(cfg: SweepConfig, pairs: dict) -> SweepConfig:
    """``cfg`` with ``--set`` overrides, for quick checks of a long config (a paper protocol on a CPU):

    ``epochs=N`` for every study (a config's per-method epochs included), ``trials=N`` for every
    searched study, ``seeds=N``; ``bits=8,64`` / ``methods=a,b`` keep only the studies at those code
    lengths / of those methods;
    ``datasets=a,b`` runs every (method, bits) of the config on these datasets instead (each checked
    as the config's own are). Anything else is a HashbenchError naming the valid keys.
    """
    import dataclasses

    studies = list(cfg.studies)
    seeds = cfg.seeds
    for key, value in pairs.items():
        if key not in OVERRIDE_KEYS:
            raise HashbenchError(f"--set {key}={value}: unknown key {key!r}; valid keys: {', '.join(OVERRIDE_KEYS)}")
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            raise HashbenchError(f"--set {key}={value}: give a value")
        if key == "datasets":
            seen, out = set(), []
            for s in studies:
                for d in items:
                    if (s.method, s.bits, d) not in seen:
                        seen.add((s.method, s.bits, d))
                        out.append(dataclasses.replace(s, dataset=d))
            studies = out
            probe = dataclasses.replace(cfg, studies=studies)
            for s in studies:
                train_config(probe, s, {}, check=True)  # dataset exists, fits the method
            continue
        if key == "methods":
            studies = _keep(studies, "method", items, f"--set methods={value}")
            continue
        numbers = []
        low = 0 if key == "seeds" else 1
        for item in items:
            try:
                n = int(item)
            except ValueError:
                n = -1
            if str(n) != item or n < low:
                raise HashbenchError(f"--set {key}={value}: expected {'integers' if key == 'bits' else 'an integer'} "
                                     f">= {low}")
            numbers.append(n)
        if key == "bits":
            studies = _keep(studies, "bits", numbers, f"--set bits={value}")
            continue
        if len(numbers) != 1:
            raise HashbenchError(f"--set {key}={value}: expected one integer >= {low}")
        n = numbers[0]
        if key == "epochs":
            studies = [dataclasses.replace(s, epochs=n) for s in studies]
        elif key == "trials":
            studies = [dataclasses.replace(s, trials=n if s.search else 1) for s in studies]
        else:
            seeds = n
    return dataclasses.replace(cfg, studies=studies, seeds=seeds)


def _keep(studies: list, field: str, values: list, flag: str) -> list:
    """The studies whose ``field`` (method or bits) is among ``values``; none left is a HashbenchError."""
    kept = [s for s in studies if getattr(s, field) in values]
    if not kept:
        have = ", ".join(str(v) for v in sorted({getattr(s, field) for s in studies}))
        raise HashbenchError(f"{flag}: the config has no study with these values; its {field} values: {have}")
    return kept
