"""Stale temporaries: whose writer is gone, including a killed writer left as a zombie."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.atomic import TMP_MARK, remove_stale_temporaries


def test_temporary_of_a_zombie_writer_is_stale_and_a_live_one_is_kept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while True:  # exited but not reaped: a zombie, as a killed worker under an init that does not reap
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        dead = tmp_path / f".a.parquet{TMP_MARK}{child.pid}-deadbeef"
        live = tmp_path / f".b.parquet{TMP_MARK}{os.getpid()}-deadbeef"
        dead.write_bytes(b"x")
        live.write_bytes(b"x")
        assert remove_stale_temporaries(tmp_path) == 1
        assert not dead.exists() and live.exists()
        # Under the data dir's lock no other run writes: every temporary is stale.
        assert remove_stale_temporaries(tmp_path, check_owner=False) == 1 and not live.exists()
    finally:
        child.wait()
