"""Benchmark the bar kernels (tasks.features.bars / tasks.features.bars_nb) against the pure-Python oracle.

Run from the repo root::

    python -m benchmarks.bench_bars [--trades 20000000] [--chunk 1000000] [--repeat 2] [--no-check]

What it measures, single-threaded (so trades/s is per core):

1. every bar kind in production mode (side from is_buyer_maker, O(1) running EWMA) on
   `--trades` synthetic trades fed through `tasks.features.bars.process_chunk` in `--chunk`-trade
   chunks, the way the pipeline feeds Parquet row groups (so the figure includes the
   side conversion, the state copy and building the pyarrow table);
2. the same kinds with the pure-Python implementation (tests/bars_oracle.py) on the
   first `--python-trades` trades, scaled to trades/s;
3. collapse regimes: balanced flow with E0 = 1 and no guard, where bars have ~1 trade
   (the case that makes an O(W)-per-bar EWMA O(N·W); pure Python on a 100x shorter
   slice, as it is O(W) per bar); plus, for information, the exact
   (reference-mode, O(W) per bar) kernel on a short slice of the same regime.

Synthetic tape: a random walk on a 0.01 tick grid (log-returns ~ N(0, 2e-5) per trade),
lognormal sizes, sides from a Markov chain that keeps the previous side with
probability 0.7 (order-flow autocorrelation), µs timestamps with exponential gaps.

Targets: >= 25 M trades/s for EMA dollar imbalance bars, and no collapse regime slower
than 5 M trades/s. Exit code 0 when both are met (always with --no-check), else 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tasks.features.bars import BarSpec, BarState, process_chunk  # noqa: E402
from tests import bars_oracle  # noqa: E402

TARGET_EMA_DOLLAR = 25e6
TARGET_COLLAPSE = 5e6


def synthetic_trades(n: int, seed: int = 42, balanced: bool = False) -> dict[str, np.ndarray]:
    """A realistic-looking tape (see the module docstring); `balanced`: i.i.d. fair sides."""
    rng = np.random.default_rng(seed)
    price = np.round(30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-5, n))), 2)
    qty = np.round(rng.lognormal(-4.0, 1.5, n), 6) + 1e-6
    if balanced:
        ibm = rng.random(n) < 0.5
    else:
        flips = rng.random(n) < 0.3  # keep the previous side with probability 0.7
        ibm = (np.cumsum(flips) % 2).astype(bool)
    time_us = 1_700_000_000_000_000 + np.cumsum(rng.exponential(2_000.0, n)).astype(np.int64)
    return {
        "time_us": time_us,
        "price": price,
        "qty": qty,
        "is_buyer_maker": ibm,
        "trade_id": np.arange(n, dtype=np.int64),
    }


def run_stream(spec: BarSpec, trades: dict[str, np.ndarray], chunk: int) -> tuple[float, int]:
    """Seconds to push all trades through process_chunk in chunks, and the bar count."""
    n = len(trades["price"])
    state = BarState.initial(spec)
    bars = 0
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        table, state = process_chunk(spec, state, **{k: v[a : a + chunk] for k, v in trades.items()})
        bars += table.num_rows
    return time.perf_counter() - t0, bars


def run_python(spec: BarSpec, trades: dict[str, np.ndarray], n: int) -> float:
    """Seconds for the pure-Python implementation on the first n trades."""
    cols = {k: v[:n].tolist() for k, v in trades.items()}
    t0 = time.perf_counter()
    bars_oracle.bars(spec, cols["time_us"], cols["price"], cols["qty"], cols["is_buyer_maker"], cols["trade_id"])
    return time.perf_counter() - t0


def best(fn: Callable[[], tuple[float, int]], repeat: int) -> tuple[float, int]:
    runs = [fn() for _ in range(repeat)]
    return min(r[0] for r in runs), runs[0][1]


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"nproc={os.cpu_count()}  cpu={model}  load average={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--trades", type=int, default=20_000_000)
    ap.add_argument("--chunk", type=int, default=1_000_000, help="trades per process_chunk call")
    ap.add_argument("--python-trades", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per figure; the best is kept")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    args = ap.parse_args(argv)

    print(f"machine: {machine()}")
    print(f"trades: {args.trades:,} in chunks of {args.chunk:,}; pure Python on {args.python_trades:,}")
    trades = synthetic_trades(args.trades)

    # Production settings: E0 = 1000, W = 10000, E[T] clamped, guards on.
    base: dict[str, Any] = {"exp_num_ticks_init": 1000.0, "expected_imbalance_window": 10_000,
                            "exp_num_ticks_min": 100.0, "exp_num_ticks_max": 100_000.0,
                            "min_ticks": 10, "max_ticks": 1_000_000}  # fmt: skip
    thresholds = {"tick": 1000.0, "volume": 20.0, "dollar": 600_000.0}
    cases: list[tuple[str, BarSpec]] = []
    for metric in ("tick", "volume", "dollar"):
        cases.append((f"{metric} bars", BarSpec("standard", metric, threshold=thresholds[metric])))  # type: ignore[arg-type]
    for kind in ("imbalance", "run"):
        for ema in (True, False):
            for metric in ("tick", "volume", "dollar"):
                label = f"{'EMA' if ema else 'const'} {metric} {kind}"
                cases.append((label, BarSpec(kind, metric, ema=ema, **base)))  # type: ignore[arg-type]

    # Warm up: compile / load every kernel from the numba cache outside the timings.
    warm = synthetic_trades(1000)
    for _, spec in cases:
        run_stream(spec, warm, 1000)

    print()
    print(f"{'bar kind':<24}{'bars':>12}{'numba trades/s':>18}{'python trades/s':>18}{'speed-up':>10}")
    results: dict[str, float] = {}
    for label, spec in cases:
        secs, nbars = best(lambda spec=spec: run_stream(spec, trades, args.chunk), args.repeat)  # type: ignore[misc]
        rate = args.trades / secs
        py = args.python_trades / run_python(spec, trades, args.python_trades)
        results[label] = rate
        print(f"{label:<24}{nbars:>12,}{rate / 1e6:>16.1f} M{py / 1e6:>16.2f} M{rate / py:>9.0f}x")

    print()
    print("collapse regime (balanced i.i.d. sides, E0 = 1, W = 10000, no guards):")
    balanced = synthetic_trades(args.trades, seed=7, balanced=True)
    collapse_rates: dict[str, float] = {}
    collapse = {"exp_num_ticks_init": 1.0, "expected_imbalance_window": 10_000}
    for label, spec in [
        ("EMA dollar imbalance", BarSpec("imbalance", "dollar", **collapse)),  # type: ignore[arg-type]
        ("EMA tick imbalance", BarSpec("imbalance", "tick", **collapse)),  # type: ignore[arg-type]
        ("const volume imbalance", BarSpec("imbalance", "volume", ema=False, **collapse)),  # type: ignore[arg-type]
        ("EMA dollar run", BarSpec("run", "dollar", **collapse)),  # type: ignore[arg-type]
    ]:
        run_stream(spec, warm, 1000)
        secs, nbars = best(lambda spec=spec: run_stream(spec, balanced, args.chunk), args.repeat)  # type: ignore[misc]
        rate = args.trades / secs
        collapse_rates[label] = rate
        # The straightforward implementation recomputes E[x] in O(W) at every one-trade
        # bar, so it gets a 100x shorter slice here.
        n_py = max(1_000, args.python_trades // 100)
        py = n_py / run_python(spec, balanced, n_py)
        print(f"  {label:<22}{nbars:>12,} bars ({args.trades / max(nbars, 1):.2f} trades/bar)"
              f"{rate / 1e6:>9.1f} M trades/s   python {py / 1e3:.1f} k trades/s")  # fmt: skip
    # For information: the reference-mode (O(W) per bar) kernel in the same regime.
    exact = replace(BarSpec("imbalance", "dollar", **collapse), ewma="exact")  # type: ignore[arg-type]
    short = {k: v[:200_000] for k, v in balanced.items()}
    run_stream(exact, warm, 1000)
    secs, nbars = run_stream(exact, short, args.chunk)
    print(f"  (info) exact EWMA, EMA dollar imbalance, 200,000 trades: {nbars:,} bars, "
          f"{200_000 / secs / 1e6:.3f} M trades/s (O(W) per bar: the reason for the running sum)")  # fmt: skip

    print()
    print(f"machine after: {machine()}")
    ok = True
    ema_dollar = results["EMA dollar imbalance"]
    verdict = "PASS" if ema_dollar >= TARGET_EMA_DOLLAR else "FAIL"
    ok &= verdict == "PASS"
    target = TARGET_EMA_DOLLAR / 1e6
    print(f"{verdict}: EMA dollar imbalance {ema_dollar / 1e6:.1f} M trades/s (target >= {target:.0f} M)")
    slowest = min(collapse_rates, key=collapse_rates.__getitem__)
    verdict = "PASS" if collapse_rates[slowest] >= TARGET_COLLAPSE else "FAIL"
    ok &= verdict == "PASS"
    print(f"{verdict}: slowest collapse regime ({slowest}) {collapse_rates[slowest] / 1e6:.1f} M trades/s "
          f"(target >= {TARGET_COLLAPSE / 1e6:.0f} M)")  # fmt: skip
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    raise SystemExit(main())
