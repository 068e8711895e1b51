"""convert_archive on real ZIPs built here, in every dialect of the archive, good and bad.

No mocks: each test writes CSV text, zips it with zipfile and converts it into a real
Parquet file, then reads that file back with pyarrow.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tasks.convert.archive import ConversionResult, convert_archive
from tasks.errors import CorruptArchive, InvalidData, PipelineError, UnsafePath
from tasks.lake.inventory import read_sources
from tasks.schema import SOURCE_METADATA_KEY, TRADES_SCHEMA, same_columns
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Market

REPO = Path(__file__).resolve().parents[1]
DAY = date(2024, 1, 1)
DAY_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY_2025_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
SHA = "ab" * 32
SMALL = ConvertOptions(row_group_rows=1000, csv_block_bytes=16 << 10, sort_chunk_rows=1000, zstd_level=3)
UM_HEADER = "id,price,qty,quote_qty,time,is_buyer_maker\n"
CM_HEADER = "id,price,qty,base_qty,time,is_buyer_maker\n"
OLD_BYTES = b"previous committed lake file\n"


def spec_for(market: Market = "spot", day: date = DAY, symbol: str = "BTCUSDT") -> ArchiveSpec:
    return ArchiveSpec(market, symbol, "daily", day)


def make_zip(path: Path, members: Sequence[tuple[str, bytes | str]]) -> Path:
    """A ZIP with exactly these members (names used verbatim, even unsafe ones)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 2, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return path


def zip_csv(path: Path, text: str | bytes, name: str = "BTCUSDT-trades-2024-01-01.csv") -> Path:
    return make_zip(path, [(name, text)])


def spot_line(i: int, t_ms: int, maker: bool = True, price: float = 42283.58, qty: float = 0.001) -> str:
    return f"{i},{price:.8f},{qty:.8f},{price * qty:.8f},{t_ms},{maker},True\n"


def um_line(i: int, t_ms: int, maker: bool = False, price: float = 42283.5, qty: float = 0.004) -> str:
    return f"{i},{price:.1f},{qty:.3f},{price * qty:.4f},{t_ms},{str(maker).lower()}\n"


def spot_csv(n: int, first_id: int = 1000, t0: int = DAY_MS + 5) -> str:
    return "".join(spot_line(first_id + i, t0 + i * 7, i % 3 == 0) for i in range(n))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def as_dt(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def time_micros(table: pa.Table) -> list[int]:
    return [int(v) for v in table.column("time").cast(pa.int64()).to_pylist()]


# ---------------------------------------------------------------------------------------
# Dialects
# ---------------------------------------------------------------------------------------


def test_spot_2024_ms_no_header(tmp_path: Path) -> None:
    text = (
        "3350000000,42283.58000000,0.00100000,42.28358000,1704067200123,True,True\n"
        "3350000001,42283.59000000,0.50000000,21141.79500000,1704067201456,False,True\n"
        "3350000003,42283.57000000,0.00012000,5.07402840,1704153599999,True,True\n"
    )
    zp = zip_csv(tmp_path / "BTCUSDT-trades-2024-01-01.zip", text)
    out = tmp_path / "lake" / "2024-01-01_2024-01-01.parquet"
    result = convert_archive(zp, spec_for(), SHA, out, ConvertOptions())

    table = pq.read_table(out)
    assert same_columns(table.schema)
    assert table.schema.remove_metadata().equals(TRADES_SCHEMA.remove_metadata())
    assert table.column("trade_id").to_pylist() == [3350000000, 3350000001, 3350000003]
    assert table.column("price").to_pylist() == [42283.58, 42283.59, 42283.57]
    assert table.column("qty").to_pylist() == [0.001, 0.5, 0.00012]
    assert table.column("quote_qty").to_pylist() == [42.28358, 21141.795, 5.0740284]
    assert table.column("base_qty").null_count == 3
    assert time_micros(table) == [1704067200123000, 1704067201456000, 1704153599999000]
    assert table.column("is_buyer_maker").to_pylist() == [True, False, True]
    assert table.column("is_best_match").to_pylist() == [True, True, True]

    assert result.rows == result.csv_rows == 3
    assert result.duplicates_dropped == 0
    assert (result.first_trade_id, result.last_trade_id) == (3350000000, 3350000003)
    assert result.first_time == datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert result.last_time == datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=UTC)
    assert (result.time_unit, result.header) == ("ms", False)
    assert result.id_gaps.listed == ((3350000001, 3350000003),)
    assert (result.id_gaps.count, result.id_gaps.missing_ids) == (1, 1)
    assert result.bytes == out.stat().st_size
    assert result.path == out
    assert not result.sorted_externally
    assert pickle.loads(pickle.dumps(result)) == result

    doc = read_sources(out)
    assert doc == {
        "dataset": "trades",
        "market": "spot",
        "symbol": "BTCUSDT",
        "sources": [
            {
                "archive": "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip",
                "sha256": SHA,
                "member": "BTCUSDT-trades-2024-01-01.csv",
                "csv_rows": 3,
                "rows": 3,
                "duplicates_dropped": 0,
                "first_day": "2024-01-01",
                "last_day": "2024-01-01",
                "granularity": "daily",
                "time_unit": "ms",
                "header": False,
            }
        ],
    }
    # The JSON has sorted keys, and the Arrow schema readers see it too.
    raw = pq.read_metadata(out).metadata[SOURCE_METADATA_KEY]
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert pq.read_schema(out).metadata[SOURCE_METADATA_KEY] == raw
    assert files_in(out.parent) == [out.name]


def test_spot_2025_microseconds_kept_exactly(tmp_path: Path) -> None:
    times = [DAY_2025_US + 1, DAY_2025_US + 123_456_789, DAY_2025_US + 86_400_000_000 - 1]
    text = "".join(f"{4000 + i},94000.01000000,0.00001000,0.94000010,{t},False,True\n" for i, t in enumerate(times))
    zp = zip_csv(tmp_path / "a.zip", text, "BTCUSDT-trades-2025-01-01.csv")
    out = tmp_path / "out.parquet"
    result = convert_archive(zp, spec_for(day=date(2025, 1, 1)), SHA, out, ConvertOptions())
    table = pq.read_table(out)
    assert time_micros(table) == times
    assert result.time_unit == "us"
    assert result.first_time == as_dt(times[0]) and result.last_time == as_dt(times[-1])
    assert table.column("is_buyer_maker").to_pylist() == [False] * 3


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
def test_um_with_and_without_header(tmp_path: Path, header: bool) -> None:
    body = um_line(7, DAY_MS + 1, True) + um_line(8, DAY_MS + 2, False) + um_line(9, DAY_MS + 2, True)
    zp = zip_csv(tmp_path / "um.zip", (UM_HEADER if header else "") + body)
    out = tmp_path / "um.parquet"
    result = convert_archive(zp, spec_for("um"), SHA, out, ConvertOptions())
    table = pq.read_table(out)
    assert result.header is header and result.rows == 3
    assert table.column("is_buyer_maker").to_pylist() == [True, False, True]
    assert table.column("is_best_match").null_count == 3
    assert table.column("base_qty").null_count == 3
    assert table.column("quote_qty").to_pylist() == [169.134, 169.134, 169.134]
    assert table.column("price").to_pylist() == [42283.5] * 3
    assert time_micros(table) == [(DAY_MS + 1) * 1000, (DAY_MS + 2) * 1000, (DAY_MS + 2) * 1000]
    assert read_sources(out)["sources"][0]["header"] is header  # type: ignore[index]


def test_cm_header_and_base_qty(tmp_path: Path) -> None:
    text = CM_HEADER + "55,42000.1,10,0.02380946,1704067200001,true\n56,42000.2,3,0.00714282,1704067200002,false\n"
    zp = zip_csv(tmp_path / "cm.zip", text, "BTCUSD_PERP-trades-2024-01-01.csv")
    out = tmp_path / "cm.parquet"
    result = convert_archive(zp, spec_for("cm", symbol="BTCUSD_PERP"), SHA, out, ConvertOptions())
    table = pq.read_table(out)
    assert result.header
    # COIN-M's 4th column is the base-asset size: base_qty, never quote_qty.
    assert table.column("base_qty").to_pylist() == [0.02380946, 0.00714282]
    assert table.column("quote_qty").null_count == 2
    assert table.column("qty").to_pylist() == [10.0, 3.0]
    assert table.column("is_buyer_maker").to_pylist() == [True, False]
    assert read_sources(out)["symbol"] == "BTCUSD_PERP"  # type: ignore[index]


def test_utf8_bom_before_first_trade_is_tolerated(tmp_path: Path) -> None:
    zp = zip_csv(tmp_path / "bom.zip", b"\xef\xbb\xbf" + spot_csv(3).encode())
    result = convert_archive(zp, spec_for(), SHA, tmp_path / "o.parquet", ConvertOptions())
    assert result.rows == 3 and not result.header


# ---------------------------------------------------------------------------------------
# Sorting and de-duplication (#240, #293, #339 interleaved ids; #203 duplicates)
# ---------------------------------------------------------------------------------------


def interleaved_rows(seed: int = 7) -> tuple[list[str], int]:
    """A sorted prefix, then two interleaved id streams, plus exact duplicate rows."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, 8001)
    ids = ids[(ids < 4000) | (ids > 4010)]  # a real gap (#363): 11 ids missing
    prefix, rest = ids[:2500], ids[2500:]
    evens, odds = rest[rest % 2 == 0].tolist(), rest[rest % 2 == 1].tolist()
    order: list[int] = prefix.tolist()
    while evens or odds:
        stream = evens if evens and (not odds or rng.random() < 0.5) else odds
        k = int(rng.integers(1, 40))
        order.extend(stream[:k])
        del stream[:k]
    lines = [spot_line(i, DAY_MS + i * 10, bool(i % 2), 40000 + i % 97 / 100) for i in order]
    dupes = [100, 2500, 2501, 5555, 7999, 7999]
    for k, i in enumerate(dupes):
        lines.insert(2600 + 900 * k, spot_line(i, DAY_MS + i * 10, bool(i % 2), 40000 + i % 97 / 100))
    return lines, len(dupes)


def reference_frame(text: str) -> pd.DataFrame:
    names = ["trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]
    frame = pd.read_csv(io.StringIO(text), header=None, names=names, float_precision="round_trip")
    return frame.sort_values("trade_id", kind="stable").drop_duplicates().reset_index(drop=True)


@pytest.mark.parametrize("sort_chunk_rows", [1000, 100], ids=["one-merge", "multi-pass-merge"])
def test_interleaved_ids_with_duplicates_external_merge(tmp_path: Path, sort_chunk_rows: int) -> None:
    lines, n_dupes = interleaved_rows()
    text = "".join(lines)
    zp = zip_csv(tmp_path / "m.zip", text)
    out = tmp_path / "lake" / "m.parquet"
    out.parent.mkdir()
    options = ConvertOptions(row_group_rows=1000, csv_block_bytes=16 << 10, sort_chunk_rows=sort_chunk_rows)
    result = convert_archive(zp, spec_for(), SHA, out, options)

    expected = reference_frame(text)
    table = pq.read_table(out)
    got = table.to_pandas()
    # The 2500-row sorted prefix is run 0, the rest is spilled in sorted chunks: several
    # runs, really merged; with 100-row chunks more than the merge fan-in of 32.
    assert result.sorted_externally and result.spill_runs >= (len(lines) - 2500) // sort_chunk_rows
    assert result.csv_rows == len(lines)
    assert result.duplicates_dropped == n_dupes
    assert result.rows == len(expected) == len(lines) - n_dupes
    assert got["trade_id"].tolist() == expected["trade_id"].tolist()
    for column in ("price", "qty", "quote_qty", "is_buyer_maker", "is_best_match"):
        assert got[column].tolist() == expected[column].tolist(), column
    assert time_micros(table) == (expected["time"] * 1000).tolist()
    assert result.id_gaps.listed == ((3999, 4011),)
    assert result.id_gaps.missing_ids == 11
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(8)] == [1000] * 7 + [len(expected) - 7000]
    assert files_in(out.parent) == [out.name]  # spill runs removed


def test_disorder_sorted_in_memory_when_small(tmp_path: Path) -> None:
    rows = [spot_line(i, DAY_MS + i) for i in (5, 3, 4, 1, 2, 2)]
    zp = zip_csv(tmp_path / "s.zip", "".join(rows))
    out = tmp_path / "s.parquet"
    result = convert_archive(zp, spec_for(), SHA, out, ConvertOptions())
    assert pq.read_table(out).column("trade_id").to_pylist() == [1, 2, 3, 4, 5]
    assert result.sorted_externally and result.spill_runs == 0 and result.duplicates_dropped == 1


def test_adjacent_duplicates_dropped_without_sorting(tmp_path: Path) -> None:
    lines = [spot_line(i, DAY_MS + i) for i in range(1, 3001)]
    # One duplicate straight after its original, one repeated across a CSV block boundary.
    lines.insert(10, lines[9])
    lines.insert(1500, lines[1499])
    zp = zip_csv(tmp_path / "d.zip", "".join(lines))
    out = tmp_path / "d.parquet"
    result = convert_archive(zp, spec_for(), SHA, out, ConvertOptions(1000, 1 << 10, 1000, 3))
    assert pq.read_table(out).column("trade_id").to_pylist() == list(range(1, 3001))
    assert result.duplicates_dropped == 2 and not result.sorted_externally


@pytest.mark.parametrize("interleaved", [False, True], ids=["adjacent", "interleaved"])
def test_same_id_different_values_is_invalid(tmp_path: Path, interleaved: bool) -> None:
    lines = [spot_line(i, DAY_MS + i) for i in range(1, 4001)]
    if interleaved:
        lines = lines[2000:] + lines[:2000]
    lines.insert(3000, spot_line(1234, DAY_MS + 1234, price=1.5))
    zp = zip_csv(tmp_path / "c.zip", "".join(lines))
    out = tmp_path / "lake" / "c.parquet"
    out.parent.mkdir()
    out.write_bytes(OLD_BYTES)
    with pytest.raises(InvalidData, match="trade id 1234 appears twice with different values") as info:
        convert_archive(zp, spec_for(), SHA, out, SMALL)
    assert str(zp) in str(info.value)
    assert out.read_bytes() == OLD_BYTES
    assert files_in(out.parent) == [out.name]


# ---------------------------------------------------------------------------------------
# Bad archives: the right error, naming the ZIP; nothing committed, nothing left behind
# ---------------------------------------------------------------------------------------


def _patch_zip(data: bytes, local_offset: int, central_offset: int, value: bytes) -> bytes:
    raw = bytearray(data)
    start = raw.find(b"PK\x03\x04")
    raw[start + local_offset : start + local_offset + len(value)] = value
    central = raw.rfind(b"PK\x01\x02")
    raw[central + central_offset : central + central_offset + len(value)] = value
    return bytes(raw)


def bad_crc(path: Path) -> None:
    zip_csv(path, spot_csv(3000))
    path.write_bytes(_patch_zip(path.read_bytes(), 14, 16, struct.pack("<I", 0xDEADBEEF)))


def unsupported_method(path: Path) -> None:  # e.g. Deflate64 (#469)
    zip_csv(path, spot_csv(10))
    path.write_bytes(_patch_zip(path.read_bytes(), 8, 10, struct.pack("<H", 9)))


def truncated(path: Path) -> None:
    zip_csv(path, spot_csv(3000))
    path.write_bytes(path.read_bytes()[:-200])


def garbled(path: Path, where: float = 0.5) -> None:
    """Zeros over part of the deflate stream: may decode to nonsense text before the CRC fails."""
    zip_csv(path, spot_csv(3000))
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * where)
    raw[at : at + 16] = bytes(16)
    path.write_bytes(bytes(raw))


def spot_with(line: str, at: int = 50, n: int = 100) -> str:
    lines = spot_csv(n).splitlines(keepends=True)
    lines.insert(at, line)
    return "".join(lines)


CSV_NAME = "BTCUSDT-trades-2024-01-01.csv"
BAD_CASES: dict[str, tuple[Callable[[Path], object], type[PipelineError], str]] = {
    "not-a-zip": (lambda p: p.write_bytes(b"<Error><Code>AccessDenied</Code></Error>"), CorruptArchive, "not a"),
    "truncated-zip": (truncated, CorruptArchive, ""),
    "crc-error": (bad_crc, CorruptArchive, "CRC"),
    "garbled-early": (lambda p: garbled(p, 0.1), CorruptArchive, ""),
    "garbled-middle": (lambda p: garbled(p, 0.5), CorruptArchive, ""),
    "garbled-late": (lambda p: garbled(p, 0.8), CorruptArchive, ""),
    "unsupported-method": (unsupported_method, CorruptArchive, "not supported"),
    "no-member": (lambda p: make_zip(p, []), CorruptArchive, "no member"),
    "two-members": (
        lambda p: make_zip(p, [(CSV_NAME, spot_csv(2)), ("b.csv", spot_csv(2))]),
        CorruptArchive,
        "2 members",
    ),
    "folder-member": (lambda p: make_zip(p, [("dir/", b"")]), CorruptArchive, "folder"),
    "dotdot-member": (lambda p: make_zip(p, [("../x.csv", spot_csv(2))]), UnsafePath, "unsafe"),
    "absolute-member": (lambda p: make_zip(p, [("/abs.csv", spot_csv(2))]), UnsafePath, "unsafe"),
    "backslash-member": (lambda p: make_zip(p, [("..\\x.csv", spot_csv(2))]), UnsafePath, "unsafe"),
    "drive-member": (lambda p: make_zip(p, [("C:x.csv", spot_csv(2))]), UnsafePath, "unsafe"),
    "wrong-column-count-first-line": (lambda p: zip_csv(p, "1,2.0,3.0,4,1704067200000,true\n"), InvalidData, "line 1"),
    "wrong-column-count-later": (
        lambda p: zip_csv(p, spot_with("77,1.0,1.0,1.0,1704067200000,True\n")),
        InvalidData,
        "line 51",
    ),
    "unparsable-number": (
        lambda p: zip_csv(p, spot_with("77,4.2e,1.0,1.0,1704067200000,True,True\n")),
        InvalidData,
        "CSV conversion error to double",
    ),
    "bad-boolean": (lambda p: zip_csv(p, spot_with("77,1.0,1.0,1.0,1704067200000,yes,True\n")), InvalidData, "bool"),
    "empty-field": (lambda p: zip_csv(p, spot_with("77,1.0,,1.0,1704067200000,True,True\n")), InvalidData, "empty qty"),
    "empty-csv": (lambda p: zip_csv(p, ""), InvalidData, "no trades"),
    "header-only-csv": (lambda p: make_zip(p, [("u.csv", UM_HEADER)]), InvalidData, "no trades"),
    "price-zero": (
        lambda p: zip_csv(p, spot_with("77,0.00000000,1.0,0.0,1704067200000,True,True\n")),
        InvalidData,
        "price",
    ),
    "price-negative": (
        lambda p: zip_csv(p, spot_with("77,-1.0,1.0,1.0,1704067200000,True,True\n")),
        InvalidData,
        "id 77",
    ),
    "qty-nan": (lambda p: zip_csv(p, spot_with("77,1.0,nan,1.0,1704067200000,True,True\n")), InvalidData, "qty"),
    "id-zero": (lambda p: zip_csv(p, spot_with("0,1.0,1.0,1.0,1704067200000,True,True\n")), InvalidData, "trade id"),
    "time-next-day": (lambda p: zip_csv(p, spot_with(spot_line(77, DAY_MS + 86_400_000))), InvalidData, "outside"),
    "time-previous-day": (lambda p: zip_csv(p, spot_with(spot_line(77, DAY_MS - 1))), InvalidData, "outside"),
    "us-time-in-ms-file": (lambda p: zip_csv(p, spot_with(spot_line(77, DAY_MS * 1000 + 5))), InvalidData, "outside"),
    "time-unit-unknown": (lambda p: zip_csv(p, spot_line(77, DAY_MS // 1000)), InvalidData, "expected 13 (ms) or 16"),
    "spot-with-header": (lambda p: zip_csv(p, UM_HEADER + spot_csv(2)), InvalidData, "no header"),
    "um-wrong-header": (
        lambda p: make_zip(p, [("u.csv", "id,price,qty,base_qty,time,is_buyer_maker\n" + um_line(1, DAY_MS))]),
        InvalidData,
        "header",
    ),
}
UM_CASES = {"header-only-csv", "um-wrong-header"}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    build, error, words = BAD_CASES[case]
    zp = tmp_path / "archive" / "BTCUSDT-trades-2024-01-01.zip"
    zp.parent.mkdir()
    build(zp)
    out = tmp_path / "lake" / "2024-01-01_2024-01-01.parquet"
    out.parent.mkdir()
    out.write_bytes(OLD_BYTES)
    market: Market = "um" if case in UM_CASES else "spot"
    with pytest.raises(error) as info:
        convert_archive(zp, spec_for(market), SHA, out, SMALL)
    assert type(info.value) is error
    assert info.value.source == str(zp)
    assert str(zp) in str(info.value)
    assert words in info.value.reason
    assert out.read_bytes() == OLD_BYTES
    assert files_in(out.parent) == [out.name]


def test_value_problems_listed_together_with_examples(tmp_path: Path) -> None:
    lines = spot_csv(100).splitlines(keepends=True)
    lines[10] = "1010,0.0,1.0,1.0,1704067200000,True,True\n"
    lines[20] = "1020,-5.0,1.0,1.0,1704067200000,True,True\n"
    lines[30] = spot_line(1030, DAY_MS + 86_400_000)
    zp = zip_csv(tmp_path / "v.zip", "".join(lines))
    with pytest.raises(InvalidData) as info:
        convert_archive(zp, spec_for(), SHA, tmp_path / "v.parquet", ConvertOptions())
    reason = info.value.reason
    assert "2 rows with price not a positive finite number" in reason
    assert "id 1010 (line 11)" in reason and "id 1020 (line 21)" in reason
    assert "1 rows with time outside" in reason and "id 1030 (line 31)" in reason


# ---------------------------------------------------------------------------------------
# The Parquet file itself
# ---------------------------------------------------------------------------------------


def test_parquet_layout_encodings_and_row_groups(tmp_path: Path) -> None:
    zp = zip_csv(tmp_path / "l.zip", spot_csv(2500))
    out = tmp_path / "l.parquet"
    convert_archive(zp, spec_for(), SHA, out, ConvertOptions(1000, 1 << 12, 1000, 5))
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    for rg in range(meta.num_row_groups):
        for i, name in enumerate(names):
            column = meta.row_group(rg).column(i)
            assert column.compression == "ZSTD"
            assert column.is_stats_set
            if name in ("trade_id", "time"):
                assert "DELTA_BINARY_PACKED" in column.encodings
                assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(column.encodings)
                assert column.statistics.has_min_max
    assert meta.row_group(0).sorting_columns[0].column_index == 0
    assert b"ARROW:schema" in meta.metadata


@pytest.mark.parametrize("options", [ConvertOptions(), SMALL], ids=["in-order", "external-sort"])
def test_output_is_byte_identical_when_converted_twice(tmp_path: Path, options: ConvertOptions) -> None:
    lines, _ = interleaved_rows()
    zp = zip_csv(tmp_path / "t.zip", "".join(lines) if options is SMALL else spot_csv(3000))
    first, second = tmp_path / "a" / "x.parquet", tmp_path / "b" / "x.parquet"
    convert_archive(zp, spec_for(), SHA, first, options)
    convert_archive(zp, spec_for(), SHA, second, options)
    assert first.read_bytes() == second.read_bytes()
    # Converting again over an existing file replaces it atomically with the same bytes.
    convert_archive(zp, spec_for(), SHA, first, options)
    assert first.read_bytes() == second.read_bytes()
    assert files_in(first.parent) == ["x.parquet"]


# ---------------------------------------------------------------------------------------
# Bounded memory
# ---------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import json, re, sys
    from datetime import date
    from pathlib import Path

    import pandas  # pyarrow imports it lazily on first use: a one-time ~30 MB, not data

    from tasks.source.archive_spec import ArchiveSpec
    from tasks.convert.archive import convert_archive
    from tasks.settings import ConvertOptions

    warm_up, small, big, out = (Path(a) for a in sys.argv[1:5])
    spec = ArchiveSpec("um", "BTCUSDT", "daily", date(2024, 1, 1))
    options = ConvertOptions(row_group_rows=50_000, csv_block_bytes=256 << 10, sort_chunk_rows=int(sys.argv[5]))

    def status(key):
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{key}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

    def reset_peak():
        # getrusage's ru_maxrss survives execve, so a child would inherit the test
        # process's peak; VmHWM is this process's own, and "5" resets it (Linux >= 4.0).
        Path("/proc/self/clear_refs").write_text("5")

    # A tiny first conversion pays the one-time costs (thread pools, allocator arenas,
    # library pages) so that what is measured next depends on the data only.
    convert_archive(warm_up, spec, "0" * 64, out, options)
    base = status("VmRSS")
    reset_peak()
    convert_archive(small, spec, "0" * 64, out, options)
    small_growth = status("VmHWM") - base
    reset_peak()
    result = convert_archive(big, spec, "0" * 64, out, options)
    big_growth = status("VmHWM") - base
    report = {"small": small_growth, "big": big_growth, "rows": result.rows, "runs": result.spill_runs}
    print(json.dumps(report))
    """
)


SORT_ROWS = 100_000


def write_um_zip(path: Path, n: int, interleaved: bool, seed: int = 3) -> int:
    """A header-less USD-M archive of `n` trades with 8-decimal strings; returns the CSV size."""
    rng = np.random.default_rng(seed)
    ids = np.arange(10**10, 10**10 + n, dtype=np.int64)
    if interleaved:  # two id streams, alternating row by row (#240)
        half = n // 2
        ids = np.stack([ids[:half], ids[half:]], axis=1).reshape(-1)
    eight_decimals = pa.decimal128(18, 8)
    table = pa.table(
        {
            "id": ids,
            "price": pa.array(np.round(40000 + np.cumsum(rng.integers(-2, 3, n)) / 100, 2)).cast(eight_decimals),
            "qty": pa.array(rng.choice([0.001, 0.002, 0.01, 0.1, 1.0], n)).cast(eight_decimals),
            "quote_qty": pa.array(np.round(rng.random(n) * 1000, 4)).cast(eight_decimals),
            "time": DAY_MS + np.sort(rng.integers(0, 86_400_000, n)),
            "is_buyer_maker": rng.random(n) < 0.5,
        }
    )
    csv_path = path.with_suffix(".csv")
    pacsv.write_csv(table, csv_path, pacsv.WriteOptions(include_header=False))
    size = csv_path.stat().st_size
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(csv_path, "BTCUSDT-trades-2024-01-01.csv")
    csv_path.unlink()
    return size


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
@pytest.mark.parametrize("interleaved", [False, True], ids=["in-order", "interleaved"])
def test_memory_bounded_by_options_not_file(tmp_path: Path, interleaved: bool) -> None:
    warm_up, small, big, out = (tmp_path / name for name in ("warm.zip", "small.zip", "big.zip", "out.parquet"))
    write_um_zip(warm_up, 2_000, interleaved)
    small_csv = write_um_zip(small, 400_000, interleaved)
    big_csv = write_um_zip(big, 2_000_000, interleaved)  # ~135 MB of CSV
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(warm_up), str(small), str(big), str(out), str(SORT_ROWS)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=120,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rows"] == pq.ParquetFile(out).metadata.num_rows == 2_000_000
    if interleaved:
        assert report["runs"] >= 20  # the external sort really ran, with many runs
    # Memory follows the options (256 KB pieces, 50 k-row row groups, 100 k-row sort chunks),
    # not the file. Measured for ~135 MB of CSV: ~35 MB in order; ~70 MB with the external
    # sort (three sort-chunk-sized tables, plus ~1 MB of reader buffers per merged run).
    assert report["big"] < big_csv * (0.33 if not interleaved else 0.75), (report, big_csv)
    # Five times the data costs little more memory (allocator slack, longer merge batches).
    assert report["big"] - report["small"] < (big_csv - small_csv) / 4, (report, big_csv, small_csv)


def test_result_is_a_frozen_picklable_dataclass(tmp_path: Path) -> None:
    zp = zip_csv(tmp_path / "p.zip", spot_csv(5))
    result = convert_archive(zp, spec_for(), SHA, tmp_path / "p.parquet", ConvertOptions())
    assert isinstance(result, ConversionResult)
    with pytest.raises(AttributeError):
        result.rows = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(result)) == result


# ---------------------------------------------------------------------------------------
# The fast path: ISA-L inflate of the raw member, the compiled parser, piece cutting
# ---------------------------------------------------------------------------------------


def _pyarrow_table(text: bytes, market: Market) -> pa.Table:
    from tasks.convert.csv_dialect import CsvDialect
    from tasks.convert.csv_parse import CSV_COLUMNS, csv_options, parse_csv_piece

    dialect = CsvDialect(CSV_COLUMNS[market], header=False, time_unit="ms")
    return parse_csv_piece(text, 1, csv_options(dialect, ConvertOptions()), "s.zip", "s.csv")


@pytest.mark.parametrize("market", ["spot", "um", "cm"])
def test_simple_parser_gives_pyarrows_table(market: Market) -> None:
    from tasks.convert.csv_dialect import CsvDialect
    from tasks.convert.csv_parse import CSV_COLUMNS, parse_simple_piece
    from tests.fake_archive.generate import generate_trades, render_csv

    spec = spec_for(market, symbol="BTCUSD_PERP" if market == "cm" else "BTCUSDT")
    trades = generate_trades(20_000, spec.start, spec.end, first_id=3_300_000_000, seed=9, market=market)
    text = render_csv(trades, market, spec, header=False)
    fast = parse_simple_piece(text, CsvDialect(CSV_COLUMNS[market], header=False, time_unit="ms"))
    reference = _pyarrow_table(text, market)
    assert fast is not None
    assert fast.schema == reference.schema
    assert fast.equals(reference)


def test_simple_parser_rounds_decimals_like_pyarrow() -> None:
    """Random decimals of up to 17 digits (and 2**53 units): the same doubles, bit for bit, as pyarrow's."""
    from tasks.convert.csv_dialect import CsvDialect
    from tasks.convert.csv_parse import CSV_COLUMNS, parse_simple_piece

    rng = np.random.default_rng(5)

    def decimal() -> str:
        digits, decimals = int(rng.integers(1, 18)), int(rng.integers(0, 12))
        units = str(int(rng.integers(0, min(10**digits, 2**53 + 1)))).rjust(decimals + 1, "0")
        return f"{units[: len(units) - decimals]}.{units[len(units) - decimals :]}" if decimals else units

    lines = [f"{i + 1},{decimal()},{decimal()},{decimal()},{DAY_MS + i},true,False\n" for i in range(20_000)]
    text = "".join(lines).encode()
    fast = parse_simple_piece(text, CsvDialect(CSV_COLUMNS["spot"], header=False, time_unit="ms"))
    assert fast is not None
    reference = _pyarrow_table(text, "spot")
    for name in ("price", "qty", "quote_qty"):
        bits = fast.column(name).to_numpy().view(np.int64)
        assert np.array_equal(bits, reference.column(name).to_numpy().view(np.int64))
    assert fast.equals(reference)


@pytest.mark.parametrize(
    "line",
    [
        "7,+1.0,1.0,1.0,1704067200000,True,True\n",  # a sign
        "7,1e3,1.0,1.0,1704067200000,True,True\n",  # an exponent
        "7,123456789012.123456,1.0,1.0,1704067200000,True,True\n",  # 18 digits
        "7,1.0,1.0,1.0,1704067200000,TRUE,True\n",  # a boolean pyarrow refuses
        "\n",  # an empty line, which pyarrow skips
        "7,1.0, 1.0,1.0,1704067200000,True,True\n",  # a space
    ],
)
def test_simple_parser_leaves_anything_unusual_to_pyarrow(line: str) -> None:
    from tasks.convert.csv_dialect import CsvDialect
    from tasks.convert.csv_parse import CSV_COLUMNS, parse_simple_piece

    text = (spot_csv(3) + line + spot_csv(3, first_id=2000)).encode()
    assert parse_simple_piece(text, CsvDialect(CSV_COLUMNS["spot"], header=False, time_unit="ms")) is None


def test_unusual_pieces_among_simple_ones_convert_like_pyarrow(tmp_path: Path) -> None:
    """Pieces the compiled parser leaves to pyarrow (CRLF, empty lines, signs) mix with simple ones."""
    lines = spot_csv(6000).splitlines(keepends=True)
    lines[1000] = lines[1000].replace("\n", "\r\n")
    lines[3000] += "\n"
    lines[4500] = lines[4500].replace(",", ",+", 1)
    text = "".join(lines) + "\n"
    zp = zip_csv(tmp_path / "u.zip", text)
    out = tmp_path / "u.parquet"
    result = convert_archive(zp, spec_for(), SHA, out, ConvertOptions(1000, 1 << 14, 1000, 3))
    table = pq.read_table(out)
    expected = reference_frame(text)
    assert result.rows == result.csv_rows == len(expected) == 6000
    assert table.column("trade_id").to_pylist() == expected["trade_id"].tolist()
    assert table.column("price").to_pylist() == expected["price"].tolist()
    assert table.column("quote_qty").to_pylist() == expected["quote_qty"].tolist()


@pytest.mark.parametrize("block", [1 << 12, 1 << 16, 16 << 20])
def test_errors_name_the_line_across_many_pieces(tmp_path: Path, block: int) -> None:
    lines = spot_csv(5000).splitlines(keepends=True)
    lines[2345] = "77,1.0,1.0,1.0,1704067200000,True\n"  # line 2346: a column short
    zp = zip_csv(tmp_path / "e.zip", "".join(lines))
    with pytest.raises(InvalidData) as info:
        convert_archive(zp, spec_for(), SHA, tmp_path / "e.parquet", ConvertOptions(1000, block, 1000, 3))
    assert "line 2346" in info.value.reason
    lines = spot_csv(5000).splitlines(keepends=True)
    lines[3999] = spot_line(77, DAY_MS - 1)
    zp = zip_csv(tmp_path / "t.zip", "".join(lines))
    with pytest.raises(InvalidData) as info:
        convert_archive(zp, spec_for(), SHA, tmp_path / "t.parquet", ConvertOptions(1000, block, 1000, 3))
    assert "id 77 (line 4000)" in info.value.reason


def test_overlong_line_is_named(tmp_path: Path) -> None:
    lines = spot_csv(3000).splitlines(keepends=True)
    lines.insert(2500, "9" * (3 << 20) + "\n")
    zp = zip_csv(tmp_path / "l.zip", "".join(lines))
    with pytest.raises(InvalidData) as info:
        convert_archive(zp, spec_for(), SHA, tmp_path / "l.parquet", ConvertOptions(1000, 1 << 14, 1000, 3))
    assert "line 2501 is longer than" in info.value.reason


def test_stored_member_converts(tmp_path: Path) -> None:
    zp = tmp_path / "s.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(CSV_NAME, spot_csv(3000))
    result = convert_archive(zp, spec_for(), SHA, tmp_path / "s.parquet", ConvertOptions(1000, 1 << 14, 1000, 3))
    assert result.rows == 3000


def _local_header_name_differs(path: Path) -> None:
    zip_csv(path, spot_csv(100))
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x03\x04") + 30
    raw[start : start + 7] = b"XTCUSDT"  # the local header's copy of the name only
    path.write_bytes(bytes(raw))


def _sizes_lie(path: Path) -> None:
    zip_csv(path, spot_csv(3000))
    size = len(spot_csv(3000))
    path.write_bytes(_patch_zip(path.read_bytes(), 22, 24, struct.pack("<I", size - 10)))


@pytest.mark.parametrize(
    ("damage", "words"),
    [(_local_header_name_differs, "differ"), (_sizes_lie, ""), (lambda p: garbled(p, 0.3), "")],
    ids=["local-name-differs", "size-lies", "garbled"],
)
def test_damaged_member_is_corrupt(tmp_path: Path, damage: Callable[[Path], None], words: str) -> None:
    zp = tmp_path / "d.zip"
    damage(zp)
    with pytest.raises(CorruptArchive) as info:
        convert_archive(zp, spec_for(), SHA, tmp_path / "d.parquet", ConvertOptions(1000, 1 << 14, 1000, 3))
    assert info.value.source == str(zp)
    assert words in info.value.reason
    assert files_in(tmp_path) == ["d.zip"]
