"""The sweep's trial thread (hashbench.platform.sweep.driver.on_trial_thread): every trial of a trial
process runs its fit on one long-lived thread, so per-thread state (cuDNN's autotuning cache, cuBLAS /
cuDNN handles) survives from one trial to the next although Tune starts each trial on a new thread."""

import threading

import pytest

from hashbench.platform.sweep.driver import on_trial_thread


def _as_tune_does(fn):
    """``on_trial_thread(fn)`` called from a new thread, as Tune's RunnerThread calls each trial."""
    out = {}

    def body():
        try:
            out["value"] = on_trial_thread(fn)
        except BaseException as exc:  # noqa: BLE001 - the test inspects what reached the caller
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out


def test_trials_from_different_threads_share_one_worker_thread_and_its_thread_local_state():
    cache = threading.local()   # stands in for torch's thread_local cuDNN benchmark cache

    def trial(n):
        def fit():
            seen = getattr(cache, "entries", None)
            cache.entries = (seen or 0) + 1
            return threading.get_ident(), seen, n
        return fit

    first = _as_tune_does(trial(1))["value"]
    second = _as_tune_does(trial(2))["value"]
    assert first[0] == second[0] != threading.get_ident()
    assert first[1] is None and second[1] == 1     # the second trial sees what the first cached
    assert (first[2], second[2]) == (1, 2)


def test_an_error_reaches_the_caller_and_the_thread_serves_the_next_trial():
    def broken():
        raise ValueError("bad hyperparameters")

    assert isinstance(_as_tune_does(broken)["error"], ValueError)
    assert _as_tune_does(lambda: 42)["value"] == 42


def test_tunes_stop_signal_reaches_the_caller_as_system_exit():
    def stopped():   # ray.tune.report raises SystemExit(0) in the reporting thread when Tune stops the trial
        raise SystemExit(0)

    err = _as_tune_does(stopped)["error"]
    assert isinstance(err, SystemExit) and err.code == 0
    assert _as_tune_does(lambda: "next")["value"] == "next"


def test_direct_call_returns_the_value():
    assert on_trial_thread(lambda: {"ok": True}) == {"ok": True}
    with pytest.raises(KeyError):
        on_trial_thread(lambda: {}["missing"])
