"""Shared fixtures: one Ray session for the whole test run, paths to the shared datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("HASHBENCH_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets in their publishers' layouts (../shared/datasets); skip if absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray session shared by every test that needs Ray (ray.init costs ~5 s).

    ``address="local"`` always starts a fresh local cluster, never attaching to a head node
    that another test (``ray start --head``) or another process started.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _isolated_home_and_cwd(tmp_path_factory):
    """Tests never write into the checkout or the user's home: `hashbench train`'s default
    ./leaderboard and the recent-leaderboards record ($HASHBENCH_HOME) go to a temporary directory."""
    work = tmp_path_factory.mktemp("cwd")
    before_cwd, before_home = os.getcwd(), os.environ.get("HASHBENCH_HOME")
    os.environ["HASHBENCH_HOME"] = str(tmp_path_factory.mktemp("hashbench-home"))
    os.chdir(work)
    yield
    os.chdir(before_cwd)
    if before_home is None:
        os.environ.pop("HASHBENCH_HOME", None)
    else:
        os.environ["HASHBENCH_HOME"] = before_home


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny tensors: one intra-op thread is faster, and far faster on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def data_home(tmp_path, monkeypatch) -> Path:
    """An empty prepared-data root for this test ($HASHBENCH_DATA)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("HASHBENCH_DATA", str(root))
    return root
