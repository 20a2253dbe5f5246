"""Trust boundaries (issue 17 items 5, 9, 10): the fault-injection hook needs a test-only switch, the
dashboard follows a row's run_dir only inside the runs root, cluster.yaml keeps shared storage and the
Ray dashboard private, and every YAML file is read with duplicate keys refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hashbench.platform.errors import HashbenchError

ROOT = Path(__file__).resolve().parents[1]


# ---- item 9: the fault hook ---------------------------------------------------------------------------

def test_fault_hook_is_ignored_without_the_testing_switch(monkeypatch):
    from hashbench.platform.training import loop

    monkeypatch.setenv(loop.FAIL_ENV, "1")
    monkeypatch.delenv(loop.TESTING_ENV, raising=False)
    assert loop._check_fault_hook(1, resumed=False) is None  # production: a stray variable does nothing
    monkeypatch.setenv(loop.TESTING_ENV, "yes")
    assert loop._check_fault_hook(1, resumed=False) is None  # only exactly "1" switches it on
    monkeypatch.setenv(loop.TESTING_ENV, "1")
    with pytest.raises(RuntimeError, match="injected failure at the start of epoch 1"):
        loop._check_fault_hook(1, resumed=False)
    assert loop._check_fault_hook(0, resumed=False) is None and loop._check_fault_hook(1, resumed=True) is None


# ---- item 9 and 5: cluster.yaml -------------------------------------------------------------------------

def test_cluster_yaml_keeps_shared_storage_and_dashboard_private():
    text = (ROOT / "cluster.yaml").read_text()
    cluster = yaml.safe_load(text)
    commands = [c for key in ("initialization_commands", "setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in cluster.get(key, [])]
    assert not [c for c in commands if "777" in c or "a+w" in c or "o+w" in c], "shared storage made world-writable"
    assert any("chgrp" in c or "chown" in c for c in cluster["initialization_commands"])
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head and "--dashboard-host 0.0.0.0" not in head
    assert "--dashboard-host=127.0.0.1" in head


def test_docs_say_sweep_storage_is_trusted():
    text = " ".join((ROOT / "docs" / "cluster.md").read_text().split())
    assert "trusted" in text and "--resume" in text and "unpickle" in text


# ---- item 10: run_dir containment -----------------------------------------------------------------------

def _codes(run: Path) -> Path:
    run.mkdir(parents=True)
    np.savez(run / "codes.npz", query_codes=np.zeros((1, 8)))
    return run


def test_run_dir_is_followed_only_inside_the_runs_root(tmp_path, monkeypatch):
    from hashbench.dashboards.results import RUNS_ENV, resolve_run_dir

    monkeypatch.delenv(RUNS_ENV, raising=False)
    project = tmp_path / "project"
    lb = project / "leaderboard"
    lb.mkdir(parents=True)
    inside = _codes(project / "runs" / "r1")
    outside = _codes(tmp_path / "elsewhere" / "r2")
    (project / "runs" / "link").symlink_to(outside)
    assert resolve_run_dir(str(inside), lb) == inside.resolve()
    assert resolve_run_dir("runs/r1", lb) == inside.resolve()             # relative to the leaderboard's parent
    assert resolve_run_dir(str(outside), lb) is None                      # an absolute path outside
    assert resolve_run_dir("../elsewhere/r2", lb) is None                 # a relative escape
    assert resolve_run_dir(str(project / "runs" / "link"), lb) is None    # a symbolic link out of the root
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "elsewhere"))             # the configured root replaces the default
    assert resolve_run_dir(str(outside), lb) == outside.resolve()
    assert resolve_run_dir(str(inside), lb) is None


def test_gallery_does_not_open_a_row_pointing_outside(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from hashbench.dashboards import app_path
    from hashbench.dashboards.results import RUNS_ENV
    from hashbench.platform.leaderboard import append_row

    monkeypatch.delenv(RUNS_ENV, raising=False)
    lb = tmp_path / "project" / "leaderboard"
    outside = _codes(tmp_path / "secret")
    append_row(lb, {"sweep_id": "s", "trial_id": "t1", "run_id": "r1", "status": "completed", "method": "dch",
                    "family": "dch", "dataset": "pneumoniamnist", "bits": 16, "code_type": "binary",
                    "storage_bits": 16, "val_mAP@100": 0.5, "test_mAP@100": 0.4, "seed": 0, "epochs": 1,
                    "params_json": json.dumps({"lr": 0.1}), "role": "trial", "run_dir": str(outside),
                    "finished_at": "2026-01-01T00:00:00+00:00"})
    monkeypatch.setenv("HASHBENCH_LEADERBOARD", str(lb))
    at = AppTest.from_file(str(app_path()), default_timeout=60).run()
    at.radio(key="view").set_value("Retrieval gallery").run()
    assert not at.exception
    text = " ".join(str(x.value) for x in [*at.info, *at.caption, *at.error])
    assert "codes on disk" in text and "missing db_codes" not in text  # the file outside was never read


# ---- item 3: YAML with duplicate keys ---------------------------------------------------------------------

def test_yaml_loader_equals_safe_load_and_refuses_duplicate_keys():
    from hashbench.platform.yaml_util import load_yaml

    text = (ROOT / "configs" / "quickstart.yaml").read_text()
    assert load_yaml(text, "q.yaml") == yaml.safe_load(text)  # the reference: PyYAML's safe_load
    merged = "base: &b {lr: 0.1, wd: 0}\nrun:\n  <<: *b\n  lr: 0.2\n"
    assert load_yaml(merged) == yaml.safe_load(merged) == {"base": {"lr": 0.1, "wd": 0},
                                                           "run": {"lr": 0.2, "wd": 0}}
    with pytest.raises(HashbenchError, match=r"^c\.yaml:4: duplicate key 'lr' \(first given on line 2\)"):
        load_yaml("train:\n  lr: 0.1\n  wd: 0\n  lr: 0.01\n", "c.yaml")
    with pytest.raises(HashbenchError, match=r"^c\.yaml:3: duplicate key 'bits'"):
        load_yaml("bits: [16]\nname: x\nbits: [32]\n", "c.yaml")
    with pytest.raises(HashbenchError, match=r"c\.yaml:2: malformed YAML"):
        load_yaml("a: [1\nb: 2\n", "c.yaml")
    with pytest.raises(HashbenchError):
        load_yaml("!!python/object:os.system {}\n", "c.yaml")  # still a safe loader


def test_sweep_config_with_duplicate_key_exits_2_naming_the_line(tmp_path, capsys):
    from hashbench.platform.cli import main

    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: dup\nmethods: [lsh]\ndatasets: [pneumoniamnist]\nbits: [16]\ntrials: 1\nbits: [32]\n")
    assert main(["sweep", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert err == (f"hashbench sweep: error: {cfg}:6: duplicate key 'bits' (first given on line 4); each key may "
                   f"appear once per mapping\n")
