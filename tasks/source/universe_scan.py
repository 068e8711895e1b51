"""The universe from the listing: every symbol folder of a (market, dataset), with its first and last day.

No `exchangeInfo`: it is blocked in some regions (binance-public-data#327, #420) and only
knows the symbols trading now. The archive's folders keep every symbol that ever traded,
delisted ones and `SETTLED` delivery contracts included, so the first and last archive of
a folder bound the symbol's life without survivorship bias.

A symbol's span comes from its daily archives, to the day. Where a dataset has no daily
archives (fundingRate), or a symbol's monthly archives start before its daily ones, the
month is the precision: the span starts on the first of its first month (ends on the last
day of its last month), and `first_precision` / `last_precision` say so.

A refresh lists only what can have changed. A symbol already known is listed from after
its last known archive (S3's `marker`): one short page per folder, and its monthly folder
not at all once last month's archive is known. A symbol whose last archive is older than
`STALE_AFTER` (`STALE_AFTER_MONTHLY` for a monthly-only dataset) is left alone (delisted:
nothing more comes) unless `full` is asked for, which lists every folder from the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tasks.dataset_ids import granularities_of, monthly_only
from tasks.errors import PipelineError, describe
from tasks.lake.universe_table import SymbolSpan, read_universe, span_of, write_universe
from tasks.source.archive_spec import ArchiveSpec, Granularity, Market, symbol_prefix
from tasks.source.http import HttpOptions, make_session
from tasks.source.listing import classify_keys, list_prefix, list_symbols

#: A symbol whose last archive is older than this is taken as delisted by a refresh that is not `full`.
STALE_AFTER = timedelta(days=35)
#: The same for a dataset published monthly only: a live symbol's last day is the end of last
#: month until this month's middle (#328), up to 46 days back, so a month more is allowed.
STALE_AFTER_MONTHLY = timedelta(days=80)


@dataclass
class UniverseScan:
    """What one refresh found: the spans, and the folders it could not list (symbol -> reason)."""

    market: Market
    dataset: str
    spans: dict[str, SymbolSpan] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    listed: int = 0  # symbol folders listed in this refresh
    kept: int = 0  # known, taken as delisted, not listed again


def _marker(market: Market, granularity: Granularity, symbol: str, dataset_id: str, last: date | None) -> str | None:
    """The key to list after: the last known archive's zip (its `.CHECKSUM` sorts after it and is skipped)."""
    if last is None:
        return None
    spec = ArchiveSpec(market, symbol, granularity, last, dataset_id)
    return symbol_prefix(market, granularity, symbol, dataset_id) + spec.file_name + ".CHECKSUM"


async def scan_universe(
    listing_url: str,
    market: Market,
    dataset_id: str,
    options: HttpOptions,
    known: Mapping[str, SymbolSpan] | None = None,
    today: date | None = None,
    full: bool = False,
    concurrency: int = 8,
) -> UniverseScan:
    """Refresh the universe of (market, dataset) from the listing; `known` is the table held so far.

    A symbol folder that cannot be listed keeps its known span (if any) and is named in
    `errors`; the symbol-folder listing itself failing raises (nothing could be refreshed).
    """
    known = dict(known or {})
    today = today or datetime.now(UTC).date()
    granularities = granularities_of(dataset_id)
    symbols: set[str] = set()
    for g in granularities:
        symbols.update(await list_symbols(listing_url, market, g, options, dataset_id))
    scan = UniverseScan(market, dataset_id)
    last_whole_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    stale_after = STALE_AFTER_MONTHLY if monthly_only(dataset_id) else STALE_AFTER
    sem = asyncio.Semaphore(concurrency)
    async with make_session(options, limit=concurrency) as session:

        async def one(symbol: str) -> None:
            before = known.get(symbol)
            if before is not None and not full and before.last_day < today - stale_after:
                scan.spans[symbol] = before
                scan.kept += 1
                return
            base = None if full else before
            found: dict[Granularity, set[date]] = {"daily": set(), "monthly": set()}
            try:
                for g in granularities:
                    last = None if base is None else (base.last_daily if g == "daily" else base.last_monthly)
                    if g == "monthly" and last is not None and last >= last_whole_month:
                        continue  # last month's archive is known: the next one comes next month
                    prefix = symbol_prefix(market, g, symbol, dataset_id)
                    async with sem:
                        objects, folders = await list_prefix(session, listing_url, prefix, options,
                                                             _marker(market, g, symbol, dataset_id, last))
                    found[g] = classify_keys(market, g, symbol, objects, folders, dataset_id).periods()
            except PipelineError as exc:
                scan.errors[symbol] = describe(exc)
                if before is not None:
                    scan.spans[symbol] = before
                return
            scan.listed += 1
            span = span_of(symbol, found["daily"], found["monthly"], base)
            if span is not None:
                scan.spans[symbol] = span

        await asyncio.gather(*(one(s) for s in sorted(symbols)))
    # Symbols no longer listed at all keep their span: the universe never forgets a symbol.
    for symbol, span in known.items():
        scan.spans.setdefault(symbol, span)
    scan.spans = dict(sorted(scan.spans.items()))
    return scan


def refresh_universe(data_dir: Path, market: Market, dataset_id: str, listing_url: str, options: HttpOptions,
                     today: date | None = None, full: bool = False, concurrency: int = 8) -> UniverseScan:
    """Scan the listing from the table held (`tasks.lake.universe_table`) and write the table back, atomically.

    The table is written even when some symbol folders failed (they keep their old spans and
    are named in `errors`); when the symbol-folder listing itself fails, nothing is written.
    """
    held = read_universe(data_dir, market, dataset_id)
    scan = asyncio.run(scan_universe(listing_url, market, dataset_id, options, held.spans if held else None,
                                     today, full, concurrency))
    write_universe(data_dir, market, dataset_id, scan.spans, listing_url)
    return scan
