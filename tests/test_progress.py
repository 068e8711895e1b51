"""Progress of a CLI run: bars under a pseudo-terminal, a line every 5 s when piped, `--quiet`,
and the bars stopped cleanly on Ctrl-C.

The CLI runs for real (`python -m flows.full_pipeline` against the fake archive, its own
temporary Prefect server), with a pseudo-terminal as stdin, stdout and stderr where a
terminal is wanted.
"""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from flows.progress import PlainDisplay, Progress, current
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_process_safety import fresh_env

DAYS = 3
ROWS = 20_000
STALLED = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-02.zip"
SUMMARY = "archives: "  # the first line of the run's summary
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def publish(fa: FakeArchive) -> None:
    for i in range(DAYS):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1) + timedelta(days=i), ROWS, 1 + i * ROWS, i)


def args(fa: FakeArchive, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01",
            "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily", "--data-dir", str(data),
            "--base-url", fa.base_url, "--listing-url", fa.listing_url, *extra]


def env_for(tmp_path: Path) -> dict[str, str]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return fresh_env(home, tmp, TERM="xterm", COLUMNS="120", LINES="40")


def run_in_terminal(cmd: list[str], env: dict[str, str], interrupt_when: str | None = None,
                    fa: FakeArchive | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal as its stdin, stdout and stderr; (exit status, what it wrote).

    `interrupt_when`: once the fake archive has seen a request for this path, Ctrl-C (SIGINT to
    the process group, as a terminal sends it).
    """
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if interrupt_when and not sent and fa is not None and any(
                    r.path.endswith(interrupt_when) for r in fa.requests):
                time.sleep(1.0)  # the bars are drawn (4 times a second)
                os.killpg(proc.pid, signal.SIGINT)
                sent = True
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"still running after {timeout} s: {out.decode(errors='replace')[-3000:]}")
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return _ESCAPE.sub("", text).replace("\r", "")


def cursor_restored(text: str) -> bool:
    """Every hide of the cursor is followed by a show: the terminal is left as it was."""
    return text.rfind(HIDE_CURSOR) < text.rfind(SHOW_CURSOR) if HIDE_CURSOR in text else True


# --- the Progress object alone (fast) --------------------------------------------------------


def test_counts_bytes_in_flight_and_the_plain_line() -> None:
    p = Progress()
    p.begin("download", 40, total_bytes=1_200_000_000)
    p.advance("download", 12, done_bytes=300_000_000)
    p.in_flight("download", "a.zip", 10_000_000)
    (view,) = p.views()
    assert view.line().startswith("download 12/40 archives, 310 MB of 1.2 GB, ")
    assert "ETA " in view.line()
    p.advance("download", done_bytes=20_000_000, key="a.zip")  # its bytes in flight are replaced by its size
    p.grow("download", -1, total_bytes=-100_000_000)  # one that will not come
    (view,) = p.views()
    assert (view.done, view.total, view.done_bytes, view.total_bytes) == (13, 39, 320_000_000, 1_100_000_000)
    p.end("download")
    assert p.active() == [] and "done in" in p.views()[0].line()
    p.begin("merge", 2, "symbols")
    assert [v.line().split(",")[0] for v in p.active()] == ["merge 0/2 symbols"]
    p.begin("convert", 0)  # begun before the downloads (as the flow does) and empty: no bar yet
    assert [v.name for v in p.views()] == ["download", "merge"]
    p.grow("convert", 3)
    assert [v.name for v in p.views()] == ["download", "convert", "merge"]  # the pipeline's order


def test_outside_a_cli_the_progress_is_inert(capsys: pytest.CaptureFixture[str]) -> None:
    p = current()
    assert not p.enabled
    p.begin("download", 1)
    p.note("plan: something")
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_plain_lines_only_while_a_stage_runs() -> None:
    p = Progress()
    out = io.StringIO()
    display = PlainDisplay(p, out, interval=0.05)
    display.start()
    try:
        time.sleep(0.3)
        assert out.getvalue() == ""  # nothing runs: nothing said
        p.begin("convert", 3)
        p.advance("convert")
        deadline = time.monotonic() + 10
        while "convert 1/3 archives" not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        p.end("convert")
        time.sleep(0.2)  # a line being printed as the stage ended
        said = out.getvalue()
        time.sleep(0.3)
        assert out.getvalue() == said  # over: no more lines
    finally:
        display.stop()


# --- the CLI (slow) --------------------------------------------------------------------------


@pytest.mark.slow
def test_bars_in_a_terminal_then_the_summary_once(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    publish(fake_archive)
    code, out = run_in_terminal(args(fake_archive, used_data_dir), env_for(tmp_path))
    text = plain(out)
    assert code == 0, text[-3000:]
    assert "━" in text  # a bar
    assert re.search(rf"download +━+ {DAYS}/{DAYS} archives, [0-9.]+ [kM]B of [0-9.]+ [kM]B", text), text[-3000:]
    assert re.search(rf"convert +━+ {DAYS}/{DAYS} archives", text), text[-3000:]
    assert text.count("plan: spot, 1 symbol, ") == 1
    assert text.count(SUMMARY) == 1, text[-3000:]  # printed once, not also as a log line
    assert text.rfind("━") < text.find(SUMMARY)  # the bars stopped before it
    assert " | INFO " not in text  # Prefect's per-task lines are for --verbose
    assert HIDE_CURSOR in out and cursor_restored(out)


@pytest.mark.slow
def test_ctrl_c_stops_the_bars_and_leaves_the_terminal_usable(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    publish(fake_archive)
    fake_archive.inject(STALLED, "stall", delay=60)
    code, out = run_in_terminal(args(fake_archive, used_data_dir), env_for(tmp_path), interrupt_when=STALLED,
                                fa=fake_archive)
    text = plain(out)
    assert code == 130, text[-3000:]
    assert "download" in text and "archives" in text
    assert [line for line in text.splitlines() if line.startswith("interrupted:")] != []
    assert "Traceback" not in text
    assert HIDE_CURSOR in out and cursor_restored(out), out[-500:]


@pytest.mark.slow
def test_piped_a_progress_line_at_least_every_5_s(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    publish(fake_archive)
    fake_archive.inject(STALLED, "stall", delay=12)  # the run waits on it for 12 s
    t0 = time.monotonic()
    done = subprocess.run(args(fake_archive, used_data_dir), cwd=REPO, env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines()
             if re.fullmatch(rf"download \d+/{DAYS} archives, .* of .*, .*", line)]
    assert len(lines) >= 2, done.stderr[-3000:]  # 12 s of waiting: 2 lines at least
    assert "━" not in done.stderr and "\x1b[" not in done.stderr  # no bars, no escapes in a log
    assert done.stderr.count("plan: spot") == 1
    assert done.stdout.count(SUMMARY) == 1 and SUMMARY not in done.stderr
    print(f"{len(lines)} progress lines in a {time.monotonic() - t0:.1f} s run:", *lines, sep="\n  ")


@pytest.mark.slow
def test_quiet_prints_only_the_summary(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    publish(fake_archive)
    fake_archive.inject(STALLED, "stall", delay=7)  # long enough for a progress line, were there one
    done = subprocess.run(args(fake_archive, used_data_dir, "--quiet"), cwd=REPO, env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert done.stdout.startswith(SUMMARY) and done.stdout.count(SUMMARY) == 1
    assert "plan:" not in done.stdout
