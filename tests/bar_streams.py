"""Generated trade streams, day by day, for the bars' behaviour tests and benchmark.

A day is a Poisson stream of trades with an intraday activity cycle (twice as many trades
at the day's busiest hour as at its quietest, as on a liquid pair), sides that keep the
previous side with probability `p_same` (order-flow autocorrelation), lognormal sizes and
a random walk on a 0.01 grid whose step does not depend on time. Each day can change the
count of trades and add persistent one-sided flow, so stationary weeks and regime changes
are built from the same parts. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DAY_US = 86_400_000_000
#: 2023-11-15 00:00 UTC, a midnight, so day k of a stream is [START + k·DAY, START + (k+1)·DAY).
START_US = 1_700_006_400_000_000
#: Trades in one day of BTCUSDT's size (the benchmark's day).
DAY_TRADES = 1_114_623


@dataclass(frozen=True)
class Day:
    """One day of a stream: its trades, the chance a side repeats, and one-sided flow."""

    trades: int = DAY_TRADES
    p_same: float = 0.7
    sell_flow: float = 0.0  # share of trades forced to the sell side (buyer is maker)


@dataclass
class Stream:
    """Columns of a trade stream, in time order (ids 1..n)."""

    time_us: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    qty: npt.NDArray[np.float64]
    is_buyer_maker: npt.NDArray[np.bool_]
    trade_id: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.time_us.shape[0])


def _day_times(rng: np.random.Generator, n: int, day: int) -> npt.NDArray[np.int64]:
    """n arrival times in day `day` with intensity 1 + cycle·sin(2πu) (u = time of day)."""
    cycle = 1.0 / 3.0  # busiest / quietest = (1 + c) / (1 - c) = 2
    grid = np.linspace(0.0, 1.0, 4097)
    cumulative = grid + cycle * (1.0 - np.cos(2.0 * np.pi * grid)) / (2.0 * np.pi)
    u = np.sort(rng.random(n)) * cumulative[-1]
    frac = np.interp(u, cumulative, grid)
    return START_US + day * DAY_US + np.minimum((frac * DAY_US).astype(np.int64), DAY_US - 1)


def make_stream(days: Sequence[Day], seed: int = 1) -> Stream:
    """The trades of `days`, one after the other."""
    rng = np.random.default_rng(seed)
    times, sides, sizes = [], [], []
    side = False
    for k, d in enumerate(days):
        times.append(_day_times(rng, d.trades, k))
        flips = rng.random(d.trades) < 1.0 - d.p_same
        run = (np.cumsum(flips) % 2 == 1) ^ side
        if d.trades:
            side = bool(run[-1])
        if d.sell_flow:
            run = np.where(rng.random(d.trades) < d.sell_flow, True, run)
        sides.append(run)
        sizes.append(np.round(rng.lognormal(-4.0, 1.5, d.trades), 6) + 1e-6)
    n = sum(d.trades for d in days)
    price = np.round(30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-5, n))), 2)
    return Stream(np.concatenate(times), price, np.concatenate(sizes), np.concatenate(sides),
                  np.arange(1, n + 1, dtype=np.int64))


def stationary(days: int = 7, trades: int = DAY_TRADES, seed: int = 1) -> Stream:
    """`days` statistically identical days."""
    return make_stream([Day(trades)] * days, seed)


#: Regime changes after three ordinary days: (name, days).
REGIMES: dict[str, list[Day]] = {
    "burst: 4x the trades on day 4": [Day()] * 3 + [Day(4 * DAY_TRADES)] + [Day()] * 3,
    "persistent selling on days 4-5": [Day()] * 3 + [Day(sell_flow=0.3)] * 2 + [Day()] * 2,
    "quiet week: 1/4 of the trades on days 4-10": [Day()] * 3 + [Day(DAY_TRADES // 4)] * 7,
}


def scaled(days: Sequence[Day], factor: float) -> list[Day]:
    """The same days with `factor` times the trades (small streams for tests)."""
    return [Day(max(1, int(d.trades * factor)), d.p_same, d.sell_flow) for d in days]


@dataclass(frozen=True)
class DayStats:
    """What a researcher looks at first in a day of bars."""

    bars: int
    median_ticks: float
    longest: int
    capped: int


def bars_by_day(close_time_us: npt.NDArray[np.int64], tick_count: npt.NDArray[np.int64],
                capped: npt.NDArray[np.bool_], days: int) -> list[DayStats]:
    """Per day of the stream (by close time): bars, median trades a bar, the longest, how many capped."""
    day = (np.asarray(close_time_us) - START_US) // DAY_US
    out = []
    for k in range(days):
        sel = day == k
        ticks = np.asarray(tick_count)[sel]
        out.append(DayStats(int(sel.sum()), float(np.median(ticks)) if ticks.size else 0.0,
                            int(ticks.max()) if ticks.size else 0, int(np.asarray(capped)[sel].sum())))
    return out
