"""Parse the CSV of an archive: cut into pieces at line ends, parse, check, bring to the lake schema.

The parsing is generic over the dataset (`tasks.datasets`): its columns, types, epoch
columns and value rules come from the declaration. A compiled parser takes the plain
lines Binance writes (`parse_simple_piece`, kernels in `tasks.convert.csv_parse_nb`); pyarrow,
with explicit types and nothing inferred, parses anything else and words its errors.
Values are checked piece by piece before they are written (`check_values`), so a
ms/µs mix or a file of the wrong day fails with `InvalidData` naming the archive.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tasks.convert.csv_dialect import CsvDialect, TimeUnit
from tasks.convert.csv_parse_nb import BOOL, FLOAT, INT, SKIP, line_count, simple_rows
from tasks.datasets import TIME_TYPE, TRADES, Dataset
from tasks.errors import InvalidData
from tasks.settings import ConvertOptions

#: CSV columns of each market for trades, named as in the lake (`tasks.datasets.TRADES`).
CSV_COLUMNS: dict[str, tuple[str, ...]] = dict(TRADES.csv_columns)
#: Longest line accepted at all; longer means the member is not one of the archive's CSVs.
MAX_LINE_BYTES = 1 << 20
#: Examples quoted per kind of bad value.
_MAX_EXAMPLES = 5
_NEWLINE = ord("\n")
#: Slice of a piece whose line ends are counted at once (bounds numpy's temporary mask).
_COUNT_SLICE_BYTES = 1 << 20
_ARROW_ROW = re.compile(r"Row #(\d+)")
_KINDS: dict[pa.DataType, int] = {pa.int64(): INT, pa.float64(): FLOAT, pa.bool_(): BOOL}


class LineTooLong(Exception):
    """Raised by `iter_csv_pieces` for a line over `MAX_LINE_BYTES`: the consumer, which counts lines, names it."""


def iter_csv_pieces(chunks: Iterable[bytes], skip_header: bool) -> Generator[bytes | memoryview, None, None]:
    """Cut the inflated chunks of the CSV into pieces that each end at a line end.

    Yields the pieces in order, the header line (if any) left out. A chunk's whole lines
    are yielded as a view of the chunk, never copied; the line a chunk boundary cuts
    through is yielded on its own (the tail of one chunk joined to the head of the next:
    one short line). Lines are not counted here: the parsers count them, and the consumer
    numbers them in file order. Cutting here rather than handing the stream to
    `pyarrow.csv.open_csv` bounds memory: the streaming reader reads up to 32 blocks
    ahead in a background thread (measured +340 MB RSS with 16 MB blocks on an 8 M-row
    file, growing with how far the Parquet writer lags behind). Raises `LineTooLong`
    (after the pieces before it) for a line longer than `MAX_LINE_BYTES`.
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
        if len(carry) > MAX_LINE_BYTES:
            # Not a trade line (those are under 100 bytes): refuse rather than buffer without bound.
            raise LineTooLong
    if carry and not header_pending:
        yield carry  # the last line had no final newline


def count_newlines(data: bytes | memoryview) -> int:
    """Line ends in `data`, counted in slices (numpy's count is ~2x bytes.count's speed)."""
    array = np.frombuffer(data, dtype=np.uint8)
    step = _COUNT_SLICE_BYTES
    return sum(int(np.count_nonzero(array[i : i + step] == _NEWLINE)) for i in range(0, len(array), step))


def csv_options(dialect: CsvDialect, options: ConvertOptions) -> tuple[Any, Any]:
    """pyarrow read and convert options for pieces of this dialect: explicit types, nothing inferred.

    Parsing is single-threaded, so pyarrow reports the row of a parse error; the inflate
    runs beside it, in the read-ahead thread. pyarrow only parses the pieces the compiled
    parser leaves to it (`parse_simple_piece`). Columns the dataset drops are not kept.
    """
    data = dialect.data
    read_options = pacsv.ReadOptions(
        use_threads=False,
        # One block per piece: a piece is at most a block plus one carried-over line.
        block_size=options.csv_block_bytes + MAX_LINE_BYTES + 1,
        column_names=list(dialect.columns),
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: data.csv_types[name] for name in dialect.columns},
        include_columns=kept_columns(dialect),
        true_values=["True", "true"],  # spot spells booleans True/False, futures true/false
        false_values=["False", "false"],
        null_values=[""],  # an empty field becomes null and is refused; "nan" stays a float NaN and is refused
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return read_options, convert_options


def kept_columns(dialect: CsvDialect) -> list[str]:
    """The dialect's columns that the lake keeps, in file order."""
    dropped = dialect.data.csv_drop
    return [name for name in dialect.columns if name not in dropped]


def parse_simple_piece(piece: bytes | memoryview, dialect: CsvDialect) -> pa.Table | None:
    """Parse a piece of plain lines in one pass of a compiled kernel; None if it is not plain.

    Gives exactly the table `parse_csv_piece` gives (same names, types and values; there
    are no nulls), one row per line, about 2.5x as fast. It covers the lines Binance
    writes; whatever it does not cover (see `tasks.convert.csv_parse_nb`) it leaves to pyarrow,
    which also words the errors.
    """
    data = dialect.data
    dropped = data.csv_drop
    types = [data.csv_types[name] for name in dialect.columns]
    if any(t not in _KINDS for name, t in zip(dialect.columns, types, strict=True) if name not in dropped):
        return None  # a text column (metrics' times): pyarrow's
    kinds = np.array([SKIP if name in dropped else _KINDS[t] for name, t in zip(dialect.columns, types, strict=True)],
                     dtype=np.int8)
    n_ints, n_floats, n_bools = (int(np.count_nonzero(kinds == kind)) for kind in (INT, FLOAT, BOOL))
    buf = np.frombuffer(piece, dtype=np.uint8)
    capacity = line_count(buf)
    # The numbers are parsed straight into one Arrow buffer per column (the default pool, as
    # pyarrow's parser allocates), the booleans into bytes packed into Arrow bitmaps afterwards.
    size = capacity * 8
    buffers = {kind: [pa.allocate_buffer(size) for _ in range(n)] for kind, n in ((INT, n_ints), (FLOAT, n_floats))}
    ints = tuple(np.frombuffer(b, dtype=np.int64)[:capacity] for b in buffers[INT])
    floats = tuple(np.frombuffer(b, dtype=np.float64)[:capacity] for b in buffers[FLOAT])
    bools = tuple(np.empty(capacity, dtype=np.bool_) for _ in range(n_bools))
    # The kernel indexes each tuple: a dataset without a kind gets one unused array of it.
    rows = simple_rows(buf, kinds, ints, floats or (np.empty(0, dtype=np.float64),),
                       bools or (np.empty(0, dtype=np.bool_),))
    if rows < 0:
        return None
    taken = [0, 0, 0]
    arrays = []
    names = []
    for name, kind, data_type in zip(dialect.columns, kinds.tolist(), types, strict=True):
        if kind == SKIP:
            continue
        k = taken[kind]
        taken[kind] += 1
        names.append(name)
        if kind == BOOL:
            arrays.append(pa.array(bools[k][:rows], type=data_type))
        else:
            arrays.append(pa.Array.from_buffers(data_type, rows, [None, buffers[kind][k].slice(0, rows * 8)]))
    return pa.Table.from_arrays(arrays, names=names)


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


def _examples(mask: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], first_line: int, key: str) -> str:
    where = np.flatnonzero(mask)[:_MAX_EXAMPLES]
    label = "id" if key.endswith("id") else key
    return ", ".join(f"{label} {ids[i]} (line {first_line + i})" for i in where)


def _values(table: pa.Table, name: str) -> np.ndarray[Any, Any]:
    column = table.column(name)
    return np.asarray(column.to_numpy(zero_copy_only=False))


def check_values(
    table: pa.Table, lo: int, hi: int, time_unit: TimeUnit, first_line: int, source: str, csv_name: str,
    data: Dataset = TRADES,
) -> None:
    """Refuse a parsed CSV piece breaking the dataset's value rules.

    Empty fields; `data.positive` columns not finite and > 0 (ids, prices, sizes);
    `data.non_negative` columns negative or not finite; `data.ordered` pairs out of order
    (an aggTrade's first trade id after its last, a kline's low above its open); epoch
    times outside `[lo, hi)`, the archive's period in the file's unit. Every problem of the
    piece is listed, with counts and the first few keys and line numbers, in one InvalidData.
    """
    problems: list[str] = []
    key = data.key
    key_column = table.column(key)
    ids = np.asarray((key_column.fill_null(0) if key_column.null_count else key_column).to_numpy(zero_copy_only=False))
    null_masks: dict[str, np.ndarray[Any, Any]] = {}
    for name in table.schema.names:
        column = table.column(name)
        if column.null_count:
            mask = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
            null_masks[name] = mask
            problems.append(f"{int(mask.sum())} empty {name} values ({_examples(mask, ids, first_line, key)})")

    def report(what: str, bad: np.ndarray[Any, Any], *columns: str) -> None:
        for column in columns:
            if column in null_masks:
                bad &= ~null_masks[column]  # already reported as empty
        count = int(bad.sum())
        if count:
            problems.append(f"{count} rows with {what} ({_examples(bad, ids, first_line, key)})")

    names = table.schema.names
    for name in data.positive:
        if name in names:
            values = _values(table, name)
            what = f"{name} <= 0" if name.endswith("_id") else f"{name} not a positive finite number"
            report(what if name != "trade_id" else "trade id <= 0", ~((values > 0) & (values < np.inf)), name)
    for name in data.non_negative:
        if name in names:
            values = _values(table, name)
            report(f"{name} negative or not finite", ~((values >= 0) & (values < np.inf)), name)
    for low, high in data.ordered:
        report(f"{low} above {high}", _values(table, low) > _values(table, high), low, high)
    for name in data.epoch_columns if data.period_columns is None else data.period_columns:
        column = table.column(name)
        times = np.asarray((column.fill_null(lo) if column.null_count else column).to_numpy())
        # A µs time in a ms file (or the reverse) lands far outside the period: caught here.
        what = f"time outside the archive's period ({time_unit})" if name == "time" else \
            f"{name} outside the archive's period ({time_unit})"
        report(what, (times < lo) | (times >= hi), name)
    if problems:
        raise InvalidData(source, f"{csv_name}: " + "; ".join(problems))


def text_times_to_epoch(table: pa.Table, data: Dataset) -> pa.Table:
    """The dataset's text time columns (parsed by pyarrow as timestamp[s]) as epoch µs, as the checks expect."""
    for name in data.text_time_columns:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(name).cast(pa.timestamp("us")).cast(pa.int64()))
    return table


#: A band-keyed row's level in hundredths must fit its slot of the key (see `Dataset.band_key`).
_BAND_SLOTS = 100_000


def add_band_key(table: pa.Table, data: Dataset, time_unit: TimeUnit, first_line: int, source: str,
                 csv_name: str) -> pa.Table:
    """The table with the dataset's key built from its (time, level) columns: time ms x 100,000 + level x 100 + 50,000.

    The key sorts rows by time, then level, and is unique per (time, level) pair. A level
    that is not a finite multiple of 0.01 inside (-500, 500) cannot be placed: InvalidData.
    """
    assert data.band_key is not None
    time_name, level_name = data.band_key
    times = np.asarray(table.column(time_name).to_numpy(zero_copy_only=False), dtype=np.int64)
    ms = times // 1000 if time_unit == "us" else times
    levels = np.asarray(table.column(level_name).to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hundredths = np.round(levels * 100)
        bad = ~np.isfinite(levels) | (np.abs(levels * 100 - hundredths) > 1e-6)
        bad |= np.abs(hundredths) >= _BAND_SLOTS // 2
    if bad.any():
        where = np.flatnonzero(bad)[:_MAX_EXAMPLES]
        shown = ", ".join(f"{levels[i]!r} (line {first_line + i})" for i in where)
        raise InvalidData(source, f"{csv_name}: {int(bad.sum())} rows with a {level_name} that is not a multiple of "
                          f"0.01 inside (-500, 500): {shown}")
    key = ms * _BAND_SLOTS + hundredths.astype(np.int64) + _BAND_SLOTS // 2
    return table.append_column(data.key, pa.array(key, pa.int64()))


def to_lake_table(table: pa.Table, dialect: CsvDialect) -> pa.Table:
    """One checked CSV piece in the lake schema: epoch times as timestamp[us, UTC], absent columns null."""
    data = dialect.data
    n = table.num_rows
    names = table.schema.names
    arrays = []
    for f in data.schema:
        if f.name not in names:
            arrays.append(pa.nulls(n, f.type))
            continue
        column = table.column(f.name)
        if f.name in data.epoch_columns:
            if dialect.time_unit == "ms":
                column = pc.multiply(column, 1000)  # cannot overflow: the values were bounds-checked first
            column = column.cast(TIME_TYPE)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=data.schema)
