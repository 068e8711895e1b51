"""The warm runner's client: an ad hoc CLI run handed to a process that has everything loaded.

A cold CLI run pays about 9 s before its first task: 5 s for its temporary Prefect API
server and 4 s of imports (BENCHMARKS.md, "Start-up"). The warm runner
(`flows/warm_server.py`) is one process per data dir that keeps both: the server, and
Prefect, pyarrow, Dask and Numba imported with the kernels loaded. A CLI whose arguments
are checked hands it its command line, working directory, environment and terminal (its
stdin, stdout and stderr, passed over a Unix socket); the runner forks a child that runs the
command as the CLI would have, writing to the CLI's own terminal, and the child sends the
exit status back. The CLI exits with it.

- The first run on a data dir starts the runner and takes as long as a cold run; the runner
  then stays for `--keep-warm` seconds of idleness (`BINANCE_LAKE_KEEP_WARM`; by default
  900 in a terminal, and none for a script, a pipe or a scheduler), and stops by itself.
  `--keep-warm 0` runs in the CLI's own process and starts nothing.
  `python -m flows.warm status|stop --data-dir D` shows or stops it.
- Nothing outside the data dir: the socket, lock and log are in
  `<data-dir>/.prefect-server/warm/` (mode 0700); the server's database is in a temporary
  folder that its guard removes when the runner ends, even by SIGKILL. Only the same user
  can connect (the folder's mode, and the peer's uid is checked); nothing listens on a port
  beyond the server's 127.0.0.1. Requests are JSON: nothing is unpickled.
- Ctrl-C reaches the CLI (the runner is in its own session); the CLI passes it on to its
  child, which ends as a cold run would (one line, 130). A CLI killed outright: its child
  sees the socket close and interrupts itself. A runner killed outright: its server goes
  with it, and its children get SIGINT.
- A runner serves only what it was started for: the same interpreter, the same code (the
  size and time of every file of `flows/` and `tasks/`), the same installed packages and the
  same Prefect, Dask and Numba environment variables (read at import). Otherwise it is
  retired and a new one starts. A moved or deleted data dir ends it too.

Standard library only: the CLI imports this before its heavy imports.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Where the runner keeps its socket, lock and log, under the data dir.
WARM_DIR = Path(".prefect-server") / "warm"
SOCKET_NAME = "runner.sock"
LOCK_NAME = "runner.lock"
START_LOCK_NAME = "start.lock"
LOG_NAME = "runner.log"
#: Seconds of idleness after which a runner stops, unless `--keep-warm` or the variable says.
DEFAULT_KEEP_WARM_S = 900.0
MAX_KEEP_WARM_S = 7 * 86400.0
KEEP_WARM_ENV = "BINANCE_LAKE_KEEP_WARM"
#: Set in a warm runner's child: its CLI runs the command itself instead of handing it on.
CHILD_ENV = "BINANCE_LAKE__WARM_CHILD"
#: The protocol's version; a runner of another version is retired.
PROTOCOL = 1
#: Environment variables read when Prefect, Dask, Numba, pyarrow or Python start (so fixed in a
#: runner's loaded modules): a CLI whose values differ is served by a new runner.
_IMPORT_TIME_ENV = ("PREFECT_", "DASK_", "NUMBA_", "OMP_", "OPENBLAS_", "MKL_", "ARROW_", "PYTHON", "DO_NOT_TRACK",
                    "TMPDIR", "LD_", "TZ")
_REPO = Path(__file__).resolve().parent.parent
#: Longest socket path `bind`/`connect` take (sun_path is 108 bytes with its NUL).
_MAX_SUN_PATH = 100


class WarmRunnerUnavailable(Exception):
    """The warm runner could not be started or reached; the CLI runs the command itself."""


def warm_dir(data_dir: Path) -> Path:
    """`<data_dir>/.prefect-server/warm`: the runner's socket, lock and log."""
    return data_dir / WARM_DIR


def in_child() -> bool:
    """True inside a warm runner's child (the CLI there runs the command itself)."""
    return os.environ.get(CHILD_ENV) == "1"


def keep_warm_seconds(given: float | None, environ: Mapping[str, str] | None = None,
                      interactive: bool | None = None) -> float:
    """The idle seconds a runner stays: `--keep-warm`, else BINANCE_LAKE_KEEP_WARM, else 900 in a terminal.

    By default a runner is kept only for a person at a terminal (stderr is a tty): a script,
    a pipe or a scheduler gets none unless it asks, and so no process outlives its run.
    ValueError for a value that is not a number of seconds in 0..7 days.
    """
    environ = os.environ if environ is None else environ
    if given is None:
        text = environ.get(KEEP_WARM_ENV)
        if text is None or not text.strip():
            interactive = sys.stderr.isatty() if interactive is None else interactive
            return DEFAULT_KEEP_WARM_S if interactive else 0.0
        try:
            given = float(text)
        except ValueError:
            raise ValueError(f"{KEEP_WARM_ENV}={text!r}: not a number of seconds "
                             "(0 turns the warm runner off)") from None
        name = f"{KEEP_WARM_ENV}={text}"
    else:
        name = f"--keep-warm {given:g}"
    if not 0 <= given <= MAX_KEEP_WARM_S:  # also refuses NaN
        raise ValueError(f"{name}: out of range: allowed 0..{MAX_KEEP_WARM_S:.0f} seconds (0: no warm runner)")
    return given


def fingerprint(environ: Mapping[str, str]) -> str:
    """What a runner's loaded modules depend on: interpreter, code, installed packages, import-time variables.

    Cheap (about a hundred `stat` calls): the CLI computes it on every run.
    """
    h = hashlib.sha256()
    h.update(f"{PROTOCOL}\0{sys.executable}\0{sys.version}\0".encode())
    for name in sorted(environ):
        if name.startswith(_IMPORT_TIME_ENV) and name != CHILD_ENV:
            h.update(f"{name}={environ[name]}\0".encode())
    for folder in ("flows", "tasks"):
        for path in sorted((_REPO / folder).rglob("*.py")):
            with contextlib.suppress(OSError):
                st = path.stat()
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    # An install, upgrade or removal of a package changes its site-packages folder.
    for folder in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        with contextlib.suppress(OSError):
            h.update(f"{folder}\0{os.stat(folder).st_mtime_ns}\0".encode())
    return h.hexdigest()


@contextlib.contextmanager
def socket_address(folder: Path) -> Iterator[str]:
    """The path to bind or connect the runner's socket in `folder`, short enough for AF_UNIX.

    A long data dir path (over 100 bytes with the socket's name) goes through a descriptor
    of the folder (`/proc/self/fd/N/runner.sock`), which Linux resolves like the path.
    """
    path = str(folder / SOCKET_NAME)
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield path
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    """One JSON line on `sock`, with `fds` passed alongside (SCM_RIGHTS)."""
    data = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    sock.sendall(data)


class LineReader:
    """JSON lines from a socket; the descriptors passed with the first bytes are kept in `fds`."""

    MAX_LINE = 1 << 20

    def __init__(self, sock: socket.socket, max_fds: int = 0) -> None:
        self.sock = sock
        self.max_fds = max_fds
        self.fds: list[int] = []
        self._buffer = b""

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at the end of the stream. ValueError for a line that is not a JSON object."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > self.MAX_LINE:
                raise ValueError("message too long")
            if self.max_fds and not self.fds:
                chunk, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, self.max_fds)
                self.fds = list(fds)
            else:
                chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("message is not an object")
        return message


def connect(folder: Path, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the runner whose socket is in `folder`, or None if none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with socket_address(folder) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


def ask(data_dir: Path, message: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one control message (`status`, `stop`) to the data dir's runner; its answer, or None if none is up."""
    sock = connect(warm_dir(data_dir), timeout)
    if sock is None:
        return None
    with sock:
        try:
            send_message(sock, {"v": PROTOCOL, **message})
            return LineReader(sock).read()
        except (OSError, ValueError):
            return None


def runner_up(folder: Path) -> bool:
    """True while a runner holds the folder's lock (it holds it from its start to its end)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _wait_gone(folder: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while runner_up(folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _log_tail(folder: Path, lines: int = 3) -> str:
    try:
        text = (folder / LOG_NAME).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@contextlib.contextmanager
def _start_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / START_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_runner(data_dir: Path, folder: Path, idle_s: float) -> subprocess.Popen[bytes]:
    """Start `python -m flows.warm_server` for `data_dir`, in its own session, logging to runner.log."""
    path = folder / LOG_NAME
    with contextlib.suppress(OSError):
        if path.stat().st_size > 1 << 20:  # keep the last runners' lines, not an ever-growing file
            path.unlink()
    with open(path, "ab") as log:
        env = {k: v for k, v in os.environ.items() if k != CHILD_ENV}
        return subprocess.Popen(
            [sys.executable, "-m", "flows.warm_server", "--data-dir", str(data_dir), "--idle", f"{idle_s:g}"],
            cwd=_REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def _wait_ready(proc: subprocess.Popen[bytes], folder: Path, timeout: float) -> socket.socket:
    """Connect to a runner just started; WarmRunnerUnavailable if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(folder)
            raise WarmRunnerUnavailable(f"it exited with status {code}" + (f": {tail}" if tail else ""))
        sock = connect(folder)
        if sock is not None:
            return sock
        time.sleep(0.05)
    proc.terminate()
    raise WarmRunnerUnavailable(f"it did not answer within {timeout:.0f} s")


def _std_fds() -> list[int]:
    """This process's stdin, stdout and stderr for the child (/dev/null for one that is closed)."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def _request(cli: str, argv: Sequence[str], data_dir: Path, idle_s: float) -> dict[str, Any]:
    return {"v": PROTOCOL, "op": "run", "cli": cli, "argv": list(argv), "cwd": os.getcwd(),
            "env": {k: v for k, v in os.environ.items() if k != CHILD_ENV}, "data_dir": str(data_dir),
            "idle_s": idle_s, "fingerprint": fingerprint(os.environ)}


class _Forward:
    """While waiting for the child: a Ctrl-C (or SIGTERM) is passed on to it instead of ending this process."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.interrupted = False
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGINT)

    def __enter__(self) -> _Forward:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_on_warm_runner(cli: str, argv: Sequence[str], data_dir: Path, idle_s: float, quiet: bool) -> int:
    """Run the CLI's command on the data dir's warm runner (started first if need be); its exit status.

    WarmRunnerUnavailable if no runner could be reached or started (nothing has run then).
    KeyboardInterrupt only while a runner is being started (nothing has run either).
    """
    folder = warm_dir(data_dir)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise WarmRunnerUnavailable(f"{folder}: {exc.strerror or exc}") from exc
    request = _request(cli, argv, data_dir, idle_s)
    started = False
    for _attempt in range(2):
        sock = connect(folder)
        if sock is None:
            with _start_lock(folder):
                sock = connect(folder)
                if sock is None:
                    if not _wait_gone(folder, 10.0):  # a retiring runner still finishing a run
                        raise WarmRunnerUnavailable("the previous warm runner is still finishing a run")
                    if not quiet:
                        print(f"starting a warm runner for {data_dir} (this run as slow as a cold one; later runs "
                              "skip about 9 s of start-up)", file=sys.stderr, flush=True)
                    proc = _start_runner(data_dir, folder, idle_s)
                    try:
                        sock = _wait_ready(proc, folder, _ready_timeout())
                    except BaseException:
                        if proc.poll() is None:
                            proc.terminate()
                        raise
                    started = True
        with sock:
            code = _hand_over(sock, request)
        if code is not None:
            if started and not quiet:
                print(f"note: a warm runner stays for {_duration(idle_s)} of idleness, so the next run on this data "
                      f"dir starts at once; `python -m flows.warm stop --data-dir {data_dir}` stops it now, "
                      "`--keep-warm 0` runs without one", file=sys.stderr)
            return code
        # Refused: that runner is retiring (other code or environment, a moved data dir); start a new one.
    raise WarmRunnerUnavailable("the warm runner refused the run twice")


def _hand_over(sock: socket.socket, request: Mapping[str, Any]) -> int | None:
    """Send the run and wait for its exit status; None if the runner refused it (it is retiring)."""
    sock.settimeout(None)
    reader = LineReader(sock)
    try:
        send_message(sock, request, _std_fds())
    except OSError as exc:
        raise WarmRunnerUnavailable(f"could not send the run: {exc.strerror or exc}") from exc
    with _Forward() as forward:
        try:
            answer = reader.read()
        except ValueError as exc:
            raise WarmRunnerUnavailable(f"no answer: {exc}") from exc
        except OSError:  # a runner ending as it refuses (a reset): nothing ran; try a new one
            return None
        if answer is None or "refused" in answer:  # nothing ran (no pid came): a new runner is started
            return None
        pid = answer.get("pid")
        if not isinstance(pid, int):
            raise WarmRunnerUnavailable(f"unexpected answer {answer!r}")
        forward.pid = pid
        if forward.interrupted:  # Ctrl-C between sending the run and its start
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
        try:
            end = reader.read()
        except (OSError, ValueError):
            end = None
    if end is not None and isinstance(end.get("exit"), int):
        return int(end["exit"])
    if forward.interrupted:
        return 130  # the child ended within its grace (flows/interrupt.py), having said so
    print(f"error: the run's process on the warm runner ended without an exit status (killed?); its log: "
          f"{warm_dir(Path(request['data_dir'])) / LOG_NAME}", file=sys.stderr)
    return 1


def _ready_timeout() -> float:
    from flows.api_server import _start_timeout

    return _start_timeout() + 60.0  # the server's start, and the imports beside it


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def hand_off(cli: str, argv: Sequence[str] | None, data_dir: Path, keep_warm: float, quiet: bool) -> int | None:
    """A CLI's run on the warm runner when one should be used: its exit status; None to run in this process.

    In this process: with `keep_warm` 0, inside a runner's child, or when a Prefect API is
    configured (runs go to that server; there is no temporary one to keep). A runner that
    cannot be started or reached is reported in one `note:` line and the run goes on here.
    """
    from flows.api_server import api_url_in_environment

    if keep_warm <= 0 or in_child() or api_url_in_environment():
        return None
    try:
        return run_on_warm_runner(cli, sys.argv[1:] if argv is None else argv, data_dir, keep_warm, quiet)
    except WarmRunnerUnavailable as exc:
        print(f"note: no warm runner ({exc}); running in this process", file=sys.stderr)
        return None


# --- python -m flows.warm status|stop --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.warm status|stop --data-dir D`: 0; 1 when no runner is up (status) or it did not stop."""
    p = argparse.ArgumentParser(prog="python -m flows.warm",
                                description="Show or stop the warm runner of a data dir (see flows/warm.py).")
    p.add_argument("command", choices=["status", "stop"])
    p.add_argument("--data-dir", required=True, type=Path, help="the data dir whose runner to show or stop")
    args = p.parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    folder = warm_dir(data_dir)
    answer = ask(data_dir, {"op": args.command})
    if answer is None:
        print(f"no warm runner for {data_dir}")
        return 1 if args.command == "status" else 0
    if args.command == "status":
        idle = answer.get("idle_for_s", 0.0)
        print(f"warm runner for {data_dir}: pid {answer.get('pid')}, up {_duration(answer.get('up_s', 0.0))}, "
              f"{answer.get('served', 0)} runs served, {answer.get('running', 0)} running, idle "
              f"{_duration(idle)} (stops after {_duration(answer.get('idle_s', 0.0))} idle)")
        return 0
    running = answer.get("running", 0)
    if running:
        print(f"warm runner for {data_dir}: stops once its {running} running run(s) end")
        return 0
    if _wait_gone(folder, 15.0):
        print(f"warm runner for {data_dir}: stopped")
        return 0
    print(f"warm runner for {data_dir}: asked to stop, still up after 15 s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
