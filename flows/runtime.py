"""Where a run executes: the Prefect API it reports to and the Dask cluster it uses.

Ephemeral-mode trap (Prefect 3.9, prefect-dask 0.3.7): with no `PREFECT_API_URL`, every
process starts its own temporary API server; Dask worker processes then race to start
servers ("Server process did not start") and task runs and logs get lost. So when no
API is configured, the CLI starts ONE local API server for the run and points this
process at it through Prefect's settings context, which prefect-dask serialises to every
task it submits: all workers report to the same server, and their runs stay visible.

What a run leaves outside its data dir: nothing. The temporary server's database (copied
from an empty migrated template kept in the data dir), the
results nothing asked to keep and Dask's scratch space live in one temporary folder
(`$TMPDIR/binance-lake-run-*`), removed when the run ends. A guard process
(`flows/run_guard.py`) watches the CLI: if the CLI is killed, even by SIGKILL, the guard
stops the server and removes the folder. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask.config
from distributed import LocalCluster, Worker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)

# The temporary server and the Ctrl-C handler live in modules that import no Prefect (the
# CLI uses them before its imports); their names are re-exported here, where they were.
from flows.api_server import RUN_DIR_PREFIX as RUN_DIR_PREFIX
from flows.api_server import SERVER_TEMPLATE as SERVER_TEMPLATE
from flows.api_server import TemporaryApiServer, _guarded, _stop, discard
from flows.api_server import schema_template_ok as schema_template_ok
from flows.api_server import server_template as server_template
from flows.interrupt import INTERRUPT_GRACE_S as INTERRUPT_GRACE_S
from flows.interrupt import Interrupted as Interrupted
from tasks.errors import DataDirNotShared
from tasks.settings import Settings

log = logging.getLogger(__name__)


def api_configured() -> bool:
    """True when runs report to a configured API (a server, Prefect Cloud or a test harness)."""
    return bool(PREFECT_API_URL.value())


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for processes started inside the block; restore them after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            _restore_env(name, value)


@contextmanager
def shared_api_server(template: Path | None = None, early: TemporaryApiServer | None = None) -> Iterator[str | None]:
    """The run's environment: the configured API, or one local server for this run and all its workers.

    Yields the API URL in use. `template`: where a temporary server keeps its empty migrated
    database between runs (in the data dir: `server_template`). Inside the block, results
    nothing asked to keep and Dask's
    scratch space go to a temporary folder that is removed when the block exits, or by the
    run's guard if this process is killed; a server started here stops the same way.
    `early`: a temporary server the CLI launched before its imports (`launch_early`); it is
    used, or stopped if an API turns out to be configured (in a Prefect profile, say).
    """
    server = early
    if early is not None and api_configured():
        discard(early)
        server = early = None
    scratch = early.scratch if early is not None else Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
    guard: subprocess.Popen[bytes] | None = None
    try:
        with ExitStack() as stack:
            updates: dict[Any, Any] = {PREFECT_LOCAL_STORAGE_PATH: scratch / "storage"}
            if api_configured():
                api_url = PREFECT_API_URL.value()
                guard = _guarded(scratch, ())  # only removes the folder if this process is killed
            else:
                if server is None:
                    server = TemporaryApiServer(scratch, template)
                    server.launch()
                api_url = server.wait()
                # No flow-run heartbeats to a server that stops with this process: nothing could act
                # on them (they serve zombie detection on a lasting server), and the engine's heartbeat
                # thread sleeps in 1 s steps, so joining it held up every flow's end by up to 1 s
                # (Prefect 3.9, PrefectHQ/prefect#19641).
                updates |= {PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
                # The environment is for processes started later (`prefect` CLI calls, Dask worker
                # processes); the settings context is what this process and the Dask tasks use.
                stack.enter_context(_environ(PREFECT_API_URL=api_url))
            stack.enter_context(_environ(PREFECT_LOCAL_STORAGE_PATH=str(scratch / "storage")))
            stack.enter_context(temporary_settings(updates=updates))
            # Dask's scratch space (`dask-scratch-space`, spill files, locks), also in worker processes:
            # their nannies pass this configuration on.
            stack.enter_context(dask.config.set({"temporary-directory": str(scratch / "dask")}))
            try:
                yield api_url
            finally:
                if server is not None:
                    # Send the run's last logs while the server is still up; otherwise the log worker
                    # keeps retrying a closed port for a minute at exit.
                    from prefect.logging.handlers import APILogWorker

                    APILogWorker.drain_all(timeout=10)
    finally:
        if server is not None:
            server.stop()
        if guard is not None:
            _stop(guard)
        shutil.rmtree(scratch, ignore_errors=True)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _LoopbackWorker(Worker):  # type: ignore[misc]  # distributed is untyped
    """An in-process worker whose HTTP server listens on 127.0.0.1 and serves no dashboard.

    An `inproc://` worker has no host to bind to, so Dask binds its HTTP server (metrics,
    health, call stacks) to every interface; LocalCluster cannot set a loopback address
    without also turning the worker's dashboard on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["dashboard"] = False
        kwargs["dashboard_address"] = "127.0.0.1:0"
        super().__init__(*args, **kwargs)


class LoopbackCluster(LocalCluster):  # type: ignore[misc]  # distributed is untyped
    """The local Dask cluster: every socket on 127.0.0.1, no dashboard, no HTTP routes.

    `LocalCluster(processes=False, dashboard_address=None)` still starts the scheduler's and
    the worker's HTTP servers (Prometheus metrics, logs, call stacks under /info) on
    0.0.0.0, the scheduler's on port 8787 (measured with distributed 2026.8). Here they
    listen on 127.0.0.1 at a port of the kernel's choosing and serve no route at all;
    worker processes (`processes=True`) listen on 127.0.0.1 too.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dashboard_address", None)
        kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **(kwargs.get("scheduler_kwargs") or {})}
        if kwargs.get("processes", True):
            kwargs.setdefault("host", "127.0.0.1")
        else:
            kwargs.setdefault("worker_class", _LoopbackWorker)
        # Read when the scheduler and the workers start, inside this constructor (worker
        # processes get the configuration from their nanny, made here too).
        with dask.config.set({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}):
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    @property
    def dashboard_link(self) -> str:
        """No dashboard: prefect-dask logs this link when it is not empty."""
        return ""


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
    `processes=True` gives worker processes instead. Every socket of the local cluster is on
    127.0.0.1 and it serves no dashboard (`LoopbackCluster`).
    """
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class=LoopbackCluster,
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
