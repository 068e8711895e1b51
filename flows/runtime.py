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
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from tasks.errors import DataDirNotShared
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
    # No telemetry from a throw-away server (it also contends for the SQLite lock at start).
    analytics = os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    try:
        server.start()
    finally:
        _restore_env("PREFECT_SERVER_ANALYTICS_ENABLED", analytics)
    previous = os.environ.get("PREFECT_API_URL")
    # The environment is for processes started later (`prefect` CLI calls, external workers);
    # the settings context is what this process and the Dask tasks use.
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        # No flow-run heartbeats to a server that stops with this process: nothing could act on
        # them (they serve zombie detection on a lasting server), and the engine's heartbeat
        # thread sleeps in 1 s steps, so joining it held up every flow's end by up to 1 s
        # (Prefect 3.9, PrefectHQ/prefect#19641).
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield server.api_url
    finally:
        # Send the run's last logs while the server is still up; otherwise the log worker
        # keeps retrying a closed port for a minute at exit.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        _restore_env("PREFECT_API_URL", previous)
        server.stop()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def default_threads() -> int:
    """Threads of the default local cluster: one per core."""
    return os.cpu_count() or 2


def dask_runner_for(
    address: str | None, workers: int = 1, threads_per_worker: int | None = None, processes: bool = False
) -> Any:
    """A DaskTaskRunner: an existing scheduler if `address` is given, else a local cluster.

    The default local cluster is one worker with a thread per core, in this process: the
    heavy work (ISA-L inflate, the Numba parser, pyarrow's Parquet and Numba's bars) runs
    without the GIL, and a cluster of worker processes costs about 3.5 s to start here
    (each imports Prefect, pyarrow and numba), which was a third of a 7-day back-fill
    (BENCHMARKS.md: 10.1 s with two worker processes, 6.4 s with two threads).
    `processes=True` gives worker processes instead. No dashboard (it would need bokeh).
    """
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": threads_per_worker or default_threads(),
            "processes": processes,
            "dashboard_address": None,
        }
    )


def _read_token(path: str) -> str:
    """Run on each Dask worker: what it sees at `path` (the check below)."""
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"


def check_workers_share(data_dir: Path, address: str, timeout: float = 30.0) -> int:
    """Raise DataDirNotShared unless every worker of the scheduler at `address` sees `data_dir`.

    Dask workers read and write the lake directly, so the data dir must be the same path on
    every worker (one machine, or a shared volume mounted at the same path). A token file
    written here must read back identically on each worker. Returns the number of workers.
    """
    import distributed

    client_cls: Any = distributed.Client  # untyped in distributed
    token = secrets.token_hex(16)
    probe = data_dir / f".worker-check-{token}"
    data_dir.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)
    try:
        with client_cls(address, timeout=timeout) as client:
            seen = client.run(_read_token, str(probe))
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise DataDirNotShared(address, "the Dask scheduler has no workers")
    bad = {worker: got for worker, got in seen.items() if got != token}
    if bad:
        details = "; ".join(f"{w}: {'another file' if len(g) == 32 else g}" for w, g in sorted(bad.items()))
        raise DataDirNotShared(
            str(data_dir),
            f"not the same on every Dask worker of {address} ({details}); mount it at the same path on "
            "every worker (see infra/README.md)",
        )
    return len(seen)


def dask_runner(settings: Settings) -> Any:
    """The flow's DaskTaskRunner for a run's settings."""
    return dask_runner_for(settings.dask_address, settings.dask_workers, settings.dask_threads_per_worker,
                           settings.dask_processes)


def default_dask_runner() -> Any:
    """The runner a deployment uses: `BINANCE_LAKE_DASK_ADDRESS` if set, else a local cluster."""
    return dask_runner_for(os.environ.get("BINANCE_LAKE_DASK_ADDRESS") or None)


def _drain_logs() -> bool:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    return True


def flush_worker_logs() -> None:
    """Make the Dask workers send the run's buffered task logs now, before the cluster goes.

    Workers batch logs to the API every couple of seconds; a local cluster closed at the
    end of the flow could otherwise drop the last ones. Best effort: never fails a run.
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    client = getattr(runner, "_client", None)
    if client is None:
        return
    try:
        client.run(_drain_logs)
    except Exception as exc:  # a worker gone already: its logs are lost either way
        log.debug("could not flush worker logs: %s", exc)
