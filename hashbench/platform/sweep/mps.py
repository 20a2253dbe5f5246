"""NVIDIA MPS (Multi-Process Service) for a packed sweep on a local Ray (``hashbench sweep --mps``).

Trials that share a GPU (``gpus_per_worker`` below 1) are separate processes, each with its own CUDA
context; without MPS the GPU time-slices between those contexts. Under MPS their kernels run at the
same time (one H100, configs/gpu_packing.yaml at 0.125 GPU per trial: 2,880 trials/h with MPS
against 2,057 without; docs/sweeps.md, *Measuring GPU packing*).

:func:`mps_daemon` starts a user-space control daemon (``nvidia-cuda-mps-control -d``) with its own
pipe and log directories under a fresh temporary directory, exports ``CUDA_MPS_PIPE_DIRECTORY`` and
``CUDA_MPS_LOG_DIRECTORY`` in ``os.environ`` (so a Ray started afterwards, and every trial process
it starts, connects to it) and, when the block ends for any reason, sends the daemon ``quit`` and
restores the environment. No device setting (compute mode, clocks) is read or changed.

Only a Ray that the sweep starts itself inherits the variables: on a cluster, MPS is started on each
GPU node before ``ray start`` (docs/cluster.md, *MPS on GPU nodes*); :func:`check_mps_local` refuses
the other cases.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Iterator, Optional

from hashbench.platform.errors import HashbenchError

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
CLUSTER_DOC = "docs/cluster.md, 'MPS on GPU nodes'"
START_TIMEOUT_S = 30.0  # the daemon forks and its parent returns at once; this bounds a hung start
QUIT_TIMEOUT_S = 60.0   # quit waits for the daemon's clients; the trial processes are gone by then


def check_mps_gpus(gpus_per_worker, field: str) -> None:
    """MPS with trials that use no GPU (``gpus_per_worker`` 0; ``field`` names where it came from) is a
    HashbenchError. ``'auto'`` passes here; the sweep checks what it resolves to once Ray is up."""
    if gpus_per_worker != "auto" and float(gpus_per_worker) == 0:
        raise HashbenchError(f"{field} is 0: the trials use no GPU, so MPS has nothing to share; drop --mps "
                             f"(or resources.mps), or give gpus_per_worker > 0 (e.g. 0.125)")


def check_mps_local(address: Optional[str] = None, *, ray_running: bool = False) -> None:
    """MPS needs a Ray that the sweep starts itself: ``address`` (or ``$RAY_ADDRESS``) naming a cluster, or
    a Ray already running in this process, is a HashbenchError (its trial processes would not inherit
    the MPS variables of this process)."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and target != "local":
        raise HashbenchError(f"--mps starts MPS for a local Ray only, but the sweep attaches to the Ray at "
                             f"{target!r} (--address / $RAY_ADDRESS): start MPS on each GPU node before "
                             f"`ray start` ({CLUSTER_DOC}) and drop --mps")
    if ray_running:
        raise HashbenchError("--mps: Ray is already running in this process, so its trial processes would not "
                             "see the MPS daemon; run the sweep in a fresh process (hashbench sweep CONFIG --mps)")


def _control(exe: str, env: dict, *args: str, command: Optional[str] = None,
             timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], input=None if command is None else command + "\n", env=env,
                          capture_output=True, text=True, timeout=timeout)


def _log_tail(log_dir: str, lines: int = 10) -> str:
    try:
        with open(os.path.join(log_dir, "control.log"), errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return ""
    return "; control.log: " + " | ".join(t.strip() for t in tail) if tail else ""


@contextlib.contextmanager
def mps_daemon(emit: Callable[[str], None] = print, *, base_dir: Optional[str] = None) -> Iterator[dict]:
    """Run an MPS control daemon with private directories for the duration of the block.

    Yields ``{"pipe_dir", "log_dir"}``. Raises HashbenchError when ``nvidia-cuda-mps-control`` is not
    on PATH or the daemon does not start (its exit status, output and log named). The daemon gets
    ``quit`` when the block ends, also on an exception or KeyboardInterrupt; the log directory is
    kept (its path is printed), the pipe directory removed.
    """
    exe = shutil.which(CONTROL)
    if exe is None:
        raise HashbenchError(f"{CONTROL} not found on PATH: MPS needs the NVIDIA driver tools; drop --mps")
    root = tempfile.mkdtemp(prefix="hashbench-mps-", dir=base_dir)  # short: the pipe is a UNIX socket path
    pipe_dir, log_dir = os.path.join(root, "pipe"), os.path.join(root, "log")
    os.mkdir(pipe_dir, 0o700)
    os.mkdir(log_dir, 0o700)
    env = {**os.environ, PIPE_ENV: pipe_dir, LOG_ENV: log_dir}
    try:
        started = _control(exe, env, "-d", timeout=START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _quit(exe, env, emit, quiet=True)  # in case it did start
        shutil.rmtree(root, ignore_errors=True)
        raise HashbenchError(f"{CONTROL} -d: {exc}; the MPS daemon did not start; drop --mps") from None
    try:
        if started.returncode != 0:
            out = " ".join((started.stdout + started.stderr).split())
            raise HashbenchError(f"{CONTROL} -d failed (exit {started.returncode}){': ' + out if out else ''}"
                                 f"{_log_tail(log_dir)}; the MPS daemon did not start; drop --mps")
        _wait_ready(exe, env, log_dir)
    except HashbenchError:
        if started.returncode == 0:  # started but does not answer: stopped all the same
            _quit(exe, env, emit, quiet=True)
        shutil.rmtree(root, ignore_errors=True)
        raise
    saved = {k: os.environ.get(k) for k in (PIPE_ENV, LOG_ENV)}
    os.environ.update({PIPE_ENV: pipe_dir, LOG_ENV: log_dir})  # before ray.init: its workers inherit them
    emit(f"[mps] control daemon started ({PIPE_ENV}={pipe_dir})")
    try:
        yield {"pipe_dir": pipe_dir, "log_dir": log_dir}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _quit(exe, env, emit)
        shutil.rmtree(pipe_dir, ignore_errors=True)
        log = os.path.join(log_dir, "control.log")
        emit(f"[mps] control daemon stopped; {client_count(log)} client processes connected; log: {log}")


def client_count(log_path: str) -> int:
    """Distinct client processes in the daemon's ``control.log`` (its ``NEW CLIENT <pid> from user …`` lines):
    the trial processes that ran under MPS. 0 when the log is missing."""
    try:
        with open(log_path, errors="replace") as f:
            return len(set(re.findall(r"NEW CLIENT (\d+)", f.read())))
    except OSError:
        return 0


def _wait_ready(exe: str, env: dict, log_dir: str, tries: int = 10) -> None:
    """The forked daemon answers its control pipe (``get_server_list`` exits 0), or HashbenchError."""
    why = ""
    for i in range(tries):
        try:
            probe = _control(exe, env, command="get_server_list", timeout=START_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
            break
        if probe.returncode == 0:
            return
        out = " ".join((probe.stdout + probe.stderr).split())
        why = f"exit {probe.returncode}{', ' + out if out else ''}"
        time.sleep(0.2 * (i + 1))
    raise HashbenchError(f"the MPS daemon does not answer ({CONTROL} get_server_list: {why})"
                         f"{_log_tail(log_dir)}; drop --mps")


def _quit(exe: str, env: dict, emit: Callable[[str], None], *, quiet: bool = False) -> None:
    """``echo quit | nvidia-cuda-mps-control`` with the daemon's directories; a failure is reported (unless
    ``quiet``), not raised: it must not hide the sweep's own outcome."""
    try:
        done = _control(exe, env, command="quit", timeout=QUIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if not quiet:
            emit(f"[mps] warning: quit failed ({exc}); stop it with: echo quit | {PIPE_ENV}={env[PIPE_ENV]} {CONTROL}")
        return
    if done.returncode != 0 and not quiet:
        out = " ".join((done.stdout + done.stderr).split())
        emit(f"[mps] warning: quit exited {done.returncode}{': ' + out if out else ''}")
