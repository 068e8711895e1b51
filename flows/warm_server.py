"""The warm runner: a data dir's API server and loaded modules, kept between ad hoc CLI runs.

    python -m flows.warm_server --data-dir D --idle SECONDS     (started by the CLIs: flows/warm.py)

It starts the temporary API server (from the data dir's template, under its guard), imports
the flows with Prefect, pyarrow, Dask and Numba while the server boots, loads the kernels,
then listens on `<data-dir>/.prefect-server/warm/runner.sock`. Each run a CLI hands it is
forked off: the child takes the CLI's terminal, working directory and environment, runs the
CLI's `main` on its command line (a child's CLI runs the command itself), and sends back the
exit status. The runner itself never runs a flow: it has no threads to fork from, and no
state one run could leave to the next.

It ends, stopping its server, after `--idle` seconds without a run; on `stop`; on SIGTERM
(its children are interrupted first); when its data dir or socket is moved or removed; and
when its server dies. It holds `runner.lock` for its whole life.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from flows.api_server import RUN_DIR_PREFIX, TemporaryApiServer, server_template
from flows.warm import (
    CHILD_ENV,
    LOCK_NAME,
    PROTOCOL,
    LineReader,
    fingerprint,
    send_message,
    socket_address,
    warm_dir,
)

log = logging.getLogger("flows.warm_server")

#: The CLIs a runner serves, by the name a request gives.
CLIS = ("full_pipeline", "daily_update")
#: Seconds a child has to end after SIGINT when the runner stops, before SIGKILL.
CHILD_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


class Runner:
    """The runner's state: its server, socket, children and the fingerprint it serves."""

    def __init__(self, data_dir: Path, idle_s: float) -> None:
        self.data_dir = data_dir
        self.folder = warm_dir(data_dir)
        self.idle_s = idle_s
        self.fingerprint = fingerprint(os.environ)  # before the variables set below
        self.identity = os.stat(data_dir)
        self.started = time.monotonic()
        self.last_active = time.monotonic()
        self.children: dict[int, float] = {}
        self.served = 0
        self.retiring = ""
        self.listener: socket.socket | None = None
        self.socket_inode = 0
        self.server: TemporaryApiServer | None = None
        self.overrides: dict[str, str] = {}

    # --- start -----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server, import and load everything while it boots, then listen."""
        scratch = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        self.server = TemporaryApiServer(scratch, server_template(self.data_dir))
        self.server.launch()
        (scratch / "client").mkdir(exist_ok=True)
        # What every child runs with, over the CLI's own environment. Prefect reads its
        # settings when it is imported, below: these are what its settings hold.
        self.overrides = {
            "PREFECT_API_URL": self.server.api_url,
            "PREFECT_HOME": str(scratch / "client"),
            CHILD_ENV: "1",
        }
        user_home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
        os.environ.setdefault("PREFECT_PROFILES_PATH", str(user_home / "profiles.toml"))
        self.overrides["PREFECT_PROFILES_PATH"] = os.environ["PREFECT_PROFILES_PATH"]
        os.environ.update(self.overrides)
        t0 = time.monotonic()
        # Loaded here, once, so that every forked run has them (the reason this process exists).
        import flows.cli
        import flows.daily_cli
        import flows.daily_update
        import flows.full_pipeline  # noqa: F401
        from tasks.settings import DEFAULT_FEATURES
        from tasks.warmup import warm_up

        warm_up(DEFAULT_FEATURES)
        log.info("imported and loaded in %.2f s", time.monotonic() - t0)
        self.server.wait()
        log.info("server %s up after %.2f s", self.server.api_url, time.monotonic() - self.started)
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with socket_address(self.folder) as address:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)  # a dead runner's; the lock says no runner is up
            old = os.umask(0o177)
            try:
                listener.bind(address)
            finally:
                os.umask(old)
            listener.listen(16)
            self.socket_inode = os.stat(address).st_ino
        self.listener = listener

    # --- the loop --------------------------------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Accept runs until idle, asked to stop, moved, or the server is gone."""
        assert self.listener is not None
        while True:
            self._reap()
            reason = self._why_end(stop)
            if reason and not self.children:
                log.info("stopping: %s", reason)
                return
            if reason and not self.retiring:
                self.retiring = reason
            if reason:
                self._unlink_socket()  # the next CLI starts a new runner instead of asking this one
            readable, _, _ = select.select([self.listener], [], [], 0.5)
            if readable:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                forked = False
                try:
                    forked = self._handle(conn)
                except Exception:  # one bad client must not end the runner
                    log.exception("request failed")
                finally:
                    if forked:  # the child has the connection now: no shutdown, which would end its side too
                        conn.close()
                    else:
                        _close(conn)

    def _why_end(self, stop: threading.Event) -> str:
        if stop.is_set():
            return "SIGTERM"
        if self.retiring:
            return self.retiring
        if self.server is None or self.server.process is None or self.server.process.poll() is not None:
            return "its API server ended"
        try:
            st = os.stat(self.data_dir)
            moved = (st.st_dev, st.st_ino) != (self.identity.st_dev, self.identity.st_ino)
            with socket_address(self.folder) as address:
                moved = moved or (self.socket_inode != 0 and os.stat(address).st_ino != self.socket_inode)
        except OSError:
            moved = True
        if moved:
            return f"{self.data_dir} or its socket was moved or removed"
        if not self.children and time.monotonic() - self.last_active > self.idle_s:
            return f"idle for {self.idle_s:g} s"
        return ""

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.children[pid]
                self.last_active = time.monotonic()
                log.info("run %d ended: %s", pid, _describe_status(status))

    def _handle(self, conn: socket.socket) -> bool:
        """Answer one connection; True if a forked run took it over."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            return False
        conn.settimeout(10.0)
        reader = LineReader(conn, max_fds=3)
        try:
            request = reader.read()
            if request is None:
                return False
            op = request.get("op")
            if request.get("v") != PROTOCOL:
                self._retire("a client of another version")
                send_message(conn, {"refused": f"protocol {request.get('v')!r}, this runner speaks {PROTOCOL}"})
            elif op == "status":
                send_message(conn, self._status())
            elif op == "stop":
                self._retire("asked to stop")
                send_message(conn, {"stopping": True, "running": len(self.children)})
            elif op == "run":
                return self._run(conn, request, reader.fds)
            else:
                send_message(conn, {"refused": f"unknown op {op!r}"})
            return False
        finally:
            for fd in reader.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"pid": os.getpid(), "up_s": now - self.started, "served": self.served, "running": len(self.children),
                "idle_for_s": 0.0 if self.children else now - self.last_active, "idle_s": self.idle_s,
                "retiring": self.retiring}

    def _run(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> bool:
        problem = _check_run(request, fds)
        if not problem and request["fingerprint"] != self.fingerprint:
            problem = "the code, the packages or the environment changed since it started"
            self._retire(problem)
        if not problem and not _same_dir(request["data_dir"], self.data_dir):
            problem = f"started for {self.data_dir}"
            self._retire(problem)
        if not problem and self.retiring:
            problem = f"retiring: {self.retiring}"
        if problem:
            log.info("refused a run: %s", problem)
            send_message(conn, {"refused": problem})
            return False
        self.idle_s = float(request["idle_s"])
        self.last_active = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _child(conn, self.listener, request, fds, self.overrides)
            finally:
                os._exit(1)  # never back into the runner's loop
        self.children[pid] = time.monotonic()
        self.served += 1
        log.info("run %d: %s %s", pid, request["cli"], " ".join(request["argv"]))
        return True

    def _retire(self, reason: str) -> None:
        """Take no more runs. The socket goes first, before the refusal is sent, so that the refused client's
        next connect finds no socket and starts a new runner, instead of reaching this one as it ends."""
        if not self.retiring:
            self.retiring = reason
        self._unlink_socket()

    def _unlink_socket(self) -> None:
        """Remove the socket if it is still this runner's (a new runner may have bound its own)."""
        if self.socket_inode:
            with contextlib.suppress(OSError), socket_address(self.folder) as address:
                if os.stat(address).st_ino == self.socket_inode:
                    os.unlink(address)
            self.socket_inode = 0

    # --- end -------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Interrupt the children still running, stop the server, remove the socket and the server's folder."""
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + CHILD_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._unlink_socket()
        if self.listener is not None:
            self.listener.close()
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.server.scratch, ignore_errors=True)


def _close(conn: socket.socket) -> None:
    """Close a client's connection after our answer, reading what it still sends (else it may see a reset)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        while conn.recv(65536):
            pass
    conn.close()


def _check_run(request: dict[str, Any], fds: list[int]) -> str:
    """What is wrong with a run request's shape ('' if nothing)."""
    if request.get("cli") not in CLIS:
        return f"unknown CLI {request.get('cli')!r}"
    if not isinstance(request.get("argv"), list) or not all(isinstance(a, str) for a in request["argv"]):
        return "argv is not a list of strings"
    env = request.get("env")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return "env is not a mapping of strings"
    if not all(isinstance(request.get(k), str) for k in ("cwd", "data_dir", "fingerprint")):
        return "cwd, data_dir or fingerprint missing"
    idle = request.get("idle_s")
    if not isinstance(idle, int | float) or not 0 < idle <= 7 * 86400:
        return "idle_s out of range"
    if len(fds) != 3:
        return f"{len(fds)} descriptors passed, 3 expected (stdin, stdout, stderr)"
    return ""


def _same_dir(given: str, data_dir: Path) -> bool:
    try:
        return Path(given) == data_dir and os.path.samefile(given, data_dir)
    except OSError:
        return False


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _child(conn: socket.socket, listener: socket.socket | None, request: dict[str, Any], fds: list[int],
           overrides: dict[str, str]) -> NoReturn:
    """A forked run: the CLI's terminal, directory and environment, its `main`, its exit status sent back.

    Never returns into the runner's loop, whatever is raised or signalled: the last step is
    always `os._exit`, with SIGINT ignored once the status is being sent.
    """
    code = 1
    try:
        try:
            for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with contextlib.suppress(Exception):  # Linux: interrupted if the runner dies
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
            if listener is not None:
                listener.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
            sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            os.environ.clear()
            os.environ.update(request["env"])
            os.environ.update(overrides)
            os.chdir(request["cwd"])
            send_message(conn, {"pid": os.getpid()})
            threading.Thread(target=_watch_client, args=(conn,), name="warm-client-watch", daemon=True).start()
            code = _run_cli(request["cli"], request["argv"])
            _drain_prefect()
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            # From here on the run is over: a Ctrl-C, or the CLI closing the socket once it has the
            # status, must not interrupt the end.
            _ENDING.set()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            with contextlib.suppress(BaseException):
                send_message(conn, {"exit": code})
    finally:
        os._exit(code)


#: Set in a child once its run is over (its CLI may then close the socket).
_ENDING = threading.Event()


def _run_cli(cli: str, argv: list[str]) -> int:
    """The CLI's `main` on `argv`, as its `__main__` would run it; the exit status."""
    from flows import cli as full_cli
    from flows import daily_cli

    main = full_cli.main if cli == "full_pipeline" else daily_cli.main
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: --help (0), a bad argument (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130


def _drain_prefect() -> None:
    """Send the run's last logs and events to the server before the child ends with `os._exit`."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)


def _watch_client(conn: socket.socket) -> None:
    """Interrupt the run (as Ctrl-C would) when its CLI goes away: killed, or its terminal closed."""
    try:
        conn.settimeout(None)
        while conn.recv(1024):
            pass
    except OSError:
        pass
    if not _ENDING.is_set():
        os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run the data dir's warm runner until it ends; 0, or 1 if it could not start."""
    p = argparse.ArgumentParser(prog="python -m flows.warm_server", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--idle", required=True, type=float)
    args = p.parse_args(argv)
    # The runner's own lines only (its children's logging is the CLI's, on the CLI's terminal).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    data_dir = args.data_dir.resolve()
    folder = warm_dir(data_dir)
    lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another warm runner is up for %s", data_dir)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runner = Runner(data_dir, args.idle)
    try:
        runner.start()
        if stop.is_set():
            return 0
        runner.serve(stop)
        return 0
    except Exception as exc:
        log.error("warm runner failed: %s", exc)
        return 1
    finally:
        runner.close()
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
