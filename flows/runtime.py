"""Where a run executes: the Prefect API it reports to and the Dask cluster it uses.

Ephemeral-mode trap (Prefect 3.9, prefect-dask 0.3.7): with no `PREFECT_API_URL`, every
process starts its own temporary API server; Dask worker processes then race to start
servers ("Server process did not start") and task runs and logs get lost. So when no
API is configured, the CLI starts ONE local API server for the run and points this
process at it through Prefect's settings context, which prefect-dask serialises to every
task it submits: all workers report to the same server, and their runs stay visible.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.settings import Settings

log = logging.getLogger(__name__)


def api_configured() -> bool:
    """True when runs report to a configured API (a server, Prefect Cloud or a test harness)."""
    return bool(PREFECT_API_URL.value())


@contextmanager
def shared_api_server() -> Iterator[str | None]:
    """Use the configured API, or start one local server for this run and all its workers.

    Yields the API URL in use. The server started here stops when the block exits.
    """
    if api_configured():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    # The environment is for processes started later (`prefect` CLI calls, external workers);
    # the settings context is what this process and the Dask tasks use.
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def dask_runner(settings: Settings) -> Any:
    """The flow's DaskTaskRunner: an existing scheduler if `dask_address` is set, else a local cluster.

    Local cluster: worker processes with one thread each, so CPU-bound conversions run
    in parallel without sharing a GIL; no dashboard (it would need bokeh and a port).
    """
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": settings.dask_threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        }
    )
