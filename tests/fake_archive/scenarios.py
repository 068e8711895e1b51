"""Published worlds for end-to-end tests: what is on the fake archive, and what the pipeline should make of it.

`build_standard_archive(fa)` publishes the standard world (every hard case of the archive doc that
lives in the data: headers, µs, missing day, bad checksum, interleaved and duplicated monthly rows,
id gap) and returns a `StandardArchive` describing each file. `publish_day` / `publish_month`
publish one more file for a test of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

from tasks.source.archive_spec import ArchiveSpec, Granularity, Market
from tests.fake_archive.generate import (
    TimeLike,
    TimeUnit,
    Trades,
    default_base_price,
    default_header,
    default_time_unit,
    generate_trades,
    render_csv,
    sha256_hex,
)
from tests.fake_archive.server import FakeArchive

#: `PublishedArchive.bad` for an archive whose .CHECKSUM disagrees with it (the pipeline's error kind).
CHECKSUM_MISMATCH = "checksum mismatch"


@dataclass(frozen=True, eq=False)
class PublishedArchive:
    """One published zip, and what the pipeline should read from it."""

    spec: ArchiveSpec
    trades: Trades  # the rows exactly as in the file (file order, duplicates included)
    header: bool  # the CSV starts with a header line
    time_unit: TimeUnit  # unit of the `time` column in the file
    sha256: str  # real sha256 of the zip
    advertised_sha256: str | None  # sha256 in the .CHECKSUM file
    zip_size: int
    csv_size: int
    id_gaps: tuple[tuple[int, int], ...] = ()  # missing ids inside the file, (first, last) inclusive
    duplicates: int = 0  # exact duplicate rows the file carries
    interleaved: bool = False  # rows are not in id order (two interleaved id streams)
    bad: str | None = None  # why the pipeline must refuse the file (e.g. "checksum mismatch"), None if good

    @property
    def key(self) -> str:
        """`data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip`."""
        return self.spec.key

    @property
    def checksum_key(self) -> str:
        """Key of the `.CHECKSUM` sibling."""
        return self.spec.key + ".CHECKSUM"

    @property
    def is_bad(self) -> bool:
        """True when the pipeline must not ingest it."""
        return self.bad is not None

    @property
    def rows(self) -> int:
        """Data lines in the CSV (header excluded, duplicates included)."""
        return len(self.trades)

    @property
    def expected_rows(self) -> int:
        """Rows once sorted by id and de-duplicated: what the lake should hold."""
        return self.rows - self.duplicates

    @property
    def first_id(self) -> int:
        """Smallest trade id in the file."""
        return self.trades.first_id

    @property
    def last_id(self) -> int:
        """Largest trade id in the file."""
        return self.trades.last_id

    @property
    def first_time_us(self) -> int:
        """Earliest trade time as the lake stores it (µs; ms files give whole milliseconds)."""
        return int(self.lake_time_us().min())

    @property
    def last_time_us(self) -> int:
        """Latest trade time as the lake stores it (µs)."""
        return int(self.lake_time_us().max())

    def lake_time_us(self) -> np.ndarray:
        """Per-row times (file order) in µs, exactly as parsed from the file (never the hidden µs of ms files)."""
        times = self.trades.time(self.time_unit)
        return times if self.time_unit == "us" else times * 1000

    def expected(self) -> Trades:
        """The rows the lake should hold: sorted by id, exact duplicates dropped."""
        return self.trades.sorted_unique()[0]

    def url(self, base_url: str) -> str:
        """URL of the zip under `base_url`."""
        return self.spec.url(base_url)


@dataclass(frozen=True)
class MissingArchive:
    """An archive that was never published (404), and the ids it would have held."""

    spec: ArchiveSpec
    first_id: int
    last_id: int
    reason: str = "not published"


@dataclass
class StandardArchive:
    """Everything `build_standard_archive` published, keyed by archive key."""

    base_url: str
    listing_url: str
    archives: dict[str, PublishedArchive] = field(default_factory=dict)
    missing: dict[str, MissingArchive] = field(default_factory=dict)

    def get(
        self, market: Market, symbol: str, period: str | date, granularity: Granularity | None = None
    ) -> PublishedArchive:
        """The archive of `period` (`"2024-01-01"` daily, `"2024-02"` monthly, or a date plus granularity)."""
        spec = make_spec(market, symbol, period, granularity)
        return self.archives[spec.key]

    def select(
        self,
        *,
        market: Market | None = None,
        symbol: str | None = None,
        granularity: Granularity | None = None,
        bad: bool | None = None,
    ) -> list[PublishedArchive]:
        """Published archives matching every given filter, sorted by spec."""
        found = [
            a
            for a in self.archives.values()
            if (market is None or a.spec.market == market)
            and (symbol is None or a.spec.symbol == symbol)
            and (granularity is None or a.spec.granularity == granularity)
            and (bad is None or a.is_bad == bad)
        ]
        return sorted(found, key=lambda a: a.spec)

    @property
    def good(self) -> list[PublishedArchive]:
        """Archives the pipeline must ingest."""
        return self.select(bad=False)

    @property
    def bad(self) -> list[PublishedArchive]:
        """Archives the pipeline must refuse (see `.bad` for why)."""
        return self.select(bad=True)

    @property
    def id_gaps(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Deliberate id gaps inside files, per archive key."""
        return {k: a.id_gaps for k, a in self.archives.items() if a.id_gaps}


def make_spec(market: Market, symbol: str, period: str | date, granularity: Granularity | None = None) -> ArchiveSpec:
    """`ArchiveSpec` from `"2024-01-01"` (daily), `"2024-02"` (monthly) or a date (daily unless told)."""
    if isinstance(period, str):
        parts = [int(p) for p in period.split("-")]
        if len(parts) == 2:
            return ArchiveSpec(market, symbol, "monthly", date(parts[0], parts[1], 1))
        period = date(parts[0], parts[1], parts[2])
    gran = granularity or "daily"
    return ArchiveSpec(market, symbol, gran, period.replace(day=1) if gran == "monthly" else period)


def interleave_streams(trades: Trades, block: int) -> Trades:
    """Reorder id-sorted rows as two interleaved id streams (binance-public-data #240, #293, #339).

    Stream A holds the even-indexed rows, stream B the odd ones; the file alternates blocks of
    `block` rows: A[0:block], B[0:block], A[block:2*block], ... so ids go 1,3,5,..., 2,4,6,...
    """
    order = np.arange(len(trades))
    a, b = order[0::2], order[1::2]
    pieces = []
    for lo in range(0, max(len(a), len(b)), block):
        pieces += [a[lo : lo + block], b[lo : lo + block]]
    return trades.take(np.concatenate(pieces))


def add_duplicates(trades: Trades, count: int, seed: int) -> Trades:
    """Insert `count` exact copies of distinct random rows, each at a later random position (#203)."""
    if count == 0:
        return trades
    rng = np.random.default_rng(seed)
    order = np.arange(len(trades))
    for src in rng.choice(len(trades), size=count, replace=False):
        pos = int(np.flatnonzero(order == src)[0])
        order = np.insert(order, int(rng.integers(pos + 1, len(order) + 1)), src)
    return trades.take(order)


def publish_trades(
    fa: FakeArchive,
    spec: ArchiveSpec,
    trades: Trades,
    *,
    header: bool | None = None,
    time_unit: TimeUnit | None = None,
    bad_checksum: bool = False,
    duplicates: int = 0,
    interleaved: bool = False,
    id_gaps: Iterable[tuple[int, int]] = (),
) -> PublishedArchive:
    """Render `trades` (in their order) in the spec's dialect, publish zip + .CHECKSUM, describe it.

    `duplicates`, `interleaved` and `id_gaps` only describe what the rows already are.
    With `bad_checksum`, the .CHECKSUM advertises another (well-formed) sha256.
    """
    with_header = default_header(spec.market, spec.first_day) if header is None else header
    unit = default_time_unit(spec.market, spec.first_day) if time_unit is None else time_unit
    csv = render_csv(trades, spec.market, spec.first_day, header=with_header, time_unit=unit)
    override = None
    if bad_checksum:
        override = sha256_hex(b"republished " + spec.key.encode())  # plausible, but not this zip's
    stored = fa.publish(spec, csv, checksum_override=override)
    return PublishedArchive(
        spec=spec,
        trades=trades,
        header=with_header,
        time_unit=unit,
        sha256=stored.sha256,
        advertised_sha256=stored.advertised_sha256,
        zip_size=stored.size,
        csv_size=len(csv),
        id_gaps=tuple(id_gaps),
        duplicates=duplicates,
        interleaved=interleaved,
        bad=CHECKSUM_MISMATCH if bad_checksum else None,
    )


def publish_day(
    fa: FakeArchive,
    market: Market,
    symbol: str,
    day: date | str,
    n_rows: int,
    first_id: int,
    seed: int,
    header: bool | None = None,
    *,
    time_unit: TimeUnit | None = None,
    gaps: Iterable[tuple[int, int]] = (),
    bad_checksum: bool = False,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    base_price: float | None = None,
) -> PublishedArchive:
    """Publish one daily archive of `n_rows` trades with ids from `first_id` (skipping `gaps`).

    Times fall in the day, or in [start, end) if given (e.g. a truncated day ending at noon).
    """
    spec = make_spec(market, symbol, day if isinstance(day, str) else day.isoformat())
    gaps = tuple(gaps)
    trades = generate_trades(
        n_rows,
        spec.start if start is None else start,
        spec.end if end is None else end,
        first_id,
        seed,
        market=market,
        gaps=gaps,
        base_price=default_base_price(symbol) if base_price is None else base_price,
    )
    return publish_trades(fa, spec, trades, header=header, time_unit=time_unit, bad_checksum=bad_checksum, id_gaps=gaps)


def publish_month(
    fa: FakeArchive,
    market: Market,
    symbol: str,
    month: date | str,
    n_rows: int,
    first_id: int,
    seed: int,
    header: bool | None = None,
    *,
    time_unit: TimeUnit | None = None,
    gaps: Iterable[tuple[int, int]] = (),
    interleave_block: int | None = None,
    duplicates: int = 0,
    bad_checksum: bool = False,
    base_price: float | None = None,
) -> PublishedArchive:
    """Publish one monthly archive (`"2024-02"` or any date in the month) spread over the whole month.

    `interleave_block` writes the rows as two interleaved id streams in blocks of that size;
    `duplicates` inserts that many exact duplicate rows.
    """
    if isinstance(month, str):
        month = date.fromisoformat(month + "-01")
    spec = ArchiveSpec(market, symbol, "monthly", month.replace(day=1))
    gaps = tuple(gaps)
    trades = generate_trades(
        n_rows,
        spec.start,
        spec.end,
        first_id,
        seed,
        market=market,
        gaps=gaps,
        base_price=default_base_price(symbol) if base_price is None else base_price,
    )
    if interleave_block:
        trades = interleave_streams(trades, interleave_block)
    trades = add_duplicates(trades, duplicates, seed + 1)
    return publish_trades(
        fa,
        spec,
        trades,
        header=header,
        time_unit=time_unit,
        bad_checksum=bad_checksum,
        duplicates=duplicates,
        interleaved=bool(interleave_block),
        id_gaps=gaps,
    )


def build_standard_archive(
    fa: FakeArchive, *, rows_per_day: int = 1200, rows_per_month: int = 2900, seed: int = 7
) -> StandardArchive:
    """Publish the standard world on `fa` and describe it.

    | market | symbol | archives | what is special |
    |---|---|---|---|
    | spot | BTCUSDT | daily 2024-01-01, 01-03 | 01-02 never published (its ids skipped); 01-03 lacks 10 ids |
    | spot | BTCUSDT | daily 2025-01-01..02 | µs times |
    | spot | ETHUSDT | daily 2024-01-01..03 | 01-03 has a bad .CHECKSUM |
    | um | BTCUSDT | daily 2022-08-10, 2022-08-11 | headerless, then with header |
    | um | BTCUSDT | monthly 2024-02 | two interleaved id streams and one exact duplicate row |
    | um | BTCUSDT | daily 2024-03-01..02 | ids continue the month |
    | cm | BTCUSD_PERP | daily 2024-01-01, 2024-01-02 | header, then no header |

    Ids continue across adjacent periods of a symbol (next first id = previous last id + 1);
    a missing day consumes `rows_per_day` ids, as the real trades of that day did.
    """
    world = StandardArchive(fa.base_url, fa.listing_url)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))

    def add(archive: PublishedArchive) -> int:
        world.archives[archive.key] = archive
        return archive.last_id + 1

    def days(first: str, count: int) -> list[date]:
        d0 = date.fromisoformat(first)
        return [d0 + timedelta(days=i) for i in range(count)]

    n = rows_per_day
    # spot BTCUSDT, January 2024: the 2nd is missing, the 3rd has an id gap.
    next_id = add(publish_day(fa, "spot", "BTCUSDT", "2024-01-01", n, 3_350_000_000, next(seeds)))
    missing = make_spec("spot", "BTCUSDT", "2024-01-02")
    world.missing[missing.key] = MissingArchive(missing, next_id, next_id + n - 1)
    next_id += n
    offset = 1000 if n > 1010 else n // 2
    gap = (next_id + offset, next_id + offset + 9)
    add(publish_day(fa, "spot", "BTCUSDT", "2024-01-03", n, next_id, next(seeds), gaps=[gap]))

    # spot BTCUSDT, January 2025: microsecond times.
    next_id = 4_380_000_000
    for day in days("2025-01-01", 2):
        next_id = add(publish_day(fa, "spot", "BTCUSDT", day, n, next_id, next(seeds), base_price=94_000.0))

    # spot ETHUSDT: the third day's .CHECKSUM is wrong.
    next_id = 2_250_000_000
    for i, day in enumerate(days("2024-01-01", 3)):
        next_id = add(publish_day(fa, "spot", "ETHUSDT", day, n, next_id, next(seeds), bad_checksum=i == 2))

    # um BTCUSDT around the header change of 2022-08-11.
    next_id = 2_630_000_000
    for day in days("2022-08-10", 2):
        next_id = add(publish_day(fa, "um", "BTCUSDT", day, n, next_id, next(seeds), base_price=23_900.0))

    # um BTCUSDT: a whole month (interleaved, one duplicate), then daily files after it.
    next_id = add(
        publish_month(
            fa,
            "um",
            "BTCUSDT",
            "2024-02",
            rows_per_month,
            4_510_000_000,
            next(seeds),
            interleave_block=max(rows_per_month // 20, 2),
            duplicates=1,
            base_price=48_000.0,
        )
    )
    for day in days("2024-03-01", 2):
        next_id = add(publish_day(fa, "um", "BTCUSDT", day, n, next_id, next(seeds), base_price=61_000.0))

    # cm BTCUSD_PERP: header on the first day, none on the second.
    next_id = 950_000_000
    for day, header in zip(days("2024-01-01", 2), (True, False), strict=True):
        next_id = add(publish_day(fa, "cm", "BTCUSD_PERP", day, n, next_id, next(seeds), header=header))
    return world
