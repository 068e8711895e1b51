"""The archive's datasets, each declared once: paths, CSV dialects, schema, key and continuity.

A stage never names a dataset's columns itself: it reads them from its `Dataset`. Adding
a dataset is adding a declaration here (and, for speed, its parser's fast path).

What the archive publishes (docs/binance-archive.md):

- `trades`: one row per trade, keyed by `trade_id` (consecutive ids; gaps are real, #363).
- `aggTrades`: trades of one taker order at one price folded into one row, keyed by
  `agg_trade_id`; each row covers trade ids `first_trade_id..last_trade_id`, and the next
  row starts at `last_trade_id + 1`.
- `klines`: one row per interval, keyed by `open_time`; every published interval is its
  own dataset (`klines-1m`), in its own archive folder and lake folder.
- `fundingRate` (USD-M and COIN-M, monthly archives only): one row per funding event,
  keyed by `calc_time`; the interval between events is the row's `funding_interval_hours`,
  not always 8 h (freqtrade#12583), so no spacing is imposed, only order.
- `indexPriceKlines`, `markPriceKlines`, `premiumIndexKlines` (USD-M and COIN-M): kline-shaped,
  one dataset per interval like klines; only prices and the sample count carry data.
- `bookTicker` (USD-M and COIN-M, daily; publication ended, `dataset_ids.PUBLICATION_ENDED`):
  the best bid and ask at each order book update, keyed by `update_id` (increasing, not
  consecutive). Days of 10 M rows and more: converted streaming like trades.
- `bookDepth` (USD-M and COIN-M, daily archives only): per snapshot (about every 30 s, time
  as text to the second), one row per percentage band around the mid price (`-5` .. `5`,
  also written `-5.00`) with the cumulative depth and notional. A row is keyed by its
  snapshot and band together (`band_key`): snapshots share their time.
- `metrics` (USD-M and COIN-M, daily archives only): one row per 5 minutes, keyed by
  `create_time`, written as text (`2024-01-01 00:05:00`, UTC): open interest and its value,
  the top traders' long/short ratios, the taker buy/sell volume ratio.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from tasks import dataset_ids as ids
from tasks.dataset_ids import DATASET_NAMES as DATASET_NAMES
from tasks.dataset_ids import KLINE_INTERVALS as KLINE_INTERVALS
from tasks.dataset_ids import MONTHLY_ONLY_INTERVALS as MONTHLY_ONLY_INTERVALS
from tasks.dataset_ids import dataset_ids as dataset_ids

TIME_TYPE = pa.timestamp("us", tz="UTC")

#: How a dataset's rows follow each other: consecutive ids (`ids`), one row per interval
#: (`interval`, spaced by `step_us` where it is fixed), or in strictly increasing key order
#: with no spacing rule (`ordered`).
Continuity = Literal["ids", "interval", "ordered"]

@dataclass(frozen=True)
class Dataset:
    """One dataset of the archive, as every stage needs to know it.

    `csv_columns[market]` names the CSV's columns in file order with their lake names
    (`csv_drop` lists the ones not kept); `csv_headers[market]` is the header line a file
    carries when it has one (None: that market's files never have one; `header_aliases`
    lists other spellings seen upstream). `epoch_columns` hold epoch times in ms or µs
    (the unit is sniffed per file from `time`), stored as `timestamp[us, UTC]`. `key` is
    the column the lake is sorted and de-duplicated by, strictly increasing; `time` the
    column that must lie inside the archive's period. `positive` columns must be finite
    and > 0, `non_negative` finite and >= 0; in each `ordered` pair (a, b), a <= b on every row.
    `chain` (aggTrades) names the columns of a row's range, which the next row continues.
    """

    name: str
    schema: pa.Schema
    key: str
    time: str
    csv_columns: Mapping[str, tuple[str, ...]]
    csv_headers: Mapping[str, tuple[str, ...] | None]
    csv_types: Mapping[str, pa.DataType]
    epoch_columns: tuple[str, ...]
    continuity: Continuity
    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    ordered: tuple[tuple[str, str], ...] = ()
    chain: tuple[str, str] | None = None
    csv_drop: tuple[str, ...] = ()
    header_aliases: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    interval: str | None = None
    #: Dictionary-encode the float columns (else PLAIN, zstd-compressed): see `tasks/lake/writer.py`.
    dictionary_floats: bool = True
    #: Epoch columns the CSV writes as `YYYY-MM-DD HH:MM:SS` (UTC) instead of a number (metrics).
    text_time_columns: tuple[str, ...] = ()
    #: The spacing of `interval` rows of a dataset that is not klines (metrics: 5 minutes).
    fixed_step_us: int | None = None
    #: The epoch columns that must lie inside the archive's period (None: all of them).
    period_columns: tuple[str, ...] | None = None
    #: (time, level): the key is built from two columns, as `time` ms x 100,000 + `level` x 100
    #: + 50,000, for rows keyed by a time and a level (bookDepth: a snapshot and its percentage band).
    band_key: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        """`trades`, `aggTrades`, `klines-1m`: the name stages, reports and paths use."""
        return self.name if self.interval is None else f"{self.name}-{self.interval}"

    @property
    def step_us(self) -> int | None:
        """Interval rows: their spacing in µs (None for `1mo` klines); None for id-keyed datasets."""
        return KLINE_INTERVALS[self.interval] if self.interval is not None else self.fixed_step_us

    def archive_folder(self, symbol: str) -> str:
        """The folder under `data/<market>/<granularity>/`: `trades/BTCUSDT/`, `klines/BTCUSDT/1m/`."""
        return ids.archive_folder(self.id, symbol)

    @property
    def file_tag(self) -> str:
        """The word between symbol and date in file names: `trades`, `aggTrades`, `1m`."""
        return ids.file_tag(self.id)

    @property
    def lake_folder(self) -> str:
        """The folder under `lake/` (and `staging/`): `trades`, `aggTrades`, `klines/interval=1m`."""
        return ids.lake_folder(self.id)

    @property
    def non_nullable(self) -> tuple[str, ...]:
        """Columns that must never be null."""
        return tuple(f.name for f in self.schema if not f.nullable)

    def columns_for(self, market: str) -> tuple[str, ...]:
        """The CSV's columns for `market`, named as in the lake."""
        return self.csv_columns[market]

    def same_columns(self, schema: pa.Schema) -> bool:
        """True when `schema` has exactly this dataset's names, types and nullability (metadata aside)."""
        return schema.remove_metadata().equals(self.schema.remove_metadata(), check_metadata=False) and all(
            schema.field(i).nullable == self.schema.field(i).nullable for i in range(len(self.schema))
        )


TRADES = Dataset(
    name="trades",
    # COIN-M archives carry `base_qty` (size in the base asset; `qty` counts contracts) where
    # spot and USD-M carry `quote_qty`: both columns exist and the one a market lacks is null,
    # so a dataset spanning markets never mislabels COIN-M sizes as quote notional.
    schema=pa.schema(
        [
            pa.field("trade_id", pa.int64(), nullable=False),
            pa.field("price", pa.float64(), nullable=False),
            pa.field("qty", pa.float64(), nullable=False),
            pa.field("quote_qty", pa.float64(), metadata={"doc": "price*qty; null on COIN-M"}),
            pa.field("base_qty", pa.float64(), metadata={"doc": "COIN-M only: size in base asset"}),
            pa.field("time", TIME_TYPE, nullable=False),
            pa.field("is_buyer_maker", pa.bool_(), nullable=False),
            pa.field("is_best_match", pa.bool_(), metadata={"doc": "spot only; reserved by Binance"}),
        ]
    ),
    key="trade_id",
    time="time",
    csv_columns={
        "spot": ("trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
        "um": ("trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
        # COIN-M's 4th column is the size in the base asset (`qty` counts contracts).
        "cm": ("trade_id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
    },
    csv_headers={
        "spot": None,
        "um": ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
        "cm": ("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
    },
    csv_types={
        "trade_id": pa.int64(),  # ids exceed 2**31
        "price": pa.float64(),
        "qty": pa.float64(),
        "quote_qty": pa.float64(),
        "base_qty": pa.float64(),
        "time": pa.int64(),  # converted to timestamp[us, UTC] once the unit is known
        "is_buyer_maker": pa.bool_(),
        "is_best_match": pa.bool_(),
    },
    epoch_columns=("time",),
    continuity="ids",
    positive=("trade_id", "price", "qty"),
    non_negative=("quote_qty", "base_qty"),
)

_AGG_HEADER = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
               "is_buyer_maker")

AGG_TRADES = Dataset(
    name="aggTrades",
    schema=pa.schema(
        [
            pa.field("agg_trade_id", pa.int64(), nullable=False),
            pa.field("price", pa.float64(), nullable=False),
            pa.field("qty", pa.float64(), nullable=False),
            pa.field("first_trade_id", pa.int64(), nullable=False),
            pa.field("last_trade_id", pa.int64(), nullable=False),
            pa.field("time", TIME_TYPE, nullable=False),
            pa.field("is_buyer_maker", pa.bool_(), nullable=False),
            pa.field("is_best_match", pa.bool_(), metadata={"doc": "spot only; reserved by Binance"}),
        ]
    ),
    key="agg_trade_id",
    time="time",
    csv_columns={
        "spot": ("agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time", "is_buyer_maker",
                 "is_best_match"),
        "um": ("agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time", "is_buyer_maker"),
        "cm": ("agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time", "is_buyer_maker"),
    },
    csv_headers={"spot": None, "um": _AGG_HEADER, "cm": _AGG_HEADER},
    csv_types={
        "agg_trade_id": pa.int64(),
        "price": pa.float64(),
        "qty": pa.float64(),
        "first_trade_id": pa.int64(),
        "last_trade_id": pa.int64(),
        "time": pa.int64(),
        "is_buyer_maker": pa.bool_(),
        "is_best_match": pa.bool_(),
    },
    epoch_columns=("time",),
    continuity="ids",
    positive=("agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id"),
    ordered=(("first_trade_id", "last_trade_id"),),
    chain=("first_trade_id", "last_trade_id"),
)

_KLINE_CSV = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
              "taker_buy_base", "taker_buy_quote", "ignore")
_KLINE_HEADER = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
                 "taker_buy_volume", "taker_buy_quote_volume", "ignore")
_KLINE_FLOATS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote")
KLINES_SCHEMA = pa.schema(
    [
        pa.field("open_time", TIME_TYPE, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("close_time", TIME_TYPE, nullable=False),
        # COIN-M writes its base-asset volume in this column whatever its header says (#267).
        pa.field("quote_volume", pa.float64(), nullable=False, metadata={"doc": "COIN-M: base-asset volume"}),
        pa.field("trades", pa.int64(), nullable=False),
        pa.field("taker_buy_base", pa.float64(), nullable=False),
        pa.field("taker_buy_quote", pa.float64(), nullable=False, metadata={"doc": "COIN-M: base-asset volume"}),
    ]
)


_KLINE_HEADER_ALIASES = (
    ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_asset_volume", "number_of_trades",
     "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume", "ignore"),
    ("open_time", "open", "high", "low", "close", "volume", "close_time", "base_asset_volume", "count",
     "taker_buy_volume", "taker_buy_base_asset_volume", "ignore"),
)
_KLINE_ORDER = (("low", "open"), ("low", "close"), ("open", "high"), ("close", "high"), ("open_time", "close_time"))


@functools.cache
def klines(interval: str) -> Dataset:
    """The klines dataset of one interval (`1s`, `1m` … `1d`, `3d`, `1w`, `1mo`); UnsafePath for another."""
    ids.check_interval(interval)
    return Dataset(
        name="klines",
        interval=interval,
        schema=KLINES_SCHEMA,
        key="open_time",
        time="open_time",
        csv_columns={m: _KLINE_CSV for m in ("spot", "um", "cm")},
        # Headers vary upstream (#283, #246): the documented names, and the spellings seen.
        csv_headers={"spot": _KLINE_HEADER, "um": _KLINE_HEADER, "cm": _KLINE_HEADER},
        header_aliases={m: _KLINE_HEADER_ALIASES for m in ("spot", "um", "cm")},
        csv_types={**{c: pa.float64() for c in _KLINE_FLOATS}, "open_time": pa.int64(), "close_time": pa.int64(),
                   "trades": pa.int64(), "ignore": pa.string()},
        epoch_columns=("open_time", "close_time"),
        continuity="interval",
        positive=("open", "high", "low", "close"),
        non_negative=("volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"),
        ordered=(*_KLINE_ORDER, ("taker_buy_base", "volume")),
        csv_drop=("ignore",),
        # Kline volumes are nearly all distinct: a dictionary is built, overflows and is thrown
        # away. PLAIN + zstd wrote a day of 1s klines in 63 ms and 2.95 MB against 117 ms and
        # 3.21 MB (benchmarks/README.md, bench_datasets).
        dictionary_floats=False,
    )


#: The price klines' CSV: the klines' twelve columns, of which the volume columns are
#: always 0 (no trading behind an index) and the trade count is the number of price samples.
_PRICE_KLINE_CSV = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
                    "taker_buy_base", "taker_buy_quote", "ignore")
_PRICE_KLINE_DROP = ("volume", "quote_volume", "taker_buy_base", "taker_buy_quote", "ignore")
PRICE_KLINES_SCHEMA = pa.schema(
    [KLINES_SCHEMA.field(name) for name in ("open_time", "open", "high", "low", "close", "close_time")]
    + [pa.field("count", pa.int64(), nullable=False, metadata={"doc": "price samples in the interval, as published"})]
)
_PRICE_KLINE_DOCS = {
    "indexPriceKlines": "the index price (the spot exchanges' weighted average) the contract tracks",
    "markPriceKlines": "the mark price, which liquidations and unrealised PnL use",
    "premiumIndexKlines": "the premium index, (mark or impact price - index) / index; it is negative at a discount",
}


@functools.cache
def price_klines(name: str, interval: str) -> Dataset:
    """`indexPriceKlines`, `markPriceKlines` or `premiumIndexKlines` of one interval (USD-M and COIN-M).

    Kline-shaped like klines, and checked the same way (one row per interval, low <= open,
    close <= high), but only the prices and the sample count are kept: the volume columns
    hold 0. The premium index may be zero or negative, so only the index and mark prices
    must be positive.
    """
    ids.parse_id(f"{name}-{interval}")  # UnsafePath for an unknown name or interval, or 1s
    if name not in ids.PRICE_KLINES:
        raise ValueError(f"{name} is not a price klines dataset")
    columns = {m: _PRICE_KLINE_CSV for m in ("um", "cm")}
    return Dataset(
        name=name,
        interval=interval,
        schema=PRICE_KLINES_SCHEMA.with_metadata({"doc": _PRICE_KLINE_DOCS[name]}),
        key="open_time",
        time="open_time",
        csv_columns=columns,
        csv_headers={m: _KLINE_HEADER for m in ("um", "cm")},
        header_aliases={m: _KLINE_HEADER_ALIASES for m in ("um", "cm")},
        csv_types={**{c: pa.float64() for c in ("open", "high", "low", "close", "volume", "quote_volume",
                                                  "taker_buy_base", "taker_buy_quote")},
                   "open_time": pa.int64(), "close_time": pa.int64(), "count": pa.int64(), "ignore": pa.string()},
        epoch_columns=("open_time", "close_time"),
        continuity="interval",
        positive=() if name == "premiumIndexKlines" else ("open", "high", "low", "close"),
        non_negative=("count",),
        ordered=_KLINE_ORDER,
        csv_drop=_PRICE_KLINE_DROP,
        dictionary_floats=False,
    )


_FUNDING_CSV = ("calc_time", "funding_interval_hours", "last_funding_rate")

FUNDING_RATE = Dataset(
    name="fundingRate",
    schema=pa.schema(
        [
            pa.field("calc_time", TIME_TYPE, nullable=False),
            # As published: 8 on most contracts, 4 or 1 on others and when the rate hits its cap.
            pa.field("funding_interval_hours", pa.int64(), nullable=False,
                     metadata={"doc": "hours this funding rate covers, as published (freqtrade#12583)"}),
            pa.field("last_funding_rate", pa.float64(), nullable=False),
        ]
    ),
    key="calc_time",
    time="calc_time",
    csv_columns={m: _FUNDING_CSV for m in ("um", "cm")},
    csv_headers={m: _FUNDING_CSV for m in ("um", "cm")},
    csv_types={"calc_time": pa.int64(), "funding_interval_hours": pa.int64(), "last_funding_rate": pa.float64()},
    epoch_columns=("calc_time",),
    continuity="ordered",
    positive=("funding_interval_hours",),
)


_METRICS_CSV = ("create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio", "count_long_short_ratio",
                "sum_taker_long_short_vol_ratio")
_METRICS_FLOATS = _METRICS_CSV[2:]
_METRICS_DOCS = {
    "sum_open_interest": "open interest, as published",
    "sum_open_interest_value": "open interest value, as published",
    "count_toptrader_long_short_ratio": "top traders' long/short ratio by accounts",
    "sum_toptrader_long_short_ratio": "top traders' long/short ratio by positions",
    "count_long_short_ratio": "all accounts' long/short ratio",
    "sum_taker_long_short_vol_ratio": "taker buy volume / taker sell volume",
}

METRICS = Dataset(
    name="metrics",
    # The published column names are kept, so Binance's documentation of each still applies.
    schema=pa.schema(
        [pa.field("create_time", TIME_TYPE, nullable=False)]
        + [pa.field(c, pa.float64(), nullable=False, metadata={"doc": _METRICS_DOCS[c]}) for c in _METRICS_FLOATS]
    ),
    key="create_time",
    time="create_time",
    csv_columns={m: _METRICS_CSV for m in ("um", "cm")},
    csv_headers={m: _METRICS_CSV for m in ("um", "cm")},
    csv_types={"create_time": pa.timestamp("s"), "symbol": pa.string(), **{c: pa.float64() for c in _METRICS_FLOATS}},
    epoch_columns=("create_time",),
    text_time_columns=("create_time",),
    continuity="interval",
    fixed_step_us=5 * 60_000_000,
    non_negative=_METRICS_FLOATS,
    csv_drop=("symbol",),  # the partition's
)


_BOOK_TICKER_CSV = ("update_id", "best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty",
                    "transaction_time", "event_time")

BOOK_TICKER = Dataset(
    name="bookTicker",
    schema=pa.schema(
        [
            pa.field("update_id", pa.int64(), nullable=False,
                     metadata={"doc": "order book update id: increasing, not consecutive"}),
            pa.field("best_bid_price", pa.float64(), nullable=False),
            pa.field("best_bid_qty", pa.float64(), nullable=False),
            pa.field("best_ask_price", pa.float64(), nullable=False),
            pa.field("best_ask_qty", pa.float64(), nullable=False),
            pa.field("transaction_time", TIME_TYPE, nullable=False, metadata={"doc": "matching engine time"}),
            pa.field("event_time", TIME_TYPE, nullable=False, metadata={"doc": "time the update was sent"}),
        ]
    ),
    key="update_id",
    # The matching engine's time places a row in its day; the event time comes a few ms later
    # and may fall past midnight, so only the transaction time is held to the archive's day.
    time="transaction_time",
    csv_columns={m: _BOOK_TICKER_CSV for m in ("um", "cm")},
    csv_headers={m: _BOOK_TICKER_CSV for m in ("um", "cm")},
    csv_types={"update_id": pa.int64(), "best_bid_price": pa.float64(), "best_bid_qty": pa.float64(),
               "best_ask_price": pa.float64(), "best_ask_qty": pa.float64(), "transaction_time": pa.int64(),
               "event_time": pa.int64()},
    epoch_columns=("transaction_time", "event_time"),
    period_columns=("transaction_time",),
    continuity="ordered",
    positive=("update_id", "best_bid_price", "best_ask_price"),
    non_negative=("best_bid_qty", "best_ask_qty"),
)


_BOOK_DEPTH_CSV = ("timestamp", "percentage", "depth", "notional")

BOOK_DEPTH = Dataset(
    name="bookDepth",
    schema=pa.schema(
        [
            pa.field("row_key", pa.int64(), nullable=False,
                     metadata={"doc": "the sort key: timestamp (ms) x 100,000 + percentage x 100 + 50,000"}),
            pa.field("timestamp", TIME_TYPE, nullable=False, metadata={"doc": "the snapshot's time (seconds)"}),
            pa.field("percentage", pa.float64(), nullable=False,
                     metadata={"doc": "the band: bids below the mid price are negative, asks above positive"}),
            pa.field("depth", pa.float64(), nullable=False, metadata={"doc": "cumulative size within the band"}),
            pa.field("notional", pa.float64(), nullable=False, metadata={"doc": "cumulative notional within it"}),
        ]
    ),
    key="row_key",
    time="timestamp",
    csv_columns={m: _BOOK_DEPTH_CSV for m in ("um", "cm")},
    csv_headers={m: _BOOK_DEPTH_CSV for m in ("um", "cm")},
    csv_types={"timestamp": pa.timestamp("s"), "percentage": pa.float64(), "depth": pa.float64(),
               "notional": pa.float64()},
    epoch_columns=("timestamp",),
    text_time_columns=("timestamp",),
    continuity="ordered",
    non_negative=("depth", "notional"),
    band_key=("timestamp", "percentage"),
)


_BY_ID: dict[str, Dataset] = {TRADES.id: TRADES, AGG_TRADES.id: AGG_TRADES, FUNDING_RATE.id: FUNDING_RATE,
                              METRICS.id: METRICS, BOOK_TICKER.id: BOOK_TICKER, BOOK_DEPTH.id: BOOK_DEPTH}


def dataset(dataset_id: str) -> Dataset:
    """The dataset of an id (`trades`, `klines-1m`, `markPriceKlines-1h`, ...); UnsafePath for an unknown one."""
    found = _BY_ID.get(dataset_id)
    if found is not None:
        return found
    name, interval = ids.parse_id(dataset_id)  # UnsafePath for an unknown id
    assert interval is not None
    return klines(interval) if name == "klines" else price_klines(name, interval)
