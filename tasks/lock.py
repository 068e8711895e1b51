"""One run at a time per data directory: an advisory lock on `<data_dir>/.lock`.

`flock` locks belong to the open file, so a killed run releases its lock with its process
(no stale lock to clean up by hand); the file only carries who held it last, for the
message a second run prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tasks.datadir import open_data_dir
from tasks.errors import LakeLocked

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another run"
    who = f"pid {doc.get('pid', '?')} on {doc.get('host', '?')}, since {doc.get('since', '?')}"
    return f"run {doc.get('run') or '?'} ({who})"


@contextmanager
def data_dir_lock(data_dir: Path, wait_seconds: float = 0.0, run: str = "") -> Iterator[None]:
    """Hold the data directory's lock for the block; wait up to `wait_seconds` for it, then raise LakeLocked."""
    data_dir = open_data_dir(data_dir)  # never a `.lock` in a folder that is not a lake (another program's)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LakeLocked(
                        str(data_dir), f"{_holder(path)} is using it; wait for it to finish or cancel it"
                    ) from None
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.05)))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run": run,
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
