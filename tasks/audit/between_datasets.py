"""The audit: a symbol's datasets checked against each other, day by day.

Binance publishes trades, aggTrades and klines from the same trades, so they must agree.
Per UTC day in the range, with the day's rows of each dataset the lake holds:

- **aggTrades against trades**: each aggTrade's `[first_trade_id, last_trade_id]` covers
  trade ids exactly once and no trade is left out; its qty is the sum of those trades'
  qty, at the same price, side and time.
- **klines against trades**: the 1m klines rebuilt from the trades (open, high, low,
  close, volume, quote volume, trade count, taker buy volumes) equal the published ones.
- **klines against 1m klines**: every other interval up to a day agrees with the 1m klines
  it spans; 1s klines (spot) are checked the other way: the 1m klines rebuilt from them.

A mismatch is a fact about the archive, not a failure of the run: each is reported with
its day, kind, size and a few sample rows (`AuditReport`), written beside the gap report.
Memory is bounded by one day of each dataset (the lake is read in batches, a day at a
time), whatever the range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import write_bytes_atomic
from tasks.datasets import KLINE_INTERVALS, dataset
from tasks.lake.inventory import lake_files, range_of
from tasks.utc import DAY_US, EPOCH_DAY, micros_to_datetime

#: Sample rows quoted per mismatch kind and day.
MAX_SAMPLES = 3
#: Sums of float sizes differ from the published decimal sums by rounding only: relative tolerance.
REL_TOL = 1e-9
ABS_TOL = 1e-9
_MINUTE_US = 60_000_000
#: Rows read from a lake file at a time.
_BATCH_ROWS = 1 << 18
#: Every dataset the audit can compare: trades, aggTrades and klines of each interval.
AUDITED_DATASETS: tuple[str, ...] = ("trades", "aggTrades", *(f"klines-{i}" for i in KLINE_INTERVALS))


@dataclass(frozen=True)
class Mismatch:
    """One kind of disagreement on one day: `count` rows (or intervals, or trade ids), with samples."""

    day: str
    kind: str
    count: int
    samples: tuple[str, ...] = ()


@dataclass
class AuditReport:
    """What the audit of one symbol found, per day and kind."""

    market: str
    symbol: str
    start: str
    end: str
    checked: dict[str, int] = field(default_factory=dict)  # check name -> days compared
    rows: dict[str, int] = field(default_factory=dict)  # dataset id -> rows read
    mismatches: list[Mismatch] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON document."""
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """One line per check, then one per mismatch (at most 20)."""
        where = f"{self.market}/{self.symbol}"
        lines = [f"audit {where}: {check} on {days} days, "
                 f"{sum(m.count for m in self.mismatches if m.kind.startswith(check + ':'))} mismatches"
                 for check, days in self.checked.items()]
        for m in self.mismatches[:20]:
            sample = f" (e.g. {m.samples[0]})" if m.samples else ""
            lines.append(f"  {m.day} {m.kind}: {m.count}{sample}")
        if len(self.mismatches) > 20:
            lines.append(f"  ... {len(self.mismatches) - 20} more in the audit report")
        return lines


def report_path(data_dir: Path, market: str, symbol: str) -> Path:
    """`<data_dir>/reports/audit/market=<m>/symbol=<S>.json`."""
    return data_dir / "reports" / "audit" / f"market={market}" / f"symbol={symbol}.json"


def write_audit_report(data_dir: Path, report: AuditReport) -> Path:
    """Write the report atomically; return its path."""
    path = report_path(data_dir, report.market, report.symbol)
    write_bytes_atomic(path, json.dumps(report.to_json(), indent=1, sort_keys=True).encode())
    return path


def lake_datasets(data_dir: Path, market: str, symbol: str, candidates: tuple[str, ...]) -> tuple[str, ...]:
    """Which of `candidates` (dataset ids) the lake holds files of, for this symbol."""
    return tuple(d for d in candidates if lake_files(data_dir, market, symbol, d))


def _days(data_dir: Path, market: str, symbol: str, dataset_id: str, start: date,
          end: date) -> Iterator[tuple[int, pa.Table]]:
    """(day number since the epoch, the day's rows) of a dataset's lake files, days in [start, end], in order."""
    paths = [p for p in lake_files(data_dir, market, symbol, dataset_id)
             if (span := range_of(p.name)) is not None and span[1] >= start and span[0] <= end]
    return day_tables(paths, dataset(dataset_id).time, start, end)


def day_tables(paths: Iterable[Path], time_column: str, start: date, end: date) -> Iterator[tuple[int, pa.Table]]:
    """(day number since the epoch, the day's rows) of Parquet files in time order, days in [start, end].

    Read in batches: memory holds one day (and one batch), whatever the files hold.
    """
    lo, hi = (d.toordinal() - EPOCH_DAY.toordinal() for d in (start, end))
    pending: list[pa.RecordBatch] = []
    current: int | None = None
    for path in paths:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, use_threads=False):
                t = np.asarray(batch.column(time_column).cast(pa.int64()).to_numpy(), dtype=np.int64)
                days = t // DAY_US
                # Rows are in key order, and their days never go back: cut the batch at day changes.
                cuts = np.flatnonzero(np.diff(days)) + 1
                for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(days)]]), strict=True):
                    d = int(days[a])
                    if current is not None and d != current:
                        if lo <= current <= hi:
                            yield current, pa.Table.from_batches(pending)
                        pending = []
                    current = d
                    if lo <= d <= hi:
                        pending.append(batch.slice(int(a), int(b - a)))
    if current is not None and pending and lo <= current <= hi:
        yield current, pa.Table.from_batches(pending)


def column_values(table: pa.Table, name: str) -> np.ndarray[Any, Any]:
    """A column as a NumPy array; timestamps as int64 microseconds."""
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _close(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(np.abs(a - b) <= ABS_TOL + REL_TOL * np.maximum(np.abs(a), np.abs(b)))


def iso_day(day: int) -> str:
    return micros_to_datetime(day * DAY_US).date().isoformat()


class Findings:
    """Mismatches of one day, added to a report: kinds with no row are not recorded."""

    def __init__(self, report: AuditReport, day: int) -> None:
        self._report = report
        self._day = iso_day(day)

    def add(self, kind: str, mask_or_count: np.ndarray[Any, Any] | int, samples: list[str]) -> None:
        """Record `kind` with its count (the mask's true rows, or a number) and the first samples."""
        count = int(mask_or_count.sum()) if isinstance(mask_or_count, np.ndarray) else int(mask_or_count)
        if count:
            self._report.mismatches.append(Mismatch(self._day, kind, count, tuple(samples[:MAX_SAMPLES])))


def audit_agg_trades(trades: pa.Table, agg: pa.Table, found: Findings) -> None:
    """aggTrades of a day against the day's trades (both sorted by their ids)."""
    tid = column_values(trades, "trade_id")
    first, last = column_values(agg, "first_trade_id"), column_values(agg, "last_trade_id")
    agg_ids = column_values(agg, "agg_trade_id")
    # Which aggTrade each trade falls in: the last one starting at or before it.
    at = np.searchsorted(first, tid, side="right") - 1
    inside = (at >= 0) & (tid <= last[np.maximum(at, 0)])
    left_out = ~inside
    found.add("aggTrades vs trades: trades no aggTrade covers", left_out,
              [f"trade {int(t)}" for t in tid[left_out][:MAX_SAMPLES]])
    overlap = np.flatnonzero(first[1:] <= last[:-1]) + 1
    found.add("aggTrades vs trades: aggTrades covering trade ids of the one before", len(overlap),
              [f"aggTrade {int(agg_ids[i])} starts at {int(first[i])}, the one before ends at {int(last[i - 1])}"
               for i in overlap[:MAX_SAMPLES]])
    idx = at[inside]
    covered = np.bincount(idx, minlength=len(agg))
    span = last - first + 1
    missing = covered < span
    found.add("aggTrades vs trades: trade ids an aggTrade covers that trades lacks",
              int((span - covered)[missing].sum()),
              [f"aggTrade {int(agg_ids[i])} covers {int(first[i])}..{int(last[i])}, {int(covered[i])} trades found"
               for i in np.flatnonzero(missing)[:MAX_SAMPLES]])
    qty = np.bincount(idx, weights=column_values(trades, "qty")[inside], minlength=len(agg))
    bad_qty = ~missing & ~_close(qty, column_values(agg, "qty"))
    found.add("aggTrades vs trades: qty differs from the sum of its trades", bad_qty,
              [f"aggTrade {int(agg_ids[i])}: qty {column_values(agg, 'qty')[i]!r}, its trades sum to {qty[i]!r}"
               for i in np.flatnonzero(bad_qty)[:MAX_SAMPLES]])
    for name, label in (("price", "price"), ("is_buyer_maker", "side"), ("time", "time")):
        theirs, mine = column_values(trades, name)[inside], column_values(agg, name)[idx]
        bad = theirs != mine
        found.add(f"aggTrades vs trades: a trade's {label} differs from its aggTrade's", bad,
                  [f"trade {int(t)} in aggTrade {int(agg_ids[i])}: {a!r} vs {b!r}"
                   for t, i, a, b in zip(tid[inside][bad][:MAX_SAMPLES], idx[bad][:MAX_SAMPLES],
                                         theirs[bad][:MAX_SAMPLES], mine[bad][:MAX_SAMPLES], strict=False)])


_KLINE_SUMS = ("volume", "quote_volume", "taker_buy_base", "taker_buy_quote")


def klines_from_trades(trades: pa.Table, market: str) -> dict[str, np.ndarray[Any, Any]]:
    """The 1m klines of the minutes that have trades: open_time (µs) and every compared field."""
    t = column_values(trades, "time")
    price, qty = column_values(trades, "price"), column_values(trades, "qty")
    # COIN-M's kline "quote volume" is the base-asset volume (#267): the trades' base_qty.
    notional = column_values(trades, "base_qty" if market == "cm" else "quote_qty").astype(np.float64)
    buy = ~column_values(trades, "is_buyer_maker").astype(bool)
    minute = t // _MINUTE_US
    starts = np.flatnonzero(np.concatenate([[True], minute[1:] != minute[:-1]]))
    ends = np.concatenate([starts[1:], [len(t)]]) - 1
    return {
        "open_time": minute[starts] * _MINUTE_US,
        "open": price[starts], "close": price[ends],
        "high": np.maximum.reduceat(price, starts), "low": np.minimum.reduceat(price, starts),
        "volume": np.add.reduceat(qty, starts), "quote_volume": np.add.reduceat(notional, starts),
        "trades": np.diff(np.concatenate([starts, [len(t)]])),
        "taker_buy_base": np.add.reduceat(np.where(buy, qty, 0.0), starts),
        "taker_buy_quote": np.add.reduceat(np.where(buy, notional, 0.0), starts),
    }


def _compare_klines(mine: dict[str, np.ndarray[Any, Any]], published: pa.Table, what: str, found: Findings) -> None:
    """Published klines against rebuilt ones; intervals without rebuilt rows must have no trades."""
    opens = column_values(published, "open_time")
    pos = np.searchsorted(opens, mine["open_time"])
    pos_ok = pos < len(opens)
    matched = pos_ok & (opens[np.minimum(pos, len(opens) - 1)] == mine["open_time"])
    found.add(f"{what}: intervals with trades but no published kline", ~matched,
              [micros_to_datetime(int(o)).isoformat() for o in mine["open_time"][~matched][:MAX_SAMPLES]])
    rows = pos[matched]
    has = np.zeros(len(opens), dtype=bool)
    has[rows] = True
    empty_bad = ~has & (column_values(published, "trades") != 0)
    found.add(f"{what}: published klines counting trades that are not there", empty_bad,
              [f"{micros_to_datetime(int(o)).isoformat()}: {int(n)} trades"
               for o, n in zip(opens[empty_bad][:MAX_SAMPLES],
                               column_values(published, "trades")[empty_bad][:MAX_SAMPLES], strict=False)])
    for name in ("open", "high", "low", "close", "trades", *_KLINE_SUMS):
        theirs, ours = column_values(published, name)[rows], mine[name][matched]
        bad = ~_close(theirs.astype(np.float64), ours.astype(np.float64)) if name in _KLINE_SUMS else theirs != ours
        found.add(f"{what}: {name} differs", bad,
                  [f"{micros_to_datetime(int(o)).isoformat()}: published {a!r}, rebuilt {b!r}"
                   for o, a, b in zip(opens[rows][bad][:MAX_SAMPLES], theirs[bad][:MAX_SAMPLES],
                                      ours[bad][:MAX_SAMPLES], strict=False)])


def klines_from_klines(one_minute: pa.Table, interval_us: int) -> dict[str, np.ndarray[Any, Any]]:
    """Klines of a longer interval built from shorter ones, e.g. 1m (only intervals with trades count)."""
    o = column_values(one_minute, "open_time")
    keep = column_values(one_minute, "trades") > 0
    o = o[keep]
    slot = o // interval_us
    starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]])) if len(o) else np.zeros(0, np.int64)
    ends = np.concatenate([starts[1:], [len(o)]]) - 1
    col = {name: column_values(one_minute, name)[keep]
           for name in ("open", "high", "low", "close", "trades", *_KLINE_SUMS)}
    out = {"open_time": slot[starts] * interval_us, "open": col["open"][starts], "close": col["close"][ends],
           "high": np.maximum.reduceat(col["high"], starts) if len(o) else col["high"],
           "low": np.minimum.reduceat(col["low"], starts) if len(o) else col["low"]}
    for name in ("trades", *_KLINE_SUMS):
        out[name] = np.add.reduceat(col[name], starts) if len(o) else col[name]
    return out


def audit_symbol(
    data_dir: Path, market: str, symbol: str, start: date, end: date, datasets: tuple[str, ...]
) -> AuditReport:
    """Audit the symbol's datasets (ids among `datasets` that the lake holds) against each other over [start, end].

    Checks run where both sides are in the lake for the day; what is compared is counted in
    `checked` (days per check), so a report with no mismatch says how much agreed.
    """
    report = AuditReport(market, symbol, start.isoformat(), end.isoformat())
    held = lake_datasets(data_dir, market, symbol, datasets)
    klines_ids = [d for d in held if d.startswith("klines-")]
    streams = {d: _days(data_dir, market, symbol, d, start, end) for d in held}
    heads: dict[str, tuple[int, pa.Table] | None] = {d: next(s, None) for d, s in streams.items()}
    while any(h is not None for h in heads.values()):
        day = min(h[0] for h in heads.values() if h is not None)
        today: dict[str, pa.Table] = {}
        for d, h in heads.items():
            if h is not None and h[0] == day:
                today[d] = h[1]
                report.rows[d] = report.rows.get(d, 0) + h[1].num_rows
                heads[d] = next(streams[d], None)
        found = Findings(report, day)
        trades = today.get("trades")
        if trades is not None and "aggTrades" in today:
            audit_agg_trades(trades, today["aggTrades"], found)
            report.checked["aggTrades vs trades"] = report.checked.get("aggTrades vs trades", 0) + 1
        if trades is not None and "klines-1m" in today:
            _compare_klines(klines_from_trades(trades, market), today["klines-1m"], "klines-1m vs trades", found)
            report.checked["klines-1m vs trades"] = report.checked.get("klines-1m vs trades", 0) + 1
        for d in klines_ids:
            step = KLINE_INTERVALS[d.removeprefix("klines-")]
            if d == "klines-1m" or step is None or step > DAY_US or d not in today or "klines-1m" not in today:
                continue  # intervals longer than a day span days: compared day by day they would not add up
            if step < _MINUTE_US:  # 1s klines cannot be rebuilt from 1m ones: the 1m klines are, from them
                check = f"klines-1m vs {d}"
                _compare_klines(klines_from_klines(today[d], _MINUTE_US), today["klines-1m"], check, found)
            else:
                check = f"{d} vs klines-1m"
                _compare_klines(klines_from_klines(today["klines-1m"], step), today[d], check, found)
            report.checked[check] = report.checked.get(check, 0) + 1
    return report

