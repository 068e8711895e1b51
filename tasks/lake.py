"""What the lake holds, read from file names and Parquet footers only (cheap)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tasks.archive_spec import ArchiveSpec, lake_symbol_dir
from tasks.schema import SOURCE_METADATA_KEY

_FILE_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})\.parquet$")


@dataclass(frozen=True)
class SourceRef:
    """One archive that a lake file was built from."""

    archive: str
    sha256: str
    granularity: str
    first_day: date
    last_day: date
    rows: int


@dataclass(frozen=True)
class LakeEntry:
    """One committed lake file and the archives it came from."""

    path: Path
    first_day: date
    last_day: date
    sources: tuple[SourceRef, ...]
    problem: str | None = None  # unreadable footer or metadata: the file holds nothing we trust


def read_sources(path: Path) -> dict[str, Any] | None:
    """The source document stored in a lake file's footer, or None if absent."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(SOURCE_METADATA_KEY)
    if raw is None:
        return None
    doc = json.loads(raw)
    return doc if isinstance(doc, dict) else None


def lake_files(data_dir: Path, market: str, symbol: str) -> list[Path]:
    """Committed lake files of a symbol (temporary files are dot-prefixed and skipped)."""
    folder = lake_symbol_dir(data_dir, market, symbol)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _FILE_NAME.match(p.name))


def lake_inventory(data_dir: Path, market: str, symbol: str) -> list[LakeEntry]:
    """Every committed lake file of a symbol with its sources, sorted by first day."""
    entries = []
    for path in lake_files(data_dir, market, symbol):
        m = _FILE_NAME.match(path.name)
        assert m is not None
        first, last = date.fromisoformat(m[1]), date.fromisoformat(m[2])
        try:
            doc = read_sources(path) or {}
            sources = tuple(
                SourceRef(
                    archive=s["archive"],
                    sha256=s["sha256"],
                    granularity=s["granularity"],
                    first_day=date.fromisoformat(s["first_day"]),
                    last_day=date.fromisoformat(s["last_day"]),
                    rows=int(s["rows"]),
                )
                for s in doc.get("sources", [])
            )
            problem = None if sources else "no source metadata"
        except Exception as exc:  # any unreadable footer makes the file untrusted, not the run fail
            sources, problem = (), f"unreadable footer: {exc}"
        entries.append(LakeEntry(path, first, last, sources, problem))
    return entries


def lake_holds(spec: ArchiveSpec, sha256: str, data_dir: Path) -> bool:
    """True when the archive's own lake file exists and was built from exactly this sha256."""
    path = spec.lake_file(data_dir)
    if not path.is_file():
        return False
    try:
        doc = read_sources(path) or {}
    except Exception:
        return False
    return any(s.get("archive") == spec.key and s.get("sha256") == sha256 for s in doc.get("sources", []))


def coverage(entries: list[LakeEntry]) -> dict[date, SourceRef]:
    """Which archive each day of the lake came from."""
    days: dict[date, SourceRef] = {}
    for entry in entries:
        for src in entry.sources:
            d = src.first_day
            while d <= src.last_day:
                days[d] = src
                d = date.fromordinal(d.toordinal() + 1)
    return days
