"""Plot a symbol's trades with its bar boundaries, and the distribution of bar sizes.

    python examples/plot_bars.py --data-dir ./data --symbol BTCUSDT --day 2024-01-02 --out ./plots

Reads the lake (`lake/trades`) and one feature's bars (`features/<name>`, default
ema_dollar_imbalance, as the pipeline computes them) with pyarrow, and writes:
- `<symbol>-<day>-bars.png`: the day's trade prices, each bar's close marked, and
  alternating shading per bar, so you see where information-driven sampling is dense;
- `<symbol>-bar-sizes.png`: histograms of trades per bar and of bar duration, with the
  log-return distribution of bar closes next to that of fixed-count samples.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt
import numpy as np
import pyarrow.dataset as ds

Arrays = dict[str, Any]


def load(data_dir: Path, market: str, symbol: str, feature: str, day: date | None) -> tuple[Arrays, Arrays]:
    """The day's trades (time, price) and the feature's bars (all of them) as NumPy arrays."""
    trades = ds.dataset(data_dir / "lake" / "trades", format="parquet", partitioning="hive")
    bars_ds = ds.dataset(data_dir / "features" / feature, format="parquet", partitioning="hive")
    flt = (ds.field("market") == market) & (ds.field("symbol") == symbol)
    bars = bars_ds.to_table(filter=flt)
    if day is None:
        day = bars["close_time"][bars.num_rows // 2].as_py().date()
    lo = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    t = trades.to_table(columns=["time", "price"], filter=flt & (ds.field("time") >= lo)
                        & (ds.field("time") < lo + timedelta(days=1)))
    return ({"time": t["time"].to_numpy(), "price": t["price"].to_numpy(), "day": day},
            {c: bars[c].to_numpy() for c in ("open_time", "close_time", "close", "tick_count")})


def plot(trades: Arrays, bars: Arrays, symbol: str, out: Path) -> list[Path]:
    """Write the two figures; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    day = trades["day"]
    lo, hi = np.datetime64(datetime.combine(day, datetime.min.time())), np.datetime64(
        datetime.combine(day + timedelta(days=1), datetime.min.time()))
    ct = bars["close_time"].astype("datetime64[us]")
    ot = bars["open_time"].astype("datetime64[us]")
    in_day = (ct >= lo) & (ot < hi)
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.plot(trades["time"].astype("datetime64[us]"), trades["price"], lw=0.4, color="0.3", label="trades")
    for i, (a, b) in enumerate(zip(ot[in_day], ct[in_day], strict=True)):
        if i % 2:
            ax.axvspan(a, b, color="tab:blue", alpha=0.08, lw=0)
    closes = (ct >= lo) & (ct < hi)
    ax.scatter(ct[closes], bars["close"][closes], s=6, color="tab:red", zorder=3, label="bar close")
    ax.set_xlim(lo, hi)
    ax.set_title(f"{symbol} {day}: {int(closes.sum())} bars closed over {len(trades['price']):,} trades")
    ax.set_ylabel("price")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    first = out / f"{symbol}-{day}-bars.png"
    fig.savefig(first, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].hist(bars["tick_count"], bins=60, color="tab:blue")
    axes[0].set(title="trades per bar", xlabel="trades", ylabel="bars")
    seconds = (ct - ot).astype("timedelta64[ms]").astype(np.float64) / 1000
    axes[1].hist(seconds, bins=60, color="tab:green")
    axes[1].set(title="bar duration", xlabel="seconds")
    r_bars = np.diff(np.log(bars["close"]))
    step = max(int(np.median(bars["tick_count"])), 1)
    r_ticks = np.diff(np.log(trades["price"][::step]))
    for r, label in ((r_bars, "bar closes"), (r_ticks, f"every {step} trades")):
        if len(r) > 1 and r.std() > 0:
            axes[2].hist(r / r.std(), bins=80, histtype="step", density=True, label=label)
    axes[2].set(title="standardised log returns", xlabel="sigma")
    axes[2].legend()
    second = out / f"{symbol}-bar-sizes.png"
    fig.savefig(second, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [first, second]


def main() -> None:
    """Parse arguments, load, plot, print the files written."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--market", default="spot")
    p.add_argument("--symbol", default="BTCUSDT")
    p.add_argument("--feature", default="ema_dollar_imbalance")
    p.add_argument("--day", type=date.fromisoformat, default=None, help="default: the middle bar's day")
    p.add_argument("--out", type=Path, default=Path("plots"))
    args = p.parse_args()
    trades, bars = load(args.data_dir, args.market, args.symbol, args.feature, args.day)
    for path in plot(trades, bars, args.symbol, args.out):
        print(path)


if __name__ == "__main__":
    main()
