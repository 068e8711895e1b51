"""The warm runner (flows/warm.py, flows/warm_server.py), with real CLIs, runners, servers and signals.

- A run hands itself to the data dir's runner (started by the first run) and lands the same
  rows as a run in its own process; the runner stays, serves the next run, and stops when
  asked or after its idle time, leaving no process and no file outside the data dir.
- Ctrl-C at a terminal reaches the run on the runner: one line, exit 130, the lock free,
  the runner still up; a CLI killed outright interrupts its run too; the next run resumes.
- A runner serves only the code and environment it was started with, and only its data dir:
  otherwise it retires and a new one starts. A runner killed outright takes its server with it.
- Bad `--keep-warm` values and a client speaking nonsense are refused, in one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest

from flows.warm import LOG_NAME, SOCKET_NAME, keep_warm_seconds, socket_address, warm_dir
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_process_safety import fresh_env, leftovers, listening_procs, running, wait_gone
from tests.test_startup import Terminal, _verified

DAYS = 6
ROWS = 2_000


def _publish(fa: FakeArchive) -> None:
    for i in range(DAYS):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1) + timedelta(days=i), ROWS, 1 + i * ROWS, i)


def _args(fa: FakeArchive, data: Path, first: int, last: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", f"2024-01-{first:02d}",
            "--end", f"2024-01-{last:02d}", "--granularity", "daily", "--data-dir", str(data),
            "--base-url", fa.base_url, "--listing-url", fa.listing_url, *extra]


def _env(tmp_path: Path, keep_warm: str = "60", **extra: str) -> dict[str, str]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return fresh_env(home, tmp, BINANCE_LAKE_KEEP_WARM=keep_warm, **extra)


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _warm(data: Path, env: dict[str, str], command: str = "status") -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "flows.warm", command, "--data-dir", str(data)], env, timeout=60)


def _runner(data: Path) -> psutil.Process | None:
    """The runner process of `data`, if one is up (not one of its forked runs, which share its command line)."""
    def ours(proc: psutil.Process) -> bool:
        cmd = proc.info["cmdline"] or []
        return "flows.warm_server" in cmd and str(data) in cmd and running(proc)

    found = [p for p in psutil.process_iter(["cmdline"]) if ours(p)]
    pids = {p.pid for p in found}
    runners = [p for p in found if p.ppid() not in pids]
    return runners[0] if runners else None


def _family(proc: psutil.Process) -> list[psutil.Process]:
    """`proc` and what it started, with the server's guard and the server itself (their own sessions)."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _ids(data: Path) -> list[int]:
    table = ds.dataset(data / "lake" / "trades", partitioning="hive").to_table(columns=["trade_id"])
    return sorted(table["trade_id"].to_pylist())


def _lock_free(data: Path) -> bool:
    with open(data / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _served(data: Path) -> int:
    status = _warm(data, os.environ | {"BINANCE_LAKE_KEEP_WARM": "0"})
    if status.returncode != 0:
        return -1
    return int(status.stdout.split(" runs served")[0].rsplit(" ", 1)[-1])


@pytest.mark.slow
def test_runs_go_to_the_warm_runner_which_stays_then_stops_leaving_nothing(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    _publish(fake_archive)
    data = used_data_dir
    env = _env(tmp_path)

    first = _run(_args(fake_archive, data, 1, 2), env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "starting a warm runner for" in first.stderr
    assert "note: a warm runner stays for 60 s of idleness" in first.stderr, first.stderr
    assert "archives: 2 landed in the lake" in first.stdout, first.stdout
    runner = _runner(data)
    assert runner is not None
    family = _family(runner)
    assert len(family) >= 3, [p.cmdline() for p in family]  # runner, guard, server
    # Nothing of the runner listens beyond loopback (the socket is a file in the data dir).
    for proc in listening_procs(family):
        addresses = {c.laddr.ip for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert addresses <= {"127.0.0.1"}, (proc.cmdline(), addresses)
    folder = warm_dir(data)
    assert (folder / SOCKET_NAME).is_socket()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"

    second = _run(_args(fake_archive, data, 3, 4), env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "starting a warm runner" not in second.stderr and "note: a warm runner" not in second.stderr
    assert "archives: 2 landed in the lake" in second.stdout, second.stdout
    assert _runner(data) is not None and _runner(data).pid == runner.pid  # type: ignore[union-attr]
    assert _served(data) == 2
    assert _ids(data) == list(range(1, 4 * ROWS + 1))
    # Bad input is refused by the CLI itself, before the runner is asked anything.
    typo = _run(_args(fake_archive, data, 5, 5, "--symbols", "XRPUSDT"), env, timeout=60)
    assert typo.returncode == 2 and "XRPUSDT: not listed" in typo.stderr, typo.stderr
    assert _served(data) == 2

    stopped = _warm(data, env, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
    assert wait_gone(family, timeout=15) == [], [p.cmdline() for p in family if running(p)]
    assert not (folder / SOCKET_NAME).exists()
    assert leftovers(tmp_path / "tmp") == [] and leftovers(tmp_path / "home") == []
    assert _warm(data, env).returncode == 1  # "no warm runner"

    # An idle timeout ends it by itself.
    short = _env(tmp_path, keep_warm="2")
    third = _run(_args(fake_archive, data, 5, 6), short)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "starting a warm runner" in third.stderr
    _wait(lambda: "stopping: idle for 2 s" in (folder / LOG_NAME).read_text(), 30, "no idle stop")
    _wait(lambda: _runner(data) is None, 15, "the idle runner is still up")
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers(tmp_path / "tmp") == [] and leftovers(tmp_path / "home") == []
    assert _ids(data) == list(range(1, DAYS * ROWS + 1))
    assert "ended: exit 0" in (folder / LOG_NAME).read_text()


@pytest.mark.slow
def test_ctrl_c_and_a_killed_cli_interrupt_the_run_on_the_runner_which_stays_and_resumes(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    _publish(fake_archive)
    data = used_data_dir
    env = _env(tmp_path)
    assert _run(_args(fake_archive, data, 1, 1), env).returncode == 0  # starts the runner
    runner = _runner(data)
    assert runner is not None
    stalled = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-04.zip"
    fake_archive.inject(stalled, "stall", delay=120)
    run = Terminal(_args(fake_archive, data, 1, 4), env)
    try:
        deadline = time.monotonic() + 120
        while _verified(data) < 3 or not any(r.path.endswith(stalled) for r in fake_archive.requests):
            assert run.proc.poll() is None and time.monotonic() < deadline, run.text[-3000:]
            run.read()
        os.killpg(run.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the CLI's process group only
        t0 = time.monotonic()
    finally:
        code = run.finish(timeout=60)
    took = time.monotonic() - t0
    shown = run.text
    assert code == 130, shown[-3000:]
    ours = [line for line in shown.splitlines() if line.startswith("interrupted:")]
    assert ours == ["interrupted: 2 archives landed (verified, kept for the next run); nothing half-written is "
                    "visible; run the same command to resume"], shown[-3000:]
    assert "Traceback" not in shown and "Crash detected" not in shown, shown[-3000:]
    assert took < 10, took
    _wait(lambda: _lock_free(data), 10, "the run's lock is still held")
    assert _runner(data) is not None and _runner(data).pid == runner.pid  # type: ignore[union-attr]

    # The CLI killed outright (no signal to pass on): its run sees the socket close and stops.
    proc = subprocess.Popen(_args(fake_archive, data, 1, 4), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(1 for r in fake_archive.requests if r.path.endswith(stalled)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    children = [p for p in runner.children() if "flows.warm_server" in " ".join(p.cmdline())]
    assert children, "the run should be a child of the runner"
    proc.kill()
    proc.wait()
    assert wait_gone(children, timeout=15) == []
    _wait(lambda: _lock_free(data), 10, "the killed run's lock is still held")

    fake_archive.clear_faults()
    again = _run(_args(fake_archive, data, 1, 4), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _ids(data) == list(range(1, 4 * ROWS + 1))
    assert _runner(data) is not None and _runner(data).pid == runner.pid  # type: ignore[union-attr]
    family = _family(runner)
    assert _warm(data, env, "stop").returncode == 0
    assert wait_gone(family, timeout=15) == []
    assert leftovers(tmp_path / "tmp") == [] and leftovers(tmp_path / "home") == []


@pytest.mark.slow
def test_a_runner_serves_only_its_code_environment_and_data_dir_and_dies_with_its_server(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    _publish(fake_archive)
    data = used_data_dir
    env = _env(tmp_path)
    assert _run(_args(fake_archive, data, 1, 1), env).returncode == 0
    first = _runner(data)
    assert first is not None
    first_family = _family(first)

    # Another value of a variable Prefect reads at import: the old runner refuses and retires (its
    # socket gone before it answers), and this very run starts a runner for the new value.
    other = env | {"PREFECT_LOGGING_LEVEL": "WARNING"}
    done = _run(_args(fake_archive, data, 2, 2), other)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a warm runner" in done.stderr, done.stderr
    assert "note: no warm runner" not in done.stderr, done.stderr
    assert wait_gone(first_family, timeout=20) == []
    second = _runner(data)
    assert second is not None and second.pid != first.pid
    assert "the code, the packages or the environment changed" in (warm_dir(data) / LOG_NAME).read_text()

    # The data dir moved: the old runner ends; the moved data dir gets its own.
    second_family = _family(second)
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    assert wait_gone(second_family, timeout=20) == []
    done = _run(_args(fake_archive, moved, 3, 3), other)
    assert done.returncode == 0, done.stderr[-3000:]
    third = _runner(moved)
    assert third is not None
    assert _ids(moved) == list(range(1, 3 * ROWS + 1))

    # Killed outright: its guard stops the server and removes its folder; the next run starts another.
    third_family = _family(third)
    third.kill()
    assert wait_gone(third_family, timeout=20) == []
    assert leftovers(tmp_path / "tmp") == []
    done = _run(_args(fake_archive, moved, 4, 4), other)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a warm runner" in done.stderr
    fourth = _runner(moved)
    assert fourth is not None
    family = _family(fourth)

    # Nonsense on the socket is refused; the runner carries on.
    # (Connected as the CLI does: a long tmp path goes through the folder's descriptor.)
    with socket.socket(socket.AF_UNIX) as sock, socket_address(warm_dir(moved)) as address:
        sock.connect(address)
        sock.sendall(b'{"v": 1, "op": "run", "cli": "rm", "argv": []}\n')
        answer = json.loads(sock.makefile().readline())
    assert "refused" in answer, answer
    with socket.socket(socket.AF_UNIX) as sock, socket_address(warm_dir(moved)) as address:
        sock.connect(address)
        sock.sendall(b"not json\n")
    assert _served(moved) == 1
    assert _warm(moved, env, "stop").returncode == 0
    assert wait_gone(family, timeout=15) == []
    assert leftovers(tmp_path / "tmp") == [] and leftovers(tmp_path / "home") == []


@pytest.mark.parametrize("args, env, says", [
    (["--keep-warm", "-1"], {}, "error: --keep-warm -1: out of range"),
    ([], {"BINANCE_LAKE_KEEP_WARM": "soon"}, "error: BINANCE_LAKE_KEEP_WARM='soon': not a number"),
    ([], {"BINANCE_LAKE_KEEP_WARM": "1e9"}, "error: BINANCE_LAKE_KEEP_WARM=1e9: out of range"),
])
def test_bad_keep_warm_values_are_refused_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    cmd = [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01",
           "--end", "2024-01-01", "--data-dir", str(tmp_path / "data"), *args]
    done = _run(cmd, {**_env(tmp_path), **env}, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), done.stderr
    assert not (tmp_path / "data").exists()


def test_a_runner_is_kept_by_default_only_for_a_terminal() -> None:
    assert keep_warm_seconds(None, {}, interactive=True) == 900
    assert keep_warm_seconds(None, {}, interactive=False) == 0
    assert keep_warm_seconds(None, {"BINANCE_LAKE_KEEP_WARM": "30"}, interactive=False) == 30
    assert keep_warm_seconds(0, {"BINANCE_LAKE_KEEP_WARM": "30"}, interactive=True) == 0
    with pytest.raises(ValueError, match="out of range"):
        keep_warm_seconds(float("nan"), {})
