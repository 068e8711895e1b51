"""Benchmark bookTicker conversion against polars on one big day: rows/s and peak memory.

    python -m benchmarks.bench_book_ticker                  # a USD-M day of 10,000,000 updates
    python -m benchmarks.bench_book_ticker --rows 2000000 --repeat 1 --no-check

A bookTicker day is the archive's largest daily file (a busy USD-M symbol publishes tens of
millions of updates a day). One day is generated in the published dialect (header, prices
with 2 decimals, sizes with 3, ms times, an event time past midnight at the end) and zipped,
then converted, each conversion in a fresh process started by a small launcher (so its
ru_maxrss is its own), alternating ours and polars, `--repeat` times each:

- ours: `convert_archive` (ISA-L inflate, compiled parser, every value checked, the external
  sort by update_id, the lake's Parquet layout, the file validated before it lands);
- polars: inflate the member with zipfile, `read_csv` with explicit dtypes, `write_parquet`
  zstd: a reader and a writer, nothing checked, everything in memory.

Figures: best wall seconds and rows/s, and peak memory net of the process's imports (the
median over the rounds). Targets, judged in this run: ours at least 0.8x polars' rows/s
(ours does the checks, the sort and the validation polars does not), and ours at most
half of polars' peak memory (ours streams; polars holds the CSV and the frame).
Exit 0 when both are met, 1 when one is missed (0 with `--no-check`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_convert import CleanLauncher, MemoryProbe, _maxrss_bytes  # noqa: E402

DAY = date(2024, 3, 30)
SEED = 7
SPEED_TARGET = 0.8  # ours / polars, rows per second
MEMORY_TARGET = 0.5  # ours / polars, net peak bytes
POLARS_SCHEMA = [("update_id", "Int64"), ("best_bid_price", "Float64"), ("best_bid_qty", "Float64"),
                 ("best_ask_price", "Float64"), ("best_ask_qty", "Float64"), ("transaction_time", "Int64"),
                 ("event_time", "Int64")]


def build(work: Path, rows: int) -> tuple[Path, str]:
    """The day's ZIP (cached in `work` by rows and seed) and its sha256."""
    import hashlib

    import numpy as np
    import polars as pl

    from tasks.source.archive_spec import ArchiveSpec
    from tests.fake_archive.book_ticker import HEADER, day_of_book_ticker

    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookTicker")
    path = work / f"bookTicker-{rows}-{SEED}.zip"
    if not path.exists():
        b = day_of_book_ticker(DAY, rows, SEED)

        def fixed(values: np.ndarray, decimals: int) -> pl.Expr:
            unit = 10 ** decimals
            col = pl.Series(values)
            return ((col // unit).cast(pl.String) + "." + (col % unit).cast(pl.String).str.zfill(decimals))

        frame = pl.DataFrame({
            "update_id": b.update_id, "bid": fixed(b.bid_cents, 2), "bid_qty": fixed(b.bid_qty_milli, 3),
            "ask": fixed(b.ask_cents, 2), "ask_qty": fixed(b.ask_qty_milli, 3), "t": b.transaction_ms,
            "e": b.event_ms,
        })
        body = HEADER + frame.write_csv(include_header=False).encode()
        del frame, b
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            zf.writestr(spec.csv_name, body)
        tmp.replace(path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def probe_main(request_json: str) -> None:
    """In a fresh process: import, take the baseline, convert once, print the figures as JSON."""
    request = json.loads(request_json)
    inherited = _maxrss_bytes()
    zip_path, out = Path(request["zip"]), Path(request["out"])
    out.unlink(missing_ok=True)
    if request["tool"] == "ours":
        from tasks.convert.archive import convert_archive
        from tasks.settings import ConvertOptions
        from tasks.source.archive_spec import ArchiveSpec

        spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookTicker")
        baseline = _maxrss_bytes()
        started = time.perf_counter()
        rows = convert_archive(zip_path, spec, request["sha256"], out, ConvertOptions()).rows
    else:
        import polars as pl

        baseline = _maxrss_bytes()
        started = time.perf_counter()
        with zipfile.ZipFile(zip_path) as zf:
            data = zf.read(zf.infolist()[0])
        frame = pl.read_csv(data, has_header=True, schema={n: getattr(pl, t) for n, t in POLARS_SCHEMA})
        del data
        frame.write_parquet(out, compression="zstd")
        rows = frame.height
    seconds = time.perf_counter() - started
    print(json.dumps(asdict(MemoryProbe(request["tool"], rows, inherited, baseline, _maxrss_bytes(), seconds))))


def main(argv: list[str] | None = None) -> int:
    """Build the day, convert it with both tools in alternating fresh processes, print and judge."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-book-ticker")
    p.add_argument("--no-check", action="store_true", help="print the figures, exit 0 whatever they are")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        probe_main(args.probe)
        return 0
    launcher = CleanLauncher()  # before anything big is allocated (see its docstring)
    try:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        zip_path, sha = build(args.work_dir, args.rows)
        print(f"bookTicker day: {args.rows:,} rows, {zip_path.stat().st_size / 1e6:.1f} MB zipped "
              f"(built or cached in {time.perf_counter() - started:.1f} s)")
        probes: dict[str, list[MemoryProbe]] = {"ours": [], "polars": []}
        for _ in range(args.repeat):
            for tool in ("ours", "polars"):
                request = {"tool": tool, "zip": str(zip_path), "sha256": sha,
                           "out": str(args.work_dir / f"{tool}.parquet")}
                stdout = launcher.run([sys.executable, str(Path(__file__).resolve()), "--probe",
                                       json.dumps(request)])
                probes[tool].append(MemoryProbe(**json.loads(stdout.strip().splitlines()[-1])))
    finally:
        launcher.close()
    ours, polars = probes["ours"], probes["polars"]
    if {p.rows for p in ours} != {args.rows} or {p.rows for p in polars} != {args.rows}:
        print(f"error: rows differ: ours {[p.rows for p in ours]}, polars {[p.rows for p in polars]}")
        return 1
    best = {tool: min(p.seconds for p in runs) for tool, runs in probes.items()}
    net = {tool: statistics.median(p.net for p in runs) for tool, runs in probes.items()}
    size = {tool: (args.work_dir / f"{tool}.parquet").stat().st_size for tool in probes}
    for tool in ("ours", "polars"):
        print(f"  {tool:6}: best {best[tool]:6.2f} s = {args.rows / best[tool] / 1e6:5.2f} M rows/s "
              f"(all: {', '.join(f'{p.seconds:.2f}' for p in probes[tool])} s); peak memory net of imports "
              f"{net[tool] / 2**20:7.1f} MiB (median); Parquet {size[tool] / 1e6:.1f} MB")
    speed = best["polars"] / best["ours"]
    memory = net["ours"] / net["polars"]
    ok_speed, ok_memory = speed >= SPEED_TARGET, memory <= MEMORY_TARGET
    print(f"speed ours/polars {speed:.2f}x (target >= {SPEED_TARGET}x): {'met' if ok_speed else 'MISSED'}")
    print(f"memory ours/polars {memory:.2f}x (target <= {MEMORY_TARGET}x): {'met' if ok_memory else 'MISSED'}")
    return 0 if args.no_check or (ok_speed and ok_memory) else 1


if __name__ == "__main__":
    sys.exit(main())
