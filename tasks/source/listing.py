"""Discovery: what the bucket publishes, read from its S3 ListObjects (v1) XML.

The bucket answers at most 1,000 entries per request. While `IsTruncated` is true we
ask again with `marker=`: `NextMarker` when present (S3 sends it only when a delimiter
was given), else the last key or common prefix of the page. The root `<Prefix>` only
echoes the request and is not a folder.

Each (symbol, granularity) folder is listed alone: a malformed page, an odd entry or a
listing that keeps failing is that folder's problem (`Discovery.error`), never the others'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import quote
from xml.etree import ElementTree as ET

import aiohttp

from tasks.errors import InvalidListing, PipelineError, TransientNetworkError, UnsafePath, describe
from tasks.source.archive_spec import (
    SYMBOL_RE,
    ArchiveSpec,
    Granularity,
    Market,
    dataset_prefix,
    parse_archive_name,
    symbol_prefix,
)
from tasks.source.http import HttpOptions, fetch_bytes, make_session, with_retries

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_PAGES = 100_000  # a bound so a listing that never stops truncating cannot loop forever
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListedObject:
    """One `<Contents>` entry."""

    key: str
    size: int
    etag: str
    last_modified: str


@dataclass(frozen=True)
class ListingPage:
    """One parsed answer of the bucket."""

    objects: tuple[ListedObject, ...]
    prefixes: tuple[str, ...]
    is_truncated: bool
    next_marker: str | None


def listing_page_url(listing_url: str, prefix: str, marker: str | None = None) -> str:
    """`https://s3-ap-northeast-1.amazonaws.com/data.binance.vision?delimiter=/&prefix=data/spot/daily/trades/`."""
    url = f"{listing_url.rstrip('/')}?delimiter=/&prefix={quote(prefix, safe='')}"
    if marker:
        url += f"&marker={quote(marker, safe='')}"
    return url


def parse_listing_page(body: bytes, source: str) -> ListingPage:
    """Parse one ListBucketResult; raise InvalidListing naming `source` if it is not one."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise InvalidListing(source, f"not XML: {exc}") from None
    if root.tag != f"{S3_NS}ListBucketResult":
        raise InvalidListing(source, f"expected ListBucketResult, got <{root.tag.split('}')[-1]}>")
    objects = []
    for c in root.findall(f"{S3_NS}Contents"):
        key = c.findtext(f"{S3_NS}Key")
        if key is None:
            raise InvalidListing(source, "a <Contents> entry has no <Key>")
        size_text = c.findtext(f"{S3_NS}Size") or "0"
        try:
            size = int(size_text)
        except ValueError:
            raise InvalidListing(source, f"{key}: size {size_text!r} is not an integer") from None
        objects.append(
            ListedObject(
                key=key,
                size=size,
                etag=(c.findtext(f"{S3_NS}ETag") or "").strip('"'),
                last_modified=c.findtext(f"{S3_NS}LastModified") or "",
            )
        )
    # Only CommonPrefixes/Prefix are folders; the root <Prefix> echoes the request.
    prefixes = tuple(p.text for p in root.findall(f"{S3_NS}CommonPrefixes/{S3_NS}Prefix") if p.text)
    truncated = (root.findtext(f"{S3_NS}IsTruncated") or "false").strip().lower() == "true"
    next_marker = root.findtext(f"{S3_NS}NextMarker") or None
    return ListingPage(tuple(objects), prefixes, truncated, next_marker)


async def list_prefix(
    session: aiohttp.ClientSession, listing_url: str, prefix: str, options: HttpOptions, marker: str | None = None
) -> tuple[list[ListedObject], list[str]]:
    """Every object and sub-folder directly under `prefix`, following pagination; after `marker` if given."""
    objects: list[ListedObject] = []
    prefixes: list[str] = []
    for _ in range(MAX_PAGES):
        url = listing_page_url(listing_url, prefix, marker)
        body = await with_retries(lambda url=url: fetch_bytes(session, url, options=options), options)  # type: ignore[misc]
        page = parse_listing_page(body, url)
        objects.extend(page.objects)
        prefixes.extend(page.prefixes)
        if not page.is_truncated:
            return objects, prefixes
        last_entries = [o.key for o in page.objects] + list(page.prefixes)
        new_marker = page.next_marker or (max(last_entries) if last_entries else None)
        if new_marker is None or new_marker == marker:
            raise InvalidListing(url, "IsTruncated is true but the page gives no marker to continue from")
        marker = new_marker
    raise InvalidListing(listing_url, f"more than {MAX_PAGES} pages under {prefix}")


@dataclass(frozen=True)
class Discovery:
    """What one (market, symbol, granularity) folder publishes."""

    market: Market
    symbol: str
    granularity: Granularity
    archives: dict[ArchiveSpec, int] = field(default_factory=dict)  # spec -> zip size
    rejected: tuple[tuple[str, str], ...] = ()  # (key, reason)
    #: Why the folder could not be listed (the URL and reason), None when it was; `transient`:
    #: network faults past every retry (worth another run) rather than a malformed answer.
    error: str | None = None
    transient: bool = False
    dataset: str = "trades"

    @property
    def prefix(self) -> str:
        """The listing prefix of this folder: `data/spot/daily/trades/BTCUSDT/`."""
        return symbol_prefix(self.market, self.granularity, self.symbol, self.dataset)

    def periods(self) -> set[date]:
        """Published periods: days, or first days of months."""
        return {spec.period for spec in self.archives}


def classify_keys(
    market: Market,
    granularity: Granularity,
    symbol: str,
    objects: list[ListedObject],
    folders: Sequence[str] = (),
    dataset: str = "trades",
) -> Discovery:
    """Turn listed keys into archive specs, refusing any key that is not a plain file in the folder.

    A key is only ever used to recognise a published period; local paths are built from
    the spec, never from the key, so a hostile key cannot place a file anywhere.
    """
    prefix = symbol_prefix(market, granularity, symbol, dataset)
    archives: dict[ArchiveSpec, int] = {}
    rejected: list[tuple[str, str]] = []
    for obj in objects:
        key = obj.key
        if not key.startswith(prefix):
            rejected.append((key, UnsafePath(key, f"listed under {prefix} but outside it").reason))
            continue
        name = key[len(prefix) :]
        if not name or "/" in name or "\\" in name or name in (".", "..") or ".." in name.split("/"):
            rejected.append((key, "unsafe key: it would escape the symbol's folder"))
            continue
        if name.endswith(".CHECKSUM"):
            continue
        if not name.endswith(".zip"):
            continue  # other objects (e.g. stray files) are not archives; nothing to do with them
        try:
            spec = parse_archive_name(market, granularity, name, dataset)
        except (UnsafePath, ValueError):  # e.g. a symbol part longer than a symbol may be
            spec = None
        if spec is None or spec.symbol != symbol:
            rejected.append((key, f"unexpected archive name {name!r} for {symbol} {granularity}"))
            continue
        archives[spec] = obj.size
    # With a delimiter, a key such as `.../BTCUSDT/../../x.zip` comes back as the "folder"
    # `.../BTCUSDT/../`: a symbol folder has no sub-folders, so each one is reported.
    for folder in folders:
        rest = folder[len(prefix) :] if folder.startswith(prefix) else folder
        unsafe = not folder.startswith(prefix) or ".." in rest.split("/") or rest.startswith("/")
        reason = "unsafe key: it would escape the symbol's folder" if unsafe else "unexpected sub-folder"
        rejected.append((folder, reason))
    return Discovery(market, symbol, granularity, archives, tuple(rejected), dataset=dataset)


async def discover(
    listing_url: str,
    market: Market,
    symbols: list[str],
    granularities: list[Granularity],
    options: HttpOptions,
    concurrency: int = 8,
    dataset: str = "trades",
) -> list[Discovery]:
    """List every (symbol, granularity) folder concurrently; a folder that cannot be listed fails alone.

    Its Discovery then carries `error` (naming the page's URL) and no archives.
    """
    sem = asyncio.Semaphore(concurrency)
    async with make_session(options, limit=concurrency) as session:

        async def one(symbol: str, granularity: Granularity) -> Discovery:
            try:
                async with sem:
                    prefix = symbol_prefix(market, granularity, symbol, dataset)
                    objects, folders = await list_prefix(session, listing_url, prefix, options)
                return classify_keys(market, granularity, symbol, objects, folders, dataset)
            except PipelineError as exc:  # a malformed page or a dead folder costs only this folder
                return Discovery(market, symbol, granularity, error=describe(exc),
                                 transient=isinstance(exc, TransientNetworkError), dataset=dataset)

        return list(await asyncio.gather(*(one(s, g) for s in symbols for g in granularities)))


async def list_symbols(
    listing_url: str, market: Market, granularity: Granularity, options: HttpOptions, dataset: str = "trades"
) -> list[str]:
    """Every symbol folder of a market (spot alone has more than 1,000: pagination matters).

    A folder whose name is not a symbol (`[A-Z0-9_]{1,40}`: e.g. `../`, a space, lower case, a
    trailing newline) is left out and logged, so one odd folder cannot stop an update of all.
    """
    base = dataset_prefix(market, granularity, dataset)
    async with make_session(options) as session:
        _, prefixes = await list_prefix(session, listing_url, base, options)
    symbols = []
    for p in prefixes:
        name = p[len(base) :] if p.startswith(base) else None
        name = name[:-1] if name and name.endswith("/") else None
        if name is not None and SYMBOL_RE.fullmatch(name):
            symbols.append(name)
        else:
            log.warning("listing %s: folder %r is not a symbol folder; skipped", listing_url, p)
    return sorted(set(symbols))
