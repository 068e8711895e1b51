"""Progress of a CLI run: bars in a terminal, a plain line every few seconds when piped.

The flow feeds one `Progress` object (`current()`) from the loops where work completes:
downloads finish on a thread pool of the flow's process and conversions as Dask futures, so
every method takes a lock and is cheap. The object is inert, printing nothing, unless a CLI
turned it on with `cli_progress` around its run: a flow run started from the UI or a
deployment shows no bars and prints no progress lines (its logs are in the API).

`cli_progress` also sets how much of Prefect's console logging the terminal gets: by default
warnings and errors only (the per-task INFO lines stay in the API, for the UI), `--verbose`
all of it, `--quiet` errors only, without progress.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from flows.cli import Verbosity
from tasks.units import format_bytes, format_seconds

#: The order the bars are shown in (stages not named here follow, in the order begun).
STAGE_ORDER = ("list", "checksums", "download", "convert", "merge")
#: Seconds between two progress lines when stderr is not a terminal: under 5, so that a log
#: gets a line at least every 5 s however long printing takes.
PLAIN_INTERVAL_S = 4.5


@dataclass
class _Stage:
    unit: str
    total: int = 0
    done: int = 0
    total_bytes: int | None = None
    done_bytes: int = 0
    started: float = 0.0
    ended: float | None = None


@dataclass(frozen=True)
class StageView:
    """One stage's counts at a moment, as the displays render them."""

    name: str
    unit: str
    total: int
    done: int
    total_bytes: int | None
    done_bytes: int  # finished archives' bytes plus the bytes of those in flight
    seconds: float
    finished: bool

    def detail(self) -> str:
        """`12/40 archives, 310 MB of 1.2 GB, 48 MB/s, ETA 19 s` (the bytes only for a stage that has them)."""
        parts = [f"{self.done}/{self.total} {self.unit}"]
        eta: float | None = None
        if self.total_bytes is not None:
            parts.append(f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}")
            if self.seconds > 0 and self.done_bytes > 0:
                rate = self.done_bytes / self.seconds
                parts.append(f"{format_bytes(rate)}/s")
                eta = max(self.total_bytes - self.done_bytes, 0) / rate
        elif self.seconds > 0 and self.done > 0:
            eta = max(self.total - self.done, 0) * self.seconds / self.done
        if self.finished:
            parts.append(f"done in {format_seconds(self.seconds)}")
        elif eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        else:
            parts.append(f"{format_seconds(self.seconds)} elapsed")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line: `download 12/40 archives, ...`."""
        return f"{self.name} {self.detail()}"


class Progress:
    """Counts per stage (archives or symbols done of a total, bytes), thread-safe.

    Without a display (`attach`) it only counts; it prints nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, _Stage] = {}
        self._flight: dict[str, dict[str, int]] = {}  # stage -> key -> bytes so far
        self._display: _Display | None = None
        #: Prefect's INFO lines reach the terminal (`--verbose`): `note` then leaves the text to the log.
        self.logs_shown = False

    @property
    def enabled(self) -> bool:
        """True when a CLI display is attached (bytes in flight are worth reporting)."""
        return self._display is not None

    def attach(self, display: _Display | None) -> None:
        self._display = display

    def begin(self, stage: str, total: int, unit: str = "archives", total_bytes: int | None = None) -> None:
        """Start a stage of `total` items (and `total_bytes`); a stage begun again adds to its totals."""
        with self._lock:
            s = self._stages.get(stage)
            if s is None:
                s = self._stages[stage] = _Stage(unit, started=time.monotonic())
            s.ended = None  # begun again (the daily update's next window): its counts go on
            s.total += total
            if total_bytes is not None:
                s.total_bytes = (s.total_bytes or 0) + total_bytes

    def grow(self, stage: str, by: int = 0, total_bytes: int = 0) -> None:
        """Change a begun stage's totals (negative: an archive that will not come)."""
        with self._lock:
            s = self._stages.get(stage)
            if s is not None:
                s.total = max(s.total + by, s.done)
                if s.total_bytes is not None:
                    s.total_bytes = max(s.total_bytes + total_bytes, 0)

    def advance(self, stage: str, n: int = 1, done_bytes: int = 0, key: str | None = None) -> None:
        """`n` items of a stage finished (with `done_bytes`); `key`'s bytes in flight are replaced by them."""
        with self._lock:
            s = self._stages.get(stage)
            if s is None:
                return
            s.done += n
            s.done_bytes += done_bytes
            if key is not None:
                self._flight.get(stage, {}).pop(key, None)

    def in_flight(self, stage: str, key: str, so_far: int) -> None:
        """Bytes received so far by one item still running (a retry starts again from 0)."""
        with self._lock:
            self._flight.setdefault(stage, {})[key] = so_far

    def end(self, stage: str) -> None:
        """The stage is over (its bar stays, complete or not)."""
        with self._lock:
            s = self._stages.get(stage)
            if s is not None and s.ended is None:
                s.ended = time.monotonic()
                self._flight.pop(stage, None)

    def note(self, text: str) -> None:
        """Say `text` on the terminal above the bars (nothing when inert, or when the log shows it)."""
        display = self._display
        if display is not None and not self.logs_shown:
            display.say(text)

    def views(self) -> list[StageView]:
        """Every stage begun so far with something to do, in the pipeline's order (`STAGE_ORDER`)."""
        now = time.monotonic()
        with self._lock:
            out = []
            for name, s in self._stages.items():
                if s.total == 0 and s.done == 0:
                    continue  # nothing to do in it (yet): no bar
                flight = sum(self._flight.get(name, {}).values())
                done_bytes = s.done_bytes + flight
                if s.total_bytes is not None:
                    done_bytes = min(done_bytes, s.total_bytes)
                out.append(StageView(name, s.unit, s.total, s.done, s.total_bytes, done_bytes,
                                     (s.ended or now) - s.started, s.ended is not None))
        rank = {name: i for i, name in enumerate(STAGE_ORDER)}
        return sorted(out, key=lambda v: rank.get(v.name, len(rank)))  # stable: the others as begun

    def active(self) -> list[StageView]:
        """The stages running now."""
        return [v for v in self.views() if not v.finished]


class _Display:
    """Where a Progress shows itself."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def halt(self) -> None:
        """Stop at once, from a signal handler: the terminal as it was, no waiting on threads."""
        self.stop()

    def say(self, text: str) -> None:
        raise NotImplementedError


class PlainDisplay(_Display):
    """One line per running stage every `interval` seconds, on `out`; nothing while no stage runs."""

    def __init__(self, progress: Progress, out: TextIO, interval: float = PLAIN_INTERVAL_S) -> None:
        self.progress = progress
        self.out = out
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            lines = [v.line() for v in self.progress.active()]
            if lines:
                try:
                    print("\n".join(lines), file=self.out, flush=True)
                except (OSError, ValueError):  # the stream was closed under us: nobody reads the lines
                    return


class RichDisplay(_Display):
    """A live table of bars on the terminal (rich), Prefect's console log lines printed above it."""

    def __init__(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.live import Live

        self.progress = progress
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4,
                         redirect_stdout=False, redirect_stderr=True)
        self._swapped: list[tuple[Any, Any]] = []  # (Prefect console, its file) while the bars show
        self._lock = threading.RLock()  # a Ctrl-C may stop the bars while the main thread starts or stops them

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        for v in self.progress.views():
            total = v.total_bytes if v.total_bytes is not None else v.total
            done = v.done_bytes if v.total_bytes is not None else v.done
            bar = ProgressBar(total=max(total, 1), completed=total if v.finished and v.done >= v.total else done,
                              width=30)
            grid.add_row(f"{v.name:<9}", bar, v.detail())
        return grid

    def start(self) -> None:
        from rich.file_proxy import FileProxy

        with self._lock:
            # Prefect's console handler writes to the stderr it was given at import: through the live
            # console instead, so its lines go above the bars rather than through them.
            for handler in _console_handlers():
                console = getattr(handler, "console", None)
                if console is not None and not isinstance(console.file, FileProxy):
                    self._swapped.append((console, console.file))
                    console.file = FileProxy(self.console, console.file)
            self.live.start()

    def stop(self) -> None:
        with self._lock:
            try:
                self.live.stop()  # shows the cursor again and leaves the last frame in place
            finally:
                for console, file in self._swapped:
                    console.file = file
                self._swapped.clear()

    def say(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers (on the root logger, from Prefect's logging.yml)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    seen: list[logging.Handler] = []
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", "uvicorn", "fastapi"))]:
        seen.extend(h for h in logger.handlers if isinstance(h, PrefectConsoleHandler) and h not in seen)
    return seen


_current = Progress()


def current() -> Progress:
    """The progress the running flow feeds: inert unless a CLI turned it on."""
    return _current


CONSOLE_LEVELS: dict[Verbosity, int] = {"quiet": logging.ERROR, "normal": logging.WARNING, "verbose": logging.NOTSET}


def wants_bars(stream: TextIO) -> bool:
    """True when `stream` is a terminal that can redraw (not `TERM=dumb`)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


@contextmanager
def cli_progress(verbosity: Verbosity = "normal", stream: TextIO | None = None) -> Iterator[Progress]:
    """Progress for a CLI run inside the block: bars when `stream` (stderr) is a terminal, else lines.

    Sets Prefect's console level for `verbosity` (restored after). `quiet`: no progress.
    The bars are stopped on the first Ctrl-C, before the run ends (the terminal keeps its
    cursor even if the process then ends at once), and at the end of the block, before the
    caller prints the summary. Call it in the main thread, inside the run's Ctrl-C handler.
    """
    global _current
    out = stream or sys.stderr
    handlers = _console_handlers()
    levels = [(h, h.level) for h in handlers]
    for h in handlers:
        h.setLevel(CONSOLE_LEVELS[verbosity])
    progress = Progress()
    progress.logs_shown = verbosity == "verbose"
    display: _Display | None = None
    if verbosity != "quiet":
        display = RichDisplay(progress) if wants_bars(out) else PlainDisplay(progress, out)
    progress.attach(display)
    previous_handler: Callable[..., Any] | int | None = None
    on_sigint: Callable[[int, Any], None] | None = None
    if display is not None and threading.current_thread() is threading.main_thread():
        previous_handler = signal.getsignal(signal.SIGINT)
        shown = display

        def stop_then_interrupt(signum: int, frame: Any) -> None:
            try:
                shown.halt()
            finally:
                if callable(previous_handler):
                    previous_handler(signum, frame)  # the run's own Ctrl-C handling (flows.runtime.Interrupted)
                else:
                    raise KeyboardInterrupt

        on_sigint = stop_then_interrupt
        signal.signal(signal.SIGINT, on_sigint)
    before = _current
    _current = progress
    try:
        if display is not None:
            display.start()
        yield progress
    finally:
        _current = before
        if display is not None:
            display.stop()
        if on_sigint is not None and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous_handler)  # type: ignore[arg-type]
        for h, level in levels:
            h.setLevel(level)
