"""Benchmark `tasks.convert.archive.convert_archive` against polars and against plain inflating.

Run from the repo root (see benchmarks/README.md)::

    python -m benchmarks.bench_convert [--repeat 3] [--work-dir bench-out] [--no-check]

It builds realistic spot archives with the fake-archive generator (cached in the work
dir), then measures in one run:

1. speed, best of `--repeat` runs, on a spot day of 1,114,623 trades (the size of
   BTCUSDT 2024-01-01): our converter, the polars baseline (inflate the member with
   zipfile, `polars.read_csv` with explicit dtypes, `write_parquet` zstd) and the floor
   (inflating the member through zipfile in 1 MiB reads);
2. output size against the source ZIP;
3. peak memory (ru_maxrss of a fresh process, minus that process's ru_maxrss after its
   imports) of our converter on the day and on a 10 M-row spot month, and of polars on
   the day.

It prints the machine, the figures and one PASS/FAIL line per target, and exits 1 when a
target is missed (unless `--no-check`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Only light modules at the top (archive_spec needs nothing beyond the standard library):
# numpy, pyarrow, polars and the converter are imported inside the functions that use them,
# after the memory-probe launcher is started (see `CleanLauncher`) and, in the probes, after
# their baseline is taken.
from tasks.source.archive_spec import ArchiveSpec  # noqa: E402

#: Trades in BTCUSDT's spot archive of 2024-01-01.
DAY_ROWS = 1_114_623
#: Trades in the monthly-like archive of the memory test.
MONTH_ROWS = 10_000_000
DAY_SPEC = ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1))
MONTH_SPEC = ArchiveSpec("spot", "BTCUSDT", "monthly", date(2024, 1, 1))
#: First trade id of the generated archives: above 2**31 like real BTCUSDT ids.
FIRST_ID = 3_300_000_000
SEED = 20240101
#: Binance's archives are DEFLATE at zlib's default level.
ZIP_LEVEL = 6
#: Read size of the inflate floor.
INFLATE_CHUNK = 1 << 20
#: Largest chunk of the ISA-L inflate floor (the converter inflates in pieces of `csv_block_bytes`).
ISAL_CHUNK = 4 << 20

#: Targets: ours >= 1.5x polars in rows/s; Parquet <= 0.8x the ZIP; peak memory (10 M) <= 1.5x peak (1 M).
SPEED_TARGET = 1.5
SIZE_TARGET = 0.8
MEMORY_TARGET = 1.5

#: Spot CSV columns (no header in the file) and their polars dtypes, named as in the lake.
SPOT_POLARS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trade_id", "Int64"),
    ("price", "Float64"),
    ("qty", "Float64"),
    ("quote_qty", "Float64"),
    ("time", "Int64"),
    ("is_buyer_maker", "Boolean"),
    ("is_best_match", "Boolean"),
)

MIB = 1 << 20


# --- archives ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A generated archive on disk and what is known about it."""

    path: Path
    spec: ArchiveSpec
    rows: int
    sha256: str
    zip_bytes: int
    csv_bytes: int


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_archive(work_dir: Path, spec: ArchiveSpec, rows: int, seed: int = SEED) -> tuple[Archive, float | None]:
    """The archive of `rows` generated trades for `spec`, built once and cached in `work_dir/archives`.

    The cache key holds the rows, seed, level and a hash of the generator's source, so an
    edited generator rebuilds. Returns the archive and the seconds spent building it (None
    when it came from the cache).
    """
    generator = REPO_ROOT / "tests" / "fake_archive" / "generate.py"
    key = f"{spec.market}-{spec.symbol}-{spec.label}-n{rows}-s{seed}-l{ZIP_LEVEL}-g{_file_digest(generator)[:10]}"
    folder = work_dir / "archives"
    zip_path, meta_path = folder / f"{key}.zip", folder / f"{key}.json"
    if zip_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("zip_bytes") == zip_path.stat().st_size:
            return Archive(zip_path, spec, rows, meta["sha256"], meta["zip_bytes"], meta["csv_bytes"]), None

    from tests.fake_archive.generate import generate_trades, make_zip, render_csv, sha256_hex

    started = time.perf_counter()
    trades = generate_trades(rows, spec.start, spec.end, first_id=FIRST_ID, seed=seed, market=spec.market)
    csv = render_csv(trades, spec.market, spec)  # spot 2024: no header, ms times, True/False
    del trades
    csv_bytes = len(csv)
    data = make_zip(csv, spec.csv_name, compresslevel=ZIP_LEVEL)
    del csv
    folder.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(zip_path)
    meta = {"sha256": sha256_hex(data), "zip_bytes": len(data), "csv_bytes": csv_bytes, "rows": rows}
    meta_path.write_text(json.dumps(meta, indent=1))
    return Archive(zip_path, spec, rows, meta["sha256"], len(data), csv_bytes), time.perf_counter() - started


# --- the three contenders ---------------------------------------------------------------------


def convert_options(overrides: dict[str, int]) -> Any:
    """The default `ConvertOptions`, with `overrides` (from `--option`) applied."""
    from tasks.settings import ConvertOptions

    return dataclasses.replace(ConvertOptions(), **overrides)


def run_ours(zip_path: Path, spec: ArchiveSpec, sha256: str, out_path: Path, overrides: dict[str, int]) -> int:
    """Convert with `convert_archive` (default `ConvertOptions` unless overridden); return the rows written."""
    from tasks.convert.archive import convert_archive

    return convert_archive(zip_path, spec, sha256, out_path, convert_options(overrides)).rows


@dataclass(frozen=True)
class PolarsRun:
    """What one run of the polars baseline did: rows, and the wall and CPU seconds of its inflate."""

    rows: int
    inflate_s: float
    inflate_cpu_s: float


def run_polars(zip_path: Path, out_path: Path) -> PolarsRun:
    """The polars baseline: inflate the member to bytes, `read_csv` with explicit dtypes, `write_parquet` zstd."""
    import polars as pl

    schema = {name: getattr(pl, dtype) for name, dtype in SPOT_POLARS_COLUMNS}
    wall, cpu = time.perf_counter(), time.process_time()
    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read(zf.infolist()[0])
    inflated = PolarsRun(0, time.perf_counter() - wall, time.process_time() - cpu)
    frame = pl.read_csv(data, has_header=False, schema=schema)
    del data
    frame.write_parquet(out_path, compression="zstd")
    return dataclasses.replace(inflated, rows=frame.height)


def run_inflate(zip_path: Path) -> int:
    """The floor: read the member through zipfile in 1 MiB reads, discarding; return the bytes read."""
    total = 0
    with zipfile.ZipFile(zip_path) as zf, zf.open(zf.infolist()[0]) as member:
        while chunk := member.read(INFLATE_CHUNK):
            total += len(chunk)
    return total


def run_inflate_isal(zip_path: Path) -> int:
    """Our converter's floor: inflate the member with `tasks.convert.zip_member.inflate_member` (ISA-L), discarding."""
    from tasks.convert.zip_member import inflate_member

    with zipfile.ZipFile(zip_path) as zf:
        info = zf.infolist()[0]
    return sum(len(chunk) for chunk in inflate_member(zip_path, info, ISAL_CHUNK, str(zip_path)))


@dataclass
class Timing:
    """Wall and CPU (all threads of the process) seconds of one step over the timed runs."""

    label: str
    rows: int
    walls: list[float] = dataclasses.field(default_factory=list)
    cpus: list[float] = dataclasses.field(default_factory=list)

    @property
    def best(self) -> float:
        """The best (smallest) wall time: the figure used everywhere."""
        return min(self.walls)

    @property
    def best_cpu(self) -> float:
        """CPU seconds of the run with the best wall time."""
        return self.cpus[self.walls.index(self.best)]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.best


def measure_speed(
    archive: Archive, out_dir: Path, repeat: int, warmup: int, overrides: dict[str, int]
) -> dict[str, Timing]:
    """Best-of-`repeat` times of ours, polars (with and without its inflate) and the inflate floor.

    The steps run in interleaved rounds (ours, polars, floor, ours, ...) so that a burst of
    load from elsewhere hits all of them alike; the first `warmup` rounds are not timed
    (imports, first-call setup, page cache).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ours_out, polars_out = out_dir / "ours.parquet", out_dir / "polars.parquet"
    rows = archive.rows
    timings = {
        "ours": Timing("ours: convert_archive (ZIP -> Parquet)", rows),
        "polars": Timing("polars: inflate + read_csv + write_parquet", rows),
        "polars_bytes": Timing("  polars on the inflated bytes only (context)", rows),
        "inflate": Timing("floor: inflate the member (zipfile, 1 MiB reads)", rows),
        "inflate_isal": Timing("  inflate with ISA-L, as ours does (context)", rows),
    }
    polars_run = PolarsRun(0, 0.0, 0.0)

    def ours() -> None:
        ours_out.unlink(missing_ok=True)
        written = run_ours(archive.path, archive.spec, archive.sha256, ours_out, overrides)
        if written != rows:
            raise RuntimeError(f"convert_archive wrote {written} rows, expected {rows}")

    def polars() -> None:
        nonlocal polars_run
        polars_out.unlink(missing_ok=True)
        polars_run = run_polars(archive.path, polars_out)
        if polars_run.rows != rows:
            raise RuntimeError(f"polars read {polars_run.rows} rows, expected {rows}")

    def inflate() -> None:
        if run_inflate(archive.path) != archive.csv_bytes:
            raise RuntimeError("the inflated member does not have the CSV's size")

    def inflate_isal() -> None:
        if run_inflate_isal(archive.path) != archive.csv_bytes:
            raise RuntimeError("the ISA-L-inflated member does not have the CSV's size")

    steps: dict[str, Callable[[], None]] = {
        "ours": ours,
        "polars": polars,
        "inflate": inflate,
        "inflate_isal": inflate_isal,
    }
    for round_no in range(warmup + repeat):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_no < warmup:
                continue
            timings[name].walls.append(wall)
            timings[name].cpus.append(cpu)
            if name == "polars":
                timings["polars_bytes"].walls.append(wall - polars_run.inflate_s)
                timings["polars_bytes"].cpus.append(cpu - polars_run.inflate_cpu_s)
    return timings


# --- peak memory --------------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    """This process's peak RSS so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass(frozen=True)
class MemoryProbe:
    """What one fresh probe process reported (bytes, seconds)."""

    tool: str
    rows: int
    inherited: int  # ru_maxrss before any import: what the process started with
    baseline: int  # ru_maxrss after importing the modules the tool needs
    peak: int  # ru_maxrss after the conversion
    seconds: float

    @property
    def net(self) -> int:
        """Peak minus baseline: the memory the conversion itself needed."""
        return self.peak - self.baseline


def probe_main(request_json: str) -> None:
    """Body of a memory probe process: import, take the baseline, convert once, print the figures as JSON."""
    request = json.loads(request_json)
    inherited = _maxrss_bytes()
    zip_path, out_path = Path(request["zip"]), Path(request["out"])
    out_path.unlink(missing_ok=True)
    if request["tool"] == "ours":
        import tasks.convert.archive
        import tasks.settings  # noqa: F401  (imported for the baseline)

        market, symbol, granularity, period = request["spec"]
        spec = ArchiveSpec(market, symbol, granularity, date.fromisoformat(period))
        baseline = _maxrss_bytes()
        started = time.perf_counter()
        rows = run_ours(zip_path, spec, request["sha256"], out_path, request["options"])
    else:
        import polars  # noqa: F401  (imported for the baseline)

        baseline = _maxrss_bytes()
        started = time.perf_counter()
        rows = run_polars(zip_path, out_path).rows
    seconds = time.perf_counter() - started
    probe = MemoryProbe(request["tool"], rows, inherited, baseline, _maxrss_bytes(), seconds)
    print(json.dumps(asdict(probe)))


#: The launcher's program: run each JSON argv read from stdin, answer with one JSON line.
_LAUNCHER = """
import json, subprocess, sys
for line in sys.stdin:
    done = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}), flush=True)
"""


class CleanLauncher:
    """A small process, started before anything big is allocated, that starts the memory probes.

    Linux keeps ru_maxrss across execve and folds in the high-water RSS of the image the
    exec replaces (the forked or vforked parent's), so a probe spawned by this benchmark
    after it generated a 10 M-row archive would start with a peak of several hundred MB.
    Probes are spawned by this launcher instead, whose high-water mark is a few MB; each
    probe reports what it started with (`MemoryProbe.inherited`), which stays far below
    its baseline.
    """

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: Sequence[str]) -> str:
        """Run `argv` from the launcher and return its stdout; RuntimeError if it fails."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(list(argv)) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        if answer["rc"] != 0:
            raise RuntimeError(f"{argv[-1]} failed with exit code {answer['rc']}:\n{answer['stderr']}")
        return str(answer["stdout"])

    def close(self) -> None:
        """Stop the launcher (it ends when its stdin closes)."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)


def probe_memory(
    launcher: CleanLauncher, tool: str, archive: Archive, out_path: Path, overrides: dict[str, int]
) -> MemoryProbe:
    """Convert `archive` with `tool` ("ours" or "polars") once in a fresh process and return its figures."""
    spec = archive.spec
    request = {
        "tool": tool,
        "options": overrides,
        "zip": str(archive.path),
        "out": str(out_path),
        "sha256": archive.sha256,
        "spec": [spec.market, spec.symbol, spec.granularity, spec.period.isoformat()],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stdout = launcher.run([sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(request)])
    figures = json.loads(stdout.strip().splitlines()[-1])
    return MemoryProbe(**figures)


# --- report -------------------------------------------------------------------------------------


def machine_lines() -> list[str]:
    """nproc, CPU model, memory, Python and library versions, and which convert.py was measured."""
    model = "unknown"
    with suppress(OSError):  # no /proc outside Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with suppress(OSError):  # no /proc outside Linux
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("pyarrow", "polars", "numpy", "numba", "isal")
    )
    convert = REPO_ROOT / "tasks" / "convert" / "archive.py"
    return [
        f"machine : nproc {nproc}, {model}, {memory} RAM, {platform.system()} {platform.release()}",
        f"python  : {platform.python_version()} ({sys.executable}), zlib {zlib.ZLIB_RUNTIME_VERSION}",
        f"libs    : {versions}",
        f"measured: tasks/convert/archive.py sha256 {_file_digest(convert)[:12]}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(convert.stat().st_mtime))}",
    ]


def load_average() -> str:
    """The 1-minute load average (other work on the machine skews the speed figures)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def mb(n: float) -> str:
    """Bytes as decimal MB."""
    return f"{n / 1e6:8.2f} MB"


def mib(n: float) -> str:
    """Bytes as MiB."""
    return f"{n / MIB:7.1f} MiB"


def rate(rows_per_s: float) -> str:
    """Rows per second in millions."""
    return f"{rows_per_s / 1e6:6.2f} M rows/s"


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="runs per speed figure; the best is kept (default 3)")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("bench-out"), help="cache of archives and outputs (default ./bench-out)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones (default 1)")
    parser.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="override a ConvertOptions field for our converter, e.g. csv_block_bytes=4194304 (repeatable)",
    )
    parser.add_argument("--day-rows", type=int, default=DAY_ROWS, help=f"trades in the day archive ({DAY_ROWS})")
    parser.add_argument(
        "--month-rows",
        type=int,
        default=MONTH_ROWS,
        help=f"trades in the month archive of the memory test ({MONTH_ROWS})",
    )
    parser.add_argument("--probe", metavar="JSON", help=argparse.SUPPRESS)  # internal: one memory probe
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be at least 1 and --warmup at least 0")
    overrides: dict[str, int] = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            parser.error(f"--option {item!r}: expected NAME=INT")
        overrides[name.strip()] = int(value)
    args.overrides = overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report, return the exit code."""
    args = parse_args(argv)
    if args.probe:
        probe_main(args.probe)
        return 0
    # First of all, while this process is still small (see CleanLauncher).
    launcher = CleanLauncher()
    try:
        return _benchmark(args, launcher)
    finally:
        launcher.close()


def _benchmark(args: argparse.Namespace, launcher: CleanLauncher) -> int:
    work_dir: Path = args.work_dir.resolve()
    out_dir = work_dir / "out"
    overrides: dict[str, int] = args.overrides
    try:
        options = convert_options(overrides)
    except TypeError as exc:
        print(f"--option: {exc}", file=sys.stderr)
        return 2
    print("== convert benchmark: Binance spot trades ZIP -> Parquet ==")
    for line in machine_lines():
        print(line)
    print(f"options : {options}{' (overridden)' if overrides else ' (defaults)'}")

    day, built_day = build_archive(work_dir, DAY_SPEC, args.day_rows)
    month, built_month = build_archive(work_dir, MONTH_SPEC, args.month_rows)
    print()
    for archive, built in ((day, built_day), (month, built_month)):
        how = f"built in {built:.1f} s" if built is not None else "cached"
        print(
            f"archive : {archive.path.name}: {archive.rows:,} trades, CSV {archive.csv_bytes / 1e6:.1f} MB, "
            f"ZIP {archive.zip_bytes / 1e6:.1f} MB (DEFLATE {ZIP_LEVEL}), {how}"
        )

    # 1. speed
    load_before = load_average()
    timings = measure_speed(day, out_dir, args.repeat, args.warmup, overrides)
    ours, polars, floor = timings["ours"], timings["polars"], timings["inflate"]
    speed_ratio = ours.rows_per_s / polars.rows_per_s
    print()
    print(
        f"speed on the day archive ({day.rows:,} rows), best of {args.repeat} interleaved round(s) "
        f"after {args.warmup} warm-up round(s); load average {load_before} before, {load_average()} after:"
    )
    print(f"  {'step':<50} {'best s':>7} {'cpu s':>6} {'rows/s':>16} {'vs polars':>9}   all runs (s)")
    for timing in (ours, polars, timings["polars_bytes"], floor, timings["inflate_isal"]):
        runs = " ".join(f"{r:.3f}" for r in timing.walls)
        versus = f"{timing.rows_per_s / polars.rows_per_s:8.2f}x"
        print(
            f"  {timing.label:<50} {timing.best:7.3f} {timing.best_cpu:6.2f} {rate(timing.rows_per_s):>16} "
            f"{versus:>9}   {runs}"
        )
    print(
        f"  ours/polars = {speed_ratio:.2f}x (target >= {SPEED_TARGET}x); ours takes {ours.best / floor.best:.2f}x "
        "the inflate floor's time (cpu s: all threads of the process, in the best run)"
    )

    # 2. size
    ours_size = (out_dir / "ours.parquet").stat().st_size
    polars_size = (out_dir / "polars.parquet").stat().st_size
    size_ratio = ours_size / day.zip_bytes
    print()
    print("output size:")
    print(f"  source ZIP              {mb(day.zip_bytes)}")
    print(f"  inflated CSV            {mb(day.csv_bytes)}   {day.csv_bytes / day.zip_bytes:.3f}x ZIP")
    print(f"  ours Parquet            {mb(ours_size)}   {size_ratio:.3f}x ZIP (target <= {SIZE_TARGET}x)")
    print(f"  polars Parquet (zstd)   {mb(polars_size)}   {polars_size / day.zip_bytes:.3f}x ZIP")

    # 3. peak memory, each in a fresh process
    probes = [
        probe_memory(launcher, "ours", day, out_dir / "mem-ours-day.parquet", overrides),
        probe_memory(launcher, "ours", month, out_dir / "mem-ours-month.parquet", overrides),
        probe_memory(launcher, "polars", day, out_dir / "mem-polars-day.parquet", overrides),
    ]
    for probe, archive in zip(probes, (day, month, day), strict=True):
        if probe.rows != archive.rows:
            raise RuntimeError(f"{probe.tool} probe wrote {probe.rows} rows, expected {archive.rows}")
    ours_day, ours_month, _ = probes
    memory_ratio = ours_month.net / ours_day.net
    print()
    print("peak memory (ru_maxrss of a fresh process; net = peak - baseline after imports):")
    print(f"  {'run':<30} {'rows':>11} {'baseline':>11} {'peak':>11} {'net':>11} {'time':>8} {'rows/s':>16}")
    names = (f"ours, day ({day.spec.label})", f"ours, month ({month.spec.label})", "polars, day (context)")
    for name, probe in zip(names, probes, strict=True):
        print(
            f"  {name:<30} {probe.rows:>11,} {mib(probe.baseline):>11} {mib(probe.peak):>11} {mib(probe.net):>11} "
            f"{probe.seconds:7.2f}s {rate(probe.rows / probe.seconds):>16}"
        )
    inherited = max(p.inherited for p in probes)
    print(
        f"  ours net month/day = {memory_ratio:.2f}x (target <= {MEMORY_TARGET}x); "
        f"probes started at <= {mib(inherited).strip()} ru_maxrss before importing"
    )

    results = [
        (
            f"speed : ours {rate(ours.rows_per_s).strip()} vs polars {rate(polars.rows_per_s).strip()} "
            f"= {speed_ratio:.2f}x (>= {SPEED_TARGET}x)",
            speed_ratio >= SPEED_TARGET,
        ),
        (
            f"size  : Parquet {ours_size / 1e6:.2f} MB vs ZIP {day.zip_bytes / 1e6:.2f} MB = {size_ratio:.3f}x "
            f"(<= {SIZE_TARGET}x)",
            size_ratio <= SIZE_TARGET,
        ),
        (
            f"memory: net peak {mib(ours_month.net).strip()} at {month.rows / 1e6:g} M rows vs "
            f"{mib(ours_day.net).strip()} at {day.rows / 1e6:.2f} M rows = {memory_ratio:.2f}x (<= {MEMORY_TARGET}x)",
            memory_ratio <= MEMORY_TARGET,
        ),
    ]
    print()
    for text, ok in results:
        print(f"{verdict(ok)}  {text}")
    failed = sum(not ok for _, ok in results)
    if failed and not args.no_check:
        print(f"{failed} target(s) missed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
