"""Which datasets the archive publishes, per market and granularity, read from the listing.

The archive's own README documents only trades, aggTrades and klines; the futures datasets
were found in the listing by third-party tools, and some stopped (docs/binance-archive.md).
So the listing is asked: the folders under `data/<market>/<granularity>/` are the datasets
published there. Each is compared with what this project declares (`tasks.dataset_ids`):

- `supported`: declared for that market and granularity, and listed;
- `not listed`: declared, but the listing has no such folder (a run would find nothing);
- `not supported`: listed, but not declared here (e.g. liquidationSnapshot): not ingested.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from tasks.dataset_ids import all_dataset_ids, granularities_of, listing_folder, markets_of, publication_end
from tasks.errors import PipelineError, describe
from tasks.source.archive_spec import MARKET_PATH, MARKETS, Granularity, Market
from tasks.source.http import HttpOptions, make_session
from tasks.source.listing import list_prefix

Verdict = Literal["supported", "not listed", "not supported"]


@dataclass(frozen=True)
class CatalogRow:
    """One dataset folder of one market and granularity, and what this project makes of it."""

    market: Market
    granularity: Granularity
    folder: str
    verdict: Verdict
    note: str = ""


@dataclass
class Catalog:
    """The rows, and the (market, granularity) listings that failed."""

    rows: list[CatalogRow] = field(default_factory=list)
    errors: dict[tuple[Market, Granularity], str] = field(default_factory=dict)


def declared_folders(market: Market, granularity: Granularity) -> set[str]:
    """The listing folders this project declares for a market and granularity."""
    return {listing_folder(d) for d in all_dataset_ids()
            if market in markets_of(d) and granularity in granularities_of(d)}


def compare(market: Market, granularity: Granularity, listed: set[str]) -> list[CatalogRow]:
    """The catalog rows of one listing: every folder listed or declared, with its verdict."""
    declared = declared_folders(market, granularity)
    rows = []
    for folder in sorted(listed | declared, key=str.lower):
        end = publication_end(folder, market)
        note = f"publication ended {end}" if end is not None else ""
        if folder in declared and folder in listed:
            rows.append(CatalogRow(market, granularity, folder, "supported", note))
        elif folder in declared:
            rows.append(CatalogRow(market, granularity, folder, "not listed", note))
        else:
            rows.append(CatalogRow(market, granularity, folder, "not supported"))
    return rows


async def read_catalog(listing_url: str, options: HttpOptions,
                       markets: tuple[Market, ...] = MARKETS) -> Catalog:
    """List `data/<market>/<granularity>/` of every market and granularity and compare (see the module)."""
    catalog = Catalog()
    async with make_session(options) as session:

        async def one(market: Market, granularity: Granularity) -> tuple[Market, Granularity, set[str] | str]:
            base = f"data/{MARKET_PATH[market]}/{granularity}/"
            try:
                _, prefixes = await list_prefix(session, listing_url, base, options)
            except PipelineError as exc:
                return market, granularity, describe(exc)
            names = {p[len(base):].rstrip("/") for p in prefixes if p.startswith(base)}
            return market, granularity, {n for n in names if n and "/" not in n}

        answers = await asyncio.gather(*(one(m, g) for m in markets for g in ("daily", "monthly")))
    for market, granularity, found in answers:
        if isinstance(found, str):
            catalog.errors[(market, granularity)] = found
        else:
            catalog.rows.extend(compare(market, granularity, found))
    return catalog
