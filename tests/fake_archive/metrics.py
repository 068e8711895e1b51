"""Futures metrics (`metrics`, USD-M and COIN-M, daily archives) in the archive's dialect.

One row per 5 minutes of the day, with the header
`create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,
sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio`;
`create_time` is written as text, `2024-01-01 00:05:00` (UTC), not as an epoch number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

METRICS_HEADER = (b"create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
                  b"sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio\n")
STEP = timedelta(minutes=5)


@dataclass(frozen=True)
class Metrics:
    """The day's rows: times, and six values each (open interest, its value, four ratios)."""

    times: list[datetime]
    values: np.ndarray  # shape (rows, 6)

    def __len__(self) -> int:
        return len(self.times)


def day_of_metrics(day: date, seed: int = 0) -> Metrics:
    """Every 5 minutes of `day`, from 00:00: 288 rows."""
    rng = np.random.default_rng(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    times = [start + i * STEP for i in range(288)]
    oi = 80_000 + np.cumsum(rng.normal(0, 50, len(times)))
    values = np.column_stack([oi, oi * 42_000.5, rng.uniform(0.5, 3, len(times)), rng.uniform(0.5, 3, len(times)),
                              rng.uniform(0.5, 3, len(times)), rng.uniform(0.3, 2.5, len(times))])
    return Metrics(times, np.round(values, 5))


def render_metrics_csv(m: Metrics, symbol: str, *, header: bool = True) -> bytes:
    """The CSV as published."""
    lines = [f"{t:%Y-%m-%d %H:%M:%S},{symbol}," + ",".join(f"{v:.5f}" for v in row)
             for t, row in zip(m.times, m.values.tolist(), strict=True)]
    return (METRICS_HEADER if header else b"") + ("\n".join(lines) + "\n").encode()
