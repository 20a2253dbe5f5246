"""Sweep config validation: every bad input is reported before anything starts, naming what is valid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import list_methods
from hashbench.platform.sweep import load_config, parse_text
from hashbench.platform.sweep.config import _search_dim
from hashbench.platform.sweep.driver import plan_resources

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
methods:
  dch:
    search:
      lr: [0.1, 1.0]
datasets: [pneumoniamnist]
bits: [16, 32]
trials: 3
epochs: 2
"""


def _parse(text: str):
    return parse_text(textwrap.dedent(text), "cfg.yaml")


def _bad(text: str, *needles: str) -> str:
    with pytest.raises(HashbenchError) as exc:
        _parse(text)
    msg = str(exc.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_good_config_gives_one_study_per_method_dataset_bits():
    cfg = _parse(GOOD)
    assert [s.key for s in cfg.studies] == ["dch-pneumoniamnist-16b", "dch-pneumoniamnist-32b"]
    s = cfg.studies[0]
    assert s.trials == 3 and s.epochs == 2
    assert (s.search["lr"].low, s.search["lr"].high) == (0.1, 1.0)       # overridden
    assert s.search["gamma"].log and s.search["gamma"].low == 1e-6        # registered search space kept


def test_example_configs_validate():
    for name in ("quickstart", "defaults"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert {s.method for s in cfg.studies} == set(list_methods())
    full = load_config(ROOT / "configs" / "full.yaml", check_data=False)
    assert {s.bits for s in full.studies if s.method == "dch"} == {16, 32, 48, 64}
    assert {s.method for s in full.studies} == set(list_methods())
    # float embeddings also at their papers' sizes and at equal storage with 64-bit codes (2 x 32 bits)
    assert {2, 512, 1024} <= {s.bits for s in full.studies if s.method == "jtanet"}
    assert {2, 128} <= {s.bits for s in full.studies if s.method == "constellation"}
    assert {s.dataset for s in full.studies} == {"pneumoniamnist", "busi", "chula_rbc12", "bccd"}


def test_malformed_yaml_names_the_line():
    _bad("name: t\nmethods: [dch\nbits: 3\n", "cfg.yaml:3", "malformed YAML")


def test_unknown_top_key_lists_valid_keys():
    _bad(GOOD + "trails: 4\n", "cfg.yaml:10", "unknown key 'trails'", "valid keys: name, methods")


def test_unknown_method_lists_registered():
    _bad(GOOD.replace("  dch:", "  dhc:"), "cfg.yaml:3", "unknown method 'dhc'", "registered methods: ", "constellation, ")


def test_unknown_dataset_lists_available():
    _bad(GOOD.replace("[pneumoniamnist]", "[pneumonia]"), "dataset 'pneumonia' not found", "available:",
         "pneumoniamnist")


def test_unknown_parameter_lists_valid_ones():
    _bad(GOOD.replace("lr: [", "learning_rate: ["), "cfg.yaml:5", "no parameter 'learning_rate'",
         "valid parameters: gamma, grid, lbe_bn, lr")


def test_unknown_fixed_parameter():
    text = GOOD.replace("    search:\n      lr: [0.1, 1.0]\n", "    params: {gama: 1}\n")
    _bad(text, "no parameter 'gama'", "valid parameters:")


def test_inverted_and_empty_ranges():
    _bad(GOOD.replace("[0.1, 1.0]", "[1.0, 0.1]"), "cfg.yaml:5", "inverted range [1.0, 0.1]")
    _bad(GOOD.replace("[0.1, 1.0]", "[0.5, 0.5]"), "empty range [0.5, 0.5]")
    _bad(GOOD.replace("[0.1, 1.0]", "{low: 0.1}"), "needs both low and high")


def test_range_outside_the_parameter_bounds():
    _bad(GOOD.replace("[0.1, 1.0]", "[-1, 1.0]"), "outside the valid range")


def test_bits_must_be_positive():
    _bad(GOOD.replace("[16, 32]", "[16, 0]"), "cfg.yaml:7", "code lengths must be integers > 0, got 0")
    _bad(GOOD.replace("[16, 32]", "[-8]"), "got -8")


def test_other_field_errors():
    _bad(GOOD.replace("trials: 3", "trials: 0"), "trials: expected an integer >= 1, got 0")
    _bad(GOOD + "resources: {gpus: 1}\n", "unknown key 'gpus'", "gpus_per_worker")
    _bad(GOOD + "resources: {gpus_per_worker: 1.5}\n", "a whole number")
    _bad(GOOD + "train: {augment: {flip: true}}\n", "unknown augment option 'flip'")
    _bad("methods: [ynet]\ndatasets: [pneumoniamnist]\nbits: [8]\n", "needs segmentation masks")
    _bad("- a\n- b\n", "expected a mapping")


def test_choice_search_values_are_validated():
    from hashbench.platform.registry import get_method

    m = get_method("jtanet")
    dim = _search_dim(m, "mining", ["hard", "semihard"], "w")
    assert dim.type == "choice" and dim.choices == ("hard", "semihard")
    with pytest.raises(HashbenchError, match="'soft' is not one of"):
        _search_dim(m, "mining", {"choices": ["soft"]}, "w")


def test_resources_no_node_can_satisfy():
    cfg = _parse(GOOD + "resources: {gpus_per_worker: 1}\n")
    with pytest.raises(HashbenchError, match=r"1 GPU, which no node.*node 0: 2 CPU, 0 GPU"):
        plan_resources(cfg, [{"CPU": 2.0}])
    cfg = _parse(GOOD + "resources: {workers: 3, cpus_per_worker: 2}\n")
    with pytest.raises(HashbenchError, match="needs 3 workers .* holds only 2"):
        plan_resources(cfg, [{"CPU": 2.0}, {"CPU": 3.0}])


def test_resources_size_concurrency_and_share_gpus():
    cfg = _parse(GOOD + "resources: {gpus_per_worker: 0.25, cpus_per_worker: 2}\n")
    plan = plan_resources(cfg, [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 2.0}])
    assert plan.capacity == 4 + 2 and plan.trial_resources == {"cpu": 2.0, "gpu": 0.25}
    auto = _parse(GOOD + "resources: {gpus_per_worker: auto}\n")
    assert plan_resources(auto, [{"CPU": 8.0, "GPU": 1.0}]).gpus_per_worker == 0.25
    assert plan_resources(auto, [{"CPU": 8.0}]).gpus_per_worker == 0.0
    tight = _parse(GOOD + "resources: {workers: 2, cpus_per_worker: 1}\n")
    with pytest.raises(HashbenchError, match="plus 0.01 CPU for its driver, more than the cluster's 2 CPU"):
        plan_resources(tight, [{"CPU": 2.0}])  # 2 x 1 CPU + the driver's 0.01 would wait forever
    assert plan_resources(tight, [{"CPU": 4.0}]).capacity == 1
    multi = _parse(GOOD + "resources: {workers: 2, max_concurrent: 1}\n")
    plan = plan_resources(multi, [{"CPU": 8.0}])
    assert plan.trial_resources == {"cpu": 0.01} and plan.capacity == 1


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_cli_bad_config_exits_2_and_writes_no_row(tmp_path, capsys):
    lbdir = tmp_path / "lb"
    cfg = _write(tmp_path, GOOD.replace("[16, 32]", "[0]") + f"leaderboard: {lbdir}\nstorage: {tmp_path / 'st'}\n")
    assert main(["sweep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hashbench sweep: error: ") and "s.yaml:7" in err
    assert not lbdir.exists() and not (tmp_path / "st").exists()
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_storage_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lbdir = tmp_path / "lb"
    cfg = _write(tmp_path, GOOD + f"leaderboard: {lbdir}\nstorage: {blocker / 'sub'}\n")
    assert main(["sweep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "storage" in err and "not writable" in err and str(blocker) in err
    assert not lbdir.exists()


def test_cli_resume_of_missing_sweep(tmp_path, capsys):
    lbdir = tmp_path / "lb"
    (tmp_path / "st" / "other").mkdir(parents=True)
    (tmp_path / "st" / "other" / "sweep.json").write_text("{}")
    cfg = _write(tmp_path, GOOD + f"leaderboard: {lbdir}\nstorage: {tmp_path / 'st'}\n")
    assert main(["sweep", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no sweep named 't'" in err and "sweeps there: other" in err
    assert not lbdir.exists()


def test_cli_check_only(tmp_path, capsys):
    cfg = _write(tmp_path, GOOD)
    assert main(["sweep", str(cfg), "--check"]) == 0
    assert "2 studies, 6 trials" in capsys.readouterr().out


def test_cli_set_is_parsed_once_and_a_malformed_item_is_refused_before_the_config(tmp_path, capsys, monkeypatch):
    from hashbench.platform.cli import train_cmd

    calls = []
    real = train_cmd.parse_pairs
    monkeypatch.setattr(train_cmd, "parse_pairs", lambda items, flag: calls.append((list(items), flag))
                        or real(items, flag))
    cfg = _write(tmp_path, GOOD)
    # GOOD: 2 studies (bits 16, 32) of 3 trials; --set trials=2 bits=16 -> 1 study, 2 trials
    assert main(["sweep", str(cfg), "--check", "--set", "trials=2", "--set", "bits=16"]) == 0
    assert "1 studies, 2 trials" in capsys.readouterr().out
    assert calls == [(["trials=2", "bits=16"], "--set")]
    # a malformed item: its one error line, before the (missing) config is read
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--check", "--set", "trials"]) == 2
    assert capsys.readouterr().err == "hashbench sweep: error: --set 'trials': expected KEY=VALUE\n"


def test_cluster_yaml_follows_the_ray_launcher_schema():
    import json
    import os

    import jsonschema
    import ray.autoscaler
    import yaml

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads(Path(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["docker"]["image"] == "rayproject/ray:2.60.0-py312-gpu"
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["node_config"]["InstanceType"].startswith("g")]
    assert gpu_types and all(t["min_workers"] <= t["max_workers"] for t in types.values())
    assert any("pip install" in c and "hashbench" in c for c in cluster["setup_commands"])
    assert any("/mnt/shared" in c for c in cluster["initialization_commands"])
    full = load_config(ROOT / "configs" / "full.yaml", check_data=False)
    assert full.storage.startswith("/mnt/shared") and full.leaderboard.startswith("/mnt/shared")


def test_quickstart_sweep_covers_every_registered_method(tmp_path):
    import yaml

    from hashbench.platform.cli.quickstart_cmd import build_config
    from hashbench.platform.registry import get_method

    raw = build_config(str(tmp_path), {"pneumoniamnist": "pneumoniamnist", "busi": "busi"}, [16, 32], 1, "auto")
    cfg = parse_text(yaml.safe_dump(raw), "quickstart")
    assert sorted({s.method for s in cfg.studies}) == list_methods()
    assert len(cfg.studies) == 2 * len(list_methods()) and all(s.trials == 1 for s in cfg.studies)
    for s in cfg.studies:
        m = get_method(s.method)
        assert s.dataset == ("busi" if m.requires.masks or m.family == "ynet" else "pneumoniamnist")
        assert s.epochs == 1
    assert all(str(tmp_path) in p for p in (cfg.storage, cfg.leaderboard, cfg.out_dir))
