"""Where a run executes: the local Dask cluster's sockets, and scale-out (the data dir must be
the same path on every Dask worker, checked before a run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from flows.runtime import LoopbackCluster, check_workers_share
from tasks.errors import DataDirNotShared
from tests.conftest import REPO


def listening(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def http_status(port: int, path: str) -> int | str:
    """The HTTP status a loopback port answers for `path` (or why it does not answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_cluster_listens_on_loopback_only_and_serves_nothing_over_http(processes: bool) -> None:
    """Plain `LocalCluster(processes=False, dashboard_address=None)` serves metrics, logs and call
    stacks on 0.0.0.0 (its scheduler on :8787): ours binds 127.0.0.1 and serves no HTTP route."""
    me = psutil.Process()
    before = listening([me])
    with LoopbackCluster(n_workers=1, threads_per_worker=1, processes=processes, dashboard_address=None) as cluster:
        procs = [me, *me.children(recursive=True)]
        opened = listening(procs) - before
        assert cluster.dashboard_link == ""
        # The scheduler's and the worker's HTTP servers at least (with processes: the Dask
        # ports of the scheduler, the nanny and the worker too).
        assert len(opened) >= (5 if processes else 2), opened
        assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        # Every HTTP server of the cluster: no dashboard, no metrics, no /info (logs, call stacks).
        services = [cluster.scheduler_info["services"]["dashboard"],
                    *(w["services"]["dashboard"] for w in cluster.scheduler_info["workers"].values())]
        assert len(services) == 2
        for port in services:
            for path in ("/status", "/metrics", "/info/main/workers.html", "/health"):
                assert http_status(port, path) == 404, (port, path)


@pytest.mark.slow
def test_workers_sharing_the_data_dir_pass(dask_address: str, tmp_path: Path) -> None:
    assert check_workers_share(tmp_path / "data", dask_address) == 2
    assert not list((tmp_path / "data").iterdir())  # the probe file is gone


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_worker_that_sees_another_data_dir_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with LoopbackCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster:
        # A second worker in its own mount namespace, with an empty tmpfs over the data dir:
        # a worker on another machine that lacks the shared volume.
        env = dict(os.environ, PYTHONPATH=str(REPO))
        worker = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none '{data}' && exec '{sys.executable}' -m "
             f"distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 --host 127.0.0.1 --no-dashboard "
             "--dashboard-address 127.0.0.1:0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(cluster.scheduler.workers) < 2:
                assert time.monotonic() < deadline and worker.poll() is None, "second worker did not start"
                time.sleep(0.2)
            with pytest.raises(DataDirNotShared, match="not the same on every Dask worker") as err:
                check_workers_share(data, cluster.scheduler_address)
            assert str(data) in str(err.value) and "No such file" in str(err.value)
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_the_servers_schema_template_is_used_only_when_it_holds_no_data(tmp_path: Path) -> None:
    import sqlite3

    from flows.runtime import schema_template_ok

    def make(name: str, *sql: str) -> Path:
        path = tmp_path / name
        con = sqlite3.connect(path)
        con.executescript("CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('x');"
                          "CREATE TABLE block_type (id TEXT); INSERT INTO block_type VALUES ('webhook');"
                          "CREATE TABLE deployment (id TEXT, name TEXT); CREATE INDEX i ON deployment (name);"
                          + "".join(sql))
        con.close()
        return path

    assert schema_template_ok(make("good.db"))
    assert not schema_template_ok(make("row.db", "INSERT INTO deployment VALUES ('1', 'evil');"))
    assert not schema_template_ok(make("trigger.db", "CREATE TRIGGER t AFTER INSERT ON deployment "
                                                     "BEGIN DELETE FROM deployment; END;"))
    assert not schema_template_ok(make("view.db", "CREATE VIEW v AS SELECT 1;"))
    assert not schema_template_ok(make("two.db", "INSERT INTO alembic_version VALUES ('y');"))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    assert not schema_template_ok(garbage)
    assert not schema_template_ok(tmp_path / "missing.db")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".db")) == []  # no -wal/-shm left
