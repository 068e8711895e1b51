"""Lake upkeep: merge staged archives into the lake and pack files up to a target size.

Converted archives wait in `<data_dir>/staging/` (one file per archive). Per (market,
symbol), `compact_symbol` turns the lake's files plus the staged ones into the lake's
next set of files:

- a staged archive whose days fall inside an existing file, or that re-publishes an
  archive already in the lake (a new sha256), rewrites that file with its rows swapped
  in (binance-public-data's `updates/` ledger, hard case 6 of the archive notes);
- the rest are packed, in day order, with their neighbours up to `target_bytes`: the
  daily update appends to the last file while it is under target, then starts a new one;
- with `consolidate=True` (the optimize step) files left under target are combined too.

A file's size for packing is the sum of its sources' converted sizes, recorded in the
footer: additive and stable across rewrites, so a second run plans nothing (idempotent).
An archive is never split across files: monthly futures files interleave id streams at
day borders (#240), so only whole archives keep files disjoint by trade id.

Every new file is streamed (one row group of each input in memory at a time), then
checked before it replaces anything: rows per source against the source metadata, a
content digest per day against the inputs, and the lake contract (`validate_parquet_file`).
The new set of the symbol's files replaces the old one in a single step
(`tasks.atomic.swap_folder`: a directory exchange): readers see the old set or the new
set, never both, even after a kill; `recover_lake` at the start of the next run finishes
or undoes what a killed swap left. Staged archives are deleted once the lake holds them;
a staged archive the lake already holds from the same sha256 (a kill between the swap and
that deletion) is dropped, not merged twice.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.atomic import SwapOutcome, fsync_dir, recover_swaps, swap_folder, temp_path_for
from tasks.datasets import TRADES, Dataset, dataset
from tasks.errors import DamagedLakeFile, LakeConflict, LakeValidationError, TradeIdCollision
from tasks.lake.digest_nb import day_runs, fold_days, mix_column
from tasks.lake.inventory import LakeEntry, lake_inventory, read_sources, staged_inventory
from tasks.lake.sorted_merge import DuplicateTradeIds, SortedStream, key_values, merge_sorted_streams
from tasks.lake.validate import ExpectedFile, FileReport, VerifiedFile, validate_parquet_file
from tasks.lake.writer import lake_writer, source_metadata_doc
from tasks.read_ahead import read_ahead
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import Market, lake_symbol_dir, parse_archive_name, range_file_name
from tasks.source.refusals import write_note
from tasks.utc import DAY_US, day_range_us

_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Unit:
    """One archive's rows: where they are read from and what the footer says of them."""

    doc: dict[str, Any] = field(hash=False, compare=False)
    path: Path
    first_day: date
    last_day: date
    rows: int
    bytes: int
    staged: bool

    @property
    def archive(self) -> str:
        return str(self.doc["archive"])

    def days(self) -> set[date]:
        n = (self.last_day - self.first_day).days + 1
        return {self.first_day + timedelta(days=i) for i in range(n)}


@dataclass
class Block:
    """An existing lake file (with any staged archives that must go into it) or a staged archive alone."""

    units: list[Unit]
    file: Path | None  # the existing lake file, None for a staged archive alone
    dirty: bool  # its content changes: a staged archive joins or replaces part of it

    @property
    def first_day(self) -> date:
        return min(u.first_day for u in self.units)

    @property
    def last_day(self) -> date:
        return max(u.last_day for u in self.units)

    @property
    def bytes(self) -> int:
        return sum(u.bytes for u in self.units)


@dataclass
class Group:
    """One output file: the blocks packed into it, in day order."""

    blocks: list[Block]

    @property
    def units(self) -> list[Unit]:
        return sorted((u for b in self.blocks for u in b.units), key=lambda u: u.first_day)

    @property
    def name(self) -> str:
        return range_file_name(min(b.first_day for b in self.blocks), max(b.last_day for b in self.blocks))

    @property
    def bytes(self) -> int:
        return sum(b.bytes for b in self.blocks)

    def needs_write(self, consolidate: bool) -> bool:
        """True when the output differs from what is on disk."""
        if any(b.dirty for b in self.blocks):
            return True
        return consolidate and len(self.blocks) > 1


@dataclass(frozen=True)
class CompactionPlan:
    """What `compact_symbol` will do: the groups to write and the files they replace."""

    groups: list[Group]
    replaced_archives: list[str]  # archives in the lake superseded by a staged one (re-published)
    consolidate: bool

    @property
    def writes(self) -> list[Group]:
        return [g for g in self.groups if g.needs_write(self.consolidate)]


@dataclass(frozen=True)
class CompactionResult:
    """What one symbol's compaction changed."""

    market: str
    symbol: str
    files_written: tuple[str, ...]
    files_removed: tuple[str, ...]
    staged_merged: tuple[str, ...]
    replaced_archives: tuple[str, ...]
    rows_written: int
    bytes_written: int
    changed_days: tuple[date, ...]
    seconds: float = 0.0
    #: The files written, each as validated in full before the swap (the validate step reuses these).
    verified: tuple[VerifiedFile, ...] = ()
    #: Superseded files the swap could not delete (kept out of readers' paths), or None.
    leftover: str | None = None
    #: Staged archives dropped because the lake already held them from the same sha256.
    staged_dropped: tuple[str, ...] = ()
    #: Staged archives refused into quarantine (their ids collide with other days): (archive, reason).
    quarantined: tuple[tuple[str, str], ...] = ()
    dataset: str = "trades"


def _units_of(entry: LakeEntry, staged: bool) -> list[Unit]:
    if entry.problem:
        raise DamagedLakeFile(str(entry.path), f"{entry.problem}; not compacted")
    docs = (read_sources(entry.path) or {}).get("sources", [])
    return [
        Unit(dict(doc, bytes=ref.bytes), entry.path, ref.first_day, ref.last_day, ref.rows, ref.bytes, staged)
        for doc, ref in zip(docs, entry.sources, strict=True)
    ]


def plan_compaction(
    lake: Sequence[LakeEntry], staged: Sequence[LakeEntry], target_bytes: int, consolidate: bool
) -> CompactionPlan:
    """Decide the next set of lake files of one symbol (pure: reads footers only).

    Raises LakeConflict when a staged archive covers only part of an archive in the lake
    (a daily archive inside a monthly one), or two staged archives share a day: each day
    has exactly one source (#475), and which one is not for compaction to guess.
    """
    blocks = [Block(_units_of(e, staged=False), e.path, dirty=False) for e in lake]
    replaced: list[str] = []
    new_units = sorted((u for e in staged for u in _units_of(e, staged=True)), key=lambda u: u.first_day)
    seen_days: dict[date, Unit] = {}
    for unit in new_units:
        for d in unit.days():
            if d in seen_days:
                other = seen_days[d].archive
                raise LakeConflict(str(unit.path), f"staged archives {other} and {unit.archive} share {d}")
            seen_days[d] = unit
    for unit in new_units:
        home: Block | None = None
        for block in blocks:
            if block.file is None:
                continue
            kept = []
            for old in block.units:
                same_archive = old.archive == unit.archive
                overlap = bool(old.days() & unit.days())
                if not (same_archive or overlap):
                    kept.append(old)
                    continue
                if not old.days() <= unit.days():
                    raise LakeConflict(
                        str(unit.path),
                        f"{unit.archive} covers only part of {old.archive} in {block.file.name}; not merged",
                    )
                replaced.append(old.archive)
            if len(kept) != len(block.units):
                block.units, block.dirty, home = kept, True, block
            elif block.units and block.first_day <= unit.first_day and unit.last_day <= block.last_day:
                home = block  # a back-filled day inside the file's range: it must go into that file
        if home is None:
            blocks.append(Block([unit], None, dirty=True))
        else:
            home.units.append(unit)
            home.dirty = True
    blocks = [b for b in blocks if b.units or b.file is not None]
    blocks.sort(key=lambda b: (b.first_day if b.units else date.min))
    return CompactionPlan(_pack(blocks, target_bytes), replaced, consolidate)


def _pack(blocks: list[Block], target_bytes: int) -> list[Group]:
    """Greedy packing in day order: a block joins the current group while the sum stays <= target.

    A block at or above target is a group of its own. Empty blocks (every archive of an
    existing file replaced by one placed elsewhere) become groups that only delete.
    """
    groups: list[Group] = []
    current: Group | None = None
    for block in blocks:
        if not block.units:
            groups.append(Group([block]))
            continue
        if current is not None and current.bytes + block.bytes <= target_bytes and block.bytes < target_bytes:
            current.blocks.append(block)
            continue
        current = Group([block])
        groups.append(current)
    return groups


def _read_stream(
    path: Path, exclude: list[tuple[int, int]], batch_rows: int, data: Dataset = TRADES
) -> Iterator[pa.RecordBatch]:
    """A lake file's batches in key order, without the rows whose time falls in `exclude` ranges (µs)."""
    time_index = data.schema.get_field_index(data.time)
    # Page checksums verified: a damaged input fails the merge instead of being copied into a
    # new file whose own checksums would then vouch for the wrong values.
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, use_threads=False):
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=data.schema)
                if exclude:
                    t = batch.column(time_index).cast(pa.int64())
                    drop = None
                    for lo, hi in exclude:
                        m = pc.and_(pc.greater_equal(t, lo), pc.less(t, hi))
                        drop = m if drop is None else pc.or_(drop, m)
                    batch = batch.filter(pc.invert(drop))
                if batch.num_rows:
                    yield batch
    except (OSError, pa.ArrowException) as exc:
        raise DamagedLakeFile(str(path), f"unreadable ({exc}); nothing merged") from exc


_EMPTY_MASK = np.zeros(0, dtype=np.uint8)


def _float_column(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], bool]:
    """(IEEE bits, null mask or empty, all null) of a float64 column, for `day_runs`."""
    if col.null_count == len(col):
        return np.zeros(0, dtype=np.uint64), _EMPTY_MASK, True
    if col.null_count == 0:
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64).view(np.uint64), _EMPTY_MASK, False
    vals = np.asarray(pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    return vals.view(np.uint64), np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=np.uint8), False


def _bool_column(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], bool]:
    """(values as uint8, null mask or empty, all null) of a boolean column, for `day_runs`."""
    if col.null_count == len(col):
        return _EMPTY_MASK, _EMPTY_MASK, True
    vals = np.asarray(pc.fill_null(col, False).to_numpy(zero_copy_only=False), dtype=np.uint8)
    nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=np.uint8) if col.null_count else _EMPTY_MASK
    return vals, nulls, False


def _column_bits(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], bool]:
    """(values as uint64 bits or uint8 booleans, null mask or empty, all null) of any lake column."""
    if pa.types.is_floating(col.type):
        return _float_column(col)
    if pa.types.is_boolean(col.type):
        return _bool_column(col)
    if col.null_count == len(col):
        return np.zeros(0, dtype=np.uint64), _EMPTY_MASK, True
    nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=np.uint8) if col.null_count else _EMPTY_MASK
    return key_values(pc.fill_null(col, 0) if col.null_count else col).view(np.uint64), nulls, False


class DayDigest:
    """Per UTC day: rows, and the sum and xor of row hashes (independent of order and chunking).

    The day of a row is that of the dataset's `time` column. Trades take the fused
    kernel (`tasks.lake.digest_nb.day_runs`), other datasets one compiled pass per column.
    """

    def __init__(self, data: Dataset = TRADES) -> None:
        self.days: dict[int, tuple[int, int, int]] = {}
        self._data = data

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        """Fold a batch of lake rows in."""
        n = table.num_rows
        if not n:
            return
        out_day = np.empty(n, dtype=np.int64)
        out_rows = np.empty(n, dtype=np.int64)
        out_sum = np.empty(n, dtype=np.uint64)
        out_xor = np.empty(n, dtype=np.uint64)
        if self._data is not TRADES:
            h = np.zeros(n, dtype=np.uint64)
            for i in range(table.num_columns):
                mix_column(h, *_column_bits(table.column(i)))
            times = key_values(table.column(self._data.time))
            self._fold(fold_days(h, times, out_day, out_rows, out_sum, out_xor), out_day, out_rows, out_sum, out_xor)
            return
        ids = np.asarray(table.column(0).to_numpy(), dtype=np.int64).view(np.uint64)
        price, _, _ = _float_column(table.column(1))
        qty, _, _ = _float_column(table.column(2))
        times = np.asarray(table.column(5).cast(pa.int64()).to_numpy(), dtype=np.int64)
        maker, _, _ = _bool_column(table.column(6))
        runs = day_runs(ids, price, qty, *_float_column(table.column(3)), *_float_column(table.column(4)),
                        times, maker, *_bool_column(table.column(7)), out_day, out_rows, out_sum, out_xor)
        self._fold(runs, out_day, out_rows, out_sum, out_xor)

    def _fold(self, runs: int, out_day: np.ndarray[Any, Any], out_rows: np.ndarray[Any, Any],
              out_sum: np.ndarray[Any, Any], out_xor: np.ndarray[Any, Any]) -> None:
        for d, r, h_sum, h_xor in zip(out_day[:runs].tolist(), out_rows[:runs].tolist(),
                                      out_sum[:runs].tolist(), out_xor[:runs].tolist(), strict=True):
            rows, total, xor = self.days.get(d, (0, 0, 0))
            self.days[d] = (rows + r, (total + h_sum) & _U64, xor ^ h_xor)

    def rows_between(self, first: date, last: date) -> int:
        lo, hi = (x // DAY_US for x in day_range_us(first, last))
        return sum(v[0] for d, v in self.days.items() if lo <= d < hi)

    def differences(self, other: DayDigest) -> list[str]:
        """Days whose rows or content differ, as readable notes."""
        notes = []
        for d in sorted(set(self.days) | set(other.days)):
            a, b = self.days.get(d), other.days.get(d)
            if a != b:
                day = date(1970, 1, 1) + timedelta(days=d)
                notes.append(f"{day}: {a[0] if a else 0} rows in, {b[0] if b else 0} rows out"
                             + ("" if (a and b and a[0] != b[0]) or not (a and b) else " (content differs)"))
        return notes


def _tap(stream: Iterator[pa.RecordBatch], digest: DayDigest) -> Iterator[pa.RecordBatch]:
    for batch in stream:
        digest.add(batch)
        yield batch


def _stat_int(value: Any) -> int:
    """A key statistic as an integer (a timestamp key as its µs since the epoch)."""
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=value.tzinfo or UTC)) // timedelta(microseconds=1)
    return int(value)


def _id_range(path: Path, data: Dataset = TRADES) -> tuple[int, int]:
    """Smallest and largest key of a lake file (its first column), from its row-group statistics (footer only)."""
    meta = pq.read_metadata(path)
    lows, highs = [], []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(0).statistics
        if stats is None or not stats.has_min_max:
            raise LakeValidationError(str(path), f"row group {i} has no {data.key} statistics")
        lows.append(_stat_int(stats.min))
        highs.append(_stat_int(stats.max))
    if not lows:
        raise LakeValidationError(str(path), "the file holds no row group")
    return min(lows), max(highs)


def _write_group(
    group: Group, folder: Path, plan: CompactionPlan, market: str, symbol: str, options: ConvertOptions,
    data: Dataset = TRADES,
) -> tuple[Path, int, FileReport]:
    """Stream a group's rows into a hidden temporary file, verify it; return (temporary, rows, its report)."""
    units = group.units
    tmp = temp_path_for(folder / group.name)
    # Rows of archives being replaced are dropped from the files that held them, by their days.
    by_path: dict[Path, list[Unit]] = {}
    for u in units:
        by_path.setdefault(u.path, []).append(u)
    expected = DayDigest(data)
    streams = []
    for path, kept in by_path.items():
        holder = next((b for b in group.blocks if b.file == path), None)
        exclude = _excluded_ranges(holder, kept) if holder is not None else []
        lo, hi = _id_range(path, data)
        batches = _read_stream(path, exclude, options.row_group_rows, data)
        streams.append(SortedStream(lo, hi, _tap(batches, expected), str(path)))
    writer = lake_writer(tmp, options, data)
    merged = merge_sorted_streams(streams, data)
    # Reading, merging and the digest run in a thread ahead of the encoder: both release the
    # GIL, so on two cores they overlap. Depth 1: as fast as 2 in bench_optimize, and a net
    # peak of 361 MiB instead of 449 when appending a day to a 10 M-row file.
    ahead = read_ahead(merged.__next__, depth=1, name="merge-read-ahead")
    try:
        try:
            with closing(merged), closing(ahead) as chunks:  # the thread stops before the readers close
                for chunk in chunks:
                    writer.write(chunk)
        except DuplicateTradeIds as exc:
            raise TradeIdCollision(str(folder / group.name), f"{exc}; nothing merged") from None
        writer.close(source_metadata_doc(market, symbol, [u.doc for u in units], data.id))
        report = _verify(tmp, units, expected, market, symbol, data)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    return tmp, sum(u.rows for u in units), report


def _excluded_ranges(holder: Block, kept: list[Unit]) -> list[tuple[int, int]]:
    """Time ranges (µs) of a file's rows that no kept archive accounts for: replaced archives' days."""
    if not holder.dirty or holder.file is None:
        return []
    docs = (read_sources(holder.file) or {}).get("sources", [])
    kept_archives = {u.archive for u in kept}
    ranges = []
    for doc in docs:
        if doc["archive"] not in kept_archives:
            ranges.append(day_range_us(date.fromisoformat(doc["first_day"]), date.fromisoformat(doc["last_day"])))
    return ranges


def _verify(
    tmp: Path, units: list[Unit], expected: DayDigest, market: str, symbol: str, data: Dataset = TRADES
) -> FileReport:
    """The new file holds exactly the inputs' rows: per source counts, per day digests, the lake contract."""
    first, last = min(u.first_day for u in units), max(u.last_day for u in units)
    lo, hi = day_range_us(first, last)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    got = DayDigest(data)
    report = validate_parquet_file(
        tmp,
        ExpectedFile(rows=sum(u.rows for u in units), start=epoch + timedelta(microseconds=lo),
                     end=epoch + timedelta(microseconds=hi), market=market, symbol=symbol, dataset=data.id),
        visit=got.add,  # one read for both the contract and the content digest
    )
    problems = expected.differences(got)
    for u in units:
        n = got.rows_between(u.first_day, u.last_day)
        if n != u.rows:
            problems.append(f"{u.archive}: {n} rows written, its metadata says {u.rows}")
    if problems:
        raise LakeValidationError(str(tmp), "compacted file does not match its inputs: " + "; ".join(problems[:10]))
    return report


def compact_symbol(
    data_dir: Path, market: Market, symbol: str, target_bytes: int, options: ConvertOptions, consolidate: bool,
    damaged: frozenset[Path] = frozenset(), dataset_id: str = "trades",
) -> CompactionResult:
    """Merge the symbol's staged archives into its lake files and pack them to `target_bytes`.

    `consolidate=False` (the merge step) writes only the files whose content changes;
    `consolidate=True` (the optimize step) also combines neighbours left under target.
    Nothing in the lake changes unless every new file verified; see the module doc.

    A staged archive whose trade ids collide with another day's (a poison pill: it would
    block every later merge of the symbol) is quarantined with its reason (`quarantine_staged`)
    and the merge goes on with the others; the result names it.

    `damaged` (the repair, `tasks.lake.repair`): lake files that failed validation. They are
    neither read nor planned (their footer may be unreadable); the caller has re-converted
    the archives they held into staging, which take their place, and the swap removes them.
    """
    quarantined: list[tuple[str, str]] = []
    while True:
        try:
            result = _compact_once(data_dir, market, symbol, target_bytes, options, consolidate, damaged,
                                   dataset(dataset_id))
        except TradeIdCollision as exc:
            poison = colliding_staged(data_dir, market, symbol, damaged, dataset_id)
            if not poison:
                raise
            for entry, reason in poison:
                quarantined.append(quarantine_staged(data_dir, market, entry, reason, exc, dataset_id))
            continue  # each round removes at least one staged archive: this ends
        return dataclasses.replace(result, quarantined=tuple(quarantined))


def _compact_once(
    data_dir: Path, market: Market, symbol: str, target_bytes: int, options: ConvertOptions, consolidate: bool,
    damaged: frozenset[Path], data: Dataset,
) -> CompactionResult:
    """One attempt of `compact_symbol`.

    `damaged` (the repair, `tasks.lake.repair`): lake files that failed validation. They are
    neither read nor planned (their footer may be unreadable); the caller has re-converted
    the archives they held into staging, which take their place, and the swap removes them.
    """
    started = time.perf_counter()
    folder = lake_symbol_dir(data_dir, market, symbol, data.id)
    folder.mkdir(parents=True, exist_ok=True)  # temporaries are written beside their final name
    lake = lake_inventory(data_dir, market, symbol, data.id)
    # Repair: damaged files leave the plan, so their staged replacements are not "already held".
    superseded = [e.path for e in lake if e.path in damaged]
    lake = [e for e in lake if e.path not in damaged]
    staged, dropped = _drop_staged_held(lake, staged_inventory(data_dir, market, symbol, data.id))
    plan = plan_compaction(lake, staged, target_bytes, consolidate)
    written: list[tuple[Path, Path]] = []
    reports: list[FileReport] = []
    remove: list[Path] = list(superseded)
    rows = 0
    changed: set[date] = set()
    try:
        for group in plan.writes:
            inputs = {u.path for u in group.units} | {b.file for b in group.blocks if b.file is not None}
            remove.extend(sorted(inputs))
            if not group.units:
                continue  # every archive of this file moved elsewhere: it is only removed
            tmp, n, file_report = _write_group(group, folder, plan, market, symbol, options, data)
            written.append((tmp, folder / group.name))
            reports.append(file_report)
            rows += n
            for b in group.blocks:
                if b.dirty:
                    changed.update(d for u in b.units if u.staged for d in u.days())
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    outcome = SwapOutcome()
    if written or remove:
        outcome = swap_folder(data_dir, folder, written, [p for p in remove if p.parent == folder])
    merged_staged = [p for p in remove if p.parent != folder]
    for path in merged_staged:  # the lake holds their rows now (and a re-run would drop them anyway)
        path.unlink(missing_ok=True)
    if merged_staged:
        fsync_dir(merged_staged[0].parent)
    return CompactionResult(
        market, symbol,
        files_written=tuple(final.name for _, final in written),
        # Lake files gone (staged files merged are counted in staged_merged).
        files_removed=tuple(p.name for p in remove if p.parent == folder and p not in {f for _, f in written}),
        staged_merged=tuple(u.archive for g in plan.writes for u in g.units if u.staged),
        replaced_archives=tuple(plan.replaced_archives),
        rows_written=rows,
        bytes_written=sum(final.stat().st_size for _, final in written),
        changed_days=tuple(sorted(changed)),
        seconds=time.perf_counter() - started,
        verified=tuple(VerifiedFile.of(final, r) for (_, final), r in zip(written, reports, strict=True)),
        leftover=outcome.leftover,
        staged_dropped=tuple(dropped),
        dataset=data.id,
    )


def _drop_staged_held(lake: Sequence[LakeEntry], staged: list[LakeEntry]) -> tuple[list[LakeEntry], list[str]]:
    """Delete staged files whose every source the lake already holds from the same sha256.

    A run killed between a swap and the deletion of the staged files it merged leaves them
    behind; merging them again would only rewrite the same rows.
    """
    held = {(s.archive, s.sha256) for e in lake for s in e.sources}
    keep: list[LakeEntry] = []
    dropped: list[str] = []
    for entry in staged:
        if entry.sources and all((s.archive, s.sha256) in held for s in entry.sources):
            entry.path.unlink(missing_ok=True)
            dropped.extend(s.archive for s in entry.sources)
        else:
            keep.append(entry)
    return keep, dropped



def recover_lake(data_dir: Path) -> tuple[int, list[str]]:
    """Finish or undo every folder swap a killed run left (lake and features); (how many, problems).

    Run it under the data dir's lock, before removing stale temporaries and before any swap
    of this run starts (it deletes every work folder under `<data_dir>/.swap/`).
    """
    return recover_swaps(data_dir)


def _ids_outside(
    path: Path, lo: int, hi: int, days: tuple[int, int] | None, data: Dataset = TRADES
) -> np.ndarray[Any, Any]:
    """Keys of a lake or staged file within [lo, hi], without the rows whose time is in `days` (µs)."""
    out = []
    with pq.ParquetFile(path) as pf:
        meta = pf.metadata
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(0).statistics
            if stats is not None and stats.has_min_max and (_stat_int(stats.max) < lo or _stat_int(stats.min) > hi):
                continue
            columns = list(dict.fromkeys([data.key, data.time]))
            t = pf.read_row_group(rg, columns=columns)
            ids = key_values(t.column(0))
            if days is not None:
                us = key_values(t.column(len(columns) - 1))
                ids = ids[(us < days[0]) | (us >= days[1])]
            out.append(ids[(ids >= lo) & (ids <= hi)])
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def colliding_staged(
    data_dir: Path, market: Market, symbol: str, damaged: frozenset[Path] = frozenset(), dataset_id: str = "trades"
) -> list[tuple[LakeEntry, str]]:
    """The staged archives to refuse because their trade ids collide with other days; (entry, reason).

    A staged archive replaces the lake's rows of its own days (a re-published archive), so
    only rows of other days count. The lake is trusted: a staged archive colliding with it
    is refused. Among staged archives, the one colliding with the most others is refused
    first (a day whose ids belong to its neighbours), until no collision is left; archives
    that collide only with each other are all refused, since which is right is not for the
    merge to guess. Reads only row groups whose id ranges overlap.
    """
    data = dataset(dataset_id)
    lake = [e for e in lake_inventory(data_dir, market, symbol, dataset_id) if e.path not in damaged and not e.problem]
    staged = [e for e in staged_inventory(data_dir, market, symbol, dataset_id) if not e.problem]
    ranges = {e.path: _id_range(e.path, data) for e in [*lake, *staged]}

    def common(entry: LakeEntry, other: LakeEntry) -> np.ndarray[Any, Any]:
        (lo, hi), (olo, ohi) = ranges[entry.path], ranges[other.path]
        if ohi < lo or olo > hi:
            return np.empty(0, dtype=np.int64)
        days = day_range_us(entry.first_day, entry.last_day)
        mine = _ids_outside(entry.path, max(lo, olo), min(hi, ohi), None, data)
        theirs = _ids_outside(other.path, max(lo, olo), min(hi, ohi), days, data)
        return np.intersect1d(mine, theirs, assume_unique=True)

    label = "trade ids" if data.key == "trade_id" else f"{data.key} values"

    def note(ids: np.ndarray[Any, Any], what: str) -> str:
        return f"{len(ids):,} of its {label} (first {int(ids[0])}) are also in {what}, on other days"

    refused: dict[Path, tuple[LakeEntry, str]] = {}
    for entry in staged:
        for other in lake:
            ids = common(entry, other)
            if len(ids):
                refused[entry.path] = (entry, note(ids, f"the lake file {other.path.name}"))
                break
    edges: dict[Path, dict[Path, str]] = {e.path: {} for e in staged if e.path not in refused}
    pending = [e for e in staged if e.path not in refused]
    for i, entry in enumerate(pending):
        for other in pending[i + 1:]:
            ids = common(entry, other)
            if len(ids):
                edges[entry.path][other.path] = note(ids, f"the staged archive {other.sources[0].archive}")
                edges[other.path][entry.path] = note(common(other, entry),
                                                     f"the staged archive {entry.sources[0].archive}")
    by_path = {e.path: e for e in pending}
    while any(edges.values()):
        top = max(len(v) for v in edges.values())
        worst = [p for p, v in edges.items() if len(v) == top]
        for path in worst:
            refused[path] = (by_path[path], "; ".join(edges[path].values()))
        for path in worst:
            for neighbour in edges.pop(path):
                edges.get(neighbour, {}).pop(path, None)
    return list(refused.values())


def quarantine_staged(
    data_dir: Path, market: Market, entry: LakeEntry, reason: str, cause: Exception, dataset_id: str = "trades"
) -> tuple[str, str]:
    """Refuse a staged archive: record why beside the archive's quarantine path, remove it from staging.

    The downloaded archive stays (it is the published one, verified); `tasks.lake.ingest` does not
    convert it again while this record names its sha256, so it is reported as refused by
    every run until Binance re-publishes it (a new checksum) or the record is deleted.
    """
    src = entry.sources[0]
    spec = parse_archive_name(market, "monthly" if src.granularity == "monthly" else "daily",
                              src.archive.rsplit("/", 1)[-1], dataset_id)
    if spec is None:
        raise cause
    note = {"archive": src.archive, "sha256": src.sha256, "kind": "lake conflict",
            "reason": f"{reason}; not merged (the merge went on without it)"}
    write_note(spec, data_dir, note)
    entry.path.unlink(missing_ok=True)
    fsync_dir(entry.path.parent)
    return src.archive, note["reason"]

