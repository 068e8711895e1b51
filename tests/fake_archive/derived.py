"""aggTrades and klines derived from generated trades, rendered in the archive's exact dialects.

Binance publishes all three datasets from the same trades; the fake archive does too, so
the audit can check one against the other. Values stay fixed-point integers until they
are rendered, so each CSV string is exact.

- aggTrades: consecutive trades of one taker order (same price, side and time) are one row,
  `agg_trade_id, price, qty, first_trade_id, last_trade_id, time, is_buyer_maker
  [, is_best_match]`; the header on futures is `agg_trade_id,price,quantity,...`.
- klines: one row per interval of the period, also without trades (OHLC at the last
  close, zero volume), `open_time, open, high, low, close, volume, close_time,
  quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from tasks.source.archive_spec import Market
from tests.fake_archive.generate import (
    PRICE_DECIMALS,
    SPOT_DECIMALS,
    TimeUnit,
    Trades,
    _bool_segment,
    _const,
    _fixed_segments,
    _int_segment,
    _join,
    default_header,
    default_time_unit,
)

AGG_HEADER = b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
KLINE_HEADER = (b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                b"taker_buy_quote_volume,ignore\n")


def with_orders(trades: Trades, seed: int, mean_fills: float = 2.0) -> Trades:
    """The same trades, regrouped into taker orders: runs of fills sharing price, side and time.

    Each run takes its first trade's price, side and time, so `aggregate` folds it into one
    aggTrade; runs have a geometric length of mean `mean_fills`.
    """
    n = len(trades)
    rng = np.random.default_rng(seed)
    starts = np.flatnonzero(np.concatenate([[True], rng.random(n - 1) < 1.0 / mean_fills]))
    owner = np.repeat(starts, np.diff(np.concatenate([starts, [n]])))
    return Trades(
        id=trades.id.copy(),
        time_us=trades.time_us[owner],
        price_ticks=trades.price_ticks[owner],
        qty_units=trades.qty_units.copy(),
        is_buyer_maker=trades.is_buyer_maker[owner],
        is_best_match=trades.is_best_match.copy(),
        qty_decimals=trades.qty_decimals,
    )


@dataclass(frozen=True, eq=False)
class AggTrades:
    """aggTrades as fixed-point integer columns (quantities in the trades' units)."""

    agg_id: np.ndarray
    price_ticks: np.ndarray
    qty_units: np.ndarray
    first_trade_id: np.ndarray
    last_trade_id: np.ndarray
    time_us: np.ndarray
    is_buyer_maker: np.ndarray
    is_best_match: np.ndarray
    qty_decimals: int

    def __len__(self) -> int:
        return int(self.agg_id.shape[0])

    def take(self, index: np.ndarray | slice) -> AggTrades:
        """A subset of the rows, in the given order."""
        return AggTrades(self.agg_id[index], self.price_ticks[index], self.qty_units[index],
                         self.first_trade_id[index], self.last_trade_id[index], self.time_us[index],
                         self.is_buyer_maker[index], self.is_best_match[index], self.qty_decimals)


def aggregate(trades: Trades, first_agg_id: int = 1) -> AggTrades:
    """Fold consecutive trades (in id order) of equal price, side and time into aggTrades."""
    new = np.ones(len(trades), dtype=bool)
    new[1:] = ((trades.price_ticks[1:] != trades.price_ticks[:-1])
               | (trades.is_buyer_maker[1:] != trades.is_buyer_maker[:-1])
               | (trades.time_us[1:] != trades.time_us[:-1])
               | (trades.id[1:] != trades.id[:-1] + 1))  # an id gap ends an order
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(trades)]]) - 1
    return AggTrades(
        agg_id=first_agg_id + np.arange(len(starts), dtype=np.int64),
        price_ticks=trades.price_ticks[starts],
        qty_units=np.add.reduceat(trades.qty_units, starts),
        first_trade_id=trades.id[starts],
        last_trade_id=trades.id[ends],
        time_us=trades.time_us[starts],
        is_buyer_maker=trades.is_buyer_maker[starts],
        is_best_match=trades.is_best_match[starts],
        qty_decimals=trades.qty_decimals,
    )


def render_agg_csv(agg: AggTrades, market: Market, day: date, *, header: bool | None = None,
                   time_unit: TimeUnit | None = None) -> bytes:
    """The aggTrades CSV Binance would publish for these rows (dialect of `market` on `day`)."""
    with_header = default_header(market, day) if header is None else header
    unit = default_time_unit(market, day) if time_unit is None else time_unit
    if market == "spot":
        up, uq = 10 ** (SPOT_DECIMALS - PRICE_DECIMALS), 10 ** (SPOT_DECIMALS - agg.qty_decimals)
        price = _fixed_segments(agg.price_ticks * up, SPOT_DECIMALS)
        qty = _fixed_segments(agg.qty_units * uq, SPOT_DECIMALS)
    else:
        price = _fixed_segments(agg.price_ticks, PRICE_DECIMALS)
        qty = _fixed_segments(agg.qty_units, agg.qty_decimals)
    times = agg.time_us if unit == "us" else agg.time_us // 1000
    true, false = (b"True", b"False") if market == "spot" else (b"true", b"false")
    cols = [[_int_segment(agg.agg_id)], price, qty, [_int_segment(agg.first_trade_id)],
            [_int_segment(agg.last_trade_id)], [_int_segment(times)], [_bool_segment(agg.is_buyer_maker, true, false)]]
    if market == "spot":
        cols.append([_bool_segment(agg.is_best_match, true, false)])
    segments: list[np.ndarray] = []
    for i, col in enumerate(cols):
        if i:
            segments.append(_const(b","))
        segments += col
    segments.append(_const(b"\n"))
    header_line = (b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,"
                   b"is_best_match\n") if market == "spot" else AGG_HEADER
    return (header_line if with_header else b"") + _join(segments, len(agg))


@dataclass(frozen=True, eq=False)
class Klines:
    """Klines as fixed-point integer columns: prices in ticks, volumes in the trades' units."""

    open_time_us: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume_units: np.ndarray
    quote_units: np.ndarray  # price ticks * qty units
    trades: np.ndarray
    taker_buy_units: np.ndarray
    taker_buy_quote_units: np.ndarray
    interval_us: int
    qty_decimals: int

    def __len__(self) -> int:
        return int(self.open_time_us.shape[0])


def klines_of(trades: Trades, start_us: int, end_us: int, interval_us: int = 60_000_000) -> Klines:
    """Klines of every interval in [start_us, end_us), from trades in time order (empty ones at the last close)."""
    n = (end_us - start_us) // interval_us
    slot = (trades.time_us - start_us) // interval_us
    counts = np.bincount(slot, minlength=n)[:n]
    has = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = starts + counts - 1
    idx_s, idx_e = starts[has], ends[has]
    price = trades.price_ticks
    open_, close, high, low = (np.zeros(n, dtype=np.int64) for _ in range(4))
    open_[has], close[has] = price[idx_s], price[idx_e]
    if has.any():
        high[has], low[has] = np.maximum.reduceat(price, idx_s), np.minimum.reduceat(price, idx_s)
    # Empty intervals carry the last close (before the first trade: the first trade's price).
    last = np.maximum.accumulate(np.where(has, np.arange(n), -1))
    carry = np.where(last >= 0, close[np.maximum(last, 0)], price[0])
    for a in (open_, close, high, low):
        a[~has] = carry[~has]
    quote = trades.price_ticks * trades.qty_units
    buy = ~trades.is_buyer_maker
    return Klines(
        open_time_us=start_us + interval_us * np.arange(n, dtype=np.int64),
        open=open_, high=high, low=low, close=close,
        volume_units=_sum(slot, trades.qty_units, n),
        quote_units=_sum(slot, quote, n),
        trades=counts.astype(np.int64),
        taker_buy_units=_sum(slot[buy], trades.qty_units[buy], n),
        taker_buy_quote_units=_sum(slot[buy], quote[buy], n),
        interval_us=interval_us,
        qty_decimals=trades.qty_decimals,
    )


def _sum(slot: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, slot, values)
    return out


def _fixed(units: int, decimals: int, width: int | None = None) -> str:
    scale = 10**decimals
    text = f"{units // scale}.{units % scale:0{decimals}d}" if decimals else str(units)
    if width is not None and decimals:  # spot: always `width` decimals
        text = f"{units // scale}.{(units % scale) * 10 ** (width - decimals):0{width}d}"
    return text


def render_klines_csv(k: Klines, market: Market, day: date, *, header: bool | None = None,
                      time_unit: TimeUnit | None = None) -> bytes:
    """The klines CSV Binance would publish for these rows (spot: 8 decimals; futures: a header)."""
    with_header = default_header(market, day) if header is None else header
    unit = default_time_unit(market, day) if time_unit is None else time_unit
    per = 1 if unit == "us" else 1000
    qd = k.qty_decimals
    spot = market == "spot"
    lines = []
    for i in range(len(k)):
        o = int(k.open_time_us[i])
        prices = [_fixed(int(v), PRICE_DECIMALS, SPOT_DECIMALS if spot else None)
                  for v in (k.open[i], k.high[i], k.low[i], k.close[i])]
        vol = _fixed(int(k.volume_units[i]), qd, SPOT_DECIMALS if spot else None)
        quote = _fixed(int(k.quote_units[i]), PRICE_DECIMALS + qd, SPOT_DECIMALS if spot else None)
        buy = _fixed(int(k.taker_buy_units[i]), qd, SPOT_DECIMALS if spot else None)
        buy_quote = _fixed(int(k.taker_buy_quote_units[i]), PRICE_DECIMALS + qd, SPOT_DECIMALS if spot else None)
        close_time = (o + k.interval_us) // per - 1
        lines.append(f"{o // per},{','.join(prices)},{vol},{close_time},{quote},{int(k.trades[i])},{buy},"
                     f"{buy_quote},0\n")
    return (KLINE_HEADER if with_header else b"") + "".join(lines).encode()


def publish_derived(fa: object, market: Market, symbol: str, day: date, trades: Trades,
                    first_agg_id: int = 1) -> dict[str, object]:
    """Publish the day's aggTrades and 1m klines, derived from `trades`, beside its trades archive.

    Returns {dataset id: (spec, rows)}; `fa` is a `FakeArchive`.
    """
    from datetime import UTC, datetime, timedelta

    from tasks.source.archive_spec import ArchiveSpec

    start = int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000
    end = start + int(timedelta(days=1).total_seconds()) * 1_000_000
    agg = aggregate(trades, first_agg_id)
    k = klines_of(trades, start, end)
    out: dict[str, object] = {}
    for ds, body, rows in (("aggTrades", render_agg_csv(agg, market, day), len(agg)),
                           ("klines-1m", render_klines_csv(k, market, day), len(k))):
        spec = ArchiveSpec(market, symbol, "daily", day, ds)
        fa.publish(spec, body)  # type: ignore[attr-defined]
        out[ds] = (spec, rows)
    return out
