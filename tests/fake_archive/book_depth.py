"""Order book depth bands (`bookDepth`, USD-M and COIN-M, daily archives) in the archive's dialect.

`timestamp,percentage,depth,notional` with that header; the time is text to the second
(`2024-01-01 00:00:08`, UTC), each snapshot gives one row per band around the mid price,
bids below it negative (`-5` .. `-1`, `-0.20`), asks above positive, with the cumulative size
and notional within the band. Bands are written `-5` in older files and `-5.00` in newer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

HEADER = b"timestamp,percentage,depth,notional\n"
BANDS = (-5.0, -4.0, -3.0, -2.0, -1.0, -0.2, 0.2, 1.0, 2.0, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class BookDepth:
    """Snapshots (times) and, per snapshot and band, the cumulative depth and notional."""

    times: list[datetime]
    depth: np.ndarray  # (snapshots, bands)
    notional: np.ndarray

    def __len__(self) -> int:
        return len(self.times) * len(BANDS)


def day_of_book_depth(day: date, snapshots: int = 200, seed: int = 0) -> BookDepth:
    """`snapshots` snapshots of `day`, 30 s apart (plus a few seconds of jitter), from 00:00:08."""
    rng = np.random.default_rng(seed)
    start = datetime(day.year, day.month, day.day, 0, 0, 8, tzinfo=UTC)
    times = [start + timedelta(seconds=30 * i + int(rng.integers(0, 3))) for i in range(snapshots)]
    # Cumulative: each band holds at least what the band inside it holds.
    steps = rng.uniform(50, 500, (snapshots, len(BANDS) // 2))
    inner_out = np.cumsum(steps, axis=1)
    depth = np.round(np.hstack([inner_out[:, ::-1], np.cumsum(rng.uniform(50, 500, steps.shape), axis=1)]), 4)
    return BookDepth(times, depth, np.round(depth * 42_000.25, 4))


def render_book_depth_csv(b: BookDepth, *, two_decimals: bool = False) -> bytes:
    """The CSV as published: `-5` style bands, or `-5.00` with `two_decimals`."""
    lines = []
    for t, depth, notional in zip(b.times, b.depth.tolist(), b.notional.tolist(), strict=True):
        for band, d, n in zip(BANDS, depth, notional, strict=True):
            shown = f"{band:.2f}" if two_decimals or band != int(band) else f"{int(band)}"
            lines.append(f"{t:%Y-%m-%d %H:%M:%S},{shown},{d:.4f},{n:.4f}")
    return HEADER + ("\n".join(lines) + "\n").encode()
