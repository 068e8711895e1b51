"""Price klines (`indexPriceKlines`, `markPriceKlines`, `premiumIndexKlines`, USD-M and COIN-M).

Kline-shaped files, in the klines' folder layout (`markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip`)
and with the klines' twelve columns and header. Only prices carry data: `volume`,
`quote_volume` and the taker columns are written as `0`, `count` holds the number of price
samples behind the row. A premium index is a small ratio around zero: negative in a discount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

HEADER = (b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
          b"taker_buy_quote_volume,ignore\n")


@dataclass(frozen=True)
class PriceKlines:
    """Rows of one interval: open times (epoch ms), OHLC, sample counts."""

    open_ms: np.ndarray
    step_ms: int
    ohlc: np.ndarray  # shape (rows, 4)
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.open_ms)


def day_of_price_klines(day: date, step_ms: int = 60_000, seed: int = 0, premium: bool = False) -> PriceKlines:
    """Every interval of `day`: index or mark prices near 42,000, or a premium index around 0."""
    rng = np.random.default_rng(seed)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
    n = 86_400_000 // step_ms
    opens = start + step_ms * np.arange(n, dtype=np.int64)
    level = rng.normal(0, 0.0002, n).cumsum() * 0.1 if premium else 42_000 + rng.normal(0, 8, n).cumsum()
    spread = np.abs(rng.normal(0, 0.00005 if premium else 4, (n, 2)))
    close = level + rng.normal(0, 0.00003 if premium else 2, n)
    high = np.maximum(level, close) + spread[:, 0]
    low = np.minimum(level, close) - spread[:, 1]
    decimals = 8 if premium else 2
    ohlc = np.round(np.column_stack([level, high, low, close]), decimals)
    ohlc[:, 1] = ohlc.max(axis=1)  # rounding must not put the open or close outside [low, high]
    ohlc[:, 2] = ohlc[:, [0, 2, 3]].min(axis=1)
    return PriceKlines(opens, step_ms, ohlc, np.full(n, step_ms // 1000, dtype=np.int64))


def render_price_klines_csv(k: PriceKlines, *, header: bool = True, premium: bool = False) -> bytes:
    """The CSV as published: ms times, prices with 2 decimals (8 for a premium index), zero volumes."""
    fmt = "{:.8f}" if premium else "{:.2f}"
    lines = []
    for t, row, c in zip(k.open_ms.tolist(), k.ohlc.tolist(), k.count.tolist(), strict=True):
        o, h, lo, cl = (fmt.format(v) for v in row)
        lines.append(f"{t},{o},{h},{lo},{cl},0,{t + k.step_ms - 1},0,{c},0,0,0")
    return (HEADER if header else b"") + ("\n".join(lines) + "\n").encode()
