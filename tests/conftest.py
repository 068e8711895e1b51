"""Shared fixtures: one Prefect API (test harness) and one real Dask cluster per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_archive import FakeArchive

REPO = Path(__file__).resolve().parent.parent
# No warm runner (flows/warm.py) outliving a test's CLI run: tests/test_warm_runner.py asks for one.
os.environ.setdefault("BINANCE_LAKE_KEEP_WARM", "0")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API server with a temporary database (about 10 s to start, once)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """A real Dask cluster of two worker processes, one thread each, reached by address (the scale-out path)."""
    from flows.runtime import LoopbackCluster

    # Worker processes import the project by module path: make sure they can.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # Loopback only, as the product's own cluster: a test run opens no port to the network.
    with LoopbackCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def fake_archive() -> Iterator[FakeArchive]:
    """A fresh fake data.binance.vision on loopback."""
    with FakeArchive() as fa:
        yield fa
