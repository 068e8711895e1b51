"""Which directories this tool may use as a data dir: empty ones, and lakes it made.

A data dir is marked when it is first used (`.binance-lake`, a small JSON file), so that a
typo such as `--data-dir /` or `--data-dir ~` is refused at once instead of being filled
with lake folders, or swept for temporary files, or given a `.lock` over somebody's own.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from tasks.atomic import OWN_FOLDERS, SWAP_DIR, is_temporary, write_bytes_atomic
from tasks.errors import DataDirRefused

MARKER_NAME = ".binance-lake"
MARKER_VERSION = 1
#: What a data dir of this tool holds at its top level, besides `OWN_FOLDERS`.
_OWN_ENTRIES = frozenset({MARKER_NAME, ".lock", ".prefect-cache", SWAP_DIR, ".run", *OWN_FOLDERS})


def is_lake(path: Path) -> bool:
    """True when `path` carries this tool's marker."""
    return (path / MARKER_NAME).is_file()


def _looks_like_unmarked_lake(path: Path, names: list[str]) -> bool:
    """A lake written before data dirs were marked: only this tool's entries, lake or archive among them."""
    own = all(n in _OWN_ENTRIES or is_temporary(n) or n.startswith(".worker-check-") for n in names)
    return own and any((path / n).is_dir() for n in ("lake", "archive", "staging"))


def check_data_dir(path: Path) -> Path:
    """The resolved data dir if this tool may use it, without changing anything; else DataDirRefused.

    Accepted: a folder that does not exist yet (its parent must be a writable folder), an
    empty folder, or a folder marked as a lake (or holding only a lake of an earlier version).
    """
    resolved = path.expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise DataDirRefused(str(path), "exists and is not a directory")
    if not resolved.exists():
        parent = next((p for p in resolved.parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise DataDirRefused(str(path), f"{parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DataDirRefused(str(path), f"cannot create it: {parent} is not writable")
        return resolved
    if not os.access(resolved, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirRefused(str(path), "not readable and writable by this user")
    if is_lake(resolved):
        return resolved
    names = sorted(os.listdir(resolved))
    if not names or _looks_like_unmarked_lake(resolved, names):
        return resolved
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise DataDirRefused(
        str(path),
        f"not empty ({shown}) and not a binance-lake data dir (no {MARKER_NAME} in it); choose a new or empty "
        "folder",
    )


def open_data_dir(path: Path) -> Path:
    """Check `path` as `check_data_dir` does, create it if needed and mark it; returns it resolved."""
    resolved = check_data_dir(path)
    resolved.mkdir(parents=True, exist_ok=True)
    if not is_lake(resolved):
        doc = {"tool": "binance-lake", "version": MARKER_VERSION,
               "created": datetime.now(UTC).isoformat(timespec="seconds")}
        write_bytes_atomic(resolved / MARKER_NAME, json.dumps(doc).encode() + b"\n")
    return resolved
