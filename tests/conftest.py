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


@pytest.fixture(scope="session")
def server_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary Prefect server's empty, migrated database, made once by the product's own server.

    A CLI's first run in a new data dir migrates Prefect's database (116 migrations): a 3-day
    run measured 35.5 s (33 CPU-s) there, against 13.7 s (17 CPU-s) in a data dir that holds
    the template. Tests whose subject is not that first run start from `used_data_dir`.
    """
    from flows.api_server import TemporaryApiServer

    base = tmp_path_factory.mktemp("server-template")
    (base / "scratch").mkdir()
    server = TemporaryApiServer(base / "scratch", template=base / "template.db")
    try:
        server.start()
    finally:
        server.stop()
    assert server.template is not None and server.template.is_file(), "the server saved no template"
    return server.template


def seed_data_dir(path: Path, template: Path) -> Path:
    """Make `path` a data dir as a first run leaves it: marked, with the server's template (no lake yet)."""
    import shutil

    from flows.api_server import server_template
    from tasks.datadir import open_data_dir

    data = open_data_dir(path)
    target = server_template(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return data


@pytest.fixture
def used_data_dir(tmp_path: Path, server_template_db: Path) -> Path:
    """`tmp_path / "data"`, seeded (`seed_data_dir`): a CLI run there starts its server without migrating."""
    return seed_data_dir(tmp_path / "data", server_template_db)
