"""Several studies in one Tune experiment: a searcher and a scheduler that keep each study apart.

A sweep's studies (one per method x dataset x code length) run as ONE Tune experiment, so
Tune's trial processes (``reuse_actors=True``) serve trials of every study and no slot waits for the
last trials of another study's experiment. Each study keeps its own search and its own early
stopping:

* :class:`StudySearcher` owns one searcher per study (the driver's seeded OptunaSearch; a
  :class:`FixedConfig` for a single-trial study without a search space). It hands
  out trials round-robin among the studies that have budget left, never more than a study's
  ``num_samples``, marks each trial's config with its study (``key_field``), and passes the trial's
  results and its completion to the searcher that suggested it. ``save``/``restore`` carry every
  study's searcher state (``--resume``).
* :class:`StudyScheduler` owns one trial scheduler per study (``LastEpochASHA``, or none: those
  trials always continue); a trial is compared only with trials of its own study.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Dict, Optional

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


class StudySearcher(Searcher):
    """One searcher per study behind one Tune searcher.

    ``searchers``: ``{study key: Searcher}`` (each built with its own space, metric and mode);
    ``budgets``: ``{study key: trials}``; ``key_field``: the config key that names a trial's study.
    """

    def __init__(self, searchers: Dict[str, Searcher], budgets: Dict[str, int], *, key_field: str,
                 metric: Optional[str] = None, mode: Optional[str] = None):
        super().__init__(metric=metric, mode=mode)
        if set(searchers) != set(budgets):
            raise ValueError(f"StudySearcher: searchers for {sorted(searchers)} but budgets for {sorted(budgets)}; "
                             f"give both the same study keys")
        bad = {k: n for k, n in budgets.items() if not isinstance(n, int) or n < 0}
        if bad:
            raise ValueError(f"StudySearcher: budgets must be integers >= 0, got {bad}")
        self._searchers = dict(searchers)
        self._budgets = dict(budgets)
        self._key_field = key_field
        self._given = {k: 0 for k in searchers}
        self._finished: set = set()  # studies whose searcher said FINISHED before their budget was used
        self._owner: Dict[str, str] = {}  # trial id -> study key, while the trial lives
        self._next = 0  # round-robin position in the study order

    @property
    def total(self) -> int:
        return sum(self._budgets.values())

    def study_of(self, trial_id: str) -> Optional[str]:
        return self._owner.get(trial_id)

    def _open(self, key: str) -> bool:
        return key not in self._finished and self._given[key] < self._budgets[key]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if config:  # the studies' spaces are their searchers' own
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def suggest(self, trial_id: str):
        keys = list(self._searchers)
        for step in range(len(keys)):
            i = (self._next + step) % len(keys)
            key = keys[i]
            if not self._open(key):
                continue
            cfg = self._searchers[key].suggest(trial_id)
            if cfg == Searcher.FINISHED:
                self._finished.add(key)
                continue
            if cfg is None:  # this study cannot suggest now (e.g. waits for results): try the next one
                continue
            self._given[key] += 1
            self._owner[trial_id] = key
            self._next = (i + 1) % len(keys)
            return {**cfg, self._key_field: key}
        return Searcher.FINISHED if not any(self._open(k) for k in keys) else None

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        key = self._owner.get(trial_id)
        if key is not None:
            self._searchers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        key = self._owner.pop(trial_id, None)
        if key is not None:
            self._searchers[key].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        subs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for key, searcher in self._searchers.items():
                path = os.path.join(tmp, "searcher.pkl")
                searcher.save(path)
                with open(path, "rb") as f:
                    subs[key] = f.read()
        state = {"budgets": self._budgets, "given": self._given, "finished": sorted(self._finished),
                 "owner": self._owner, "next": self._next, "subs": subs}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if set(state["subs"]) != set(self._searchers):
            raise ValueError(f"StudySearcher.restore: {checkpoint_path} holds studies {sorted(state['subs'])}, "
                             f"this sweep has {sorted(self._searchers)}")
        with tempfile.TemporaryDirectory() as tmp:
            for key, blob in state["subs"].items():
                path = os.path.join(tmp, "searcher.pkl")
                with open(path, "wb") as f:
                    f.write(blob)
                self._searchers[key].restore(path)
        self._budgets, self._given = dict(state["budgets"]), dict(state["given"])
        self._finished, self._owner, self._next = set(state["finished"]), dict(state["owner"]), state["next"]


class FixedConfig(Searcher):
    """The searcher of a study without a search space (one trial: the paper's or the config's fixed
    parameters, which the trial takes from its study): every suggestion is the same config."""

    def __init__(self, config: Optional[Dict] = None):
        super().__init__()
        self._config = dict(config or {})

    def suggest(self, trial_id: str):
        return dict(self._config)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._config, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self._config = pickle.load(f)


class StudyScheduler(FIFOScheduler):
    """One trial scheduler per study: each trial's results go to its own study's scheduler only.

    ``schedulers``: ``{study key: TrialScheduler or None}`` (None: that study's trials always
    continue); ``key_field``: the config key that names a trial's study. Trials start in the order
    Tune created them (FIFO), whichever study they belong to.
    """

    def __init__(self, schedulers: Dict[str, Optional[TrialScheduler]], *, key_field: str):
        super().__init__()
        self._schedulers = dict(schedulers)
        self._key_field = key_field

    def _of(self, trial) -> Optional[TrialScheduler]:
        key = (getattr(trial, "config", None) or {}).get(self._key_field)
        if key not in self._schedulers:
            raise ValueError(f"StudyScheduler: trial {trial.trial_id} has {self._key_field}={key!r}; "
                             f"studies of this experiment: {sorted(self._schedulers)}")
        return self._schedulers[key]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        ok = True
        for sched in self._schedulers.values():
            if sched is not None:
                ok = sched.set_search_properties(metric, mode, **spec) and ok
        self._metric = self._metric or metric
        return ok

    def on_trial_add(self, tune_controller, trial):
        sched = self._of(trial)
        if sched is not None:
            sched.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        sched = self._of(trial)
        if sched is not None:
            sched.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        sched = self._of(trial)
        return TrialScheduler.CONTINUE if sched is None else sched.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        sched = self._of(trial)
        if sched is not None:
            sched.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        sched = self._of(trial)
        if sched is not None:
            sched.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{k}: {s.debug_string() if s is not None else 'no early stopping'}"
                         for k, s in self._schedulers.items())
