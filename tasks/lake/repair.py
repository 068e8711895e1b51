"""Rebuild damaged lake files from the kept archives; name what cannot be rebuilt and what restores it.

A lake file fails validation when a byte of it changed (a page checksum or the decode of a
column fails), when it was cut short (its footer is gone), or when its rows disagree with
its footer. Such a file is rebuilt from the verified downloads it came from
(`<data_dir>/archive/data/...`, each with its `.CHECKSUM`):

- its sources are the archives its footer lists, with the sha256 each was converted from;
  when the footer is unreadable (a truncated file), the file's name gives its day range and
  the kept archives of the symbol whose days fall inside it are the sources (a monthly
  archive before the daily ones of its days: one source per day, #475);
- each source is hashed again against its stored checksum (a kept archive can rot too) and
  converted into staging as the convert step does (`tasks.convert.archive.convert_archive`);
- `compact_symbol(..., damaged=...)` then merges them by the normal path (every new file
  verified against its inputs, one folder swap): the damaged file is superseded, never read.

A file is rebuilt only when every archive its footer lists is at hand; otherwise it is left
as it is, and the record names what is lost and the re-download that restores it (a run
with the download step fetches those archives again: `restore_specs`, `intact_sources`).

The record, `<data_dir>/reports/repairs/market=<m>/symbol=<S>.json`, holds the files still
damaged (each with its size and mtime when found: once the file changes the entry no longer
applies) and how many files were rebuilt. The features step refuses a symbol with a damaged
file on record or an unreadable one (`refuse_damaged_lake`), so its bars are never replaced
by bars of fewer trades, and recomputes the bars when the repair count moved
(`repair_count`): bars computed from a damaged file are not extended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from tasks.atomic import write_bytes_atomic
from tasks.convert.archive import convert_archive
from tasks.errors import ChecksumMismatch, LakeValidationError, PipelineError, describe
from tasks.lake.compact import CompactionResult, compact_symbol
from tasks.lake.ingest import SymbolValidation, sha256_of, validate_symbol
from tasks.lake.inventory import LakeEntry, SourceRef, lake_files, lake_sources, range_of, read_sources, staging_holds
from tasks.lake.validate import ExpectedFile, VerifiedFile, validate_parquet_file
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Granularity, Market, parse_archive_name, symbol_prefix
from tasks.source.download import local_archives, stored_checksum, verified_download

#: Rebuilt files kept in the record's history (the count covers all of them).
_HISTORY = 50
_GRANULARITIES: tuple[Granularity, ...] = ("monthly", "daily")


@dataclass(frozen=True)
class Repaired:
    """A damaged lake file rebuilt from kept archives."""

    file: str
    reason: str  # why it failed validation
    archives: tuple[str, ...]  # the kept archives it was rebuilt from
    sources_from: str  # "footer", or "file name" when the footer was unreadable
    uncovered: str = ""  # footer unreadable: days of its range that no kept archive holds

    def line(self, market: str, symbol: str) -> str:
        """One line of the run summary."""
        text = f"repaired {market}/{symbol} {self.file} from {len(self.archives)} kept archive" + \
            ("s" if len(self.archives) != 1 else "")
        if self.sources_from == "file name":
            text += " (footer unreadable: the kept archives of its days)"
            if self.uncovered:
                text += (f"; no kept archive holds {self.uncovered}: if it held trades of those days, a run "
                         "with the download step over them fetches them again")
        return text + f"; it failed validation: {_short(self.reason)}"


@dataclass(frozen=True)
class Unrepaired:
    """A damaged lake file left as it is: what is lost, and what would restore it."""

    file: str
    reason: str  # why it failed validation
    why: str  # why it was not rebuilt
    missing: tuple[str, ...] = ()  # archives it held that are not kept (their re-download restores it)
    days: str = ""  # footer unreadable and no archive kept: the days it covered

    def line(self, market: str, symbol: str) -> str:
        """One line of the run summary."""
        text = f"NOT REPAIRED {market}/{symbol} {self.file}: {self.why}"
        if self.missing:
            text += (f"; lost until restored: the trades of {len(self.missing)} archive"
                     f"{'s' if len(self.missing) != 1 else ''}; restore: re-download of these archives: "
                     + ", ".join(self.missing) + " (a run with the download step fetches them, then repairs)")
        elif self.days:
            text += (f"; lost until restored: its trades of {self.days}; restore: re-download of the archives "
                     "of those days (a run with the download step over them fetches them, then repairs)")
        return text + f"; it failed validation: {_short(self.reason)}"


@dataclass(frozen=True)
class RepairResult:
    """What the repair of one symbol did."""

    market: str
    symbol: str
    repaired: tuple[Repaired, ...] = ()
    unrepaired: tuple[Unrepaired, ...] = ()
    compaction: CompactionResult | None = field(default=None, hash=False)

    def lines(self) -> list[str]:
        """The run summary's lines about this symbol's repairs."""
        out = [r.line(self.market, self.symbol) for r in self.repaired]
        if self.compaction is not None and self.repaired:
            out.append(f"  rebuilt as {', '.join(self.compaction.files_written) or 'nothing'} "
                       f"({self.compaction.rows_written:,} rows)")
        out.extend(u.line(self.market, self.symbol) for u in self.unrepaired)
        return out


@dataclass(frozen=True)
class _Source:
    spec: ArchiveSpec
    sha256: str


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def record_path(data_dir: Path, market: str, symbol: str) -> Path:
    """`<data_dir>/reports/repairs/market=<m>/symbol=<S>.json`: damaged files on record, repairs done."""
    return data_dir / "reports" / "repairs" / f"market={market}" / f"symbol={symbol}.json"


def _load_record(data_dir: Path, market: str, symbol: str) -> dict[str, Any]:
    try:
        doc = json.loads(record_path(data_dir, market, symbol).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _still_there(data_dir: Path, market: str, symbol: str, entry: dict[str, Any]) -> Path | None:
    """The lake file a record entry names, if it is still the same file (size and mtime)."""
    name = entry.get("file")
    if not isinstance(name, str) or range_of(name) is None:
        return None
    path = next((p for p in lake_files(data_dir, market, symbol) if p.name == name), None)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return path if (st.st_size, st.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns")) else None


def damage_on_record(data_dir: Path, market: str, symbol: str) -> list[tuple[Path, dict[str, Any]]]:
    """Damaged files found by an earlier validation that are still in the lake, unchanged."""
    out = []
    for entry in _load_record(data_dir, market, symbol).get("damaged", []):
        if isinstance(entry, dict) and (path := _still_there(data_dir, market, symbol, entry)) is not None:
            out.append((path, entry))
    return out


def repair_count(data_dir: Path, market: str, symbol: str) -> int:
    """How many lake files of the symbol were rebuilt so far (the features step recomputes when it moves)."""
    count = _load_record(data_dir, market, symbol).get("repairs", 0)
    return count if isinstance(count, int) else 0


def refuse_damaged_lake(data_dir: Path, market: str, symbol: str, entries: Sequence[LakeEntry]) -> None:
    """Raise LakeValidationError when a lake file of the symbol is unreadable or damaged on record.

    For the features step: computing from the readable files only would replace the bars
    with bars of fewer trades; they are kept as they are until the file is repaired.
    """
    for entry in entries:
        if entry.problem:
            raise LakeValidationError(str(entry.path), f"{entry.problem}; features not computed, their bars "
                                      "kept until the file is repaired (the validate step rebuilds it)")
    for path, doc in damage_on_record(data_dir, market, symbol):
        raise LakeValidationError(str(path), f"damaged ({_short(str(doc.get('reason', '')), 200)}); features "
                                  "not computed, their bars kept until the file is repaired")


def restore_specs(data_dir: Path, market: Market, symbol: str) -> list[ArchiveSpec]:
    """Archives that damaged files on record held and that are no longer kept: the download step fetches them."""
    out: list[ArchiveSpec] = []
    for _, entry in damage_on_record(data_dir, market, symbol):
        for doc in entry.get("sources", []):
            spec = _spec_of(market, symbol, doc)
            if spec is not None and spec not in out and not verified_download(spec, data_dir):
                out.append(spec)
    return out


def intact_sources(data_dir: Path, market: Market, symbol: str) -> dict[tuple[str, str], SourceRef]:
    """`lake_sources` without the archives of damaged files on record: the lake does not really hold those."""
    held = lake_sources(data_dir, market, symbol)
    for _, entry in damage_on_record(data_dir, market, symbol):
        for doc in entry.get("sources", []):
            held.pop((str(doc.get("archive")), str(doc.get("sha256"))), None)
    return held


def _spec_of(market: Market, symbol: str, doc: dict[str, Any]) -> ArchiveSpec | None:
    """The archive a footer's source entry names, if it is an archive of this symbol."""
    key, granularity = doc.get("archive"), doc.get("granularity")
    if not isinstance(key, str) or granularity not in _GRANULARITIES or not isinstance(doc.get("sha256"), str):
        return None
    spec = parse_archive_name(market, cast(Granularity, granularity), key.rsplit("/", 1)[-1])
    return spec if spec is not None and spec.key == key and spec.symbol == symbol else None


def _days_text(days: Sequence[date]) -> str:
    runs: list[list[date]] = []
    for d in sorted(days):
        if runs and d == runs[-1][-1] + timedelta(days=1):
            runs[-1].append(d)
        else:
            runs.append([d])
    shown = [str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs[:8]]
    return ", ".join(shown) + (" ..." if len(runs) > 8 else "")


def _sources_from_footer(market: Market, symbol: str, path: Path) -> list[dict[str, Any]] | None:
    """The footer's source entries, or None when the footer is unreadable or lists none."""
    try:
        doc = read_sources(path) or {}
    except Exception:  # any unreadable footer (truncated, garbled): the file name is all we have
        return None
    docs = doc.get("sources")
    if not isinstance(docs, list):
        return None
    return [d for d in docs if isinstance(d, dict)] or None


def _kept_in_range(data_dir: Path, market: Market, symbol: str, first: date, last: date
                   ) -> tuple[list[_Source], list[date]]:
    """Kept archives of the symbol whose days fall in [first, last] (one per day), and the days none holds."""
    chosen: list[_Source] = []
    covered: set[date] = set()
    for granularity in _GRANULARITIES:  # monthly first: a whole month is one source, as `auto` plans it
        for zip_path in local_archives(data_dir, symbol_prefix(market, granularity, symbol)):
            spec = parse_archive_name(market, granularity, zip_path.name)
            if spec is None or spec.symbol != symbol or spec.first_day < first or spec.last_day > last:
                continue
            days = set(spec.days())
            sha = stored_checksum(spec, data_dir)
            if sha is None or days & covered:
                continue
            chosen.append(_Source(spec, sha))
            covered |= days
    n = (last - first).days + 1
    uncovered = [first + timedelta(days=i) for i in range(n) if first + timedelta(days=i) not in covered]
    return sorted(chosen, key=lambda s: s.spec.first_day), uncovered


def _stage(source: _Source, data_dir: Path, options: ConvertOptions) -> bool:
    """Put the archive's converted rows in staging (reusing a valid staged copy); True when converted here."""
    spec, sha = source.spec, source.sha256
    out = spec.staging_file(data_dir)
    if staging_holds(spec, sha, data_dir):
        try:
            validate_parquet_file(out, ExpectedFile(start=spec.start, end=spec.end))
            return False
        except LakeValidationError:
            pass  # converted again below
    zip_path = spec.local_zip(data_dir)
    actual = sha256_of(zip_path)
    if actual != sha:
        raise ChecksumMismatch(str(zip_path), f"sha256 {actual} on disk, {sha} when it was verified: the kept "
                                              "archive is damaged too; re-download it")
    convert_archive(zip_path, spec, sha, out, options)
    return True


def _reason_of(path: Path, validation: SymbolValidation) -> str:
    prefix = f"{path}: "
    return next((e[len(prefix):] for e in validation.errors if e.startswith(prefix)), "failed validation")


def repair_symbol(
    data_dir: Path, market: Market, symbol: str, validation: SymbolValidation, target_bytes: int,
    options: ConvertOptions, start: date, end: date, verified: Sequence[VerifiedFile] = (),
) -> tuple[RepairResult, SymbolValidation]:
    """Rebuild the symbol's damaged lake files; returns what was done and the validation after it.

    The damaged files are those `validation` failed and those on record from an earlier run
    that are still unchanged in the lake. When a file was rebuilt, the symbol's files over
    [start, end] are validated again (the rebuilt ones were validated in full as they were
    written; `verified` are other files known good); otherwise `validation` is returned.
    The record is rewritten either way (see the module doc).
    """
    reasons = {p: _reason_of(p, validation) for p in validation.failed_files}
    for path, entry in damage_on_record(data_dir, market, symbol):
        reasons.setdefault(path, str(entry.get("reason", "failed an earlier validation")))
    repaired: list[Repaired] = []
    unrepaired: list[Unrepaired] = []
    plans: dict[Path, tuple[list[_Source], str, str]] = {}
    held_by: dict[Path, list[dict[str, Any]]] = {}
    for path in sorted(reasons):
        docs = _sources_from_footer(market, symbol, path)
        if docs is not None:
            held_by[path] = docs
            sources, missing = [], []
            for doc in docs:
                spec = _spec_of(market, symbol, doc)
                kept = verified_download(spec, data_dir) if spec is not None else None
                if spec is None or kept is None:
                    missing.append(spec.key if spec is not None else str(doc.get("archive")))
                else:
                    # A kept archive re-published since (another sha256) is its current verified
                    # version: the merge would swap it in anyway, so the rebuild takes it.
                    sources.append(_Source(spec, kept))
            if missing:
                kept = f"{len(missing)} of its {len(docs)} archives are" if len(docs) > 1 else "its archive is"
                unrepaired.append(Unrepaired(path.name, reasons[path], f"{kept} no longer kept (the cleanup step "
                                             "deletes archives the lake holds, or they were never downloaded here)",
                                             tuple(missing)))
                continue
            plans[path] = (sources, "footer", "")
        else:
            days = range_of(path.name)
            assert days is not None  # a lake file's name
            first, last = days
            sources, uncovered = _kept_in_range(data_dir, market, symbol, first, last)
            if not sources:
                unrepaired.append(Unrepaired(path.name, reasons[path], "its footer is unreadable and no kept "
                                             f"archive falls in {first}..{last}", days=f"{first}..{last}"))
                continue
            plans[path] = (sources, "file name", _days_text(uncovered))
    converted: dict[Path, list[Path]] = {}
    for path, (sources, _, _) in list(plans.items()):
        converted[path] = []
        try:
            for source in sources:
                if _stage(source, data_dir, options):
                    converted[path].append(source.spec.staging_file(data_dir))
        except PipelineError as exc:
            unrepaired.append(Unrepaired(path.name, reasons[path], f"rebuild refused: {describe(exc)}"))
            del plans[path]
    compaction: CompactionResult | None = None
    if plans:
        try:
            compaction = compact_symbol(data_dir, market, symbol, target_bytes, options, consolidate=False,
                                        damaged=frozenset(plans))
        except PipelineError as exc:
            for path in plans:
                unrepaired.append(Unrepaired(path.name, reasons[path], f"rebuild refused: {describe(exc)}"))
            plans = {}
    for path, (sources, how, not_held) in plans.items():
        repaired.append(Repaired(path.name, reasons[path], tuple(s.spec.key for s in sources), how, not_held))
    for path in reasons:  # staged copies made for a file that is not rebuilt: staging as it was
        if path not in plans:
            for staged in converted.get(path, []):
                staged.unlink(missing_ok=True)
    _write_record(data_dir, market, symbol, reasons, held_by, repaired, unrepaired)
    result = RepairResult(market, symbol, tuple(repaired), tuple(sorted(unrepaired, key=lambda u: u.file)),
                          compaction)
    if not repaired:
        return result, validation
    assert compaction is not None
    after = validate_symbol(data_dir, market, symbol, start, end, (*verified, *compaction.verified))
    return result, after


def _write_record(
    data_dir: Path, market: str, symbol: str, reasons: dict[Path, str], held_by: dict[Path, list[dict[str, Any]]],
    repaired: Sequence[Repaired], unrepaired: Sequence[Unrepaired],
) -> None:
    doc = _load_record(data_dir, market, symbol)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    earlier = {(e.get("file"), e.get("size"), e.get("mtime_ns")): e.get("found")
               for e in doc.get("damaged", []) if isinstance(e, dict)}
    damaged = []
    by_name = {p.name: p for p in reasons}
    for u in unrepaired:
        path = by_name[u.file]
        try:
            st = path.stat()
        except OSError:
            continue  # gone meanwhile: nothing to record
        damaged.append({
            "file": u.file, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reason": u.reason, "why": u.why,
            "found": earlier.get((u.file, st.st_size, st.st_mtime_ns)) or now, "missing": list(u.missing),
            "days": u.days,
            "sources": [{k: d.get(k) for k in ("archive", "sha256", "granularity")} for d in held_by.get(path, [])],
        })
    history = [h for h in doc.get("history", []) if isinstance(h, dict)]
    history.extend({"file": r.file, "repaired": now, "archives": list(r.archives), "reason": r.reason}
                   for r in repaired)
    count = repair_count(data_dir, market, symbol) + len(repaired)
    new = {"market": market, "symbol": symbol, "damaged": damaged, "repairs": count, "history": history[-_HISTORY:]}
    if new != doc:
        write_bytes_atomic(record_path(data_dir, market, symbol), json.dumps(new, indent=1, sort_keys=True).encode())
