"""Atomic writes: one file (temporary, fsync, rename) and a folder's whole set of files.

Temporary names start with a dot, which pyarrow datasets, Dask, DuckDB globs on
`*.parquet` and Polars all skip, so a reader never sees a partial file.

A folder's set of files (a symbol's lake files, a feature's parts) is replaced by
`swap_folder`: the next set is built in a work folder under `<data_dir>/.swap/` (hard links
of the files that stay, the new files moved in), then exchanged with the live folder in
one `renameat2(RENAME_EXCHANGE)`. A reader listing the folder sees the whole old set or the
whole new set, never both and never neither, also after a kill at any point; the superseded
set is then deleted from the work folder, out of the readers' paths. Work folders name their
target relative to the data dir, so a data dir can be moved or copied at any time, and
`recover_swaps` never touches a path outside it. See the README ("Consistency for readers")
for why this mechanism, and `benchmarks/bench_swap.py` for its cost.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import LakeValidationError

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
#: Exactly the names `temp_path_for` makes: `.<final name>.tmp-<pid>-<8 hex>`; nothing else is swept.
_TEMP_RE = re.compile(r"\A\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}\Z")
#: Where swaps build the next set of a folder, under the data dir (outside every reader's path).
SWAP_DIR = ".swap"
_SWAP_DOC = "swap.json"
_SWAP_SET = "set"
_SWAP_READY = "ready"
#: Journal of the per-file swap used before the folder exchange; still finished if found.
LEGACY_JOURNAL_NAME = ".compact-journal.json"
#: The folders of a data dir that this tool writes; the start-of-run sweep looks nowhere else.
OWN_FOLDERS = ("lake", "staging", "archive", "quarantine", "features", "reports", ".prefect-server")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def temp_path_for(final: Path) -> Path:
    """A unique hidden temporary path beside `final` (same filesystem, so rename is atomic)."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(name: str) -> bool:
    """True for a name made by `temp_path_for`."""
    return _TEMP_RE.match(name) is not None


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def commit(tmp: Path, final: Path) -> None:
    """fsync `tmp`, rename it over `final`, fsync the folder."""
    fsync_file(tmp)
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


def remove_stale_temporaries(data_dir: Path, check_owner: bool = True) -> int:
    """Delete the temporary files that killed runs left in this tool's folders; returns how many.

    Only names made by `temp_path_for`, only in the data dir itself and under `OWN_FOLDERS`:
    files of other programs, even with a similar name, are never touched. With `check_owner`,
    only files whose writer process is gone are removed, so a concurrent writer's files stay.
    A run holding the data dir's lock passes False: no other run can be writing, and a pid in
    a name may have been reused, or belong to a zombie that no init reaps (both seen in containers).
    """
    removed = 0
    candidates: list[Path] = []
    if data_dir.is_dir():
        candidates.extend(p for p in data_dir.iterdir() if p.is_file())
    for name in OWN_FOLDERS:
        root = data_dir / name
        if root.is_dir() and not root.is_symlink():
            candidates.extend(p for p in root.rglob(f".*{TMP_MARK}*") if p.is_file() and not p.is_symlink())
    for path in candidates:
        m = _TEMP_RE.match(path.name)
        if m is None:
            continue
        if check_owner and _pid_alive(int(m["pid"])):
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


# -- a folder's set of files, swapped in one step ------------------------------------------


@dataclass(frozen=True)
class SwapOutcome:
    """What a folder swap left behind: superseded files it could not delete (not visible to readers)."""

    leftover: str | None = None


_libc: ctypes.CDLL | None = None


def _exchange(a: Path, b: Path) -> None:
    """Atomically exchange two directories (Linux `renameat2(RENAME_EXCHANGE)`, ext4/xfs/btrfs/tmpfs)."""
    global _libc
    sys.audit("binance_lake.exchange", str(a), str(b))  # lets the kill tests stop a real process here
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _rel(data_dir: Path, path: Path) -> str:
    rel = os.path.relpath(path, data_dir)
    if rel.startswith("..") or os.path.isabs(rel):
        raise LakeValidationError(str(path), f"not inside the data dir {data_dir}; refused")
    return rel


def swap_folder(
    data_dir: Path, folder: Path, written: Iterable[tuple[Path, Path]], remove: Iterable[Path]
) -> SwapOutcome:
    """Replace files of `folder` as one step that readers and a crash see as all or nothing.

    `written` are (complete hidden temporary in `folder`, final path in `folder`) pairs;
    `remove` are files of `folder` the new set no longer holds. Every other regular file of
    the folder stays (hard-linked into the next set, so no data is copied). Steps:

    1. a work folder `<data_dir>/.swap/<token>/` is made;
    2. the next set is built in it (`set/`): links of the files that stay, the temporaries
       moved in, all fsynced;
    3. `set/` and `folder` are exchanged in one rename: the commit point;
    4. the work folder, now holding the superseded set, is deleted.

    Killed before 3, the live folder is untouched and `recover_swaps` deletes the work folder;
    killed after, it deletes the superseded set. A folder's first set has nothing to exchange
    with: its work folder records the target (relative to the data dir) and, once the set is
    complete, a `ready` mark; recovery moves a ready set into place (so does a filesystem
    without the exchange, `_swap_in`). A superseded file that cannot be deleted (immutable,
    permissions) stays in the work folder, out of readers' paths, and is named in the
    outcome; the next run tries again.
    """
    written = list(written)
    removed = {p.name for p in remove}
    for tmp, final in written:
        if tmp.parent != folder or final.parent != folder:
            raise LakeValidationError(str(final), f"swap of {folder} given a file of another folder; refused")
    work = data_dir / SWAP_DIR / f"{os.getpid()}-{secrets.token_hex(8)}"
    work.mkdir(parents=True)
    new_set = work / _SWAP_SET
    first = not folder.is_dir()
    try:
        if first:  # only a first write needs its target recorded: recovery may have to move it in
            write_bytes_atomic(work / _SWAP_DOC, json.dumps({"target": _rel(data_dir, folder)}).encode())
        new_set.mkdir()
        replaced = {final.name for _, final in written}
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                if entry.name in removed or entry.name in replaced or is_temporary(entry.name):
                    continue
                if entry.name == LEGACY_JOURNAL_NAME:
                    continue
                if entry.is_symlink() or not entry.is_file():
                    raise LakeValidationError(str(entry), "not a regular file in a folder this tool manages; "
                                              "move it elsewhere, then run again")
                _link_or_copy(entry, new_set / entry.name)
        for tmp, final in written:
            fsync_file(tmp)
            os.rename(tmp, new_set / final.name)
        fsync_dir(new_set)
        if first:
            write_bytes_atomic(work / _SWAP_READY, b"")
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(new_set, folder)
        else:
            _swap_in(data_dir, work, new_set, folder)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        _remove_tree(work)
        raise
    fsync_dir(folder.parent)
    return SwapOutcome(_remove_tree(work))


#: errno values of a filesystem without RENAME_EXCHANGE (NFS, older overlayfs, FUSE).
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_warned_no_exchange = False


def _swap_in(data_dir: Path, work: Path, new_set: Path, folder: Path) -> None:
    """Exchange `new_set` with `folder`; on a filesystem without the exchange, two renames.

    The fallback moves the live folder into the work folder, then the new set into place: a
    reader may find the folder missing for that instant (never both sets), and a kill between
    the two renames is finished by `recover_swaps` (the set is recorded and marked ready first).
    """
    global _warned_no_exchange
    try:
        _exchange(new_set, folder)
        return
    except OSError as exc:
        if exc.errno not in _NO_EXCHANGE:
            raise
    if not _warned_no_exchange:
        _warned_no_exchange = True
        log.warning("%s: this filesystem has no atomic directory exchange (renameat2 RENAME_EXCHANGE); swaps "
                    "use two renames, and a reader may briefly find a symbol's folder missing", folder)
    write_bytes_atomic(work / _SWAP_DOC, json.dumps({"target": _rel(data_dir, folder)}).encode())
    write_bytes_atomic(work / _SWAP_READY, b"")
    old = work / "old"
    os.rename(folder, old)
    try:
        os.rename(new_set, folder)
    except BaseException:
        os.rename(old, folder)  # the old set back in place: nothing changed
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        tmp = temp_path_for(dst)  # a filesystem without hard links: a full copy, then fsynced
        shutil.copy2(src, tmp)
        commit(tmp, dst)


def _remove_tree(work: Path) -> str | None:
    """Delete a work folder; on failure, a line naming what stayed (the run goes on)."""
    failed: list[str] = []

    def note(_func: object, path: str, info: tuple[type[BaseException], BaseException, object]) -> None:
        exc = info[1]
        failed.append(f"{path} ({getattr(exc, 'strerror', None) or exc})")

    shutil.rmtree(work, onerror=note)  # Python 3.11: `onexc` is 3.12
    if not failed:
        return None
    return f"could not delete superseded files, kept out of readers' paths in {work}: " + "; ".join(failed[:5])


def recover_swaps(data_dir: Path) -> tuple[int, list[str]]:
    """Finish or undo every folder swap a killed run left; (how many, problems left over).

    A work folder whose set is `ready` and whose target is missing (a first write killed at
    its rename) is moved into place; any other work folder holds either an uncommitted next
    set or a superseded one, and is deleted. Targets are read relative to `data_dir` and
    must stay inside it. Legacy per-file journals are finished within their own folder.
    """
    count, problems = 0, []
    root = data_dir / SWAP_DIR
    if root.is_dir() and not root.is_symlink():
        for work in sorted(root.iterdir()):
            count += 1
            target = _work_target(data_dir, work)
            new_set = work / _SWAP_SET
            if target is not None and (work / _SWAP_READY).is_file() and new_set.is_dir() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(new_set, target)
                fsync_dir(target.parent)
            left = _remove_tree(work) if work.is_dir() and not work.is_symlink() else _unlink(work)
            if left:
                problems.append(left)
    # Only the folders the per-file swap wrote (a symbol's lake files, a feature's parts): a walk
    # of the whole data dir would list every downloaded archive at every start.
    legacy = [*data_dir.glob(f"lake/*/market=*/symbol=*/{LEGACY_JOURNAL_NAME}"),
              *data_dir.glob(f"features/*/market=*/symbol=*/{LEGACY_JOURNAL_NAME}")]
    for journal in sorted(legacy):
        count += _recover_legacy_journal(journal.parent)
    return count, problems


def _unlink(path: Path) -> str | None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        return f"could not delete {path}: {exc.strerror}"
    return None


def _work_target(data_dir: Path, work: Path) -> Path | None:
    try:
        rel = json.loads((work / _SWAP_DOC).read_text())["target"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts or not rel:
        return None
    return data_dir / rel


def _recover_legacy_journal(folder: Path) -> int:
    """Finish a swap journalled by an earlier version, touching nothing outside `folder`.

    Those journals named removals by absolute path, which points into another directory once
    the data dir was moved or copied: only a removal's file name is used, and only in `folder`.
    Staged files it named are left to the merge, which drops those the lake already holds.
    """
    journal = folder / LEGACY_JOURNAL_NAME
    try:
        doc = json.loads(journal.read_text())
        moves, removals = list(doc["moves"]), [str(r) for r in doc["remove"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LakeValidationError(str(journal), f"unreadable swap journal ({exc}); not recovered") from None
    for move in moves:
        tmp, final = folder / Path(move["tmp"]).name, folder / Path(move["final"]).name
        if tmp.exists():
            os.replace(tmp, final)
        elif not final.exists():
            raise LakeValidationError(str(journal), f"{move['tmp']} and {move['final']} are both gone; cannot recover")
    kept = {Path(m["final"]).name for m in moves}
    for name in removals:
        parts = Path(name).parts
        # `.../lake/trades/market=<m>/symbol=<S>/<file>`: this folder, wherever the data dir was.
        if len(parts) >= 5 and tuple(parts[-5:-1]) == folder.parts[-4:] and parts[-1] not in kept:
            (folder / parts[-1]).unlink(missing_ok=True)
    fsync_dir(folder)
    journal.unlink()
    fsync_dir(folder)
    return 1
