"""The temporary Prefect API server of a CLI run, startable before Prefect is imported.

Standard library only (and `tasks.atomic`): the CLI launches the server as soon as its
arguments are checked, and the server boots (about 5 s: Prefect's imports, then the
database) while the CLI imports Prefect, pyarrow, Dask and Numba (about 4 s). Measured on
one day of BTCUSDT: see BENCHMARKS.md ("Start-up").

What the server leaves outside the data dir: nothing. Its home, database and storage are
in the run's temporary folder (`$TMPDIR/binance-lake-run-*`), and a guard process
(`flows/run_guard.py`) stops it and removes that folder when the CLI ends, even by SIGKILL.
It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tasks.atomic import commit, temp_path_for
from tasks.errors import TemporaryServerFailed

log = logging.getLogger(__name__)

#: Where the temporary server's empty, migrated database is kept in the data dir between
#: runs: `template-<Prefect version>.db` (`server_template`).
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
        self._seeded: bool | None = None  # None: not launched yet
        self._environment: dict[str, str] = {}
        self._launched_at = 0.0

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
        env = dict(os.environ)
        # PREFECT_HOME moves to the scratch folder below; the user's profiles (their settings)
        # stay readable where they are, as for any Prefect process of theirs.
        user_home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
        env.setdefault("PREFECT_PROFILES_PATH", str(user_home / "profiles.toml"))
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
        if self._seeded:
            # The template is this Prefect version's database, migrated and with its block types
            # registered, once the server that made it answered: neither needs doing again.
            env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
            env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
        env.pop("PREFECT_API_URL", None)
        return env

    def launch(self) -> None:
        """Start the server process and return at once; `wait()` waits until it answers.

        Needs no Prefect import, so the CLI starts it before its own imports (seconds of
        them), and the two overlap.
        """
        if self._seeded is None:
            self._seeded = self._seed()
            self._environment = self._env()
        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
        ]
        self.process = _guarded(self.scratch, command, self._environment)
        self._launched_at = time.monotonic()

    def wait(self) -> str:
        """Wait until the launched server answers (relaunching on a taken port); returns its API URL."""
        timeout = _start_timeout()
        for _ in range(_PORT_ATTEMPTS):
            proc = self.process
            if proc is None:
                self.launch()
                continue
            deadline = self._launched_at + timeout
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    break
                if _healthy(self.api_url):
                    if not self._seeded:
                        self._save_template()
                        self._seeded = True
                    return self.api_url
                time.sleep(0.05)
            else:
                self.stop()
                raise TemporaryServerFailed(self.api_url, f"the temporary Prefect API server did not answer within "
                                            f"{timeout:.0f} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
                                            "allows longer; or set PREFECT_API_URL to a running server)")
            self.process = None
            if code != _PORT_IN_USE:  # another process took the port between our check and uvicorn's bind
                raise TemporaryServerFailed(self.api_url,
                                            f"the temporary Prefect API server exited with status {code}")
        raise TemporaryServerFailed("127.0.0.1", f"no free port for the temporary Prefect API server after "
                                    f"{_PORT_ATTEMPTS} attempts")

    def start(self) -> str:
        """Start the server and wait until it answers; returns its API URL."""
        self.launch()
        return self.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None:
            _stop(self.process)
            self.process = None



def server_template(data_dir: Path) -> Path:
    """`<data_dir>/.prefect-server/template-<Prefect version>.db`: the server's empty, migrated database.

    One per Prefect version: a server started from its own version's template needs neither
    the migration check nor the block registration (both done when the template was made),
    which saves about 1 s of its start; after an upgrade a new template is made.
    """
    try:
        version = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    safe = "".join(c if c.isalnum() or c in ".-+" else "_" for c in version)[:40]
    return data_dir / SERVER_TEMPLATE.with_name(f"template-{safe}.db")


def _start_timeout() -> float:
    """SERVER_START_TIMEOUT_S, or Prefect's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS if larger."""
    try:
        given = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 0)
    except ValueError:
        given = 0.0
    return max(SERVER_START_TIMEOUT_S, given)


def api_url_in_environment() -> bool:
    """True when PREFECT_API_URL is set, in the environment or the active Prefect profile.

    A cheap look (no Prefect import), to skip launching a server early that a configured API
    makes useless; `flows.runtime.shared_api_server` checks again with Prefect's own settings.
    """
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        import tomllib

        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or doc.get("active") or "ephemeral"
    profile = doc.get("profiles", {}).get(active, {})
    return isinstance(profile, dict) and bool(profile.get("PREFECT_API_URL"))


def launch_early(template: Path | None) -> TemporaryApiServer | None:
    """Launch the run's temporary server now (it boots while the caller imports); None if an API is configured.

    Its folder is a new `$TMPDIR/binance-lake-run-*`; hand the server to
    `flows.runtime.shared_api_server(early=...)`, which waits for it and stops it.
    """
    if api_url_in_environment():
        return None
    server = TemporaryApiServer(Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)), template)
    try:
        server.launch()
    except BaseException:
        shutil.rmtree(server.scratch, ignore_errors=True)
        raise
    return server


def discard(server: TemporaryApiServer | None) -> None:
    """Stop a server from `launch_early` that will not be used, and remove its folder."""
    if server is not None:
        server.stop()
        shutil.rmtree(server.scratch, ignore_errors=True)
