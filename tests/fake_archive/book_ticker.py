"""Best bid and ask (`bookTicker`, USD-M and COIN-M, daily archives) in the archive's dialect.

`update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time`
with that header: the order book's update id (increasing, with jumps), the top of the book,
the matching engine's time and the event's, a few ms later, both epoch ms. The event time of
the day's last updates can fall just past midnight, as published ones do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

HEADER = b"update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time\n"
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class BookTicker:
    """The day's updates: ids, bid and ask in cents (prices) and 1e-3 units (sizes), times (ms)."""

    update_id: np.ndarray
    bid_cents: np.ndarray
    bid_qty_milli: np.ndarray
    ask_cents: np.ndarray
    ask_qty_milli: np.ndarray
    transaction_ms: np.ndarray
    event_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.update_id)


def day_of_book_ticker(day: date, rows: int = 5_000, seed: int = 0, first_id: int = 4_000_000_000_000) -> BookTicker:
    """`rows` updates spread over `day`; the last one's event time is 3 ms past midnight."""
    rng = np.random.default_rng(seed)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
    transaction = np.sort(start + rng.integers(0, _DAY_MS, rows, dtype=np.int64))
    transaction[-1] = start + _DAY_MS - 1
    event = transaction + rng.integers(0, 6, rows, dtype=np.int64)
    event[-1] = start + _DAY_MS + 3
    ids = first_id + np.cumsum(rng.integers(1, 40, rows, dtype=np.int64))
    mid = 4_200_000 + np.cumsum(rng.integers(-3, 4, rows, dtype=np.int64))
    spread = rng.integers(1, 4, rows, dtype=np.int64)
    return BookTicker(ids, mid - spread, rng.integers(1, 20_000, rows, dtype=np.int64), mid + spread,
                      rng.integers(1, 20_000, rows, dtype=np.int64), transaction, event)


def render_book_ticker_csv(b: BookTicker, *, header: bool = True) -> bytes:
    """The CSV as published: prices with 2 decimals, sizes with 3, times in ms."""
    lines = [f"{u},{bp // 100}.{bp % 100:02d},{bq // 1000}.{bq % 1000:03d},{ap // 100}.{ap % 100:02d},"
             f"{aq // 1000}.{aq % 1000:03d},{t},{e}"
             for u, bp, bq, ap, aq, t, e in zip(b.update_id.tolist(), b.bid_cents.tolist(), b.bid_qty_milli.tolist(),
                                                b.ask_cents.tolist(), b.ask_qty_milli.tolist(),
                                                b.transaction_ms.tolist(), b.event_ms.tolist(), strict=True)]
    return (HEADER if header else b"") + ("\n".join(lines) + "\n").encode()
