"""Bad input at the CLI (issue 17 item 3): exit 2, one line naming the value and what is valid, nothing
written; and a closed stdout pipe (`hashbench data info | head`) ends quietly, without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hashbench.platform.cli import main

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, command: str, *pieces: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"hashbench {command}: error: ") and err.count("\n") == 1, err
    for piece in pieces:
        assert piece in err, err
    return err


@pytest.mark.parametrize("bits", ["10000", "4097", "0"])
def test_train_bits_outside_the_documented_range(tmp_path, capsys, monkeypatch, bits):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "lsh", "--dataset", "pneumoniamnist", "--bits", bits, "--local",
               "--out", str(tmp_path / "runs")])  # the default leaderboard is ./leaderboard
    assert rc == 2
    if bits == "0":
        one_line_error(capsys, "train", "bits must be an integer >= 1, got 0")
    else:
        one_line_error(capsys, "train", f"bits {bits} is too large: code lengths (embedding dimensions) go "
                                        "from 1 to 4096")
    assert sorted(os.listdir(tmp_path)) == []  # no run directory, no leaderboard row


def test_sweep_bits_above_the_maximum(tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("name: big\nmethods: [lsh]\ndatasets: [pneumoniamnist]\nbits: [16, 10000]\ntrials: 1\n"
                   f"storage: {tmp_path / 's'}\nleaderboard: {tmp_path / 'lb'}\nout_dir: {tmp_path / 'runs'}\n")
    assert main(["sweep", str(cfg), "--check"]) == 2
    one_line_error(capsys, "sweep", f"{cfg}:4", "code length 10000 is too large; code lengths go from 1 to 4096")
    assert sorted(os.listdir(tmp_path)) == ["big.yaml"]


def _hashbench() -> list:
    exe = shutil.which("hashbench", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-c", "import sys; from hashbench.platform.cli import main; "
                                                    "sys.exit(main())"]


@pytest.mark.timeout(120)
def test_closed_stdout_pipe_ends_quietly():
    """`hashbench data info X | head -0`: the reader is gone before the first write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([*_hashbench(), "data", "info", "pneumoniamnist"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| head` exiting: writes to stdout now fail with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=100)
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""
    assert proc.returncode == 141  # a SIGPIPE'd command's status, as `yes | head` gives
