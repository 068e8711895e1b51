"""Ingest one verified archive into the lake, and validate a symbol's lake files.

Plain functions; `tasks.prefect_tasks` wraps them with caching and logging.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tasks.convert.archive import convert_archive
from tasks.datasets import dataset
from tasks.errors import ChecksumMismatch, LakeValidationError, NotDownloaded, PipelineError, TradeIdCollision
from tasks.lake.inventory import LakeEntry, lake_inventory, lake_source, staging_holds
from tasks.lake.validate import ExpectedFile, FileReport, VerifiedFile, continuity_gaps, validate_parquet_file
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Market
from tasks.source.refusals import ARCHIVE_CONTENT_KINDS, note_content_refusal


@dataclass(frozen=True)
class IngestResult:
    """One archive's lake file, freshly written or found already verified (`reused`)."""

    spec: ArchiveSpec
    sha256: str
    lake_path: Path
    rows: int
    duplicates_dropped: int
    id_gaps: int
    missing_ids: int
    lake_bytes: int
    seconds: float
    reused: bool = False


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def ingest_archive(spec: ArchiveSpec, sha256: str, data_dir: Path, options: ConvertOptions) -> IngestResult:
    """Make the archive whose published sha256 is `sha256` ready for the lake.

    If a lake file already holds it (from this very sha256), nothing is done. If its staged
    file (`ArchiveSpec.staging_file`, waiting for the merge step) comes from it and still
    validates, it is kept. Otherwise the local archive is hashed again (it must still be
    the published one), converted, validated and committed atomically into staging; on
    any error the lake and staging are left as they were.
    """
    started = time.perf_counter()
    held = lake_source(spec, sha256, data_dir)
    if held is not None:
        path, doc = held
        return IngestResult(
            spec, sha256, path, int(doc["rows"]), int(doc.get("duplicates_dropped", 0)), 0, 0,
            int(doc.get("bytes", 0)), time.perf_counter() - started, reused=True,
        )
    out = spec.staging_file(data_dir)
    if staging_holds(spec, sha256, data_dir):
        try:
            report = validate_parquet_file(out, _expected_for(spec, None, spec.dataset))
        except LakeValidationError:
            pass  # rebuild it from the archive below
        else:
            return IngestResult(
                spec, sha256, out, report.rows, _dropped(report), report.id_gaps.count, report.id_gaps.missing_ids,
                out.stat().st_size, time.perf_counter() - started, reused=True,
            )
    refused = merge_refusal(spec, sha256, data_dir)
    if refused is not None:
        raise refused
    zip_path = spec.local_zip(data_dir)
    if not zip_path.is_file():
        raise NotDownloaded(str(zip_path), "the archive is not on disk; run the download step")
    actual = sha256_of(zip_path)
    if actual != sha256:
        raise ChecksumMismatch(str(zip_path), f"sha256 {actual} on disk, published {sha256}")
    try:
        res = convert_archive(zip_path, spec, sha256, out, options)
    except PipelineError as exc:
        if exc.kind in ARCHIVE_CONTENT_KINDS:
            # The published bytes themselves are refused: noted, so that a later run refusing the
            # same bytes (same checksum) reports a known refusal (tasks.source.refusals).
            note_content_refusal(spec, sha256, data_dir, exc.kind, str(exc))
        raise
    return IngestResult(
        spec, sha256, out, res.rows, res.duplicates_dropped, res.id_gaps.count, res.id_gaps.missing_ids, res.bytes,
        time.perf_counter() - started,
    )


def merge_refusal(spec: ArchiveSpec, sha256: str, data_dir: Path) -> TradeIdCollision | None:
    """The refusal an earlier merge recorded for exactly this archive and sha256, if any.

    Such an archive (its trade ids collide with other days, `tasks.lake.compact.quarantine_staged`)
    is not converted again: each run would only refuse it again, after the cost of a conversion.
    """
    record = spec.quarantine_note(data_dir)
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != "lake conflict" or doc.get("sha256") != sha256:
        return None
    return TradeIdCollision(
        spec.key, f"quarantined by an earlier merge: {doc.get('reason')}; it lands when Binance re-publishes it "
        f"(a new checksum), or delete {record} to try again",
    )


def _dropped(report: FileReport) -> int:
    sources = (report.source_metadata or {}).get("sources", [])
    return sum(int(s.get("duplicates_dropped", 0)) for s in sources)


def _expected_for(spec: ArchiveSpec | None, entry: LakeEntry | None, dataset_id: str = "trades") -> ExpectedFile:
    """What a lake file must satisfy: rows from its own source metadata, times inside its days."""
    if entry is not None:
        first, last = entry.first_day, entry.last_day
        rows = sum(s.rows for s in entry.sources) if entry.sources else None
    else:
        assert spec is not None
        first, last, rows = spec.first_day, spec.last_day, None
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return ExpectedFile(rows=rows, start=start, end=end, dataset=dataset_id)


@dataclass(frozen=True)
class SymbolGap:
    """A trade-id gap inside a file or between adjacent files."""

    where: str
    after_id: int
    before_id: int
    missing_ids: int


@dataclass(frozen=True)
class SymbolValidation:
    """The validation of one symbol's lake files over a range of days."""

    market: Market
    symbol: str
    files: int
    rows: int
    gaps: tuple[SymbolGap, ...]
    errors: tuple[str, ...]
    unlisted_gaps: int = 0
    verified_at_write: int = 0  # files whose report came from this run's merge (not read again)
    failed_files: tuple[Path, ...] = ()  # lake files that failed validation (for tasks.lake.repair)
    dataset: str = "trades"


def validate_symbol(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, verified: Sequence[VerifiedFile] = (),
    dataset_id: str = "trades",
) -> SymbolValidation:
    """Validate the lake files of a symbol overlapping [start, end], and their neighbours' continuity.

    Each file is read in full (row group by row group): schema, rows against its source
    metadata, time bounds, ids strictly increasing. Id gaps inside and between adjacent
    files are reported; they are real in Binance data (binance-public-data#363) and are
    not errors. Files whose ranges overlap are errors. A file in `verified` (written and
    validated in full by this run's merge) that is unchanged since is not read again.
    For klines the "ids" are open times and a gap is missing intervals; for aggTrades the
    trade ids their rows leave out (a break of the first/last trade id chain) are gaps too.
    """
    data = dataset(dataset_id)
    entries = lake_inventory(data_dir, market, symbol, dataset_id)
    chosen = [e for e in entries if e.last_day >= start and e.first_day <= end]
    # One neighbour on each side, so continuity across the range's borders is checked too.
    before = [e for e in entries if e.last_day < start]
    after = [e for e in entries if e.first_day > end]
    chosen = before[-1:] + chosen + after[:1]
    errors: list[str] = []
    reports: list[FileReport] = []
    gaps: list[SymbolGap] = []
    unlisted = 0  # gaps beyond the per-file listing cap: counted, not itemised
    reused = 0
    failed: list[Path] = []
    for entry in chosen:
        if entry.problem:
            errors.append(f"{entry.path}: {entry.problem}")
            failed.append(entry.path)
            continue
        known = next((v for v in verified if v.still_matches(entry.path)), None)
        try:
            rep = known.report if known is not None else validate_parquet_file(
                entry.path, _expected_for(None, entry, dataset_id))
            reused += known is not None
        except PipelineError as exc:
            errors.append(str(exc))
            failed.append(entry.path)
            continue
        reports.append(rep)
        step = data.step_us or 1
        gaps.extend(SymbolGap(entry.path.name, a, b, (b - a) // step - 1) for a, b in rep.id_gaps.listed)
        unlisted += rep.id_gaps.count - len(rep.id_gaps.listed)
        gaps.extend(SymbolGap(f"{entry.path.name} (trade ids no aggTrade covers)", a, b, b - a - 1)
                    for a, b in rep.chain_gaps.listed)
        if rep.chain_overlaps:
            errors.append(f"{entry.path}: {rep.chain_overlaps} aggTrades cover trade ids of the row before them")
    for g in continuity_gaps(reports):
        where = f"{g.prev_path.name} -> {g.next_path.name}"
        if g.overlap:
            errors.append(f"{where}: {data.key} values overlap between adjacent files "
                          f"({g.prev_last_id} >= {g.next_first_id})")
        elif data.continuity == "ids":
            gaps.append(SymbolGap(where, g.prev_last_id, g.next_first_id, g.size))
        elif data.step_us and g.next_first_id - g.prev_last_id > data.step_us:
            gaps.append(SymbolGap(where, g.prev_last_id, g.next_first_id,
                                  (g.next_first_id - g.prev_last_id) // data.step_us - 1))
    return SymbolValidation(
        market, symbol, len(reports), sum(r.rows for r in reports), tuple(gaps), tuple(errors), unlisted, reused,
        tuple(failed), dataset_id,
    )
