"""Warm trial processes (hashbench.platform.sweep.warm): the worker setup hook and when it is added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hashbench.platform.sweep import warm

HOOK_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # Ray's name for the hook in a worker's environment


def test_hook_names_the_background_preload(monkeypatch):
    from ray._common.utils import load_class
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

    assert WORKER_PROCESS_SETUP_HOOK_ENV_VAR == HOOK_VAR
    assert load_class(warm.HOOK) is warm.preload_in_background  # the path Ray loads in each worker
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv(warm.ENV, raising=False)
    assert warm.runtime_env() is None  # off by default
    monkeypatch.setenv(warm.ENV, "1")
    assert warm.runtime_env() == {"worker_process_setup_hook": "hashbench.platform.sweep.warm.preload_in_background"}


@pytest.mark.parametrize("value,on", [("1", True), (" ON ", True), ("true", True), ("yes", True),
                                      ("0", False), ("false", False), ("", False), ("2", False)])
def test_turned_on_by_the_environment(monkeypatch, value, on):
    monkeypatch.setenv(warm.ENV, value)
    assert (warm.runtime_env({}) is not None) is on


def test_a_submitted_job_keeps_its_own_setup_hook(monkeypatch):
    monkeypatch.setenv(warm.ENV, "1")
    assert warm.runtime_env({"working_dir": "/x", "env_vars": {"A": "1"}}) == {"worker_process_setup_hook": warm.HOOK}
    assert warm.runtime_env({"worker_process_setup_hook": "mine.setup"}) is None
    assert warm.runtime_env({"env_vars": {HOOK_VAR: "mine.setup"}}) is None  # as the job supervisor passes it
    # read from the environment `ray job submit` gives its driver
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {HOOK_VAR: "mine.setup"}}, "metadata": {}}))
    assert warm.runtime_env() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "/x"}}))
    assert warm.runtime_env() == {"worker_process_setup_hook": warm.HOOK}


def test_init_ray_refuses_a_runtime_env(monkeypatch):
    monkeypatch.setenv(warm.ENV, "1")
    with pytest.raises(TypeError, match="runtime_env"):
        warm.init_ray(address="local", runtime_env={"env_vars": {}})


def _run(code: str, timeout: int) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", warm.ENV: "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_preload_imports_torch_and_dynamo_in_a_thread():
    got = _run("""
        import json, sys
        from hashbench.platform.sweep import warm
        before = [m in sys.modules for m in ("torch", "torch._dynamo")]
        t = warm.preload_in_background()
        returned_alive = t.is_alive()   # it returns before the imports are done
        t.join(120)
        print(json.dumps({"before": before, "returned_alive": returned_alive, "daemon": t.daemon,
                          "after": [m in sys.modules for m in ("torch", "torch._dynamo")]}))
        """, timeout=180)
    assert got == {"before": [False, False], "returned_alive": True, "daemon": True, "after": [True, True]}


def test_a_trial_like_actor_starts_importing_before_its_first_call():
    """Tune's trial actors carry their own runtime_env (env_vars): the job's hook still runs in them."""
    got = _run("""
        import json, os, sys, time
        import ray
        from hashbench.platform.sweep.warm import init_ray

        init_ray(address="local", num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=1, runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}})
        class Trial:
            def state(self):
                import threading
                names = [t.name for t in threading.enumerate()]
                return {"thread": "hashbench-preload" in names or "torch._dynamo" in sys.modules,
                         "env": os.environ.get("PL_DISABLE_FORK")}
            def imported(self):
                deadline = time.time() + 120
                while "torch._dynamo" not in sys.modules and time.time() < deadline:
                    time.sleep(0.1)
                return "torch._dynamo" in sys.modules

        t = Trial.remote()
        first = ray.get(t.state.remote())
        print(json.dumps({**first, "imported": ray.get(t.imported.remote())}))
        ray.shutdown()
        """, timeout=240)
    assert got == {"thread": True, "env": "1", "imported": True}
