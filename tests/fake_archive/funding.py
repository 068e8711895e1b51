"""Funding rates (`fundingRate`, USD-M and COIN-M, monthly archives) in the archive's dialect.

One row per funding event, `calc_time,funding_interval_hours,last_funding_rate` with that
header: epoch ms, the hours the rate covers, the rate with 8 decimals (negative too).
The interval is not always 8 h (freqtrade#12583): a contract can move to 4 h or 1 h, which
`generate_funding` does from a given day on. Some calc times carry a few ms past the hour,
as published ones do, so nothing may assume exact multiples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

FUNDING_HEADER = b"calc_time,funding_interval_hours,last_funding_rate\n"
_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Funding:
    """Funding events: calc times (epoch ms), interval hours, rates in units of 1e-8."""

    calc_time_ms: np.ndarray
    interval_hours: np.ndarray
    rate_units: np.ndarray

    def __len__(self) -> int:
        return len(self.calc_time_ms)

    def take(self, keep: np.ndarray) -> Funding:
        """The events at `keep` (indices or a mask)."""
        return Funding(self.calc_time_ms[keep], self.interval_hours[keep], self.rate_units[keep])


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def generate_funding(first: date, end: date, seed: int = 0, hours_from: dict[date, int] | None = None) -> Funding:
    """The events from `first` 00:00 UTC to before `end`, every 8 h unless `hours_from` sets another interval."""
    rng = np.random.default_rng(seed)
    switches = sorted((_ms(d), h) for d, h in (hours_from or {}).items())
    times, hours = [], []
    t, stop, h = _ms(first), _ms(end), 8
    while t < stop:
        while switches and switches[0][0] <= t:
            h = switches.pop(0)[1]
        times.append(t)
        hours.append(h)
        t += h * _HOUR_MS
    calc = np.array(times, dtype=np.int64)
    calc += np.where(rng.random(len(calc)) < 0.3, rng.integers(1, 9, len(calc)), 0)  # a few ms late
    rates = rng.integers(-20_000, 60_000, len(calc)).astype(np.int64)  # -0.0002 .. 0.0006
    return Funding(calc, np.array(hours, dtype=np.int64), rates)


def month_of_funding(month: date, seed: int = 0, hours_from: dict[date, int] | None = None) -> Funding:
    """The events of the calendar month of `month`."""
    first = month.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return generate_funding(first, following, seed, hours_from)


def render_funding_csv(f: Funding, *, header: bool = True) -> bytes:
    """The CSV as published (with its header unless `header` is False)."""
    lines = [f"{t},{h},{'-' if r < 0 else ''}{abs(r) // 10**8}.{abs(r) % 10**8:08d}"
             for t, h, r in zip(f.calc_time_ms.tolist(), f.interval_hours.tolist(), f.rate_units.tolist(),
                                strict=True)]
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    return (FUNDING_HEADER if header else b"") + body
