"""Benchmark of merge/optimize: rows/s and peak memory, and whether memory grows with the file.

    python -m benchmarks.bench_optimize            # 3 M and 10 M rows (daily files of 1.1 M)
    python -m benchmarks.bench_optimize --small 500000 --large 5000000 --no-check

Each size is a lake of per-day staged files (1,114,623 rows a day like a real BTCUSDT
spot day, the last day shorter), merged into one file by `compact_symbol` in a fresh
process, so `ru_maxrss` is that run's own peak. A second figure appends one more day to
the merged file (the daily update), the cost that the target file size bounds.
Target: net peak at the large size <= 1.5x the net peak at the small one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAY_ROWS = 1_114_623
REPO = Path(__file__).resolve().parent.parent


def _probe(data_dir: str, mode: str) -> None:
    """Child process: import, measure baseline, run one compaction, print JSON."""
    import resource

    from tasks.lake.compact import compact_symbol
    from tasks.settings import ConvertOptions

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = compact_symbol(Path(data_dir), "spot", "BTCUSDT", 1 << 40, ConvertOptions(), consolidate=mode == "optimize")
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": res.rows_written, "bytes": res.bytes_written, "seconds": dt,
                      "baseline_kib": base, "peak_kib": peak}))


def _stage_days(data_dir: Path, rows: int, first_day: int = 1, first_id: int = 1) -> int:
    """Stage ceil(rows / DAY_ROWS) daily archives of synthetic trades; returns the next free id."""
    from datetime import date, timedelta

    import numpy as np
    import pyarrow as pa

    from tasks.lake.writer import lake_writer, source_metadata_doc
    from tasks.schema import TRADES_SCHEMA
    from tasks.settings import ConvertOptions
    from tasks.source.archive_spec import ArchiveSpec

    left, n_day, next_id = rows, first_day, first_id
    rng = np.random.default_rng(n_day)
    while left > 0:
        n = min(DAY_ROWS, left)
        d = date(2024, 1, 1) + timedelta(days=n_day - 1)
        spec = ArchiveSpec("spot", "BTCUSDT", "daily", d)
        start = int(spec.start.timestamp()) * 1_000_000
        price = np.round(42_000 + rng.normal(0, 2, n).cumsum(), 2)
        qty = np.round(rng.lognormal(-5, 1.5, n), 5) + 0.00001
        table = pa.table({
            "trade_id": pa.array(np.arange(next_id, next_id + n), pa.int64()), "price": price, "qty": qty,
            "quote_qty": price * qty, "base_qty": pa.nulls(n, pa.float64()),
            "time": pa.array(np.sort(rng.integers(start, start + 86_400_000_000, n)), pa.timestamp("us", "UTC")),
            "is_buyer_maker": rng.random(n) < 0.5, "is_best_match": pa.array(np.ones(n, bool)),
        }, schema=TRADES_SCHEMA)
        path = spec.staging_file(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        w = lake_writer(path, ConvertOptions())
        w.write(table)
        w.close(source_metadata_doc("spot", "BTCUSDT", [{
            "archive": spec.key, "sha256": "0" * 64, "rows": n, "first_day": d.isoformat(), "last_day": d.isoformat(),
            "granularity": "daily"}]))
        left -= n
        n_day += 1
        next_id += n
    return next_id


def _run_probe(data_dir: Path, mode: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_optimize", "--probe", str(data_dir), mode],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    """Run the benchmark and print the table; exit 1 when the memory target is missed (0 with --no-check)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=3_000_000)
    p.add_argument("--large", type=int, default=10_000_000)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        _probe(*args.probe)
        return 0
    print(f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'run':34} {'rows':>12} {'seconds':>8} {'rows/s':>12} {'MB/s out':>9} {'net peak MiB':>13}")
    nets = {}
    for label, rows in (("small", args.small), ("large", args.large)):
        with tempfile.TemporaryDirectory(dir=REPO / "bench-out" if (REPO / "bench-out").is_dir() else None) as tmp:
            data = Path(tmp)
            next_id = _stage_days(data, rows)
            merged = _run_probe(data, "merge")
            net = (merged["peak_kib"] - merged["baseline_kib"]) / 1024
            nets[label] = net
            print(f"{'merge ' + f'{rows:,} rows (days -> one file)':34} {merged['rows']:>12,.0f} "
                  f"{merged['seconds']:>8.2f} {merged['rows'] / merged['seconds'] / 1e6:>10.2f} M "
                  f"{merged['bytes'] / merged['seconds'] / 1e6:>9.1f} {net:>13.1f}")
            _stage_days(data, DAY_ROWS, first_day=rows // DAY_ROWS + 2, first_id=next_id)
            app = _run_probe(data, "merge")
            print(f"{'append one day to that file':34} {app['rows']:>12,.0f} {app['seconds']:>8.2f} "
                  f"{app['rows'] / app['seconds'] / 1e6:>10.2f} M {app['bytes'] / app['seconds'] / 1e6:>9.1f} "
                  f"{(app['peak_kib'] - app['baseline_kib']) / 1024:>13.1f}")
    ratio = nets["large"] / nets["small"]
    ok = ratio <= 1.5
    print(f"{'PASS' if ok else 'FAIL'}  memory: net peak {nets['large']:.1f} MiB at {args.large:,} rows vs "
          f"{nets['small']:.1f} MiB at {args.small:,} rows = {ratio:.2f}x (<= 1.5x)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
