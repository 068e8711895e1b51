"""Where the lake is incomplete, per (market, symbol) and day: the gap report.

A matching checksum does not prove a day complete (binance-public-data#413: truncated
days re-uploaded later; #226, #331, #336: whole days missing), so besides days that are
not published or were refused, the report reads each day's trade ids and times from
the lake (two columns, one row group at a time) and flags id gaps inside and between
days (#363: real, reported, never fatal) and days whose first or last trade lies far
from the day's bounds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tasks.archive_spec import QUARANTINE_NOTE_SUFFIX, Market, parse_archive_name, symbol_prefix
from tasks.atomic import write_bytes_atomic
from tasks.lake import coverage, lake_inventory, staged_inventory
from tasks.plan import days_between
from tasks.units import plural
from tasks.utc import DAY_US, EPOCH_DAY, day_start_us


@dataclass
class DayStats:
    """One day's trades in the lake, as read from its ids and times."""

    day: date
    rows: int = 0
    first_id: int = 0
    last_id: int = 0
    first_time_us: int = 0
    last_time_us: int = 0
    id_gaps: int = 0
    missing_ids: int = 0


@dataclass
class GapReport:
    """The gaps of one (market, symbol) over a range of days; `to_json` is the file's format."""

    market: str
    symbol: str
    start: date
    end: date
    days_in_lake: int = 0
    not_published: list[date] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # {"day", "archive", "reason"}
    not_in_lake: list[date] = field(default_factory=list)  # neither in the lake nor known to be missing
    no_trades: list[date] = field(default_factory=list)  # covered by an archive in the lake, without trades
    id_gaps_inside: list[dict[str, int | str]] = field(default_factory=list)  # {"day", "gaps", "missing_ids"}
    id_gaps_between: list[dict[str, int | str]] = field(default_factory=list)  # {"after", "before", ...}
    truncated: list[dict[str, str | float]] = field(default_factory=list)  # {"day", "first", "last", ...}

    @property
    def problems(self) -> int:
        """Count of findings (days and gaps) a researcher should know about."""
        return (len(self.not_published) + len(self.refused) + len(self.not_in_lake) + len(self.no_trades)
                + len(self.id_gaps_inside)
                + len(self.id_gaps_between) + len(self.truncated))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(json.dumps(asdict(self), default=str))
        doc["problems"] = self.problems
        return doc

    def summary_lines(self) -> list[str]:
        """One line per kind of finding, for the terminal."""
        held = f"{plural(self.days_in_lake, 'day')} in the lake"
        head = f"{self.market} {self.symbol} {self.start}..{self.end}: {held}"
        lines = [head]
        if self.not_published:
            lines.append(f"  not published: {plural(len(self.not_published), 'day')} ({_ranges(self.not_published)})")
        # One line per refused archive (a month's archive covers up to 31 days).
        by_archive: dict[tuple[str, str], list[date]] = {}
        for r in self.refused:
            by_archive.setdefault((r["archive"], r["reason"]), []).append(date.fromisoformat(r["day"]))
        for (archive, why), days in by_archive.items():
            lines.append(f"  refused {_ranges(days)}: {archive}: {why}")
        if self.not_in_lake:
            lines.append(f"  not in the lake: {plural(len(self.not_in_lake), 'day')} ({_ranges(self.not_in_lake)})")
        if self.no_trades:
            lines.append(f"  no trades: {plural(len(self.no_trades), 'day')} ({_ranges(self.no_trades)})")
        if self.id_gaps_inside:
            missing = sum(int(g["missing_ids"]) for g in self.id_gaps_inside)
            lines.append(f"  trade-id gaps inside days: {len(self.id_gaps_inside)} days, {missing:,} ids missing")
        for g in self.id_gaps_between[:10]:
            lines.append(f"  trade-id gap {g['after']} -> {g['before']}: {g['missing_ids']:,} ids")
        for t in self.truncated[:10]:
            lines.append(f"  truncated? {t['day']}: trades from {t['first']} to {t['last']}")
        return lines


def _ranges(days: list[date]) -> str:
    out: list[str] = []
    run_start = prev = None
    for d in sorted(days):
        if prev is not None and d == prev + timedelta(days=1):
            prev = d
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}..{prev}")
        run_start = prev = d
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}..{prev}")
    return ", ".join(out[:8]) + (" ..." if len(out) > 8 else "")


def _by_day(days: np.ndarray[Any, Any], ids: np.ndarray[Any, Any],
            times: np.ndarray[Any, Any]) -> Iterator[tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """(day, ids, times) of each day in a batch, days ascending, rows in batch order."""
    first, last = int(days.min()), int(days.max())
    if first == last:  # the usual batch: one day, nothing to select (np.unique sorted 1 M rows)
        yield first, ids, times
        return
    for d in (range(first, last + 1) if last - first < 8 else np.unique(days).tolist()):
        sel = days == d
        if sel.any():
            yield d, ids[sel], times[sel]


def day_stats(paths: list[Path], start: date, end: date, batch_rows: int = 1 << 20) -> dict[date, DayStats]:
    """Per-day ids and times of the lake files `paths` (sorted by id), for days in [start, end]."""
    stats: dict[date, DayStats] = {}
    lo = (start - EPOCH_DAY).days
    hi = (end - EPOCH_DAY).days
    for path in paths:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=["trade_id", "time"], use_threads=False):
                ids = np.asarray(batch.column(0).to_numpy(), dtype=np.int64)
                times = np.asarray(batch.column(1).cast("int64").to_numpy(), dtype=np.int64)
                days = times // DAY_US
                for d, i, t in _by_day(days, ids, times):
                    if not lo <= d <= hi:
                        continue
                    day = EPOCH_DAY + timedelta(days=int(d))
                    s = stats.get(day)
                    if s is None:
                        s = stats[day] = DayStats(day, first_id=int(i[0]), first_time_us=int(t.min()),
                                                  last_id=int(i[0]), last_time_us=int(t.max()))
                    elif int(i[0]) - s.last_id > 1:  # a gap across the batch border, inside the day
                        s.id_gaps += 1
                        s.missing_ids += int(i[0]) - s.last_id - 1
                    step = np.diff(i)
                    s.id_gaps += int((step > 1).sum())
                    s.missing_ids += int((step[step > 1] - 1).sum())
                    s.rows += len(i)
                    s.last_id = int(i[-1])
                    s.first_time_us = min(s.first_time_us, int(t.min()))
                    s.last_time_us = max(s.last_time_us, int(t.max()))
    return stats


def quarantined(
    data_dir: Path, market: Market, symbol: str, dataset: str = "trades"
) -> dict[date, dict[str, str]]:
    """Days of archives (of one dataset) refused into quarantine, with the archive and the recorded reason."""
    out: dict[date, dict[str, str]] = {}
    for granularity in ("daily", "monthly"):
        folder = data_dir / "quarantine" / symbol_prefix(market, granularity, symbol, dataset)
        for reason_file in sorted(folder.glob("*" + QUARANTINE_NOTE_SUFFIX)) if folder.is_dir() else []:
            try:
                doc = json.loads(reason_file.read_text())
            except (OSError, ValueError):
                doc = {}
            name = reason_file.name.removesuffix(QUARANTINE_NOTE_SUFFIX)
            spec = parse_archive_name(market, granularity, name, dataset)
            if spec is None:
                continue
            for d in spec.days():
                out[d] = {"day": str(d), "archive": spec.key, "reason": str(doc.get("reason", "refused"))}
    return out


def gap_report(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, not_published: set[date],
    tolerance_s: float, refused_now: dict[date, dict[str, str]] | None = None,
) -> GapReport:
    """Build the gap report of one symbol over [start, end] from the lake, quarantine and what the run learnt.

    `not_published`: days this run's discovery found unpublished (empty when it did not look);
    `refused_now`: days of archives this run refused (corrupt, invalid), with archive and reason.
    """
    report = GapReport(market, symbol, start, end)
    entries = [e for e in lake_inventory(data_dir, market, symbol) if e.last_day >= start and e.first_day <= end]
    held = coverage(entries)
    staged = coverage(staged_inventory(data_dir, market, symbol))
    refused = {**quarantined(data_dir, market, symbol), **(refused_now or {})}
    stats = day_stats([e.path for e in entries], start, end)
    tol_us = int(tolerance_s * 1_000_000)
    prev: DayStats | None = None
    for day in days_between(start, end):
        s = stats.get(day)
        if s is None:
            if day in held:
                report.no_trades.append(day)  # its archive is in the lake but has no trade that day
            elif day in refused:
                report.refused.append(refused[day])
            elif day in not_published:
                report.not_published.append(day)
            elif day not in staged:
                report.not_in_lake.append(day)
            continue  # `prev` stays: the id gap across missing days says how many trades they held
        report.days_in_lake += 1
        if s.id_gaps:
            report.id_gaps_inside.append({"day": str(day), "gaps": s.id_gaps, "missing_ids": s.missing_ids})
        if prev is not None and s.first_id - prev.last_id > 1:
            report.id_gaps_between.append({"after": str(prev.day), "before": str(day), "after_id": prev.last_id,
                                           "before_id": s.first_id, "missing_ids": s.first_id - prev.last_id - 1})
        day_start = day_start_us(day)
        if s.first_time_us - day_start > tol_us or day_start + DAY_US - s.last_time_us > tol_us:
            report.truncated.append({
                "day": str(day), "first": _iso(s.first_time_us), "last": _iso(s.last_time_us),
                "rows": s.rows,
            })
        prev = s
    return report


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def report_path(data_dir: Path, market: str, symbol: str) -> Path:
    """`<data_dir>/reports/gaps/market=<m>/symbol=<S>.json`: the machine-readable gap report."""
    return data_dir / "reports" / "gaps" / f"market={market}" / f"symbol={symbol}.json"


def write_gap_report(data_dir: Path, report: GapReport) -> Path:
    """Write the report atomically and return its path."""
    path = report_path(data_dir, report.market, report.symbol)
    write_bytes_atomic(path, json.dumps(report.to_json(), indent=1, sort_keys=True).encode())
    return path
