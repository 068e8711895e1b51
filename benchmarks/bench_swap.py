"""How a symbol's set of lake files is replaced: what readers see, and what a swap costs.

    python -m benchmarks.bench_swap              # 5 s of swaps watched by a reader; 1..1000 files
    python -m benchmarks.bench_swap --seconds 2 --no-check

Two mechanisms, measured in the same run:

- `per-file`: the journalled swap used before (new files renamed in one by one, then the
  superseded ones unlinked). The baseline.
- `exchange`: `tasks.atomic.swap_folder`: the next set built beside the folder (hard links
  of the files that stay), then `renameat2(RENAME_EXCHANGE)`.

A reader process reads the folder with pyarrow (`pq.read_table(folder)`, the documented
path) in a loop while the writer flips between two sets that hold the same trade ids in
different files (two halves, or one file). A read is `mixed` when it sees duplicate or
missing ids, an `error` when a file listed is gone before it is opened (the reader retries;
it never gets wrong data). Target: 0 mixed reads for `exchange`. The cost per swap is timed
for folders of 1 to 1000 files that stay (linked), against the per-file swap.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 20_000


def _write(path: Path, lo: int, hi: int) -> None:
    pq.write_table(pa.table({"trade_id": pa.array(np.arange(lo, hi), pa.int64())}), path)


def _sets(scratch: Path) -> list[dict[str, Path]]:
    """Two sets of the same ids: two halves, or one whole file (prepared once, linked in)."""
    src = scratch / "src"
    src.mkdir()
    _write(src / "2024-01-01_2024-01-01.parquet", 0, ROWS // 2)
    _write(src / "2024-01-02_2024-01-02.parquet", ROWS // 2, ROWS)
    _write(src / "2024-01-01_2024-01-02.parquet", 0, ROWS)
    halves = {n: src / n for n in ("2024-01-01_2024-01-01.parquet", "2024-01-02_2024-01-02.parquet")}
    whole = {"2024-01-01_2024-01-02.parquet": src / "2024-01-01_2024-01-02.parquet"}
    return [halves, whole]


def _stage(folder: Path, files: dict[str, Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """The folder's committed files now, and the next set's files linked in as hidden temporaries."""
    from tasks.atomic import temp_path_for

    old = [p for p in folder.iterdir() if p.name.endswith(".parquet") and not p.name.startswith(".")]
    written = []
    for name, src in files.items():
        tmp = temp_path_for(folder / name)
        os.link(src, tmp)
        written.append((tmp, folder / name))
    return old, written


def _per_file_swap(data_dir: Path, folder: Path, files: dict[str, Path]) -> None:
    """The journalled per-file swap as it was (fsyncs included): journal, renames, then unlinks."""
    from tasks.atomic import fsync_dir, fsync_file, write_bytes_atomic

    old, moves = _stage(folder, files)
    for tmp, _ in moves:
        fsync_file(tmp)
    journal = folder / ".compact-journal.json"
    write_bytes_atomic(journal, json.dumps({"moves": [[str(a), str(b)] for a, b in moves],
                                            "remove": [str(p) for p in old]}).encode())
    for tmp, final in moves:
        os.replace(tmp, final)
    for p in old:
        if p.name not in files:
            p.unlink()
    fsync_dir(folder)
    journal.unlink()
    fsync_dir(folder)


def _exchange_swap(data_dir: Path, folder: Path, files: dict[str, Path]) -> None:
    """`tasks.atomic.swap_folder`: the next set built beside the folder, then exchanged with it."""
    from tasks.atomic import swap_folder

    old, written = _stage(folder, files)
    swap_folder(data_dir, folder, written, [p for p in old if p.name not in files])


def _reader(folder: str, stop: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    ok = mixed = errors = 0
    while not stop.is_set():
        try:
            ids = pq.read_table(folder, columns=["trade_id"])["trade_id"].to_numpy()
        except (OSError, pa.ArrowException):
            errors += 1
            continue
        if len(ids) == ROWS and len(np.unique(ids)) == ROWS:
            ok += 1
        else:
            mixed += 1
    out.put({"ok": ok, "mixed": mixed, "errors": errors})


def watch(mechanism: str, seconds: float) -> dict[str, int]:
    """Flip between the two sets for `seconds` while a reader process reads the folder."""
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as d:
        data_dir = Path(d)
        sets = _sets(data_dir)
        folder = data_dir / "lake" / "trades" / "market=spot" / "symbol=BTCUSDT"
        folder.mkdir(parents=True)
        for name, src in sets[0].items():
            os.link(src, folder / name)
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        reader = ctx.Process(target=_reader, args=(str(folder), stop, out))
        reader.start()
        time.sleep(1.0)  # the reader is importing and reading before the first swap
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            files = sets[i % 2]
            if mechanism == "exchange":
                _exchange_swap(data_dir, folder, files)
            else:
                _per_file_swap(data_dir, folder, files)
            time.sleep(0.001)
        stop.set()
        counts: dict[str, int] = out.get(timeout=60)
        reader.join()
    return {**counts, "swaps": i}


def swap_cost(mechanism: str, files: int, repeats: int) -> float:
    """Median seconds of one swap that adds one file to a folder of `files` files that stay."""
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as d:
        data_dir = Path(d)
        folder = data_dir / "lake" / "trades" / "market=spot" / "symbol=X"
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"2020-01-01_2020-01-{i:04d}.parquet").write_bytes(b"x" * 1024)
        src = data_dir / "new.parquet"
        src.write_bytes(b"y" * 1024)
        for r in range(repeats):
            name = f"2030-01-01_2030-01-{r:04d}.parquet"
            prev = f"2030-01-01_2030-01-{r - 1:04d}.parquet"
            t0 = time.perf_counter()
            if mechanism == "exchange":
                _exchange_swap(data_dir, folder, {name: src})
            else:
                _per_file_swap(data_dir, folder, {name: src})
            times.append(time.perf_counter() - t0)
            assert not (folder / prev).exists()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="how long each mechanism is watched")
    p.add_argument("--no-check", action="store_true", help="print figures only")
    args = p.parse_args(argv)
    print(f"a reader of the folder (pq.read_table) while swaps flip it for {args.seconds:.0f} s ({ROWS} ids):")
    seen = {}
    for mech in ("per-file", "exchange"):
        seen[mech] = watch(mech, args.seconds)
        c = seen[mech]
        print(f"  {mech:9s} swaps {c['swaps']:5d}  reads {c['ok'] + c['mixed'] + c['errors']:5d}: ok {c['ok']:5d}  "
              f"mixed {c['mixed']:4d}  errors (file gone, retried) {c['errors']:4d}")
    print("median cost of one swap adding a file, by files that stay in the folder:")
    costs = {}
    for n in (1, 10, 100, 1000):
        costs[n] = {m: swap_cost(m, n, 15) for m in ("per-file", "exchange")}
        print(f"  {n:5d} files: per-file {costs[n]['per-file'] * 1e3:7.2f} ms   "
              f"exchange {costs[n]['exchange'] * 1e3:7.2f} ms")
    print(json.dumps({"reads": seen, "swap_seconds": costs}))
    if args.no_check:
        return 0
    ok = seen["exchange"]["mixed"] == 0
    print(f"{'PASS' if ok else 'FAIL'}: {seen['exchange']['mixed']} mixed reads with the exchange "
          f"(per-file baseline: {seen['per-file']['mixed']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
