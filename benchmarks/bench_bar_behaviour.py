"""How the default bars behave, not only how fast they are (issue 13).

    python -m benchmarks.bench_bar_behaviour [--scale F] [--no-check]

For every production kind of `--features` with its default settings (tasks.features.incremental.
PRESETS: target rate of 50 bars a day), on generated streams (tests/bar_streams.py: an
intraday activity cycle, autocorrelated sides, lognormal sizes):
- a stationary week of 1,114,623-trade days, then three regime changes: a day with 4x
  the trades, two days of persistent selling, a quiet week with 1/4 of the trades;
- per day: bars, median trades per bar, the longest bar, the share of bars closed by a
  cap (`capped`);
- on the stationary week, the statistics AFML uses to compare samplings, against time
  bars of the same average count: lag-1 serial correlation of log returns and the
  Jarque-Bera statistic (the activity cycle fattens the tails of time-bar returns; bars
  sampled by activity should not have them);
- throughput of each kind's kernel, single-threaded, in 1 M-trade chunks.

Targets (PASS/FAIL, exit 1 on a FAIL unless --no-check):
- stationary: bars per day within a factor of 2 from day to day, the first (warm-up)
  day included, and every day between 10 and 1,000 bars;
- regimes: every day between target/10 and target*10 bars a day (no collapse, no
  explosion); the burst day and the first persistent-selling day have more bars than the
  ordinary days before them (imbalance kinds for the selling; activity-driven kinds
  need not react to it), the first quiet day fewer;
- caps: at most 10 % of bars closed by a cap, in every scenario;
- speed: at least 25 M trades/s for every kind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.features.bars import BarSpec, BarState, process_chunk_arrays  # noqa: E402
from tasks.features.incremental import PRESETS  # noqa: E402
from tests.bar_streams import DAY_US, REGIMES, DayStats, Stream, bars_by_day, make_stream, scaled  # noqa: E402
from tests.bar_streams import Day as StreamDay  # noqa: E402

CHUNK = 1 << 20
MIN_SPEED = 25e6
MAX_CAPPED = 0.10


def run(spec: BarSpec, s: Stream) -> tuple[dict[str, npt.NDArray[np.generic]], float]:
    """All bars of the stream (columns) and the kernel's trades/s."""
    state = BarState.initial(spec)
    # Untimed: the first call loads the kernel from numba's cache (or compiles it).
    process_chunk_arrays(spec, state, s.time_us[:1000], s.price[:1000], s.qty[:1000], s.is_buyer_maker[:1000],
                         s.trade_id[:1000])
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    elapsed = 0.0
    for a in range(0, len(s), CHUNK):
        b = slice(a, a + CHUNK)
        t0 = time.perf_counter()
        cols, state = process_chunk_arrays(spec, state, s.time_us[b], s.price[b], s.qty[b], s.is_buyer_maker[b],
                                           s.trade_id[b])
        elapsed += time.perf_counter() - t0
        parts.append(cols)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out, len(s) / elapsed


def day_stats(cols: dict[str, npt.NDArray[np.generic]], days: int) -> list[DayStats]:
    return bars_by_day(cols["close_time"], cols["tick_count"], cols["capped"], days)  # type: ignore[arg-type]


def return_stats(close: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Lag-1 serial correlation and Jarque-Bera statistic of the log returns of `close`."""
    r = np.diff(np.log(close))
    r = r - r.mean()
    n = r.size
    m2 = float(np.mean(r**2))
    skew = float(np.mean(r**3)) / m2**1.5
    kurt = float(np.mean(r**4)) / m2**2
    rho = float(np.sum(r[1:] * r[:-1]) / np.sum(r**2))
    return rho, n / 6.0 * (skew**2 + (kurt - 3.0) ** 2 / 4.0)


def time_bar_closes(s: Stream, count: int) -> npt.NDArray[np.float64]:
    """Close prices of `count` equal time bars over the stream's whole days."""
    start = s.time_us[0] - s.time_us[0] % DAY_US
    span = (s.time_us[-1] // DAY_US + 1) * DAY_US - start
    edges = start + (np.arange(1, count + 1) * span) // count
    idx = np.searchsorted(s.time_us, edges, side="right") - 1
    return s.price[np.maximum(idx, 0)]


def fmt_days(stats: Sequence[DayStats]) -> list[str]:
    return [
        "      bars  " + " ".join(f"{d.bars:>7,}" for d in stats),
        "    median  " + " ".join(f"{d.median_ticks:>7,.0f}" for d in stats),
        "   longest  " + " ".join(f"{d.longest:>7,}" for d in stats),
        "    capped  " + " ".join(f"{d.capped / d.bars if d.bars else 0.0:>6.1%} " for d in stats),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the figures and the PASS/FAIL lines; exit 1 on a FAIL unless --no-check."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="trades per day as a share of 1,114,623 (quick looks)")
    p.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    args = p.parse_args(argv)
    if not 0.001 <= args.scale <= 10:
        p.error(f"--scale {args.scale}: out of range 0.001..10")
    fails: list[str] = []
    passes: list[str] = []

    def check(ok: bool, text: str) -> None:
        (passes if ok else fails).append(text)

    load = os.getloadavg()
    print(f"machine: nproc={os.cpu_count()}  load average={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    scenarios = {"stationary week": scaled([StreamDay()] * 7, args.scale)}
    scenarios.update({name: scaled(days, args.scale) for name, days in REGIMES.items()})
    streams = {name: make_stream(days, seed=i + 1) for i, (name, days) in enumerate(scenarios.items())}
    stationary = streams["stationary week"]
    print(f"stationary week: {len(stationary):,} trades; regimes after 3 ordinary days; chunks of {CHUNK:,}")
    print()
    speeds: dict[str, float] = {}
    afml: list[tuple[str, int, float, float]] = []
    for name, spec in PRESETS.items():
        target = spec.bars_per_day
        print(f"== {name}  ({spec.kind} {spec.metric}, bars_per_day={target:g})")
        for scenario, s in streams.items():
            days = len(scenarios[scenario])
            cols, speed = run(spec, s)
            stats = day_stats(cols, days)
            bars = np.array([d.bars for d in stats])
            capped_share = float(np.asarray(cols["capped"]).mean()) if bars.sum() else 0.0
            print(f"  {scenario}: {int(bars.sum()):,} bars, {capped_share:.1%} capped, {speed / 1e6:.1f} M trades/s")
            print("       day  " + " ".join(f"{k + 1:>7}" for k in range(days)))
            print("\n".join(fmt_days(stats)))
            check(capped_share <= MAX_CAPPED, f"{name}, {scenario}: {capped_share:.1%} of bars capped (<= 10 %)")
            if scenario == "stationary week":
                speeds[name] = speed
                ratio = bars.max() / max(bars.min(), 1)
                check(ratio <= 2.0, f"{name}, stationary: bars per day {bars.min()}..{bars.max()}, "
                                    f"ratio {ratio:.2f} (<= 2, warm-up day included)")
                check(bool(bars.min() >= 10 and bars.max() <= 1000),
                      f"{name}, stationary: {bars.min()}..{bars.max()} bars a day (10..1,000)")
                closes = np.asarray(cols["close"], np.float64)
                rho, jb = return_stats(closes)
                t_rho, t_jb = return_stats(time_bar_closes(s, closes.size))
                afml.append((name, closes.size, rho, jb))
                afml.append(("  time bars, same count", closes.size, t_rho, t_jb))
                continue
            lo, hi = target / 10, target * 10
            check(bool(lo <= bars.min() and bars.max() <= hi),
                  f"{name}, {scenario}: {bars.min()}..{bars.max()} bars a day ({lo:g}..{hi:g})")
            before = bars[:3].mean()
            if scenario.startswith("burst"):
                check(bars[3] > before, f"{name}, burst: {bars[3]} bars on the burst day > {before:.0f} before")
            elif scenario.startswith("quiet"):
                check(bars[3] < before, f"{name}, quiet: {bars[3]} bars on the first quiet day < {before:.0f} before")
            elif spec.kind == "imbalance":
                check(bars[3] > before, f"{name}, selling: {bars[3]} bars on its first day > {before:.0f} before")
        print()
    print("AFML's comparison on the stationary week (log returns of bar closes):")
    print(f"  {'sampling':34} {'bars':>7} {'lag-1 corr':>11} {'Jarque-Bera':>12}")
    for label, n, rho, jb in afml:
        print(f"  {label:34} {n:>7,} {rho:>11.3f} {jb:>12,.1f}")
    print()
    for name, speed in speeds.items():
        check(speed >= MIN_SPEED, f"{name}: {speed / 1e6:.1f} M trades/s (>= 25 M)")
    for line in passes:
        print(f"PASS  {line}")
    for line in fails:
        print(f"FAIL  {line}")
    print(f"{len(passes)} passed, {len(fails)} failed")
    return 1 if fails and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
