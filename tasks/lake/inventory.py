"""What the lake holds, read from file names and Parquet footers only (cheap)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tasks.schema import SOURCE_METADATA_KEY
from tasks.source.archive_spec import ArchiveSpec, lake_symbol_dir, staging_symbol_dir

_FILE_NAME = re.compile(r"\A([0-9]{4}-[0-9]{2}-[0-9]{2})_([0-9]{4}-[0-9]{2}-[0-9]{2})\.parquet\Z")


@dataclass(frozen=True)
class SourceRef:
    """One archive that a lake file was built from."""

    archive: str
    sha256: str
    granularity: str
    first_day: date
    last_day: date
    rows: int
    #: Parquet bytes this source accounts for: its own file's size when it was converted. Summed
    #: over sources it sizes a file for compaction, stable across rewrites (so packing is idempotent).
    bytes: int = 0


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


def range_of(name: str) -> tuple[date, date] | None:
    """The days a `<first>_<last>.parquet` name covers (lake, staging and feature files alike),
    or None for any other name (or impossible dates)."""
    m = _FILE_NAME.match(name)
    if m is None:
        return None
    try:
        first, last = date.fromisoformat(m[1]), date.fromisoformat(m[2])
    except ValueError:
        return None
    return (first, last) if first <= last else None


def range_files(folder: Path) -> list[Path]:
    """Committed `<first>_<last>.parquet` files of a folder (temporary files are dot-prefixed and skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and range_of(p.name) is not None)


def lake_files(data_dir: Path, market: str, symbol: str, dataset: str = "trades") -> list[Path]:
    """Committed lake files of a symbol (of one dataset: `tasks.datasets`)."""
    return range_files(lake_symbol_dir(data_dir, market, symbol, dataset))


def inventory(paths: list[Path]) -> list[LakeEntry]:
    """Each `<first>_<last>.parquet` file with the sources recorded in its footer, sorted by first day."""
    entries = []
    for path in paths:
        days = range_of(path.name)
        assert days is not None
        first, last = days
        try:
            doc = read_sources(path) or {}
            docs = doc.get("sources", [])
            # Files written before sources recorded their bytes: share the file's size by rows.
            total_rows = sum(int(d["rows"]) for d in docs) or 1
            size = path.stat().st_size
            sources = tuple(source_ref(d, size * int(d["rows"]) // total_rows) for d in docs)
            problem = None if sources else "no source metadata"
        except Exception as exc:  # any unreadable footer makes the file untrusted, not the run fail
            sources, problem = (), f"unreadable footer: {exc}"
        entries.append(LakeEntry(path, first, last, sources, problem))
    return sorted(entries, key=lambda e: (e.first_day, e.last_day))


def source_ref(doc: dict[str, Any], default_bytes: int = 0) -> SourceRef:
    """A footer's source entry as a SourceRef (`default_bytes` when it does not record its size)."""
    return SourceRef(
        archive=doc["archive"],
        sha256=doc["sha256"],
        granularity=doc["granularity"],
        first_day=date.fromisoformat(doc["first_day"]),
        last_day=date.fromisoformat(doc["last_day"]),
        rows=int(doc["rows"]),
        bytes=int(doc.get("bytes", default_bytes)),
    )


def lake_inventory(data_dir: Path, market: str, symbol: str, dataset: str = "trades") -> list[LakeEntry]:
    """Every committed lake file of a symbol with its sources, sorted by first day."""
    return inventory(lake_files(data_dir, market, symbol, dataset))


def staged_inventory(data_dir: Path, market: str, symbol: str, dataset: str = "trades") -> list[LakeEntry]:
    """Converted archives of a symbol waiting in staging to be merged into the lake."""
    return inventory(range_files(staging_symbol_dir(data_dir, market, symbol, dataset)))


def _source_doc(path: Path, spec: ArchiveSpec, sha256: str) -> dict[str, Any] | None:
    try:
        doc = read_sources(path) or {}
    except Exception:
        return None
    for s in doc.get("sources", []):
        if s.get("archive") == spec.key and s.get("sha256") == sha256:
            return dict(s)
    return None


def lake_source(spec: ArchiveSpec, sha256: str, data_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The lake file holding this archive's rows, converted from exactly this sha256, and its source entry.

    Only the files whose day range (read from their names) covers the archive are opened.
    """
    for path in lake_files(data_dir, spec.market, spec.symbol, spec.dataset):
        days = range_of(path.name)
        assert days is not None
        if days[0] <= spec.first_day and spec.last_day <= days[1]:
            doc = _source_doc(path, spec, sha256)
            if doc is not None:
                return path, doc
    return None


def lake_sources(
    data_dir: Path, market: str, symbol: str, dataset: str = "trades"
) -> dict[tuple[str, str], SourceRef]:
    """Every (archive, sha256) the symbol's lake files hold, read once from their footers."""
    return {(s.archive, s.sha256): s for e in lake_inventory(data_dir, market, symbol, dataset) for s in e.sources}


def staging_holds(spec: ArchiveSpec, sha256: str, data_dir: Path) -> bool:
    """True when the archive's staged file exists and was converted from exactly this sha256."""
    path = spec.staging_file(data_dir)
    return path.is_file() and _source_doc(path, spec, sha256) is not None


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

