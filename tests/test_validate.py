"""validate_parquet_file, continuity_gaps and the footer's source document on real Parquet files.

Bad files are written directly with pyarrow, each breaking one rule of the lake contract,
and one breaking several at once (every failure must be reported together).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import LakeValidationError
from tasks.lake.compact import compact_symbol
from tasks.lake.ingest import ingest_archive, validate_symbol
from tasks.lake.inventory import lake_files, read_sources
from tasks.lake.validate import (
    ExpectedFile,
    FileReport,
    Gap,
    IdGaps,
    continuity_gaps,
    validate_parquet_file,
)
from tasks.schema import SOURCE_METADATA_KEY, TRADES_SCHEMA
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive import checksum_text, generate_trades, make_zip, render_csv, sha256_hex

DAY = ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1))
START_US = 1_704_067_200_000_000
EXPECT_DAY = ExpectedFile(start=DAY.start, end=DAY.end)


def lake_table(ids: list[int], times: list[int] | None = None, schema: pa.Schema = TRADES_SCHEMA) -> pa.Table:
    """A lake-schema table; `times` in µs since the epoch (default: one trade per second from midnight)."""
    n = len(ids)
    times = times if times is not None else [START_US + i * 1_000_000 for i in range(n)]
    columns: dict[str, Any] = {
        "trade_id": ids,
        "price": [42000.0 + i for i in range(n)],
        "qty": [0.001] * n,
        "quote_qty": [42.0] * n,
        "base_qty": [None] * n,
        "time": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "is_buyer_maker": [i % 2 == 0 for i in range(n)],
        "is_best_match": [True] * n,
    }
    return pa.table({f.name: pa.array(columns[f.name]).cast(f.type) for f in schema}, schema=schema)


def write(path: Path, table: pa.Table, row_group_size: int | None = None, **options: Any) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size, **options)
    return path


def problems_of(path: Path, expected: ExpectedFile | None = None) -> str:
    with pytest.raises(LakeValidationError) as info:
        validate_parquet_file(path, expected)
    assert info.value.source == str(path)
    return info.value.reason


def test_valid_file_report(tmp_path: Path) -> None:
    ids = [*range(100, 110), *range(120, 125), 200]  # gaps 109->120 and 124->200
    doc = {"market": "spot", "symbol": "BTCUSDT", "sources": [{"archive": DAY.key, "rows": len(ids)}]}
    table = lake_table(ids).replace_schema_metadata({SOURCE_METADATA_KEY: json.dumps(doc).encode()})
    path = write(tmp_path / "ok.parquet", table, row_group_size=4)

    expected = ExpectedFile(rows=len(ids), start=DAY.start, end=DAY.end, market="spot", symbol="BTCUSDT")
    report = validate_parquet_file(path, expected)
    assert report.path == path
    assert (report.rows, report.row_groups) == (16, 4)
    assert (report.first_trade_id, report.last_trade_id) == (100, 200)
    assert report.first_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert report.last_time == datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=15)
    # The second gap spans a row-group boundary (rows 12..15 are the last group).
    assert report.id_gaps == IdGaps(listed=((109, 120), (124, 200)), count=2, missing_ids=10 + 75)
    assert report.source_metadata == doc
    assert read_sources(path) == doc
    assert pickle.loads(pickle.dumps(report)) == report


def test_microseconds_and_bounds_are_exact(tmp_path: Path) -> None:
    end_us = START_US + 86_400_000_000
    path = write(tmp_path / "edge.parquet", lake_table([1, 2], [START_US, end_us - 1]))
    report = validate_parquet_file(path, EXPECT_DAY)
    assert report.last_time == DAY.end - timedelta(microseconds=1)
    late = write(tmp_path / "late.parquet", lake_table([1, 2], [START_US, end_us]))
    assert "times at or after the period end: 1" in problems_of(late, EXPECT_DAY)


def test_wrong_row_count(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.parquet", lake_table([1, 2, 3]))
    assert problems_of(path, ExpectedFile(rows=4)) == "3 rows, expected 4"


def test_wrong_schema_every_difference_named(tmp_path: Path) -> None:
    bad = pa.schema(
        [
            pa.field("trade_id", pa.int32(), nullable=False),
            pa.field("price", pa.float64(), nullable=True),  # must not be nullable
            pa.field("qty", pa.float64(), nullable=False),
            pa.field("quote_qty", pa.float64()),
            pa.field("base_qty", pa.float64()),
            pa.field("time", pa.timestamp("ms"), nullable=False),  # wrong unit, no UTC
            pa.field("is_buyer_maker", pa.bool_(), nullable=False),
            pa.field("extra", pa.bool_()),  # is_best_match missing, extra column instead
        ]
    )
    table = pa.table(
        {
            "trade_id": pa.array([1, 2], pa.int32()),
            "price": [1.0, 2.0],
            "qty": [1.0, 1.0],
            "quote_qty": [1.0, 2.0],
            "base_qty": pa.nulls(2, pa.float64()),
            "time": pa.array([START_US // 1000, START_US // 1000 + 1], pa.timestamp("ms")),
            "is_buyer_maker": [True, False],
            "extra": [True, True],
        },
        schema=bad,
    )
    reason = problems_of(write(tmp_path / "schema.parquet", table), EXPECT_DAY)
    assert "missing ['is_best_match']" in reason and "unexpected ['extra']" in reason
    assert "column trade_id has type int32, expected int64" in reason
    assert "column price is nullable, expected not nullable" in reason
    assert "column time has type timestamp[ms], expected timestamp[us, tz=UTC]" in reason


def test_unsorted_and_duplicate_ids(tmp_path: Path) -> None:
    within = write(tmp_path / "within.parquet", lake_table([1, 3, 2, 4]))
    assert "trade ids not strictly increasing (unsorted or duplicated): 1 (e.g. 3 then 2)" in problems_of(within)
    duplicate = write(tmp_path / "dup.parquet", lake_table([1, 2, 2, 3]))
    assert "2 then 2" in problems_of(duplicate)
    across = write(tmp_path / "across.parquet", lake_table([5, 6, 1, 2]), row_group_size=2)
    assert "6 then 1 across row groups 0/1" in problems_of(across)


def test_times_out_of_bounds(tmp_path: Path) -> None:
    times = [START_US - 1, START_US, START_US + 86_400_000_000 + 5]
    reason = problems_of(write(tmp_path / "t.parquet", lake_table([1, 2, 3], times)), EXPECT_DAY)
    assert "times before the period start: 1 (e.g. id 1 at 2023-12-31T23:59:59.999999+00:00)" in reason
    assert "times at or after the period end: 1 (e.g. id 3 at 2024-01-02T00:00:00.000005+00:00)" in reason


def test_missing_statistics(tmp_path: Path) -> None:
    path = write(tmp_path / "nostats.parquet", lake_table([1, 2]), write_statistics=False)
    assert "row-group statistics missing: 8 column chunks" in problems_of(path)


@pytest.mark.parametrize("statistics", [True, False], ids=["from-statistics", "from-data"])
def test_nulls_in_non_nullable_column(tmp_path: Path, statistics: bool) -> None:
    loose = pa.schema([f.with_nullable(True) for f in TRADES_SCHEMA])
    table = lake_table([1, 2, 3], schema=loose)
    table = table.set_column(1, "price", pa.array([1.0, None, 2.0]))
    reason = problems_of(write(tmp_path / "nulls.parquet", table, write_statistics=statistics))
    assert "nulls in non-nullable column price: 1" in reason
    assert "column price is nullable, expected not nullable" in reason


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    times = [START_US, START_US + 1, START_US - 10, START_US + 86_400_000_000]
    path = write(tmp_path / "many.parquet", lake_table([10, 12, 11, 13], times), write_statistics=False)
    reason = problems_of(path, ExpectedFile(rows=5, start=DAY.start, end=DAY.end, market="spot"))
    parts = reason.split("; ")
    assert parts[0] == "4 rows, expected 5"
    for fragment in (
        "no source metadata",
        "trade ids not strictly increasing",
        "times before the period start",
        "times at or after the period end",
        "row-group statistics missing",
    ):
        assert sum(fragment in part for part in parts) == 1, (fragment, parts)


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    assert problems_of(garbage).startswith("unreadable Parquet file")
    empty = write(tmp_path / "empty.parquet", lake_table([]))
    assert "the file holds no rows" in problems_of(empty)


def test_source_metadata_must_match(tmp_path: Path) -> None:
    doc = {"market": "um", "symbol": "ETHUSDT", "sources": []}
    table = lake_table([1]).replace_schema_metadata({SOURCE_METADATA_KEY: json.dumps(doc).encode()})
    path = write(tmp_path / "meta.parquet", table)
    reason = problems_of(path, ExpectedFile(market="spot", symbol="BTCUSDT"))
    assert "source metadata market is 'um', expected 'spot'" in reason
    assert "source metadata symbol is 'ETHUSDT', expected 'BTCUSDT'" in reason
    assert read_sources(write(tmp_path / "plain.parquet", lake_table([1]))) is None


# ---------------------------------------------------------------------------------------
# continuity_gaps
# ---------------------------------------------------------------------------------------


def report(name: str, first: int, last: int) -> FileReport:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    return FileReport(
        path=Path(name),
        rows=last - first + 1,
        row_groups=1,
        first_trade_id=first,
        last_trade_id=last,
        first_time=when + timedelta(seconds=first),
        last_time=when + timedelta(seconds=last),
        id_gaps=IdGaps(),
    )


def test_continuity_gap_and_overlap() -> None:
    day1, day2, day3, day4 = (
        report("d1", 1, 100),
        report("d2", 111, 200),
        report("d3", 150, 250),
        report("d4", 251, 300),
    )
    gaps = continuity_gaps([day4, day2, day1, day3])  # input order does not matter
    assert gaps == [
        Gap(Path("d1"), Path("d2"), 100, 111, 10, False, day1.last_time, day2.first_time),
        Gap(Path("d2"), Path("d3"), 200, 150, 51, True, day2.last_time, day3.first_time),
    ]
    assert pickle.loads(pickle.dumps(gaps)) == gaps


def test_continuity_contiguous_nested_and_empty() -> None:
    assert continuity_gaps([report("a", 1, 10), report("b", 11, 20)]) == []
    nested = continuity_gaps([report("outer", 1, 100), report("inner", 10, 20), report("next", 101, 110)])
    assert [(g.next_path.name, g.size, g.overlap) for g in nested] == [("inner", 11, True)]
    empty = FileReport(Path("e"), 0, 0, None, None, None, None, IdGaps())
    assert continuity_gaps([empty, report("a", 5, 6)]) == []


def test_reports_from_real_files(tmp_path: Path) -> None:
    first = validate_parquet_file(write(tmp_path / "1.parquet", lake_table([1, 2, 3])))
    second = validate_parquet_file(write(tmp_path / "2.parquet", lake_table([7, 8])))
    [gap] = continuity_gaps([second, first])
    assert (gap.prev_last_id, gap.next_first_id, gap.size, gap.overlap) == (3, 7, 3, False)


# ---------------------------------------------------------------------------------------
# Damage on real lake files: converted from real ZIPs and merged as the pipeline does
# ---------------------------------------------------------------------------------------

#: Small row groups, so that a file has several and the damaged one can be named.
REAL_OPTS = ConvertOptions(row_group_rows=1000)
REAL_ROWS = 2500  # per day: row groups of 1000, 1000 and 500


def keep_archive(data_dir: Path, spec: ArchiveSpec, first_id: int, rows: int = REAL_ROWS, seed: int = 0) -> str:
    """Write a real archive ZIP and its `.CHECKSUM` where the download step keeps verified downloads."""
    trades = generate_trades(rows, spec.start, spec.end, first_id, seed, market=spec.market)
    zip_bytes = make_zip(render_csv(trades, spec.market, spec.first_day), spec.csv_name)
    path = spec.local_zip(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zip_bytes)
    path.with_name(path.name + ".CHECKSUM").write_text(checksum_text(zip_bytes, spec.file_name))
    return sha256_hex(zip_bytes)


def real_lake(data_dir: Path, days: int, target_bytes: int = 1, symbol: str = "BTCUSDT") -> list[ArchiveSpec]:
    """`days` daily archives from 2024-01-01, downloaded, converted and merged (one file per day by default)."""
    specs = [ArchiveSpec("spot", symbol, "daily", date(2024, 1, 1) + timedelta(days=i)) for i in range(days)]
    for i, spec in enumerate(specs):
        sha = keep_archive(data_dir, spec, 1 + i * REAL_ROWS, seed=i)
        ingest_archive(spec, sha, data_dir, REAL_OPTS)
    compact_symbol(data_dir, "spot", symbol, target_bytes, REAL_OPTS, consolidate=False)
    return specs


def flip_byte_in_column(path: Path, column: str, row_group: int) -> int:
    """Flip one bit inside the last data page of a column chunk, found from the footer; returns the offset.

    The chunk spans [dictionary page or first data page, + total_compressed_size); its last
    bytes are the payload of its last data page (page headers come before their payload).
    """
    chunk = pq.read_metadata(path).row_group(row_group).column(TRADES_SCHEMA.names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    offset = start + chunk.total_compressed_size - 8
    assert offset > chunk.data_page_offset  # inside a data page, not the dictionary
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))
    return offset


def digests(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lake_files(data_dir, "spot", "BTCUSDT")}


@pytest.mark.parametrize("column", ["price", "qty", "quote_qty", "time", "is_buyer_maker"])
def test_flipped_byte_in_any_column_fails_naming_file_column_and_row_group(tmp_path: Path, column: str) -> None:
    real_lake(tmp_path, 3)
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    assert len(files) == 3
    for f in files:  # every page carries a checksum
        assert validate_parquet_file(f).row_groups == 3
    damaged = files[1]
    flip_byte_in_column(damaged, column, row_group=1)
    before = digests(tmp_path)

    reason = problems_of(damaged)
    assert f"row group 1 column {column} unreadable" in reason
    assert "row group 0" not in reason and "row group 2" not in reason
    # The symbol's validation names that file alone; the others validate, and nothing is changed.
    result = validate_symbol(tmp_path, "spot", "BTCUSDT", date(2024, 1, 1), date(2024, 1, 3))
    assert result.failed_files == (damaged,)
    [error] = result.errors
    assert error.startswith(f"{damaged}: ") and f"row group 1 column {column} unreadable" in error
    assert result.files == 2
    assert digests(tmp_path) == before


def test_flipped_byte_in_a_dictionary_page_fails_by_its_checksum(tmp_path: Path) -> None:
    """Float columns are dictionary-encoded: a flipped bit in a dictionary value is caught by the page CRC."""
    real_lake(tmp_path, 1)
    [path] = lake_files(tmp_path, "spot", "BTCUSDT")
    chunk = pq.read_metadata(path).row_group(0).column(TRADES_SCHEMA.names.index("price"))
    assert chunk.has_dictionary_page
    offset = chunk.dictionary_page_offset + (chunk.data_page_offset - chunk.dictionary_page_offset) // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    reason = problems_of(path)
    assert "row group 0 column price unreadable" in reason and "CRC checksum verification failed" in reason


def test_truncated_lake_file_fails_naming_it_and_nothing_else(tmp_path: Path) -> None:
    real_lake(tmp_path, 3)
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    damaged = files[2]
    os.truncate(damaged, damaged.stat().st_size // 2)
    before = digests(tmp_path)

    assert problems_of(damaged).startswith("unreadable Parquet file")
    result = validate_symbol(tmp_path, "spot", "BTCUSDT", date(2024, 1, 1), date(2024, 1, 3))
    assert result.failed_files == (damaged,)
    [error] = result.errors
    assert error.startswith(f"{damaged}: unreadable footer")
    assert result.files == 2
    assert digests(tmp_path) == before


def test_decode_all_false_reads_ids_and_times_only(tmp_path: Path) -> None:
    """The converter's check of the file it just wrote: ids and times, their pages' checksums included."""
    real_lake(tmp_path, 1)
    [path] = lake_files(tmp_path, "spot", "BTCUSDT")
    flip_byte_in_column(path, "price", row_group=0)
    assert validate_parquet_file(path, decode_all=False).rows == REAL_ROWS
    assert "row group 0 column price unreadable" in problems_of(path)
    flip_byte_in_column(path, "time", row_group=2)
    with pytest.raises(LakeValidationError, match="row group 2 column time unreadable"):
        validate_parquet_file(path, decode_all=False)
