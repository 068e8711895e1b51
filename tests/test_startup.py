"""The ad hoc CLI's start and end as a person at a terminal meets them.

- Bad arguments are refused before Prefect, pyarrow, Dask or Numba are imported (the
  seconds of imports come only once the run can go ahead).
- Ctrl-C under a pseudo-terminal: SIGINT to the process group mid-download ends the run
  with exit 130 and one line saying what this run kept, no traceback, nothing left
  running, the data dir's lock free, and nothing written in the user's home or temp dir;
  the same command then resumes, from the server template kept for this Prefect version.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest

from flows.api_server import schema_template_ok, server_template
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_infra import tree
from tests.test_process_safety import fresh_env, leftovers, wait_gone

DAYS = 4
ROWS = 2_000
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STALLED = f"data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-{DAYS:02d}.zip"


def _args(fa: FakeArchive, data: Path) -> list[str]:
    return [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01",
            "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily", "--data-dir", str(data),
            "--base-url", fa.base_url, "--listing-url", fa.listing_url]


class Terminal:
    """A CLI run on a pseudo-terminal, in its own session (a terminal's Ctrl-C signals its process group)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def read(self, timeout: float = 0.1) -> None:
        """What the terminal shows, appended to `output` (waits up to `timeout` for more)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):  # EIO: every writer of the terminal has gone
                self.output += os.read(self.master, 65536)

    def finish(self, timeout: float) -> int:
        """Read until the process exits (SIGKILLing it after `timeout`); its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        for _ in range(20):
            self.read(0.05)
        os.close(self.master)
        return code

    @property
    def text(self) -> str:
        """What was shown, without the terminal's control sequences (the progress bars' colours, cursor)."""
        return _ANSI.sub("", self.output.decode(errors="replace")).replace("\r\n", "\n")


def _verified(data: Path) -> int:
    folder = data / "archive" / "data" / "spot" / "daily" / "trades" / "BTCUSDT"
    return len(list(folder.glob("*.zip.CHECKSUM"))) if folder.is_dir() else 0


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_says_what_it_kept_exits_130_leaves_nothing_and_the_run_resumes(
    fake_archive: FakeArchive, tmp_path: Path
) -> None:
    home, tmp, data = tmp_path / "home", tmp_path / "tmp", tmp_path / "data"
    home.mkdir()
    tmp.mkdir()
    for i in range(DAYS):
        publish_day(fake_archive, "spot", "BTCUSDT", date(2024, 1, 1) + timedelta(days=i), ROWS, 1 + i * ROWS, i)
    fake_archive.inject(STALLED, "stall", delay=120)  # the last day hangs mid-download
    env = fresh_env(home, tmp)
    run = Terminal(_args(fake_archive, data), env)
    try:
        deadline = time.monotonic() + 180
        while _verified(data) < DAYS - 1 or not any(r.path.endswith(STALLED) for r in fake_archive.requests):
            assert run.proc.poll() is None and time.monotonic() < deadline, run.text[-3000:]
            run.read()
        started = [p for p in tree(run.proc.pid) if p.pid != run.proc.pid]
        assert started, "the run's server and guard should be running"
        os.killpg(run.proc.pid, signal.SIGINT)
    finally:
        code = run.finish(timeout=60)
    shown = run.text
    assert code == 130, shown[-3000:]
    ours = [line for line in shown.splitlines() if line.startswith("interrupted:")]
    assert ours == [f"interrupted: {DAYS - 1} archives landed (verified, kept for the next run); nothing "
                    "half-written is visible; run the same command to resume"], shown[-3000:]
    assert "Traceback" not in shown and "Crash detected" not in shown, shown[-3000:]
    assert wait_gone(started) == [], [p.cmdline() for p in started if p.is_running()]
    assert leftovers(tmp) == [] and leftovers(home) == [], (leftovers(tmp), leftovers(home))
    with open(data / ".lock", "a+") as lock:  # released with the process
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(lock, fcntl.LOCK_UN)
    template = server_template(data)
    assert template.name == f"template-{importlib.metadata.version('prefect')}.db"
    assert schema_template_ok(template)

    fake_archive.clear_faults()
    again = Terminal(_args(fake_archive, data), env)  # from the template: no migration, no block registration
    assert again.finish(timeout=300) == 0, again.text[-3000:]
    ids = ds.dataset(data / "lake" / "trades", partitioning="hive").to_table(columns=["trade_id"])["trade_id"]
    assert sorted(ids.to_pylist()) == list(range(1, DAYS * ROWS + 1))
    assert leftovers(tmp) == [] and leftovers(home) == [], (leftovers(tmp), leftovers(home))
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp) in " ".join(p.info["cmdline"] or [])]


_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


@pytest.mark.parametrize("problem, args, says", [
    ("data dir is a file", ["--data-dir", "{file}"], "is not a directory"),
    ("symbol", ["--symbols", "btc-usdt"], "--symbols"),
    ("day", ["--end", "2024-02-30"], "--end"),
    ("range", ["--concurrency", "0"], "--concurrency"),
])
def test_bad_arguments_are_refused_before_the_heavy_imports(
    tmp_path: Path, problem: str, args: list[str], says: str
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a lake")
    given = {"--data-dir": str(tmp_path / "data"), "--symbols": "BTCUSDT", "--start": "2024-01-01",
             "--end": "2024-01-01"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        given[flag] = value.format(file=afile)
    argv = [a for pair in given.items() for a in pair]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.full_pipeline", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and says in errors[0], errors
    imported = {m.group(1).split(".")[0] for line in done.stderr.splitlines() if (m := _IMPORTED.match(line))}
    assert imported.isdisjoint({"prefect", "pyarrow", "distributed", "numba", "pandas"}), imported & {
        "prefect", "pyarrow", "distributed", "numba", "pandas"}
    assert not (tmp_path / "data").exists()
