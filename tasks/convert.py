"""Convert one Binance trades archive (a ZIP holding one CSV) into one lake Parquet file.

The CSV is streamed out of the ZIP in pieces of at most `csv_block_bytes` cut at line
ends, so memory is bounded by a few pieces, a row group and (when the ids are out of
order) a sort chunk, never by the file: a USD-M BTCUSDT month is 4.7 GB of CSV
(docs/binance-archive.md). Two stages overlap (`_stream_csv`): the member is inflated
with ISA-L (`inflate_member`, which checks the CRC itself) and cut in a read-ahead
thread, while the calling thread parses the pieces, with a compiled parser for the plain
lines Binance writes (`parse_simple_piece`) or with pyarrow and explicit types for
anything else, checks them and encodes the Parquet row groups.

What each archive may throw at us, and where it is handled:

- header or not, per file (futures only, and not every file: #278); booleans spelt
  `True`/`False` (spot) or `true`/`false` (futures); times in ms, or in µs for spot
  from 2025-01-01: `sniff_dialect`. Microseconds are kept, never truncated.
- two interleaved id streams in monthly futures files (#240, #293, #339) and exact
  duplicate rows (#203): `_SortedOutput` writes straight through while ids increase
  and falls back to an external merge sort on the first disorder.
- corrupt or unsupported ZIPs (#435, #469), several members, unsafe member names:
  `CorruptArchive` / `UnsafePath` before anything is read; CRC errors show up only at
  the end of the member and abort the conversion before the commit.
- values are checked piece by piece before they are written (ids > 0, price > 0,
  qty > 0, no empty fields, times inside the archive's period), so a ms/µs mix or a
  file of the wrong day fails with `InvalidData` naming the archive.

The output file is written under a hidden temporary name beside `out_path`, validated
with `validate_parquet_file`, then committed by an atomic rename. Any error removes the
temporary and spill files and leaves a previous `out_path` untouched.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, cast

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from isal import igzip_lib, isal_zlib

from tasks.archive_spec import ArchiveSpec
from tasks.atomic import commit, temp_path_for
from tasks.errors import CorruptArchive, InvalidData, UnsafePath
from tasks.lake_writer import RowGroupWriter, lake_writer, source_metadata_doc
from tasks.read_ahead import read_ahead
from tasks.schema import TIME_TYPE, TRADES_SCHEMA
from tasks.settings import ConvertOptions
from tasks.sorted_merge import RunCursor
from tasks.utc import datetime_to_micros
from tasks.validate import ExpectedFile, IdGaps, validate_parquet_file

TimeUnit = Literal["ms", "us"]

#: CSV columns of each market, named as in the lake. COIN-M's 4th column is the size in
#: the base asset (`qty` counts contracts), so it lands in `base_qty`, not `quote_qty`.
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "spot": ("trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
    "um": ("trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
    "cm": ("trade_id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
}

#: The header line a file of each market carries when it has one; spot files never do.
CSV_HEADERS: dict[str, tuple[str, ...] | None] = {
    "spot": None,
    "um": ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
    "cm": ("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
}

#: Digits of an epoch time in ms (2001..2286) and in µs: spot switched to µs on 2025-01-01.
_TIME_DIGITS: dict[int, TimeUnit] = {13: "ms", 16: "us"}
_CSV_TYPES: dict[str, pa.DataType] = {
    "trade_id": pa.int64(),  # ids exceed 2**31
    "price": pa.float64(),
    "qty": pa.float64(),
    "quote_qty": pa.float64(),
    "base_qty": pa.float64(),
    "time": pa.int64(),  # converted to timestamp[us, UTC] after the unit is known
    "is_buyer_maker": pa.bool_(),
    "is_best_match": pa.bool_(),
}
#: Longest first line we look at when sniffing (a trade line is under 100 bytes).
_SNIFF_LINE_BYTES = 4096
#: Longest line accepted at all; longer means the member is not a trades CSV.
_MAX_LINE_BYTES = 1 << 20
#: Examples quoted per kind of bad value.
_MAX_EXAMPLES = 5
#: Row-group size of sort spill files, and the largest batch read from one during the merge.
_SPILL_ROW_GROUP_ROWS = 65_536
_MIN_MERGE_BATCH_ROWS = 1024
_RUN_READ_BUFFER_BYTES = 1 << 16
_MAX_MERGE_FAN_IN = 32
#: Exceptions of zipfile / zlib that mean the archive bytes are bad (CRC, truncation, garbling).
_ZIP_ERRORS: tuple[type[BaseException], ...] = (zipfile.BadZipFile, zlib.error, EOFError)
_NEWLINE = ord("\n")
#: Slice of a piece whose line ends are counted at once (bounds numpy's temporary mask).
_COUNT_SLICE_BYTES = 1 << 20
#: Compressed bytes read from the archive at a time, at most and at least.
_ZIP_READ_BYTES = 1 << 20
_MIN_ZIP_READ_BYTES = 1 << 16
#: A ZIP local file header: the general-purpose flags, then the name and extra-field lengths.
_LOCAL_HEADER = struct.Struct("<6xH18xHH")
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"
_UTF8_NAME_FLAG = 0x800
#: Compressed patched data (bit 5) and strong encryption (bit 6): zipfile refuses them too.
_UNSUPPORTED_FLAGS = 0x60
#: What ISA-L raises on a broken DEFLATE stream (its stub types it as an instance).
_INFLATE_ERROR = cast("type[BaseException]", igzip_lib.IsalError)
_DRIVE = re.compile(r"^[A-Za-z]:")
_ARROW_ROW = re.compile(r"Row #(\d+)")


@dataclass(frozen=True)
class CsvDialect:
    """How one archive's CSV is written: found per file, never assumed per market."""

    columns: tuple[str, ...]
    header: bool
    time_unit: TimeUnit


@dataclass(frozen=True)
class ConversionResult:
    """What `convert_archive` wrote.

    `first_time`/`last_time` are aware UTC datetimes, exact to the microsecond.
    `id_gaps` lists trade-id gaps inside the file (#363), capped, with totals.
    `csv_rows` counts the CSV's data lines; `rows` the rows written after dropping
    `duplicates_dropped` exact duplicates (#203). `sorted_externally` says whether the
    ids were out of order (#240, #293, #339) and `spill_runs` how many sorted runs the
    external sort used. `bytes` is the size of the committed file.
    """

    path: Path
    archive: str
    sha256: str
    rows: int
    csv_rows: int
    duplicates_dropped: int
    first_trade_id: int
    last_trade_id: int
    first_time: datetime
    last_time: datetime
    bytes: int
    time_unit: TimeUnit
    header: bool
    id_gaps: IdGaps
    sorted_externally: bool
    spill_runs: int


def check_member_name(name: str, source: str) -> None:
    """Raise UnsafePath if a ZIP member name could escape a folder (`..`, absolute, `\\`, drive)."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in parts or "\x00" in name:
        raise UnsafePath(source, f"unsafe ZIP member name {name!r}")


def single_member(zf: zipfile.ZipFile, source: str) -> zipfile.ZipInfo:
    """The one CSV member of a Binance archive; CorruptArchive/UnsafePath for anything else."""
    infos = zf.infolist()
    for info in infos:
        check_member_name(info.filename, source)
    if not infos:
        raise CorruptArchive(source, "the ZIP holds no member")
    if len(infos) > 1:
        names = ", ".join(repr(i.filename) for i in infos[:5])
        raise CorruptArchive(source, f"the ZIP holds {len(infos)} members, expected one CSV: {names}")
    info = infos[0]
    if info.is_dir():
        raise CorruptArchive(source, f"the only member {info.filename!r} is a folder")
    if info.flag_bits & 0x1:
        raise CorruptArchive(source, f"member {info.filename!r} is encrypted")
    return info


def _open_zip(zip_path: Path, source: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:  # not a ZIP at all, or its central directory is cut (#435)
        raise CorruptArchive(source, f"not a readable ZIP: {exc}") from exc


def open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> IO[bytes]:
    """Open the member as a stream (never extracted by name); unsupported methods are CorruptArchive."""
    try:
        return zf.open(info)
    except NotImplementedError as exc:  # e.g. Deflate64 (#469)
        raise CorruptArchive(source, f"{info.filename}: unsupported ZIP: {exc}") from exc


def inflate_member(
    zip_path: Path, info: zipfile.ZipInfo, chunk_bytes: int, source: str
) -> Generator[bytes, None, None]:
    """Yield the bytes of member `info` of `zip_path`, in chunks of at most `chunk_bytes`.

    The compressed bytes are read straight from the file (the local header's offset comes
    from the central directory) and inflated with ISA-L (python-isal), about twice as fast
    as zlib here: raw DEFLATE or STORED only. Once the stream has ended, its size and
    CRC-32 are checked against the central directory. Bad bytes (CRC, truncation, a broken
    DEFLATE stream, a local header that does not match) and unsupported methods raise
    CorruptArchive naming the archive and the member.
    """
    name = info.filename
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & _UNSUPPORTED_FLAGS:
        raise CorruptArchive(source, f"{name}: unsupported ZIP: compression method {method} is not supported")
    with open(zip_path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or not header.startswith(_LOCAL_HEADER_MAGIC):
            raise CorruptArchive(source, f"{name}: BadZipFile: bad magic number for the member's local header")
        flags, name_bytes, extra_bytes = _LOCAL_HEADER.unpack(header)
        raw_name = fh.read(name_bytes)
        local_name = raw_name.decode("utf-8" if flags & _UTF8_NAME_FLAG else "cp437", "replace")
        if local_name != info.orig_filename:
            raise CorruptArchive(
                source, f"{name}: BadZipFile: file name in directory {name!r} and header {local_name!r} differ"
            )
        fh.seek(extra_bytes, 1)
        left = info.compress_size
        crc = size = 0

        def read(limit: int) -> bytes:
            nonlocal left
            want = min(limit, left)
            data = fh.read(want)
            if len(data) < want:
                raise CorruptArchive(source, f"{name}: EOFError: the compressed data is truncated")
            left -= want
            return data

        if method == zipfile.ZIP_STORED:
            while left:
                data = read(chunk_bytes)
                crc, size = isal_zlib.crc32(data, crc), size + len(data)
                yield data
        else:
            inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
            # About a chunk's worth (CSV deflates 3-5x): the inflater buffers what it has not used.
            read_bytes = max(_MIN_ZIP_READ_BYTES, min(_ZIP_READ_BYTES, chunk_bytes // 4))
            while not inflater.eof:
                if inflater.needs_input and not left:
                    raise CorruptArchive(
                        source, f"{name}: EOFError: the compressed data ended before the end-of-stream marker"
                    )
                data = read(read_bytes) if inflater.needs_input else b""
                try:
                    out = inflater.decompress(data, chunk_bytes)
                except _INFLATE_ERROR as exc:
                    raise CorruptArchive(source, f"{name}: {type(exc).__name__}: {exc}") from exc
                if out:
                    crc, size = isal_zlib.crc32(out, crc), size + len(out)
                    if size > info.file_size:
                        break  # reported below: more bytes than the central directory says
                    yield out
    if size != info.file_size:
        raise CorruptArchive(source, f"{name}: BadZipFile: inflated to {size} bytes, the ZIP says {info.file_size}")
    if crc != info.CRC:
        raise CorruptArchive(source, f"{name}: BadZipFile: Bad CRC-32 for file {name!r}")


def check_member_crc(zip_path: Path, info: zipfile.ZipInfo, source: str) -> None:
    """Inflate the whole member (streaming) and raise CorruptArchive if it does not inflate or its CRC fails."""
    for _ in inflate_member(zip_path, info, 1 << 20, source):
        pass


def sniff_dialect(first_line: bytes, second_line: bytes, market: str, source: str, csv_name: str) -> CsvDialect:
    """Decide header and time unit from the first two lines of `csv_name` inside archive `source`.

    A header exists when the first byte is not a digit; it must then be the market's
    documented header. The time unit comes from the digit count of the first trade's
    time: 13 digits are ms, 16 are µs. Raises InvalidData("... no trades") when there is
    no data line at all (empty file, or a header alone).
    """
    columns = CSV_COLUMNS[market]
    first_line = first_line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM; pyarrow skips it too
    header = bool(first_line) and not first_line[:1].isdigit()
    if header:
        expected = CSV_HEADERS[market]
        got = tuple(f.strip().lower() for f in first_line.decode("utf-8", "replace").split(","))
        if expected is None:
            found = first_line[:200]
            raise InvalidData(source, f"{csv_name}: line 1: {market} archives have no header, found {found!r}")
        if got != expected:
            raise InvalidData(source, f"{csv_name}: line 1: header {got} is not the expected {expected}")
    data_line, line_no = (second_line, 2) if header else (first_line, 1)
    if not data_line.strip():
        raise InvalidData(source, f"{csv_name}: no trades (the CSV has no data line)")
    fields = data_line.rstrip(b"\r\n").split(b",")
    if len(fields) != len(columns):
        shown = data_line[:200]
        raise InvalidData(
            source, f"{csv_name}: line {line_no}: expected {len(columns)} columns, got {len(fields)}: {shown!r}"
        )
    time_field = fields[columns.index("time")].strip()
    if not time_field.isdigit():
        raise InvalidData(source, f"{csv_name}: line {line_no}: time {time_field[:40]!r} is not an integer")
    unit = _TIME_DIGITS.get(len(time_field))
    if unit is None:
        raise InvalidData(
            source,
            f"{csv_name}: line {line_no}: time {time_field.decode()} has {len(time_field)} digits, "
            "expected 13 (ms) or 16 (µs)",
        )
    return CsvDialect(columns=columns, header=header, time_unit=unit)


def _read_first_lines(member: IO[bytes]) -> tuple[bytes, bytes]:
    first = member.readline(_SNIFF_LINE_BYTES)
    second = member.readline(_SNIFF_LINE_BYTES) if first else b""
    return first, second


class _LineTooLong(Exception):
    """Raised by `iter_csv_pieces` for a line over `_MAX_LINE_BYTES`: the consumer, which counts lines, names it."""


def iter_csv_pieces(chunks: Iterable[bytes], skip_header: bool) -> Generator[bytes | memoryview, None, None]:
    """Cut the inflated chunks of the CSV into pieces that each end at a line end.

    Yields the pieces in order, the header line (if any) left out. A chunk's whole lines
    are yielded as a view of the chunk, never copied; the line a chunk boundary cuts
    through is yielded on its own (the tail of one chunk joined to the head of the next:
    one short line). Lines are not counted here: the parsers count them, and the consumer
    numbers them in file order. Cutting here rather than handing the stream to
    `pyarrow.csv.open_csv` bounds memory: the streaming reader reads up to 32 blocks
    ahead in a background thread (measured +340 MB RSS with 16 MB blocks on an 8 M-row
    file, growing with how far the Parquet writer lags behind). Raises `_LineTooLong`
    (after the pieces before it) for a line longer than `_MAX_LINE_BYTES`.
    """
    carry = b""
    header_pending = skip_header
    for chunk in chunks:
        last = chunk.rfind(b"\n")
        if last < 0:
            carry += chunk
        else:
            start = chunk.find(b"\n") + 1 if carry or header_pending else 0
            if header_pending:
                header_pending = False  # carry + chunk[:start] is the header: dropped
            elif start:
                yield carry + chunk[:start]  # the line cut by the chunk boundary
            if last + 1 > start:
                yield memoryview(chunk)[start : last + 1]
            carry = chunk[last + 1 :]
        if len(carry) > _MAX_LINE_BYTES:
            # Not a trade line (those are under 100 bytes): refuse rather than buffer without bound.
            raise _LineTooLong
    if carry and not header_pending:
        yield carry  # the last line had no final newline


def _count_newlines(data: bytes | memoryview) -> int:
    """Line ends in `data`, counted in slices (numpy's count is ~2x bytes.count's speed)."""
    array = np.frombuffer(data, dtype=np.uint8)
    step = _COUNT_SLICE_BYTES
    return sum(int(np.count_nonzero(array[i : i + step] == _NEWLINE)) for i in range(0, len(array), step))


def csv_options(dialect: CsvDialect, options: ConvertOptions) -> tuple[Any, Any]:
    """pyarrow read and convert options for pieces of this dialect: explicit types, nothing inferred.

    Parsing is single-threaded, so pyarrow reports the row of a parse error; the inflate
    runs beside it, in the read-ahead thread. pyarrow only parses the pieces the compiled
    parser leaves to it (`parse_simple_piece`).
    """
    read_options = pacsv.ReadOptions(
        use_threads=False,
        # One block per piece: a piece is at most a block plus one carried-over line.
        block_size=options.csv_block_bytes + _MAX_LINE_BYTES + 1,
        column_names=list(dialect.columns),
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: _CSV_TYPES[name] for name in dialect.columns},
        true_values=["True", "true"],  # spot spells booleans True/False, futures true/false
        false_values=["False", "false"],
        null_values=[""],  # an empty field becomes null and is refused; "nan" stays a float NaN and is refused
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return read_options, convert_options


def _line_count(buf: np.ndarray[Any, Any]) -> int:  # pragma: no cover - compiled by numba
    """The most rows `buf` can hold: its line ends, plus one for a last line without one."""
    count = 1
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            count += 1
    return count


def _simple_rows(
    buf: np.ndarray[Any, Any],
    kinds: np.ndarray[Any, Any],
    ints: tuple[np.ndarray[Any, Any], ...],
    floats: tuple[np.ndarray[Any, Any], ...],
    bools: tuple[np.ndarray[Any, Any], ...],
) -> int:  # pragma: no cover - compiled by numba
    """Parse the lines of `buf` into the columns `ints`, `floats`, `bools`; return the rows, -1 if not simple.

    `kinds` gives each column's kind in order (`_INT`, `_FLOAT`, `_BOOL`); `ints`,
    `floats` and `bools` are tuples of one array per column of that kind, each of
    `_line_count(buf)` items. Simple means
    every line has exactly these columns and ends with `\\n`, `\\r\\n` or the end of
    `buf`, integers are 1-18 plain digits, decimals are `digits[.digits]` with at most 17
    digits and a value of at most 2**53 units of the last digit, booleans are spelt
    `True`/`true`/`False`/`false`. Such a decimal is m / 10**k with m and 10**k exact
    doubles, so the one IEEE division gives the correctly rounded double, the same as
    pyarrow's parser. Anything else (signs, exponents, empty fields, empty lines) gives
    -1 and pyarrow parses the piece instead.
    """
    n = buf.shape[0]
    capacity = ints[0].shape[0]
    ncols = kinds.shape[0]
    pos = 0
    row = 0
    while pos < n:
        if row >= capacity:
            return -1  # cannot happen with `_line_count(buf)` items; bounds are not checked
        i_col = 0
        f_col = 0
        b_col = 0
        for col in range(ncols):
            kind = kinds[col]
            if kind == 0:
                value = 0
                start = pos
                while pos < n and 48 <= buf[pos] <= 57:
                    value = value * 10 + (buf[pos] - 48)
                    pos += 1
                if pos == start or pos - start > 18:
                    return -1
                ints[i_col][row] = value
                i_col += 1
            elif kind == 1:
                units = 0
                start = pos
                while pos < n and 48 <= buf[pos] <= 57:
                    units = units * 10 + (buf[pos] - 48)
                    pos += 1
                digits = pos - start
                decimals = 0
                if pos < n and buf[pos] == 46:
                    pos += 1
                    start = pos
                    while pos < n and 48 <= buf[pos] <= 57:
                        units = units * 10 + (buf[pos] - 48)
                        pos += 1
                    decimals = pos - start
                    if decimals == 0:
                        return -1
                if digits == 0 or digits + decimals > 17 or units > 9007199254740992:
                    return -1
                floats[f_col][row] = units / 10.0**decimals
                f_col += 1
            else:
                if pos + 4 <= n and (buf[pos] == 84 or buf[pos] == 116) and buf[pos + 1] == 114:
                    if buf[pos + 2] != 117 or buf[pos + 3] != 101:
                        return -1
                    bools[b_col][row] = True
                    pos += 4
                elif pos + 5 <= n and (buf[pos] == 70 or buf[pos] == 102) and buf[pos + 1] == 97:
                    if buf[pos + 2] != 108 or buf[pos + 3] != 115 or buf[pos + 4] != 101:
                        return -1
                    bools[b_col][row] = False
                    pos += 5
                else:
                    return -1
                b_col += 1
            if col < ncols - 1:
                if pos >= n or buf[pos] != 44:
                    return -1
                pos += 1
        if pos < n and buf[pos] == 13:
            pos += 1
            if pos >= n:
                return -1  # a lone carriage return at the end
        if pos < n:
            if buf[pos] != 10:
                return -1
            pos += 1
        row += 1
    return row


#: The kernels compiled (numba, cached on disk; nogil, so the read-ahead thread runs beside them).
_line_count_jit = cast(Callable[..., int], numba.njit(cache=True, nogil=True)(_line_count))
_simple_rows_jit = cast(Callable[..., int], numba.njit(cache=True, nogil=True, boundscheck=False)(_simple_rows))
_INT, _FLOAT, _BOOL = 0, 1, 2
_KINDS: dict[pa.DataType, int] = {pa.int64(): _INT, pa.float64(): _FLOAT, pa.bool_(): _BOOL}


def parse_simple_piece(piece: bytes | memoryview, dialect: CsvDialect) -> pa.Table | None:
    """Parse a piece of plain trade lines in one pass of a compiled kernel; None if it is not plain.

    Gives exactly the table `parse_csv_piece` gives (same names, types and values; there
    are no nulls), one row per line, about 2.5x as fast. It covers the lines Binance
    writes; whatever it does not cover (see `_simple_rows`) it leaves to pyarrow, which
    also words the errors.
    """
    types = [_CSV_TYPES[name] for name in dialect.columns]
    kinds = np.array([_KINDS[t] for t in types], dtype=np.int8)
    n_ints, n_floats, n_bools = (int(np.count_nonzero(kinds == kind)) for kind in (_INT, _FLOAT, _BOOL))
    buf = np.frombuffer(piece, dtype=np.uint8)
    capacity = _line_count_jit(buf)
    # The numbers are parsed straight into one Arrow buffer per column (the default pool, as
    # pyarrow's parser allocates), the booleans into bytes packed into Arrow bitmaps afterwards.
    size = capacity * 8
    buffers = {kind: [pa.allocate_buffer(size) for _ in range(n)] for kind, n in ((_INT, n_ints), (_FLOAT, n_floats))}
    ints = tuple(np.frombuffer(b, dtype=np.int64)[:capacity] for b in buffers[_INT])
    floats = tuple(np.frombuffer(b, dtype=np.float64)[:capacity] for b in buffers[_FLOAT])
    bools = tuple(np.empty(capacity, dtype=np.bool_) for _ in range(n_bools))
    rows = _simple_rows_jit(buf, kinds, ints, floats, bools)
    if rows < 0:
        return None
    taken = [0, 0, 0]
    arrays = []
    for kind, data_type in zip(kinds.tolist(), types, strict=True):
        k = taken[kind]
        taken[kind] += 1
        if kind == _BOOL:
            arrays.append(pa.array(bools[k][:rows], type=data_type))
        else:
            arrays.append(pa.Array.from_buffers(data_type, rows, [None, buffers[kind][k].slice(0, rows * 8)]))
    return pa.Table.from_arrays(arrays, names=list(dialect.columns))


def parse_csv_piece(
    piece: bytes | memoryview, first_line: int, options: tuple[Any, Any], source: str, csv_name: str
) -> pa.Table:
    """Parse one piece with pyarrow; column-count and number-syntax errors become InvalidData."""
    read_options, convert_options = options
    try:
        return pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(piece)), read_options=read_options, convert_options=convert_options
        )
    except pa.ArrowInvalid as exc:
        # pyarrow counts rows within the piece from 1 ("Row #N"): name the line of the file.
        message = _ARROW_ROW.sub(lambda m: f"line {first_line + int(m.group(1)) - 1}", str(exc))
        raise InvalidData(source, f"{csv_name}: {message}") from exc


def _examples(mask: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], first_line: int) -> str:
    where = np.flatnonzero(mask)[:_MAX_EXAMPLES]
    return ", ".join(f"id {ids[i]} (line {first_line + i})" for i in where)


def check_values(
    table: pa.Table, lo: int, hi: int, time_unit: TimeUnit, first_line: int, source: str, csv_name: str
) -> None:
    """Refuse a parsed CSV piece with empty fields, ids <= 0, prices or sizes not > 0, or times off the period.

    Times must lie in `[lo, hi)`, in the file's unit. Every problem of the piece is
    listed, with counts and the first few ids and line numbers, in one InvalidData.
    """
    problems: list[str] = []
    id_column = table.column("trade_id")
    ids = np.asarray((id_column.fill_null(0) if id_column.null_count else id_column).to_numpy(zero_copy_only=False))
    null_masks: dict[str, np.ndarray[Any, Any]] = {}
    for name in table.schema.names:
        column = table.column(name)
        if column.null_count:
            mask = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
            null_masks[name] = mask
            problems.append(f"{int(mask.sum())} empty {name} values ({_examples(mask, ids, first_line)})")

    def report(what: str, bad: np.ndarray[Any, Any], column: str) -> None:
        if column in null_masks:
            bad &= ~null_masks[column]  # already reported as empty
        count = int(bad.sum())
        if count:
            problems.append(f"{count} rows with {what} ({_examples(bad, ids, first_line)})")

    report("trade id <= 0", ids <= 0, "trade_id")
    for name in ("price", "qty"):
        values = np.asarray(table.column(name).to_numpy(zero_copy_only=False))
        report(f"{name} not a positive finite number", ~((values > 0) & (values < np.inf)), name)
    for name in ("quote_qty", "base_qty"):
        if name in table.schema.names:
            values = np.asarray(table.column(name).to_numpy(zero_copy_only=False))
            report(f"{name} negative or not finite", ~((values >= 0) & (values < np.inf)), name)
    time_column = table.column("time")
    times = np.asarray((time_column.fill_null(lo) if time_column.null_count else time_column).to_numpy())
    # A µs time in a ms file (or the reverse) lands far outside the period: caught here.
    report(f"time outside the archive's period ({time_unit})", (times < lo) | (times >= hi), "time")
    if problems:
        raise InvalidData(source, f"{csv_name}: " + "; ".join(problems))


def to_lake_table(table: pa.Table, dialect: CsvDialect) -> pa.Table:
    """One checked CSV piece in the lake schema: times as timestamp[us, UTC], absent columns null."""
    n = table.num_rows
    names = table.schema.names
    time = table.column("time")
    if dialect.time_unit == "ms":
        time = pc.multiply(time, 1000)  # cannot overflow: the values were bounds-checked first
    arrays = {
        "trade_id": table.column("trade_id"),
        "price": table.column("price"),
        "qty": table.column("qty"),
        "quote_qty": table.column("quote_qty") if "quote_qty" in names else pa.nulls(n, pa.float64()),
        "base_qty": table.column("base_qty") if "base_qty" in names else pa.nulls(n, pa.float64()),
        "time": time.cast(TIME_TYPE),
        "is_buyer_maker": table.column("is_buyer_maker"),
        "is_best_match": table.column("is_best_match") if "is_best_match" in names else pa.nulls(n, pa.bool_()),
    }
    return pa.Table.from_arrays([arrays[name] for name in TRADES_SCHEMA.names], schema=TRADES_SCHEMA)


def _ids(table: pa.Table) -> np.ndarray[Any, Any]:
    return np.asarray(table.column("trade_id").to_numpy())


def drop_duplicate_rows(table: pa.Table, carry: pa.Table | None, source: str) -> tuple[pa.Table, int]:
    """Drop rows repeating the previous row exactly, in a table sorted by trade id.

    `carry` is the last row kept before `table` (or None), so duplicates across chunk
    boundaries are found too. Exact duplicates are a known archive defect (#203) and are
    dropped and counted; the same id with different values is InvalidData naming the id.
    """
    ids = _ids(table)
    if len(ids) == 0:
        return table, 0
    dup = np.empty(len(ids), dtype=bool)
    dup[1:] = ids[1:] == ids[:-1]
    dup[0] = carry is not None and int(carry.column("trade_id")[0].as_py()) == int(ids[0])
    if not dup.any():
        return table, 0
    positions = np.flatnonzero(dup)
    full, offset = (pa.concat_tables([carry, table]), 1) if carry is not None else (table, 0)
    this = full.take(pa.array(positions + offset))
    prev = full.take(pa.array(positions + offset - 1))
    same = np.ones(len(positions), dtype=bool)
    for name in TRADES_SCHEMA.names:
        a, b = this.column(name), prev.column(name)
        equal = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        same &= np.asarray(equal.to_numpy())
    if not same.all():
        k = int(np.flatnonzero(~same)[0])
        first, second = prev.slice(k, 1).to_pylist()[0], this.slice(k, 1).to_pylist()[0]
        raise InvalidData(
            source, f"trade id {first['trade_id']} appears twice with different values: {first} vs {second}"
        )
    return table.filter(pa.array(~dup)), len(positions)


def _spill_writer(path: Path) -> RowGroupWriter:
    # Spills are read back once, soon: fast lz4 and no dictionaries beat a small file.
    return RowGroupWriter(
        path, _SPILL_ROW_GROUP_ROWS, compression="lz4", use_dictionary=False, data_page_size=_RUN_READ_BUFFER_BYTES
    )


def _write_run(path: Path, chunks: Iterable[pa.Table]) -> None:
    """Write sorted chunks as one spill run."""
    writer = _spill_writer(path)
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def merge_sorted_runs(paths: list[Path], batch_rows: int) -> Iterator[pa.Table]:
    """K-way merge of Parquet files each sorted by trade id, in vectorised rounds.

    Each round takes, from every run's current batch, the rows with id <= the smallest of
    the current batches' maxima: no run can later yield an id below that bound, so the
    union of the taken rows, sorted, extends the output in order. At least one batch is
    consumed per round; memory is about `len(paths) * batch_rows` rows. Rows with equal
    ids stay adjacent (across rounds too), for `drop_duplicate_rows`.
    """
    with ExitStack() as stack:
        cursors: list[RunCursor] = []
        for path in paths:
            # No pre-buffering: a run is read a page at a time, not a row group at a time,
            # which halved the merge's peak Arrow memory with 8 runs.
            pf = stack.enter_context(pq.ParquetFile(path, pre_buffer=False, buffer_size=_RUN_READ_BUFFER_BYTES))
            cursors.append(RunCursor(pf.iter_batches(batch_size=batch_rows, use_threads=False)))
        active = [c for c in cursors if c.batch is not None]
        while active:
            bound = min(int(c.ids[-1]) for c in active)
            parts = [part for c in active if (part := c.take_through(bound)) is not None]
            chunk = pa.Table.from_batches(parts, schema=TRADES_SCHEMA)
            yield chunk.take(pc.sort_indices(chunk, sort_keys=[("trade_id", "ascending")]))
            active = [c for c in active if c.batch is not None]


class _SortedOutput:
    """Turns lake-schema chunks, in file order, into one sorted, de-duplicated Parquet file.

    The normal case (ids never decrease) is written straight through. On the first
    disorder (#240, #293, #339: two interleaved id streams in monthly futures files)
    what was written so far becomes the first sorted run, further rows are sorted in
    chunks of `sort_chunk_rows` and spilled as runs beside the output (hidden names),
    and `finish` merges the runs into a fresh temporary file. A merge reads at most
    `_MAX_MERGE_FAN_IN` runs at once (each open run costs about 1 MB of reader buffers
    whatever its batch size); more runs are first merged in groups into longer runs.
    """

    def __init__(self, out_path: Path, options: ConvertOptions, source: str) -> None:
        self._out_path = out_path
        self._options = options
        self._source = source
        self.tmp = temp_path_for(out_path)
        self._writer: RowGroupWriter | None = lake_writer(self.tmp, options)
        self._carry: pa.Table | None = None
        self._carry_id: int | None = None
        self.duplicates = 0
        self.rows = 0
        self.sorting = False
        self.runs: list[Path] = []  # the sorted runs, before any merging
        self._files: list[Path] = []  # every spill file ever created, for the clean-up
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    # -- straight-through path -------------------------------------------------------
    def _emit(self, table: pa.Table) -> None:
        assert self._writer is not None
        table, dropped = drop_duplicate_rows(table, self._carry, self._source)
        self.duplicates += dropped
        if table.num_rows:
            self._writer.write(table)
            self.rows += table.num_rows
            self._carry = table.slice(table.num_rows - 1, 1)
            self._carry_id = int(table.column("trade_id")[-1].as_py())

    def push(self, table: pa.Table) -> None:
        """Take the next chunk of the CSV (already checked and in the lake schema)."""
        if not table.num_rows:
            return
        if not self.sorting:
            ids = _ids(table)
            in_order = (self._carry_id is None or ids[0] >= self._carry_id) and bool((ids[1:] >= ids[:-1]).all())
            if in_order:
                self._emit(table)
                return
            self._start_external_sort()
        self._collect(table)

    # -- external sort path ----------------------------------------------------------
    def _new_run_path(self) -> Path:
        path = temp_path_for(self._out_path.with_name(f"{self._out_path.name}.run{len(self._files)}"))
        self._files.append(path)  # registered first, so a failed write is still removed
        return path

    def _start_external_sort(self) -> None:
        assert self._writer is not None
        self.sorting = True
        self._writer.close()
        self._writer = None
        if self.rows:
            # The sorted prefix already written is the first run; the output restarts.
            run = self._new_run_path()
            self.tmp.replace(run)
            self.runs.append(run)
        else:
            self.tmp.unlink(missing_ok=True)
        self.tmp = temp_path_for(self._out_path)
        self.rows = 0
        self._carry, self._carry_id = None, None

    def _collect(self, table: pa.Table) -> None:
        limit = self._options.sort_chunk_rows
        while table.num_rows:
            room = limit - self._buffered
            self._buffer.append(table.slice(0, room))
            self._buffered += min(room, table.num_rows)
            table = table.slice(room)
            if self._buffered >= limit:
                self._spill()

    def _sorted_buffer(self) -> pa.Table:
        chunk = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        return chunk.take(pc.sort_indices(chunk, sort_keys=[("trade_id", "ascending")]))

    def _spill(self) -> None:
        chunk = self._sorted_buffer()
        run = self._new_run_path()
        self.runs.append(run)
        _write_run(run, [chunk])

    def _merge_batch_rows(self, fan_in: int) -> int:
        # The merge holds one batch per run: keep their sum near the sort chunk budget.
        per_run = self._options.sort_chunk_rows // max(fan_in, 1)
        return max(_MIN_MERGE_BATCH_ROWS, min(_SPILL_ROW_GROUP_ROWS, per_run))

    def _reduce_runs(self) -> list[Path]:
        """Merge groups of runs into longer runs until at most `_MAX_MERGE_FAN_IN` remain."""
        runs = list(self.runs)
        while len(runs) > _MAX_MERGE_FAN_IN:
            longer: list[Path] = []
            for start in range(0, len(runs), _MAX_MERGE_FAN_IN):
                group = runs[start : start + _MAX_MERGE_FAN_IN]
                if len(group) == 1:
                    longer.extend(group)
                    continue
                # Duplicates are kept here: they stay adjacent and the last merge drops them.
                target = self._new_run_path()
                _write_run(target, merge_sorted_runs(group, self._merge_batch_rows(len(group))))
                for path in group:
                    path.unlink(missing_ok=True)
                longer.append(target)
            runs = longer
        return runs

    def finish(self) -> None:
        """Write out whatever is buffered; after this `rows` and `duplicates` are final."""
        if not self.sorting:
            return
        self._writer = lake_writer(self.tmp, self._options)
        if not self.runs:
            # Out of order but small enough to sort in memory: no run ever hit the disk.
            if self._buffered:
                self._emit(self._sorted_buffer())
            return
        if self._buffered:
            self._spill()
        runs = self._reduce_runs()
        for chunk in merge_sorted_runs(runs, self._merge_batch_rows(len(runs))):
            self._emit(chunk)
        self.remove_runs()

    def close(self, metadata: dict[bytes, bytes]) -> None:
        """Close the output file with its footer metadata."""
        assert self._writer is not None
        self._writer.close(metadata)
        self._writer = None

    def remove_runs(self) -> None:
        """Delete every spill file (the runs and any merged runs)."""
        for path in self._files:
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove every file this output created (after an error)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self.tmp.unlink(missing_ok=True)
        self.remove_runs()


def _stream_csv(
    zip_path: Path,
    info: zipfile.ZipInfo,
    dialect: CsvDialect,
    spec: ArchiveSpec,
    options: ConvertOptions,
    output: _SortedOutput,
    source: str,
) -> int:
    """Feed every checked piece of the member to `output`; return the number of CSV data lines.

    Two stages overlap, each mostly in compiled code that releases the GIL: a read-ahead
    thread inflates the member (ISA-L) and cuts it into pieces, while this thread parses
    (numba or pyarrow), checks, numbers the lines and feeds `output`, which encodes and
    compresses the row groups (pyarrow). Three pieces wait in the read-ahead at most, so
    memory stays bounded by a few pieces whatever the file size. (A separate parse
    thread gained nothing measurable on 2 cores, a piece parses in about the time the
    next one inflates, and it held 5-15 MB more: Arrow buffers allocated in one thread
    and freed in another.)
    """
    factor = 1000 if dialect.time_unit == "ms" else 1
    lo, hi = datetime_to_micros(spec.start) // factor, datetime_to_micros(spec.end) // factor
    parse_options = csv_options(dialect, options)
    name = info.filename
    csv_rows = 0
    line = 2 if dialect.header else 1  # the number of the next piece's first line
    chunks = inflate_member(zip_path, info, options.csv_block_bytes, source)
    pieces = iter_csv_pieces(chunks, dialect.header)
    # closing(): the thread is stopped before the generators (and the file) are closed, also on errors.
    # Depth 2: a chunk gives two pieces (the line cut by its start, then its whole lines), so
    # this keeps about one chunk inflated ahead; with depth 1 the parser waited ~20 % of the time.
    ahead_of_parser = read_ahead(pieces.__next__, depth=2, name="csv-read-ahead")
    with closing(chunks), closing(pieces), closing(ahead_of_parser) as ahead:
        try:
            for piece in ahead:
                # Once the ids are out of order, pyarrow parses: with the compiled parser's tables
                # in the external sort, the merge's peak memory measured 15-30 MB higher (pages
                # mimalloc kept but could not reuse), and the sort costs more than parsing then.
                table = None if output.sorting else parse_simple_piece(piece, dialect)
                if table is None:  # anything unusual: pyarrow parses it, and words the errors
                    lines = _count_newlines(piece)
                    table = parse_csv_piece(piece, line, parse_options, source, name)
                else:
                    lines = table.num_rows  # the simple parser makes one row of each line
                check_values(table, lo, hi, dialect.time_unit, line, source, name)
                csv_rows += table.num_rows
                line += lines
                output.push(to_lake_table(table, dialect))
        except _LineTooLong:
            raise InvalidData(source, f"{name}: line {line} is longer than {_MAX_LINE_BYTES} bytes") from None
    if csv_rows == 0:
        raise InvalidData(source, f"{name}: no trades (the CSV has no data line)")
    return csv_rows


def _source_metadata(
    spec: ArchiveSpec, sha256: str, member: str, dialect: CsvDialect, csv_rows: int, output: _SortedOutput
) -> dict[bytes, bytes]:
    source = {
        "archive": spec.key,
        "sha256": sha256,
        "member": member,
        "csv_rows": csv_rows,
        "rows": output.rows,
        "duplicates_dropped": output.duplicates,
        "first_day": spec.first_day.isoformat(),
        "last_day": spec.last_day.isoformat(),
        "granularity": spec.granularity,
        "time_unit": dialect.time_unit,
        "header": dialect.header,
    }
    return source_metadata_doc(spec.market, spec.symbol, [source])


def convert_archive(
    zip_path: Path, spec: ArchiveSpec, sha256: str, out_path: Path, options: ConvertOptions
) -> ConversionResult:
    """Convert the trades archive `zip_path` (described by `spec`) into the lake file `out_path`.

    Streams the single CSV member through pyarrow, checks every value, sorts by trade id
    and drops exact duplicates (bounded memory, external merge sort when needed), writes
    zstd Parquet in the lake schema with row groups of `options.row_group_rows`, records
    the source (`spec.key`, `sha256`, counts, dialect) in the footer under
    `SOURCE_METADATA_KEY`, validates the file, then atomically replaces `out_path`.

    Raises CorruptArchive (not a ZIP, CRC error, no member, several members, unsupported
    method), UnsafePath (member name escaping a folder) or InvalidData (dialect, values,
    no trades, conflicting duplicate ids); each names `zip_path`. On any error nothing is
    left behind and a previous `out_path` is untouched. The same input always gives a
    byte-identical file.
    """
    source = str(zip_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    output: _SortedOutput | None = None
    try:
        with _open_zip(zip_path, source) as zf:
            info = single_member(zf, source)
            try:
                with open_member(zf, info, source) as member:
                    first, second = _read_first_lines(member)
                dialect = sniff_dialect(first, second, spec.market, source, info.filename)
                output = _SortedOutput(out_path, options, source)
                csv_rows = _stream_csv(zip_path, info, dialect, spec, options, output, source)
            except _ZIP_ERRORS as exc:
                raise CorruptArchive(source, f"{info.filename}: {type(exc).__name__}: {exc}") from exc
            except InvalidData:
                # Garbled deflate data can decode into text that breaks the CSV rules before the
                # CRC is checked at the member's end: tell a corrupt archive from bad data.
                check_member_crc(zip_path, info, source)
                raise
        output.finish()
        output.close(_source_metadata(spec, sha256, info.filename, dialect, csv_rows, output))
        report = validate_parquet_file(
            output.tmp,
            ExpectedFile(rows=output.rows, start=spec.start, end=spec.end, market=spec.market, symbol=spec.symbol),
            decode_all=False,  # every value was checked before it was written; the merge decodes them all
        )
        size = output.tmp.stat().st_size
        commit(output.tmp, out_path)
    except BaseException:
        if output is not None:
            output.discard()
        raise
    assert report.first_trade_id is not None and report.last_trade_id is not None
    assert report.first_time is not None and report.last_time is not None
    return ConversionResult(
        path=out_path,
        archive=spec.key,
        sha256=sha256,
        rows=report.rows,
        csv_rows=csv_rows,
        duplicates_dropped=output.duplicates,
        first_trade_id=report.first_trade_id,
        last_trade_id=report.last_trade_id,
        first_time=report.first_time,
        last_time=report.last_time,
        bytes=size,
        time_unit=dialect.time_unit,
        header=dialect.header,
        id_gaps=report.id_gaps,
        sorted_externally=output.sorting,
        spill_runs=len(output.runs),
    )
