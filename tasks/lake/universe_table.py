"""The universe table in the lake: per market and dataset, every symbol's first and last published day.

    <data-dir>/lake/universe/market=<m>/<dataset>.parquet

One row per symbol (delisted ones and settled delivery contracts too), sorted by symbol:
`symbol`, `first_day`, `last_day` (dates, inclusive), `first_precision` / `last_precision`
(`day`, or `month` where only a monthly archive bounds the span) and the last daily and
monthly archives seen. The footer records when and from which listing it was refreshed.
Written whole and atomically (temporary file, fsync, rename): a reader sees the old table
or the new one. `tasks.source.universe_scan` builds it from the listing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import atomic_path
from tasks.dataset_ids import parse_id
from tasks.errors import LakeReadError, UnsafePath
from tasks.source.archive_spec import MARKETS, SYMBOL_RE, Market, month_end

SCHEMA = pa.schema([
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("first_day", pa.date32(), nullable=False),
    pa.field("last_day", pa.date32(), nullable=False),
    pa.field("first_precision", pa.string(), nullable=False),
    pa.field("last_precision", pa.string(), nullable=False),
    pa.field("last_daily", pa.date32()),
    pa.field("last_monthly", pa.date32()),
])
_META_KEY = b"binance_lake.universe"


Precision = Literal["day", "month"]


@dataclass(frozen=True)
class SymbolSpan:
    """One symbol's published life in one (market, dataset): its first and last day, both inclusive."""

    symbol: str
    first_day: date
    last_day: date
    first_precision: Precision = "day"
    last_precision: Precision = "day"
    #: The last daily archive's day and the last monthly archive's month (the refresh's markers).
    last_daily: date | None = None
    last_monthly: date | None = None

    def trading_on(self, day: date) -> bool:
        """True when `day` lies in the span."""
        return self.first_day <= day <= self.last_day


def span_of(symbol: str, days: set[date], months: set[date], known: SymbolSpan | None = None) -> SymbolSpan | None:
    """The span of a symbol from its listed daily `days` and monthly `months` (first days), merged with `known`."""
    first_candidates: list[tuple[date, Precision]] = [(d, "day") for d in days] + [(m, "month") for m in months]
    last_candidates: list[tuple[date, Precision]] = [(d, "day") for d in days] + [(month_end(m), "month")
                                                                                for m in months]
    if known is not None:
        first_candidates.append((known.first_day, known.first_precision))
        last_candidates.append((known.last_day, known.last_precision))
    if not first_candidates:
        return None
    # On a tie the daily archive wins: it is the precise one.
    first_day, first_precision = min(first_candidates, key=lambda c: (c[0], c[1] != "day"))
    last_day, last_precision = max(last_candidates, key=lambda c: (c[0], c[1] == "day"))
    last_daily = max(days, default=known.last_daily if known else None)
    last_monthly = max(months, default=known.last_monthly if known else None)
    return SymbolSpan(symbol, first_day, last_day, first_precision, last_precision, last_daily, last_monthly)


def frontier(spans: Mapping[str, SymbolSpan]) -> date | None:
    """The last day published for any symbol: how far the dataset's publication has come."""
    return max((s.last_day for s in spans.values()), default=None)


@dataclass(frozen=True)
class Universe:
    """A (market, dataset)'s table as held: its spans and when it was refreshed."""

    market: Market
    dataset: str
    spans: dict[str, SymbolSpan]
    refreshed_at: datetime | None = None
    listing_url: str = ""

    def trading_on(self, day: date) -> list[str]:
        """The symbols whose span holds `day`, sorted."""
        return [s for s, span in self.spans.items() if span.trading_on(day)]


def universe_path(data_dir: Path, market: str, dataset_id: str) -> Path:
    """`<data-dir>/lake/universe/market=<m>/<dataset>.parquet` (market and dataset checked)."""
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r}: one of {', '.join(MARKETS)}")
    parse_id(dataset_id)  # UnsafePath for an unknown dataset id
    return data_dir / "lake" / "universe" / f"market={market}" / f"{dataset_id}.parquet"


def write_universe(data_dir: Path, market: Market, dataset_id: str, spans: Mapping[str, SymbolSpan],
                   listing_url: str, refreshed_at: datetime | None = None) -> Path:
    """Write the table atomically; returns its path."""
    rows = sorted(spans.values(), key=lambda s: s.symbol)
    table = pa.table({
        "symbol": [s.symbol for s in rows],
        "first_day": [s.first_day for s in rows],
        "last_day": [s.last_day for s in rows],
        "first_precision": [s.first_precision for s in rows],
        "last_precision": [s.last_precision for s in rows],
        "last_daily": [s.last_daily for s in rows],
        "last_monthly": [s.last_monthly for s in rows],
    }, schema=SCHEMA)
    meta = {"market": market, "dataset": dataset_id, "listing_url": listing_url,
            "refreshed_at": (refreshed_at or datetime.now(UTC)).isoformat()}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    final = universe_path(data_dir, market, dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return final


def read_universe(data_dir: Path, market: Market, dataset_id: str) -> Universe | None:
    """The table held for (market, dataset); None when none was written; LakeReadError if it is damaged."""
    path = universe_path(data_dir, market, dataset_id)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise LakeReadError(str(path), f"not a readable universe table: {exc}") from None
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise LakeReadError(str(path), "not a universe table: its columns differ")
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    spans: dict[str, SymbolSpan] = {}
    for row in table.to_pylist():
        symbol = row["symbol"]
        if not SYMBOL_RE.fullmatch(symbol) or row["first_day"] > row["last_day"] or \
                row["first_precision"] not in ("day", "month") or row["last_precision"] not in ("day", "month"):
            raise LakeReadError(str(path), f"a damaged row: {row}")
        spans[symbol] = SymbolSpan(symbol, row["first_day"], row["last_day"], row["first_precision"],
                                   row["last_precision"], row["last_daily"], row["last_monthly"])
    refreshed = meta.get("refreshed_at")
    return Universe(market, dataset_id, spans, datetime.fromisoformat(refreshed) if refreshed else None,
                    meta.get("listing_url", ""))


def held_tables(data_dir: Path) -> list[Universe]:
    """Every universe table in the lake, read (market, then dataset order); LakeReadError for a damaged one."""
    tables = (read_universe(data_dir, market, dataset_id) for market, dataset_id in held_universes(data_dir))
    return [t for t in tables if t is not None]


def held_universes(data_dir: Path) -> list[tuple[Market, str]]:
    """(market, dataset) of every universe table in the lake, sorted."""
    root = data_dir / "lake" / "universe"
    out: list[tuple[Market, str]] = []
    for market in MARKETS:
        folder = root / f"market={market}"
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            try:
                parse_id(path.stem)
            except UnsafePath:
                continue
            out.append((market, path.stem))
    return out
