"""``hashbench sweep --mps``: the MPS control daemon's life around a sweep, against a fake
``nvidia-cuda-mps-control`` on PATH that records each call (argv, stdin, the MPS variables). No GPU, no
real MPS, no Ray session: the driver test replaces ``ray.init`` / ``ray.shutdown``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.sweep import parse_text
from hashbench.platform.sweep.mps import LOG_ENV, PIPE_ENV, mps_daemon

FAKE = """\
#!{python}
import json, os, sys
stdin = "" if "-d" in sys.argv[1:] else sys.stdin.read()
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin, "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
                        "log": os.environ.get("CUDA_MPS_LOG_DIRECTORY"),
                        "pipe_exists": os.path.isdir(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/nonexistent"))}}) + "\\n")
mode = os.environ.get("FAKE_MPS_MODE", "ok")
if mode == "fail_start" and "-d" in sys.argv[1:]:
    print("An instance of this daemon is already running", file=sys.stderr)
    sys.exit(1)
if mode == "dead" and "-d" not in sys.argv[1:]:
    print("Cannot find MPS control daemon process", file=sys.stderr)
    sys.exit(1)
if "-d" in sys.argv[1:]:
    with open(os.path.join(os.environ["CUDA_MPS_LOG_DIRECTORY"], "control.log"), "a") as f:
        f.write("Starting control daemon\\n")
"""

# the control log's lines as the real daemon writes them (session 7, one H100: mps/mps_control_log.txt)
CLIENTS_LOG = """\
[2026-12-06 06:34:33.406 Control  5888] Accepting connection...
[2026-12-06 06:34:33.407 Control  5888] NEW CLIENT 7472 from user 0: Server already exists
[2026-12-06 06:34:33.430 Control  5888] User did not send valid credentials
[2026-12-06 06:34:33.430 Control  5888] NEW CLIENT 7475 from user 0: Server already exists
[2026-12-06 06:34:33.528 Control  5888] NEW CLIENT 7475 from user 0: Server already exists
"""


@pytest.fixture
def fake_mps(tmp_path, monkeypatch):
    """A fake nvidia-cuda-mps-control alone on PATH (plus the Python that runs it); returns its records."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(FAKE.format(python=sys.executable, record=str(record)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv(PIPE_ENV, raising=False)
    monkeypatch.setenv(LOG_ENV, "/somewhere/else")  # an earlier value, restored after the block
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def calls() -> list:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    return calls


def test_daemon_starts_with_private_dirs_children_see_them_and_quit_is_sent(fake_mps, tmp_path):
    lines = []
    with mps_daemon(lines.append, base_dir=str(tmp_path)) as dirs:
        start = fake_mps()[0]
        assert start["argv"] == ["-d"] and start["stdin"] == ""
        # the daemon got fresh directories of its own, under the base directory, that exist
        assert start["pipe"] == dirs["pipe_dir"] and start["log"] == dirs["log_dir"] and start["pipe_exists"]
        assert os.path.dirname(start["pipe"]) == os.path.dirname(start["log"])
        assert os.path.dirname(os.path.dirname(start["pipe"])) == str(tmp_path)
        # a child process started inside the block (as ray.init's raylet is) inherits the daemon's pipe
        child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{PIPE_ENV}'], "
                                                      f"os.environ['{LOG_ENV}'])"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.split() == [start["pipe"], start["log"]]
        assert [c["stdin"] for c in fake_mps()] == ["", "get_server_list\n"]  # started, then asked if it answers
        with open(os.path.join(dirs["log_dir"], "control.log"), "a") as f:  # two trial processes connect
            f.write(CLIENTS_LOG)
    calls = fake_mps()
    assert calls[-1]["stdin"] == "quit\n" and calls[-1]["argv"] == []
    assert calls[-1]["pipe"] == start["pipe"]  # quit goes to the same daemon
    assert len(calls) == 3
    assert PIPE_ENV not in os.environ and os.environ[LOG_ENV] == "/somewhere/else"  # environment restored
    assert not os.path.exists(start["pipe"])  # pipe removed, log kept and named
    assert os.path.isfile(os.path.join(start["log"], "control.log"))
    assert lines[-1] == (f"[mps] control daemon stopped; 2 client processes connected; "
                         f"log: {start['log']}/control.log")


@pytest.mark.parametrize("exc", [RuntimeError("trial failed"), KeyboardInterrupt()])
def test_quit_is_sent_when_the_body_raises(fake_mps, tmp_path, exc):
    with pytest.raises(type(exc)):
        with mps_daemon(lambda line: None, base_dir=str(tmp_path)):
            raise exc
    calls = fake_mps()
    assert [c["stdin"] for c in calls] == ["", "get_server_list\n", "quit\n"]
    assert calls[0]["pipe"] == calls[-1]["pipe"]
    assert PIPE_ENV not in os.environ and os.environ[LOG_ENV] == "/somewhere/else"


def _start_error(tmp_path) -> str:
    """The HashbenchError message of a daemon start that must fail (the block's body never runs)."""
    with pytest.raises(HashbenchError) as err:
        with mps_daemon(lambda line: None, base_dir=str(tmp_path)):
            pytest.fail("the body must not run")
    return str(err.value)


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert _start_error(tmp_path) == ("nvidia-cuda-mps-control not found on PATH: MPS needs the NVIDIA driver "
                                      "tools; drop --mps")
    assert os.listdir(tmp_path) == []  # no directories made


def test_daemon_that_fails_to_start_is_an_error_with_its_output(fake_mps, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_MODE", "fail_start")
    msg = _start_error(tmp_path)
    assert "nvidia-cuda-mps-control -d failed (exit 1)" in msg
    assert "An instance of this daemon is already running" in msg and "drop --mps" in msg
    assert [c["argv"] for c in fake_mps()] == [["-d"]]  # nothing to stop: no quit sent
    assert PIPE_ENV not in os.environ
    assert [p for p in os.listdir(tmp_path) if p.startswith("hashbench-mps-")] == []


def test_daemon_that_does_not_answer_is_an_error_and_is_stopped(fake_mps, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_MODE", "dead")
    msg = _start_error(tmp_path)
    assert "does not answer" in msg and "exit 1" in msg and "Cannot find MPS control daemon process" in msg
    assert "control.log: Starting control daemon" in msg  # the daemon's log tail is part of the message
    stdins = [c["stdin"] for c in fake_mps()]
    assert stdins[0] == "" and stdins[-1] == "quit\n" and set(stdins[1:-1]) == {"get_server_list\n"}
    assert PIPE_ENV not in os.environ


# --- the config field and the CLI (validation only: nothing starts) -----------------------------------

CFG = """\
name: t
methods: [dch]
datasets: [pneumoniamnist]
bits: [16]
trials: 1
epochs: 1
resources:
  gpus_per_worker: {gpus}
  mps: {mps}
"""


def _cfg(gpus="0.125", mps="true") -> str:
    return textwrap.dedent(CFG.format(gpus=gpus, mps=mps))


def test_config_field_is_validated():
    assert parse_text(_cfg(), "c.yaml").mps is True
    assert parse_text(_cfg(mps="false"), "c.yaml").mps is False
    assert parse_text(_cfg(gpus="auto"), "c.yaml").mps is True  # checked once Ray says what 'auto' gives
    with pytest.raises(HashbenchError) as err:
        parse_text(_cfg(mps="yes please"), "c.yaml")
    assert str(err.value) == "c.yaml:9: resources.mps: expected true or false, got 'yes please'"
    with pytest.raises(HashbenchError) as err:
        parse_text(_cfg(gpus="0"), "c.yaml")
    assert str(err.value).startswith("c.yaml:8: resources.gpus_per_worker is 0: the trials use no GPU")


def _write(tmp_path, text: str) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


def test_cli_mps_flag_and_gpus_zero(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _write(tmp_path, _cfg(mps="false"))
    assert main(["sweep", cfg, "--mps", "--check"]) == 0
    assert main(["sweep", cfg, "--mps", "--gpus-per-worker", "0", "--check"]) == 2
    err = capsys.readouterr().err
    assert "--gpus-per-worker is 0: the trials use no GPU" in err and "drop --mps" in err
    assert main(["sweep", cfg, "--gpus-per-worker", "0", "--check"]) == 0  # without --mps: fine
    zero = _write(tmp_path, _cfg(gpus="0", mps="false"))
    assert main(["sweep", zero, "--mps", "--check"]) == 2
    assert f"{zero}: resources.gpus_per_worker is 0" in capsys.readouterr().err
    # resources.mps: true with gpus_per_worker 0 in the file: --gpus-per-worker on the command line decides
    zero_mps = _write(tmp_path, _cfg(gpus="0", mps="true"))
    assert main(["sweep", zero_mps, "--check"]) == 2
    assert f"{zero_mps}:8: resources.gpus_per_worker is 0" in capsys.readouterr().err   # line of the file
    assert main(["sweep", zero_mps, "--gpus-per-worker", "0.125", "--check"]) == 0
    assert main(["sweep", zero_mps, "--gpus-per-worker", "0", "--check"]) == 2
    assert "--gpus-per-worker is 0: the trials use no GPU" in capsys.readouterr().err


def test_cli_mps_refuses_a_cluster_address(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _write(tmp_path, _cfg(mps="false"))
    assert main(["sweep", cfg, "--mps", "--address", "10.0.0.1:6379", "--check"]) == 2
    err = capsys.readouterr().err
    assert "'10.0.0.1:6379'" in err and "start MPS on each GPU node" in err and "docs/cluster.md" in err
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(["sweep", cfg, "--mps", "--check"]) == 2
    assert "'http://127.0.0.1:8265'" in capsys.readouterr().err
    assert main(["sweep", cfg, "--check"]) == 0  # the address alone is fine without --mps
    assert main(["sweep", cfg, "--mps", "--address", "local", "--check"]) == 0


# --- the driver: daemon before Ray, Ray stopped before quit (ray.init / ray.shutdown replaced) ---------

def _driver_cfg(tmp_path, gpus="0.125"):
    import dataclasses

    cfg = parse_text(_cfg(gpus=gpus), "c.yaml")
    return dataclasses.replace(cfg, storage=str(tmp_path / "st"), leaderboard=str(tmp_path / "lb"),
                               out_dir=str(tmp_path / "runs"))


@pytest.fixture
def fake_ray(monkeypatch, tmp_path, fake_mps):
    """ray.init / ray.shutdown that record the MPS pipe the raylet would inherit, in the fake's call log."""
    import ray

    from hashbench.platform.sweep import driver

    events = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: events.append(("init", kw.get("address"), os.environ.get(PIPE_ENV),
                                                                 len(fake_mps()))))
    monkeypatch.setattr(ray, "shutdown", lambda: events.append(("shutdown", len(fake_mps()))))
    monkeypatch.setattr(driver, "cluster_nodes", lambda: [{"CPU": 16.0, "GPU": 1.0}])
    return driver, events


def test_run_sweep_starts_mps_before_ray_and_quits_after_ray_stops(tmp_path, fake_mps, fake_ray, monkeypatch):
    driver, events = fake_ray
    seen = {}

    def body(cfg, root, manifest, plan, **kw):
        seen["plan"] = plan
        seen["pipe"] = os.environ.get(PIPE_ENV)
        raise RuntimeError("a trial blew up")

    monkeypatch.setattr(driver, "_run_studies", body)
    with pytest.raises(RuntimeError, match="a trial blew up"):
        driver.run_sweep(_driver_cfg(tmp_path), emit=lambda line: None)
    calls = fake_mps()
    pipe = calls[0]["pipe"]
    # Ray started on a fresh local instance after the daemon answered, with the daemon's pipe exported
    assert events[0] == ("init", "local", pipe, 2)
    assert seen["pipe"] == pipe and seen["plan"].gpus_per_worker == 0.125 and seen["plan"].capacity == 8
    # Ray stopped before quit: the fake had been called twice (start, probe) when shutdown ran
    assert events[1] == ("shutdown", 2) and len(events) == 2
    assert calls[-1]["stdin"] == "quit\n" and calls[-1]["pipe"] == pipe
    assert PIPE_ENV not in os.environ


def test_run_sweep_auto_without_gpu_refuses_mps_and_stops_everything(tmp_path, fake_mps, fake_ray, monkeypatch):
    driver, events = fake_ray
    monkeypatch.setattr(driver, "cluster_nodes", lambda: [{"CPU": 2.0}])
    with pytest.raises(HashbenchError, match="'auto' is 0 on this machine"):
        driver.run_sweep(_driver_cfg(tmp_path, gpus="auto"), emit=lambda line: None)
    assert [e[0] for e in events] == ["init", "shutdown"]
    assert fake_mps()[-1]["stdin"] == "quit\n"
    assert not (tmp_path / "st").exists() and not (tmp_path / "lb").exists()  # nothing left behind


def test_run_sweep_with_mps_refuses_an_address_before_anything_starts(tmp_path, fake_mps, fake_ray):
    driver, events = fake_ray
    with pytest.raises(HashbenchError, match="start MPS on each GPU node"):
        driver.run_sweep(_driver_cfg(tmp_path), address="10.0.0.1:6379", emit=lambda line: None)
    assert events == [] and fake_mps() == []
    assert not (tmp_path / "st").exists()
