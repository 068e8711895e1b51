"""Ctrl-C in a CLI run: one line, exit 130, within a grace period (standard library only)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

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

    def __init__(self, message: str | Callable[[], str], grace_s: float = INTERRUPT_GRACE_S) -> None:
        self.message = message
        self.grace_s = grace_s
        self._said = threading.Lock()
        self._previous: Any = None

    def announce(self) -> None:
        """Print the message (a text, or a function making it), once, whoever ends the run (main thread or timer)."""
        if self._said.acquire(blocking=False):
            text = self.message if isinstance(self.message, str) else _safely(self.message)
            print(text, file=sys.stderr, flush=True)

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


def _safely(message: Callable[[], str]) -> str:
    """The message, or a plain `interrupted` if making it fails (the process is ending either way)."""
    try:
        return message()
    except Exception:
        return "interrupted: run the same command to resume"
