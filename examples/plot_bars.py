"""Plot a day of a symbol's trades with its bars, their sizes, and bars against time bars.

    python examples/plot_bars.py --data-dir ./data --symbol BTCUSDT --day 2024-01-02 --out ./plots

Reads the lake and one feature's bars (`features/<name>`, default ema_dollar_imbalance, as
the pipeline computes them) with the read API (`tasks.read`), and writes three PNG files:
- `<symbol>-<day>-bars.png`: the day's trade prices (real prices, no axis offset), each
  bar's close marked, alternate bars shaded, so you see where sampling is dense;
- `<symbol>-bar-sizes.png`: trades per bar and bar duration, on log axes (bar sizes
  span orders of magnitude), over every bar of the symbol;
- `<symbol>-vs-time-bars.png`: the bars against time bars of the same count over the
  `--compare-days` days ending with the plotted day (AFML ch. 2): the standardised log
  returns' distribution next to a normal one, with the Jarque-Bera statistic, and their
  autocorrelation at lags 1-20.

A day that is not in the lake, or that has no closed bars, is an error: one line naming
what the lake holds, exit 2 (never an empty chart).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    import matplotlib
except ImportError:  # a dev extra, not a runtime package of the pipeline
    sys.exit("error: examples/plot_bars.py needs matplotlib: pip install -r requirements-dev.txt")

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.errors import LakeReadError  # noqa: E402
from tasks.read import read_bars, read_trades  # noqa: E402

Arrays = dict[str, Any]
LAGS = 20


class NothingToPlot(Exception):
    """The asked day or feature has nothing in the lake; the message says what there is."""


def load(data_dir: Path, market: str, symbol: str, feature: str, day: date | None, compare_days: int = 7
         ) -> tuple[Arrays, Arrays, date]:
    """The trades (time, price) of the `compare_days` days ending with the plotted day, every bar, the day."""
    bars = read_bars(data_dir, market, symbol, feature, columns=["open_time", "close_time", "close", "tick_count"])
    if bars.num_rows < 3:
        raise NothingToPlot(f"{feature} for {market}/{symbol}: {bars.num_rows} closed bars in {data_dir}; "
                            "run the pipeline with --features first")
    close_us = bars["close_time"].cast("int64").to_numpy()
    first, last = _date_of(close_us[0]), _date_of(close_us[-1])
    if day is None:
        day = _date_of(close_us[len(close_us) // 2])
    trades = read_trades(data_dir, market, symbol, day - timedelta(days=compare_days - 1), day,
                         columns=["time", "price"])
    t_us = trades["time"].cast("int64").to_numpy()
    day_us = _day_us(day)
    if not np.any((t_us >= day_us) & (t_us < day_us + 86_400_000_000)):
        raise NothingToPlot(f"{market}/{symbol} {day}: no trades in the lake of {data_dir} for that day; "
                            f"its bars run from {first} to {last}")
    b = {c: bars[c].to_numpy() for c in ("close", "tick_count")}
    b["open_us"] = bars["open_time"].cast("int64").to_numpy()
    b["close_us"] = close_us
    return {"time_us": t_us, "price": trades["price"].to_numpy()}, b, day


def _date_of(us: int) -> date:
    return date(1970, 1, 1) + timedelta(days=int(us) // 86_400_000_000)


def _day_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * 86_400_000_000


def _log_bins(values: np.ndarray) -> np.ndarray:
    lo, hi = max(float(values.min()), 1e-3), max(float(values.max()), 1e-3)
    return np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 10, 50)


def _acf(r: np.ndarray, lags: int) -> np.ndarray:
    r = r - r.mean()
    den = float(np.sum(r * r))
    return np.array([float(np.sum(r[k:] * r[:-k])) / den for k in range(1, lags + 1)])


def _jarque_bera(r: np.ndarray) -> float:
    r = r - r.mean()
    m2 = float(np.mean(r**2))
    skew, kurt = float(np.mean(r**3)) / m2**1.5, float(np.mean(r**4)) / m2**2
    return r.size / 6.0 * (skew**2 + (kurt - 3.0) ** 2 / 4.0)


def compared_returns(trades: Arrays, bars: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Log returns of the bars that close within the trades' span, and of as many equal time bars."""
    t, price = trades["time_us"], trades["price"]
    start = t[0] - t[0] % 86_400_000_000
    end = t[-1] - t[-1] % 86_400_000_000 + 86_400_000_000
    inside = (bars["close_us"] >= start) & (bars["close_us"] < end)
    count = int(inside.sum())
    edges = start + (np.arange(1, count + 1) * (end - start)) // max(count, 1)
    idx = np.maximum(np.searchsorted(t, edges, side="right") - 1, 0)
    return np.diff(np.log(bars["close"][inside])), np.diff(np.log(price[idx]))


def plot(trades: Arrays, bars: Arrays, day: date, symbol: str, out: Path) -> list[Path]:
    """Write the three figures; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    lo = _day_us(day)
    hi = lo + 86_400_000_000
    day_trades = (trades["time_us"] >= lo) & (trades["time_us"] < hi)
    as_dt = (lambda us: np.asarray(us, dtype="int64").astype("datetime64[us]"))  # noqa: E731
    ct, ot = bars["close_us"], bars["open_us"]
    in_day = (ct >= lo) & (ot < hi)
    closes = (ct >= lo) & (ct < hi)

    fig, ax = plt.subplots(figsize=(12, 5))
    ax.plot(as_dt(trades["time_us"][day_trades]), trades["price"][day_trades], lw=0.4, color="0.3", label="trades")
    for i, (a, b) in enumerate(zip(ot[in_day], ct[in_day], strict=True)):
        if i % 2:
            ax.axvspan(as_dt(max(a, lo)), as_dt(min(b, hi)), color="tab:blue", alpha=0.08, lw=0)
    ax.scatter(as_dt(ct[closes]), bars["close"][closes], s=8, color="tab:red", zorder=3, label="bar close")
    ax.set_xlim(as_dt(lo), as_dt(hi))
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")  # real prices, not "+4.2e4"
    ax.set_title(f"{symbol} {day} (UTC): {int(closes.sum()):,} bars closed over {int(day_trades.sum()):,} trades")
    ax.set_ylabel("price")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    first = out / f"{symbol}-{day}-bars.png"
    fig.savefig(first, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ticks = bars["tick_count"].astype(np.float64)
    axes[0].hist(ticks, bins=_log_bins(ticks), color="tab:blue")
    axes[0].set(xscale="log", yscale="log", title=f"trades per bar ({ticks.size:,} bars)", xlabel="trades",
                ylabel="bars")
    seconds = np.maximum((ct - ot) / 1e6, 1e-3)
    axes[1].hist(seconds, bins=_log_bins(seconds), color="tab:green")
    axes[1].set(xscale="log", yscale="log", title="bar duration", xlabel="seconds", ylabel="bars")
    second = out / f"{symbol}-bar-sizes.png"
    fig.savefig(second, dpi=110, bbox_inches="tight")
    plt.close(fig)

    r_bars, r_time = compared_returns(trades, bars)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    grid = np.linspace(-5, 5, 201)
    axes[0].plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), color="0.5", lw=1, label="normal")
    for r, label, colour in ((r_bars, "bars", "tab:red"), (r_time, "time bars, same count", "tab:blue")):
        if r.size > 2 and r.std() > 0:
            z = (r - r.mean()) / r.std()
            axes[0].hist(z, bins=np.linspace(-5, 5, 51), histtype="step", density=True, color=colour,
                         label=f"{label} (JB {_jarque_bera(r):,.0f})")
            lags = min(LAGS, r.size - 2)
            axes[1].plot(range(1, lags + 1), _acf(r, lags), marker="o", ms=3, color=colour, label=label)
    axes[0].set(title=f"standardised log returns, {r_bars.size + 1:,} bars of each", xlabel="sigma",
                ylabel="density")
    axes[0].legend(fontsize=8)
    band = 1.96 / np.sqrt(max(r_bars.size, 1))
    axes[1].axhspan(-band, band, color="0.9", label="95 % band of no correlation")
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[1].set(title="autocorrelation of log returns", xlabel="lag (bars)")
    axes[1].legend(fontsize=8)
    third = out / f"{symbol}-vs-time-bars.png"
    fig.savefig(third, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [first, second, third]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load, plot, print the files written; 2 with one line if there is nothing to plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--market", default="spot", choices=("spot", "um", "cm"))
    p.add_argument("--symbol", default="BTCUSDT")
    p.add_argument("--feature", default="ema_dollar_imbalance")
    p.add_argument("--day", type=date.fromisoformat, default=None, help="YYYY-MM-DD (UTC); default: the middle bar's")
    p.add_argument("--compare-days", type=int, default=7, help="days of the comparison with time bars (1..366)")
    p.add_argument("--out", type=Path, default=Path("plots"))
    args = p.parse_args(argv)
    if not 1 <= args.compare_days <= 366:
        p.error(f"--compare-days {args.compare_days}: out of range 1..366")
    try:
        trades, bars, day = load(args.data_dir, args.market, args.symbol, args.feature, args.day, args.compare_days)
    except (NothingToPlot, LakeReadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in plot(trades, bars, day, args.symbol, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
