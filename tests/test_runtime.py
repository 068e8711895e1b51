"""Scale-out: the data dir must be the same path on every Dask worker, checked before a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.runtime import check_workers_share
from tasks.errors import DataDirNotShared
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_workers_sharing_the_data_dir_pass(dask_address: str, tmp_path: Path) -> None:
    assert check_workers_share(tmp_path / "data", dask_address) == 2
    assert not list((tmp_path / "data").iterdir())  # the probe file is gone


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_worker_that_sees_another_data_dir_is_named(tmp_path: Path) -> None:
    from distributed import LocalCluster

    data = tmp_path / "data"
    data.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        # A second worker in its own mount namespace, with an empty tmpfs over the data dir:
        # a worker on another machine that lacks the shared volume.
        env = dict(os.environ, PYTHONPATH=str(REPO))
        worker = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none '{data}' && exec '{sys.executable}' -m "
             f"distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 --no-dashboard"],
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
