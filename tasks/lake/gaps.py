"""Where the lake is incomplete, per (market, symbol) and day: the gap report.

A matching checksum does not prove a day complete (binance-public-data#413: truncated
days re-uploaded later; #226, #331, #336: whole days missing), so besides days that are
not published or were refused, the report reads each day's trade ids and times from
the lake (two columns, one row group at a time) and flags id gaps inside and between
days (#363: real, reported, never fatal) and days whose first or last trade lies far
from the day's bounds.

Every dataset gets its report (`dataset`): aggTrades by their aggTrade ids, klines by their
open times, one row per interval (a missing interval at either end of a day is a gap inside
it: a kline day has no other notion of truncation). Klines longer than a day are not
reported day by day.
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

from tasks.atomic import write_bytes_atomic
from tasks.datasets import dataset
from tasks.lake.inventory import coverage, lake_inventory, staged_inventory
from tasks.source.archive_spec import QUARANTINE_NOTE_SUFFIX, Market, parse_archive_name, symbol_prefix
from tasks.source.plan import days_between
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
    dataset: str = "trades"

    @property
    def label(self) -> str:
        """`spot/BTCUSDT`, or `spot/BTCUSDT aggTrades` for another dataset."""
        return f"{self.market}/{self.symbol}" + ("" if self.dataset == "trades" else f" {self.dataset}")

    @property
    def unit(self) -> str:
        """What a gap counts: `trade ids`, `aggTrade ids`, `intervals`."""
        return unit_of(self.dataset)

    @property
    def rows_word(self) -> str:
        """What a day holds: `trades`, `aggTrades`, `klines`."""
        return self.dataset.split("-", 1)[0]

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
        what = "" if self.dataset == "trades" else f" {self.dataset}"
        head = f"{self.market} {self.symbol}{what} {self.start}..{self.end}: {held}"
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
            lines.append(f"  no {self.rows_word}: {plural(len(self.no_trades), 'day')} ({_ranges(self.no_trades)})")
        if self.id_gaps_inside:
            missing = sum(int(g["missing_ids"]) for g in self.id_gaps_inside)
            lines.append(f"  gaps inside days: {len(self.id_gaps_inside)} days, {missing:,} {self.unit} missing")
        for g in self.id_gaps_between[:10]:
            lines.append(f"  gap {g['after']} -> {g['before']}: {g['missing_ids']:,} {self.unit} missing")
        for t in self.truncated[:10]:
            lines.append(f"  truncated? {t['day']}: {self.rows_word} from {t['first']} to {t['last']}")
        return lines


def unit_of(dataset_id: str) -> str:
    """What a gap of the dataset counts: `trade ids`, `aggTrade ids`, `intervals`."""
    return "intervals" if dataset(dataset_id).continuity == "interval" else f"{dataset_id.removesuffix('s')} ids"


def reported(dataset_id: str) -> bool:
    """Whether the dataset gets a gap report: every one but kline families longer than a day, and the
    datasets whose rows have no fixed spacing (fundingRate): a day of theirs has nothing to miss."""
    data = dataset(dataset_id)
    if data.continuity == "ordered":
        return False
    step = data.step_us
    return data.interval is None or (step is not None and step <= DAY_US)


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


def day_stats(paths: list[Path], start: date, end: date, batch_rows: int = 1 << 20, key: str = "trade_id",
              time: str = "time", step: int = 1) -> dict[date, DayStats]:
    """Per-day keys and times of the lake files `paths` (sorted by `key`), for days in [start, end].

    Consecutive keys differ by `step` (1 for ids, the interval in µs for klines' open times);
    a larger difference is a gap of `difference / step - 1` missing keys.
    """
    stats: dict[date, DayStats] = {}
    lo = (start - EPOCH_DAY).days
    hi = (end - EPOCH_DAY).days
    for path in paths:
        with pq.ParquetFile(path) as pf:
            columns = [key] if key == time else [key, time]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
                ids = np.asarray(batch.column(0).cast("int64").to_numpy(), dtype=np.int64)
                times = ids if key == time else np.asarray(batch.column(1).cast("int64").to_numpy(), dtype=np.int64)
                days = times // DAY_US
                for d, i, t in _by_day(days, ids, times):
                    if not lo <= d <= hi:
                        continue
                    day = EPOCH_DAY + timedelta(days=int(d))
                    s = stats.get(day)
                    if s is None:
                        s = stats[day] = DayStats(day, first_id=int(i[0]), first_time_us=int(t.min()),
                                                  last_id=int(i[0]), last_time_us=int(t.max()))
                    elif int(i[0]) - s.last_id > step:  # a gap across the batch border, inside the day
                        s.id_gaps += 1
                        s.missing_ids += (int(i[0]) - s.last_id) // step - 1
                    diff = np.diff(i)
                    s.id_gaps += int((diff > step).sum())
                    s.missing_ids += int((diff[diff > step] // step - 1).sum())
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
    tolerance_s: float, refused_now: dict[date, dict[str, str]] | None = None, dataset_id: str = "trades",
) -> GapReport:
    """Build the gap report of one symbol's dataset over [start, end] from the lake, quarantine and the run.

    `not_published`: days this run's discovery found unpublished (empty when it did not look);
    `refused_now`: days of archives this run refused (corrupt, invalid), with archive and reason.
    """
    data = dataset(dataset_id)
    report = GapReport(market, symbol, start, end, dataset=dataset_id)
    entries = [e for e in lake_inventory(data_dir, market, symbol, dataset_id)
               if e.last_day >= start and e.first_day <= end]
    held = coverage(entries)
    staged = coverage(staged_inventory(data_dir, market, symbol, dataset_id))
    refused = {**quarantined(data_dir, market, symbol, dataset_id), **(refused_now or {})}
    step = data.step_us or 1
    stats = day_stats([e.path for e in entries], start, end, key=data.key, time=data.time, step=step)
    tol_us = int(tolerance_s * 1_000_000)
    klines = data.step_us is not None
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
        day_start = day_start_us(day)
        if klines:  # the day's first and last intervals are due too: missing ones are gaps inside the day
            edges = [(s.first_id - day_start) // step, (day_start + DAY_US - step - s.last_id) // step]
            s.id_gaps += sum(1 for n in edges if n > 0)
            s.missing_ids += sum(n for n in edges if n > 0)
        if s.id_gaps:
            report.id_gaps_inside.append({"day": str(day), "gaps": s.id_gaps, "missing_ids": s.missing_ids})
        if not klines and prev is not None and s.first_id - prev.last_id > step:
            # (klines: missing intervals at a day's ends are counted inside that day, above)
            report.id_gaps_between.append({"after": str(prev.day), "before": str(day), "after_id": prev.last_id,
                                           "before_id": s.first_id, "missing_ids": s.first_id - prev.last_id - 1})
        if klines:
            prev = s
            continue
        if s.first_time_us - day_start > tol_us or day_start + DAY_US - s.last_time_us > tol_us:
            report.truncated.append({
                "day": str(day), "first": _iso(s.first_time_us), "last": _iso(s.last_time_us),
                "rows": s.rows,
            })
        prev = s
    return report


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def report_path(data_dir: Path, market: str, symbol: str, dataset_id: str = "trades") -> Path:
    """`<data_dir>/reports/gaps/market=<m>/symbol=<S>.json`: the machine-readable gap report of trades;
    `reports/gaps/<dataset's lake folder>/market=<m>/symbol=<S>.json` of another dataset."""
    root = data_dir / "reports" / "gaps"
    if dataset_id != "trades":
        root = root / dataset(dataset_id).lake_folder
    return root / f"market={market}" / f"symbol={symbol}.json"


def write_gap_report(data_dir: Path, report: GapReport) -> Path:
    """Write the report atomically and return its path."""
    path = report_path(data_dir, report.market, report.symbol, report.dataset)
    write_bytes_atomic(path, json.dumps(report.to_json(), indent=1, sort_keys=True).encode())
    return path
