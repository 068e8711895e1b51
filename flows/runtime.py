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
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask.config
from distributed import LocalCluster, Worker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from tasks.atomic import commit, temp_path_for
from tasks.errors import DataDirNotShared, TemporaryServerFailed
from tasks.settings import Settings

log = logging.getLogger(__name__)

#: The temporary server's empty, migrated database, kept in the data dir between runs.
SERVER_TEMPLATE = Path(".prefect-server") / "template.db"
#: A run's temporary folder is created under $TMPDIR with this prefix.
RUN_DIR_PREFIX = "binance-lake-run-"
_GUARD = Path(__file__).with_name("run_guard.py")
#: uvicorn's exit status when it cannot bind its port: the server is retried on another one.
_PORT_IN_USE = 3
_PORT_ATTEMPTS = 5
#: Seconds the temporary server may take to answer (or Prefect's setting, if larger). A fresh
#: database is migrated at start (116 migrations in Prefect 3.9): measured 23-30 s on this
#: 2-core machine under load, against 12-14 s for a migrated copy (the data dir's template),
#: so Prefect's own 20 s default is too short for a first run.
SERVER_START_TIMEOUT_S = 120.0


def api_configured() -> bool:
    """True when runs report to a configured API (a server, Prefect Cloud or a test harness)."""
    return bool(PREFECT_API_URL.value())


def _guarded(scratch: Path, command: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` (or nothing) under flows/run_guard.py, tied to this process and `scratch`.

    Its own session: a Ctrl-C in the terminal reaches the CLI only, which stops the server
    once its last logs are sent.
    """
    args = [sys.executable, str(_GUARD), "--parent", str(os.getpid()), "--remove", str(scratch)]
    if command:
        args += ["--", *command]
    return subprocess.Popen(args, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM `proc` (the guard passes it on), SIGKILL it if it is still there after `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # the guard's child gets its parent-death signal
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(api_url: str) -> bool:
    # No proxy: the server is on loopback, and an HTTP(S)_PROXY of the environment must not see it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{api_url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


#: Tables a freshly started server fills itself: definitions of block types, not documents.
_SYSTEM_TABLES = frozenset({"block_type", "block_schema", "block_schema_reference"})


def schema_template_ok(path: Path) -> bool:
    """True when `path` is a Prefect database holding a migrated schema and no data at all.

    The template lives in the data dir, which this tool does not trust to hold code: a
    database with rows (a block document, a deployment, an automation), triggers or views, or one
    that fails SQLite's integrity check, is not used (and is rebuilt).
    """
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        if con.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            return False
        kinds = {k for (k,) in con.execute("SELECT DISTINCT type FROM sqlite_master")}
        if not kinds <= {"table", "index"}:
            return False
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "alembic_version" not in tables:
            return False
        for table in tables:
            rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if table in _SYSTEM_TABLES:
                continue  # the block types and schemas the server registers at every start
            if rows != (1 if table == "alembic_version" else 0):
                return False
        return True
    except sqlite3.Error:
        return False
    finally:
        con.close()


class TemporaryApiServer:
    """A Prefect API server (uvicorn, no UI) on 127.0.0.1 for one run, under a guard.

    Its home, SQLite database, memo store and local result storage are in `scratch`, never
    in `~/.prefect` (Prefect's own `SubprocessASGIServer` uses the user's database, which
    grew by about 1 MB per run). Settings the user set pass through, except these.

    `template`: an empty, migrated database kept in the data dir. A fresh database runs
    Prefect's 116 migrations at start (measured 16.1 s to the first answer, against 8.5 s
    from a migrated copy, on this 2-core machine); the first run saves the template, later
    runs start from a copy of it when `schema_template_ok` accepts it.
    """

    def __init__(self, scratch: Path, template: Path | None = None) -> None:
        self.scratch = scratch
        self.template = template
        self.process: subprocess.Popen[bytes] | None = None
        self.api_url = ""

    @property
    def database(self) -> Path:
        return self.scratch / "prefect" / "prefect.db"

    def _seed(self) -> bool:
        """Start from the template if there is a good one; True if so."""
        if self.template is None or not self.template.is_file():
            return False
        if not schema_template_ok(self.template):
            log.warning("%s is not an empty Prefect database; not used, made again", self.template)
            return False
        self.database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, self.database)
        return True

    def _save_template(self) -> None:
        """Keep an empty copy of the freshly migrated database for later runs (best effort)."""
        if self.template is None:
            return
        try:
            self.template.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path_for(self.template)
            try:
                src = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)  # consistent even while the server writes (WAL)
                    dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal/-shm
                finally:
                    src.close()
                    dst.close()
                if schema_template_ok(tmp):
                    commit(tmp, self.template)
            finally:
                tmp.unlink(missing_ok=True)
        except (OSError, sqlite3.Error) as exc:
            log.debug("could not save the server's schema template: %s", exc)

    def _env(self) -> dict[str, str]:
        home = self.scratch / "prefect"
        home.mkdir(exist_ok=True)
        database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.update({
            # As Prefect's own temporary server: no UI, an ephemeral server.
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            # No telemetry from a throw-away server (it also contends for the SQLite lock at start).
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(home),
            # Both names (the current one and its legacy alias), so a user's setting of either
            # cannot send the throw-away server to a lasting database.
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_MEMO_STORE_PATH": str(home / "memo_store.toml"),
            "PREFECT_LOCAL_STORAGE_PATH": str(self.scratch / "storage"),
        })
        env.pop("PREFECT_API_URL", None)
        return env

    def start(self) -> str:
        """Start the server and wait until it answers; returns its API URL."""
        seeded = self._seed()
        env = self._env()
        timeout = max(SERVER_START_TIMEOUT_S, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() or 0))
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            api_url = f"http://127.0.0.1:{port}/api"
            command = [
                sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
            ]
            proc = _guarded(self.scratch, command, env)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    break
                if _healthy(api_url):
                    self.process, self.api_url = proc, api_url
                    if not seeded:
                        self._save_template()
                    return api_url
                time.sleep(0.1)
            else:
                _stop(proc)
                raise TemporaryServerFailed(api_url, f"the temporary Prefect API server did not answer within "
                                            f"{timeout:.0f} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
                                            "allows longer; or set PREFECT_API_URL to a running server)")
            if code != _PORT_IN_USE:  # another process took the port between our check and uvicorn's bind
                raise TemporaryServerFailed(api_url, f"the temporary Prefect API server exited with status {code}")
        raise TemporaryServerFailed("127.0.0.1", f"no free port for the temporary Prefect API server after "
                                    f"{_PORT_ATTEMPTS} attempts")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None:
            _stop(self.process)
            self.process = None


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
def shared_api_server(template: Path | None = None) -> Iterator[str | None]:
    """The run's environment: the configured API, or one local server for this run and all its workers.

    Yields the API URL in use. `template`: where a temporary server keeps its empty migrated
    database between runs (in the data dir: `server_template`). Inside the block, results
    nothing asked to keep and Dask's
    scratch space go to a temporary folder that is removed when the block exits, or by the
    run's guard if this process is killed; a server started here stops the same way.
    """
    scratch = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
    server: TemporaryApiServer | None = None
    guard: subprocess.Popen[bytes] | None = None
    try:
        with ExitStack() as stack:
            updates: dict[Any, Any] = {PREFECT_LOCAL_STORAGE_PATH: scratch / "storage"}
            if api_configured():
                api_url = PREFECT_API_URL.value()
                guard = _guarded(scratch, ())  # only removes the folder if this process is killed
            else:
                server = TemporaryApiServer(scratch, template)
                api_url = server.start()
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


#: Seconds a run has, after Ctrl-C, to end by itself before the process ends at once.
INTERRUPT_GRACE_S = 1.5


class Interrupted:
    """Ctrl-C for a CLI run: out within `INTERRUPT_GRACE_S` seconds with one line, exit 130.

    The first Ctrl-C raises KeyboardInterrupt in the main thread as usual, so the run ends in
    order when it can. A thread blocked in a download would hold the interpreter's exit (the
    thread pools are joined) until its deadline; so a timer ends the process after the grace,
    with status 130. That is safe: every write is atomic and what a kill leaves is finished or
    undone by the next run (tests/test_kill_matrix.py), the run's guard stops the temporary
    server and removes its folder, and the data dir's lock goes with the process.
    """

    def __init__(self, message: str, grace_s: float = INTERRUPT_GRACE_S) -> None:
        self.message = message
        self.grace_s = grace_s
        self._said = threading.Lock()
        self._previous: Any = None

    def announce(self) -> None:
        """Print the message, once, whoever ends the run (the main thread or the timer)."""
        if self._said.acquire(blocking=False):
            print(self.message, file=sys.stderr, flush=True)

    def _expire(self) -> None:
        self.announce()
        os._exit(130)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: as Python's default
        timer = threading.Timer(self.grace_s, self._expire)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    def __enter__(self) -> Interrupted:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def server_template(data_dir: Path) -> Path:
    """`<data_dir>/.prefect-server/template.db`: the temporary server's empty, migrated database."""
    return data_dir / SERVER_TEMPLATE


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
