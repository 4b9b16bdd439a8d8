"""Shared fixtures: real Ray clusters (1 node, 2 nodes) and the shared public data."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# repository tooling (dashboards/) is imported by tests but is not installed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only public data). Without it, tests needing it are skipped on a
    developer's machine and fail under CI (``CI`` set), where a silent skip would hide them."""
    if not (SHARED_DATA / "README.md").exists():
        message = f"shared data not found at {SHARED_DATA} (set EMBEDFORGE_SHARED_DATA)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def ray_local():
    """A private 1-node Ray cluster in its own temp dir (never joins another cluster)."""
    import ray

    from embedforge.cluster import short_temp_dir

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = short_temp_dir()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_two_nodes():
    """A 2-node cluster (``ray.cluster_utils.Cluster``): head + one worker node, 1 CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
