"""Run one pipeline step in this process and SIGKILL it at its N-th file operation (kill matrix).

    KILL_AT=N python -m tests.kill_driver STEP DATA_DIR[:DATA_DIR...] [ARG ...]

An audit hook counts the renames, links, unlinks, rmdirs and directory exchanges under
DATA_DIR (and the relative ones of `shutil.rmtree`, which works by directory descriptor);
just before the N-th one the process sends itself SIGKILL: a real kill, at a real file
operation, with nothing flushed or cleaned up. KILL_AT=0 runs to the end and prints the
number of operations counted, so a test learns the matrix's size (several data dirs, one
after the other, are for re-runs: one process instead of one each). Every step first does
what a run does under the data dir's lock: finish or undo left swaps, sweep temporaries.
KILL_NO_EXCHANGE=1 runs as on a filesystem without the atomic directory exchange.
KILL_DATASET=aggTrades (or klines-1m, ...) merges that dataset's lake instead of trades.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import date
from pathlib import Path
from typing import Any

_EVENTS = {"os.rename", "os.remove", "os.link", "os.rmdir", "binance_lake.exchange"}


def _install(data_dir: str, kill_at: int) -> list[int]:
    count = [0]
    root = os.path.realpath(data_dir)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _EVENTS:
            return
        first = args[0]
        relative_by_fd = event in ("os.remove", "os.rmdir") and len(args) > 1 and args[1] is not None
        if not relative_by_fd:
            path = os.fsdecode(first) if isinstance(first, bytes | str | os.PathLike) else ""
            if not os.path.realpath(path).startswith(root):
                return
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    return count


def main() -> None:
    step, data_dirs, *rest = sys.argv[1:]
    dirs = data_dirs.split(os.pathsep)
    kill_at = int(os.environ.get("KILL_AT", "0"))
    from tasks.atomic import remove_stale_temporaries
    from tasks.lake.compact import compact_symbol, recover_lake
    from tasks.settings import ConvertOptions

    options = ConvertOptions(row_group_rows=1000)
    if os.environ.get("KILL_NO_EXCHANGE"):  # a filesystem without renameat2(RENAME_EXCHANGE), as NFS
        import errno

        import tasks.atomic

        def no_exchange(a: Path, b: Path) -> None:
            raise OSError(errno.EINVAL, "Invalid argument", str(a))

        tasks.atomic._exchange = no_exchange  # type: ignore[assignment]
    count = _install(dirs[0], kill_at)  # KILL_AT=0: counts, never kills
    for data_dir in dirs:
        data = Path(data_dir)
        recover_lake(data)
        remove_stale_temporaries(data, check_owner=False)
        if step == "download":
            from tasks.source.archive_spec import ArchiveSpec
            from tasks.source.download import download_archive
            from tasks.source.http import HttpOptions

            base_url, day, sha = rest
            spec = ArchiveSpec("spot", "BTCUSDT", "daily", date.fromisoformat(day))
            asyncio.run(download_archive(spec, sha, base_url, data, HttpOptions(5.0, 5.0, 0, 0.0)))
        elif step == "convert":
            from tasks.lake.ingest import ingest_archive
            from tasks.source.archive_spec import ArchiveSpec

            day, sha = rest
            ingest_archive(ArchiveSpec("spot", "BTCUSDT", "daily", date.fromisoformat(day)), sha, data, options)
        elif step == "merge":
            (target,) = rest
            compact_symbol(data, "spot", "BTCUSDT", int(target), options, consolidate=False,
                           dataset_id=os.environ.get("KILL_DATASET", "trades"))
        elif step == "features":
            from tasks.features.incremental import compute_feature, parse_feature

            (spec_text,) = rest
            compute_feature(data, "spot", "BTCUSDT", parse_feature(spec_text), batch_rows=700)
        else:
            raise SystemExit(f"unknown step {step!r}")
    print(json.dumps({"operations": count[0]}))


if __name__ == "__main__":
    main()
