"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder.

Temporary names start with a dot, which pyarrow datasets, Dask, DuckDB globs on
`*.parquet` and Polars all skip, so a reader never sees a partial file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import LakeValidationError

TMP_MARK = ".tmp-"
#: Journal of an interrupted multi-file swap, per folder (dot-prefixed: readers skip it).
JOURNAL_NAME = ".compact-journal.json"


def temp_path_for(final: Path) -> Path:
    """A unique hidden temporary path beside `final` (same filesystem, so rename is atomic)."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """fsync `tmp`, rename it over `final`, fsync the folder."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        commit(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write `data` to `final` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(root: Path, check_owner: bool = True) -> int:
    """Delete temporary files left under `root` by killed runs; returns how many.

    With `check_owner`, only files whose writer process is gone are removed, so a
    concurrent writer's in-progress files are left alone. A run holding the data dir's
    lock passes False: no other run can be writing, and a pid in a name may have been
    reused, or belong to a zombie that no init reaps (both seen in containers).
    """
    removed = 0
    if not root.exists():
        return 0
    for path in root.rglob(f".*{TMP_MARK}*"):
        pid_part = path.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if check_owner and pid_part.isdigit() and _pid_alive(int(pid_part)):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, never reaped) answers signals but writes nothing any more
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def journalled_swap(folder: Path, written: list[tuple[Path, Path]], remove: list[Path]) -> None:
    """Replace several files of `folder` as one step that a crash cannot leave half done.

    `written` are (hidden temporary, final) pairs already complete; `remove` the files the
    new ones supersede. The temporaries are fsynced, a journal naming the moves and the
    removals is committed, then the moves and removals are carried out by `recover_swap`.
    Killed before the journal: nothing changed (the temporaries are stale). Killed after:
    the next `recover_swap` of the folder finishes the job.
    """
    for tmp, _ in written:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    finals = {final for _, final in written}
    doc = {
        "moves": [{"tmp": tmp.name, "final": final.name} for tmp, final in written],
        "remove": sorted(str(p) for p in remove if p not in finals),
    }
    write_bytes_atomic(folder / JOURNAL_NAME, json.dumps(doc, indent=1).encode())
    recover_swap(folder)


def recover_swap(folder: Path) -> bool:
    """Carry out the folder's journalled swap, if one is pending; True if there was one."""
    journal = folder / JOURNAL_NAME
    if not journal.is_file():
        return False
    doc = json.loads(journal.read_text())
    for move in doc["moves"]:
        tmp, final = folder / move["tmp"], folder / move["final"]
        if tmp.exists():
            os.replace(tmp, final)
        elif not final.exists():
            raise LakeValidationError(str(journal), f"{move['tmp']} and {move['final']} are both gone; cannot recover")
    for name in doc["remove"]:
        Path(name).unlink(missing_ok=True)
    fsync_dir(folder)
    journal.unlink()
    fsync_dir(folder)
    return True
