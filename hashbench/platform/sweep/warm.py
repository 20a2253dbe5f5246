"""Warm trial processes: every Ray worker process of a sweep starts importing torch when it starts.

Tune runs each trial actor in a new Ray worker process (its actors carry their own ``runtime_env``,
so Ray never hands them the idle workers it starts in advance). The first trial of a process pays
the import of torch and, when it builds its first optimizer, the import of ``torch._dynamo``
(``Optimizer.__init__``, ``zero_grad``, ``state_dict`` … are wrapped by ``torch._disable_dynamo``,
whose first call imports it): about 1.7 s and 1.6 s on an idle 2-core machine.

:func:`preload_in_background` is the sweep job's ``worker_process_setup_hook``: Ray runs it in each
worker process of the job as the process starts, before the process takes its actor. It starts a
daemon thread that imports :data:`MODULES` and returns at once, so the imports run while the process
registers with Ray, receives and sets up its trial actor and starts the trial; the trial's own
``import torch`` and first optimizer then wait only for what is not done yet. Only torch and
torch._dynamo are imported there: they never import hashbench or Ray, so the thread cannot wait on
a module the main thread is importing while that one waits on it.

:func:`init_ray` is ``ray.init`` with the hook in the job's ``runtime_env``; the sweep driver
(``run_sweep``), ``hashbench quickstart`` and ``benchmarks/bench_trial.py`` start or connect to Ray
through it. Under ``ray job submit`` Ray merges it into the submitted job's runtime env; a job that
names its own setup hook keeps it (Ray refuses two).

It is **off by default**: on the loaded 2-core CPU machine it did not shorten the first trial (the
thread competes with the process's start-up for the one GIL and for the 2 cores; measured in
benchmarks/results/2026-12-06/trial_coldstart_cpu.md). ``HASHBENCH_WARM_WORKERS=1`` turns it on
(``bench_trial.py --preload``), for measuring on a GPU node, where a trial process's start-up waits
longer and has idle cores beside it.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from typing import Optional

#: imported by the background thread, in this order
MODULES = ("torch", "torch._dynamo")

#: the hook as Ray's ``worker_process_setup_hook`` names it (a module path: nothing to upload)
HOOK = f"{__name__}.preload_in_background"

ENV = "HASHBENCH_WARM_WORKERS"


def enabled() -> bool:
    """True when ``HASHBENCH_WARM_WORKERS`` is 1 / true / yes / on (off by default)."""
    return os.environ.get(ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def _import_modules() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - best effort: the trial meets the error where it imports it
            return


def preload_in_background() -> threading.Thread:
    """Start (and return) a daemon thread importing :data:`MODULES`. Never raises: Ray ends a worker
    process whose setup hook raises."""
    thread = threading.Thread(target=_import_modules, name="hashbench-preload", daemon=True)
    thread.start()
    return thread


def runtime_env(job_runtime_env: Optional[dict] = None) -> Optional[dict]:
    """The ``runtime_env`` that :func:`init_ray` adds: :data:`HOOK` as the ``worker_process_setup_hook``.

    None when not turned on (``HASHBENCH_WARM_WORKERS=1``) or when the job already has a setup hook.
    ``job_runtime_env``: the submitted job's runtime env (default: read from the environment that
    ``ray job submit`` gives its driver; {} outside a submitted job).
    """
    if not enabled():
        return None
    if job_runtime_env is None:
        job_runtime_env = _submitted_runtime_env()
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR  # how Ray hands a hook to workers

    if ("worker_process_setup_hook" in job_runtime_env
            or WORKER_PROCESS_SETUP_HOOK_ENV_VAR in (job_runtime_env.get("env_vars") or {})):
        return None
    return {"worker_process_setup_hook": HOOK}


def _submitted_runtime_env() -> dict:
    """The runtime env of the job this driver runs as (``ray job submit``), else {}."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    try:
        return dict(json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}").get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def init_ray(**kwargs) -> None:
    """``ray.init(**kwargs)`` with :func:`runtime_env`'s hook as the job's runtime env."""
    import ray

    if "runtime_env" in kwargs:
        raise TypeError("init_ray: pass no runtime_env (it sets the job's runtime env itself)")
    env = runtime_env()
    if env is not None:
        kwargs["runtime_env"] = env
    ray.init(**kwargs)
