"""Delete downloaded archives whose rows the lake holds, verified; off unless asked for.

The downloads are the lake's backup: an archive goes only when a lake file records it
with the same sha256 as the archive's stored `.CHECKSUM`, and that file validates with
the rows its footer promises. Anything else (staged, refused, or converted from another
checksum) stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from tasks.errors import LakeValidationError
from tasks.lake.inventory import lake_source, read_sources
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.source.archive_spec import ArchiveSpec, Granularity, Market, parse_archive_name, symbol_prefix
from tasks.source.download import local_archives, stored_checksum


@dataclass(frozen=True)
class CleanupResult:
    """What cleanup removed for one symbol, and what it kept and why."""

    market: str
    symbol: str
    removed: tuple[str, ...]
    bytes_freed: int
    kept: tuple[tuple[str, str], ...]  # (archive, reason)


def cleanup_symbol(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, dataset: str = "trades"
) -> CleanupResult:
    """Delete the ZIP and `.CHECKSUM` of every downloaded archive of the symbol within [start, end]
    whose rows are verified in the lake."""
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    freed = 0
    validated: dict[Path, bool] = {}
    granularities: tuple[Granularity, ...] = ("daily", "monthly")
    for granularity in granularities:
        for zip_path in local_archives(data_dir, symbol_prefix(market, granularity, symbol, dataset)):
            spec = parse_archive_name(market, granularity, zip_path.name, dataset)
            if spec is None or spec.symbol != symbol or spec.last_day < start or spec.first_day > end:
                continue
            reason = _why_keep(spec, data_dir, validated)
            if reason:
                kept.append((spec.key, reason))
                continue
            checksum = zip_path.with_name(zip_path.name + ".CHECKSUM")
            freed += zip_path.stat().st_size + checksum.stat().st_size
            # The checksum goes first: an archive without it is not "verified" (download.py).
            checksum.unlink()
            zip_path.unlink()
            removed.append(spec.key)
    return CleanupResult(market, symbol, tuple(removed), freed, tuple(kept))


def _why_keep(spec: ArchiveSpec, data_dir: Path, validated: dict[Path, bool]) -> str:
    sha = stored_checksum(spec, data_dir)
    if sha is None:
        return "no stored checksum"
    held = lake_source(spec, sha, data_dir)
    if held is None:
        return "not in the lake from this checksum"
    path, _ = held
    if path not in validated:
        try:
            validate_parquet_file(path, ExpectedFile(rows=_rows(path), dataset=spec.dataset))
            validated[path] = True
        except LakeValidationError:
            validated[path] = False
    return "" if validated[path] else f"its lake file {path.name} does not validate"


def _rows(path: Path) -> int:
    return sum(int(s["rows"]) for s in (read_sources(path) or {}).get("sources", []))
