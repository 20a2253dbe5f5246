"""Several searched studies in one Tune experiment: each study keeps its own budget, search and ASHA."""

from __future__ import annotations

import glob
import json
import pickle
import textwrap
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from hashbench.platform.sweep.multi import FixedConfig, StudyScheduler, StudySearcher

KEY = "__study"


class Recorder(Searcher):
    """A fake per-study searcher: suggests {"n": k} for its k-th call and records every call."""

    def __init__(self, name, script=None):
        super().__init__(metric="m", mode="max")
        self.name, self.calls, self.k = name, [], 0
        self.script = list(script or [])  # what to answer before the plain suggestions (None, FINISHED)

    def suggest(self, trial_id):
        self.calls.append(("suggest", trial_id))
        if self.script:
            return self.script.pop(0)
        self.k += 1
        return {"n": self.k, "who": self.name}

    def on_trial_result(self, trial_id, result):
        self.calls.append(("result", trial_id, result["m"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.calls.append(("complete", trial_id, None if result is None else result["m"], error))

    def save(self, path):
        with open(path, "wb") as f:
            pickle.dump({"k": self.k, "name": self.name}, f)

    def restore(self, path):
        with open(path, "rb") as f:
            state = pickle.load(f)
        self.k, self.name = state["k"], state["name"]


def _drain(searcher, start=0, limit=50):
    """Suggest until FINISHED; returns [(trial id, study)]."""
    out = []
    for i in range(start, start + limit):
        cfg = searcher.suggest(f"t{i}")
        if cfg == Searcher.FINISHED:
            return out
        assert cfg is not None
        out.append((f"t{i}", cfg[KEY]))
    raise AssertionError("the searcher never finished")


def test_hands_out_each_study_budget_round_robin():
    subs = {"a": Recorder("a"), "b": Recorder("b"), "c": Recorder("c")}
    s = StudySearcher(subs, {"a": 3, "b": 1, "c": 0}, key_field=KEY)
    got = _drain(s)
    # round-robin among studies with budget left: a, b, then only a remains; c (budget 0) never asked
    assert [k for _, k in got] == ["a", "b", "a", "a"]
    assert subs["c"].calls == [] and subs["a"].k == 3 and subs["b"].k == 1
    assert s.suggest("late") == Searcher.FINISHED and subs["a"].k == 3   # nothing more after the budget


def test_a_waiting_or_finished_study_lets_the_others_go_on():
    # a answers None (waits) once, then says FINISHED after one trial; b has 3 to give
    subs = {"a": Recorder("a", script=[None]), "b": Recorder("b")}
    s = StudySearcher(subs, {"a": 5, "b": 3}, key_field=KEY)
    assert s.suggest("t0")[KEY] == "b"          # a waits: b's trial instead
    assert s.suggest("t1")[KEY] == "a"
    subs["a"].script = [Searcher.FINISHED]
    assert [k for _, k in _drain(s, start=2)] == ["b", "b"]   # a finished early: b's budget only
    assert subs["a"].k == 1 and subs["b"].k == 3


def test_results_and_completions_go_to_the_study_that_suggested_the_trial():
    subs = {"a": Recorder("a"), "b": Recorder("b")}
    s = StudySearcher(subs, {"a": 2, "b": 2}, key_field=KEY)
    owner = dict(_drain(s))                      # t0 a, t1 b, t2 a, t3 b
    assert owner == {"t0": "a", "t1": "b", "t2": "a", "t3": "b"}
    s.on_trial_result("t1", {"m": 0.25})
    s.on_trial_complete("t1", result={"m": 0.5})
    s.on_trial_complete("t2", result=None, error=True)
    s.on_trial_complete("unknown", result={"m": 1.0})   # not ours: ignored
    assert [c for c in subs["b"].calls if c[0] != "suggest"] == [("result", "t1", 0.25), ("complete", "t1", 0.5, False)]
    assert [c for c in subs["a"].calls if c[0] != "suggest"] == [("complete", "t2", None, True)]


def test_save_and_restore_continue_the_budgets_and_the_routing(tmp_path):
    s = StudySearcher({"a": Recorder("a"), "b": Recorder("b")}, {"a": 3, "b": 2}, key_field=KEY)
    first = [(f"t{i}", s.suggest(f"t{i}")[KEY]) for i in range(3)]
    assert [k for _, k in first] == ["a", "b", "a"]
    path = tmp_path / "state.pkl"
    s.save(str(path))

    fresh = {"a": Recorder("a"), "b": Recorder("b")}
    r = StudySearcher(fresh, {"a": 3, "b": 2}, key_field=KEY)
    r.restore(str(path))
    assert fresh["a"].k == 2 and fresh["b"].k == 1           # each study's searcher got its own state back
    rest = _drain(r, start=3)
    assert [k for _, k in rest] == ["b", "a"]                 # 2 left: 1 of b, 1 of a, then FINISHED
    r.on_trial_complete("t1", result={"m": 0.7})              # suggested before the save: still b's
    assert fresh["b"].calls[-1] == ("complete", "t1", 0.7, False)

    other = StudySearcher({"a": Recorder("a"), "x": Recorder("x")}, {"a": 3, "x": 2}, key_field=KEY)
    with pytest.raises(ValueError, match=r"holds studies \['a', 'b'\], this sweep has \['a', 'x'\]"):
        other.restore(str(path))


def test_restored_optuna_studies_suggest_what_the_original_would(tmp_path):
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def build():
        subs = {k: OptunaSearch(space=OptunaSearch.convert_search_space({"lr": tune.loguniform(1e-3, 1.0)}),
                                metric="m", mode="max", sampler=TPESampler(seed=seed))
                for k, seed in (("a", 1), ("b", 2))}
        return StudySearcher(subs, {"a": 4, "b": 4}, key_field=KEY)

    s = build()
    for i in range(4):
        cfg = s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", result={"m": cfg["lr"], "training_iteration": 1})
    s.save(str(tmp_path / "s.pkl"))
    r = build()
    r.restore(str(tmp_path / "s.pkl"))
    ahead = [s.suggest(f"t{i}") for i in range(4, 8)]
    again = [r.suggest(f"t{i}") for i in range(4, 8)]
    assert [c[KEY] for c in ahead] == ["a", "b", "a", "b"] and ahead == again
    assert s.suggest("t8") == Searcher.FINISHED and r.suggest("t8") == Searcher.FINISHED


def test_a_study_without_search_space_gets_its_one_trial(tmp_path):
    s = StudySearcher({"fixed": FixedConfig(), "a": Recorder("a")}, {"fixed": 1, "a": 2}, key_field=KEY)
    got = [s.suggest(f"t{i}") for i in range(4)]
    assert got == [{KEY: "fixed"}, {"n": 1, "who": "a", KEY: "a"}, {"n": 2, "who": "a", KEY: "a"}, Searcher.FINISHED]
    s.save(str(tmp_path / "s.pkl"))
    s.on_trial_complete("t0", result={"m": 0.5})   # FixedConfig ignores results


def test_constructor_errors_name_the_studies():
    with pytest.raises(ValueError, match=r"searchers for \['a'\] but budgets for \['b'\]"):
        StudySearcher({"a": Recorder("a")}, {"b": 1}, key_field=KEY)
    with pytest.raises(ValueError, match=r"budgets must be integers >= 0, got \{'a': -1\}"):
        StudySearcher({"a": Recorder("a")}, {"a": -1}, key_field=KEY)


# --- ASHA per study -------------------------------------------------------------------------------------

def _asha(epochs=3):
    from hashbench.platform.sweep.config import SweepConfig
    from hashbench.platform.sweep.driver import make_scheduler

    cfg = SweepConfig(name="t", source="t.yaml", studies=[], asha={"grace_period": 1, "reduction_factor": 2})
    return make_scheduler(cfg, epochs)  # rungs at 1 and 2 epochs


def _trial(tid, study):
    return SimpleNamespace(trial_id=tid, config={KEY: study, "lr": 0.1})


def test_asha_compares_a_trial_only_with_its_own_study():
    r = lambda it, v: {"training_iteration": it, "val_mAP@100": v}  # noqa: E731
    a_good, a_bad, b_first = _trial("a1", "A"), _trial("a2", "A"), _trial("b1", "B")

    # the reference: one ASHA over both studies stops B's trial for A's better metric at rung 1
    shared = _asha()
    shared.set_search_properties("val_mAP@100", "max")
    for t in (a_good, b_first):
        shared.on_trial_add(None, t)
    assert shared.on_trial_result(None, a_good, r(1, 0.9)) == TrialScheduler.CONTINUE
    assert shared.on_trial_result(None, b_first, r(1, 0.3)) == TrialScheduler.STOP

    sched = StudyScheduler({"A": _asha(), "B": _asha(), "C": None}, key_field=KEY)
    assert sched.set_search_properties("val_mAP@100", "max")
    c_only = _trial("c1", "C")
    for t in (a_good, a_bad, b_first, c_only):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, a_good, r(1, 0.9)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b_first, r(1, 0.3)) == TrialScheduler.CONTINUE  # first of study B
    assert sched.on_trial_result(None, a_bad, r(1, 0.1)) == TrialScheduler.STOP        # below A's rung
    assert sched.on_trial_result(None, c_only, r(1, 0.0)) == TrialScheduler.CONTINUE   # C: no ASHA
    sched.on_trial_complete(None, b_first, r(1, 0.3))
    sched.on_trial_remove(None, a_bad)
    with pytest.raises(ValueError, match=r"trial x1 has __study='Z'; studies of this experiment: \['A', 'B', 'C'\]"):
        sched.on_trial_result(None, _trial("x1", "Z"), r(1, 0.5))


# --- which experiments run which studies ---------------------------------------------------------------

def _study(key, trials):
    return SimpleNamespace(key=key, trials=trials)


def _plan(root, studies, resume=False):
    from hashbench.platform.sweep.driver import plan_experiments

    return [(name, [s.key for s in group], grid) for name, group, grid in plan_experiments(str(root), studies, resume)]


def test_every_study_runs_in_one_experiment_and_old_sweeps_resume_as_they_were(tmp_path):
    a, b, f, g = _study("a", 3), _study("b", 2), _study("f", 1), _study("g", 1)
    assert _plan(tmp_path, [a, f, b, g]) == [("search", ["a", "f", "b", "g"], False)]
    assert _plan(tmp_path, [a]) == [("a", ["a"], False)]                       # one searched study: its name
    assert _plan(tmp_path, [a, f]) == [("search", ["a", "f"], False)]
    assert _plan(tmp_path, [f, g]) == [("fixed", ["f", "g"], True)]            # nothing searched: the grid
    assert _plan(tmp_path, []) == []
    # a sweep begun by an older hashbench: 'fixed' and the experiment of study 'a' exist (Tune's tuner.pkl)
    for name in ("fixed", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tuner.pkl").write_bytes(b"")
    assert _plan(tmp_path, [a, f, b, g], resume=True) == [("fixed", ["f", "g"], True), ("a", ["a"], False),
                                                          ("b", ["b"], False)]
    assert _plan(tmp_path, [a, f, b, g]) == [("search", ["a", "f", "b", "g"], False)]   # not resuming: new layout
    # a new sweep's 'search' experiment resumes as 'search' even when one study is left
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "tuner.pkl").write_bytes(b"")
    assert _plan(tmp_path, [b], resume=True) == [("search", ["b"], False)]


# --- a real sweep: searched and single-trial studies, one experiment, one trial process -----------------

@pytest.fixture(scope="module")
def two_class_store(tmp_path_factory):
    """64 tiny grey images, two classes by brightness: 32 train, 16 val, 16 test."""
    from hashbench.platform.data import write_store

    rng = np.random.default_rng(3)
    labels = np.arange(64) % 2
    images = (rng.integers(0, 80, (64, 1, 16, 16)) + 120 * labels[:, None, None, None]).astype(np.uint8)
    split = np.repeat(np.array([0, 1, 2], np.int8), [32, 16, 16])
    return write_store(tmp_path_factory.mktemp("data") / "two", images, labels, split,
                       class_names=["dark", "bright"]).path


@pytest.mark.timeout(300)
def test_all_studies_run_as_one_experiment_in_one_process(ray_session, two_class_store, tmp_path, capsys):
    from hashbench.platform.cli import main
    from hashbench.platform.leaderboard import read_leaderboard

    cfg = tmp_path / "s.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        name: two
        methods:
          dch: {{search: {{lr: [0.05, 1.0]}}, params: {{grid: 4}}}}
          lsh: {{}}
        datasets: [{two_class_store}]
        bits: [8, 16]
        trials: 2
        epochs: 1
        resources: {{max_concurrent: 1}}
        train: {{batch_size: 16, augment: {{enabled: false}}}}
        storage: {tmp_path / 'sweeps'}
        leaderboard: {tmp_path / 'lb'}
        out_dir: {tmp_path / 'runs'}
        """))
    assert main(["sweep", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "[search] 6 trial(s) of 4 studies" in out
    assert "[dch-two-8b] 2 trial(s) in experiment 'search'" in out and "[dch-two-16b] 2 trial(s)" in out
    assert "[lsh-two-8b] 1 trial(s)" in out and "6/6 done" in out and "disk use:" in out

    # Tune's state: one experiment directory holding all six trials, each trial in the same process
    experiments = sorted(p.name for p in (tmp_path / "sweeps" / "two").iterdir() if p.is_dir())
    assert experiments == ["search"]
    finals = {}
    for path in glob.glob(str(tmp_path / "sweeps" / "two" / "search" / "*" / "result.json")):
        lines = [json.loads(line) for line in open(path) if line.strip()]
        finals[lines[-1]["trial_id"]] = lines[-1]
    assert len(finals) == 6
    assert sorted(r["config"][KEY] for r in finals.values()) == (["dch-two-16b"] * 2 + ["dch-two-8b"] * 2
                                                                 + ["lsh-two-16b", "lsh-two-8b"])
    assert len({r["pid"] for r in finals.values()}) == 1            # one slot: one process served all six

    df = read_leaderboard(tmp_path / "lb")
    assert df.height == 6 and sorted(df["trial_id"].to_list()) == sorted(finals)   # one row per trial
    assert sorted(df["bits"].to_list()) == [8, 8, 8, 16, 16, 16] and (df["status"] == "completed").all()
    for row in df.iter_rows(named=True):                            # each trial trained its own study
        method, _, bits = finals[row["trial_id"]]["config"][KEY].split("-")
        assert (row["method"], row["bits"]) == (method, int(bits[:-1]))
        if method == "dch":
            assert 0.05 <= json.loads(row["params_json"])["lr"] <= 1.0

    # --resume restores the one experiment (with its study searcher) and adds nothing
    assert main(["sweep", str(cfg), "--resume"]) == 0
    assert "[search] resuming from" in capsys.readouterr().out
    again = read_leaderboard(tmp_path / "lb")
    assert again.height == 6 and sorted(again["row_id"]) == sorted(df["row_id"])
    assert again.filter(pl.col("status") != "completed").height == 0
