"""Convert one archive (a ZIP holding one CSV) into one lake Parquet file, for any dataset.

The stages, each in its own module:

- `tasks.convert.zip_member`: the one member, checked and inflated with ISA-L (CRC checked);
- `tasks.convert.csv_dialect`: header and time unit, sniffed per file;
- `tasks.convert.csv_parse`: pieces cut at line ends, parsed (compiled fast path, pyarrow for
  anything else), checked against the dataset's value rules, brought to its schema;
- `tasks.convert.external_sort`: sorted by the dataset's key, exact duplicates dropped (#203),
  an external merge sort on the first disorder (#240, #293, #339).

The CSV is streamed in pieces of at most `csv_block_bytes`, so memory is bounded by a
few pieces, a row group and (when the keys are out of order) a sort chunk, never by the
file: a USD-M BTCUSDT month is 4.7 GB of CSV (docs/binance-archive.md). Two stages
overlap (`_stream_csv`): the member is inflated and cut in a read-ahead thread while
the calling thread parses, checks and encodes the Parquet row groups.

The output file is written under a hidden temporary name beside `out_path`, validated
with `validate_parquet_file`, then committed by an atomic rename. Any error removes the
temporary and spill files and leaves a previous `out_path` untouched.
"""

from __future__ import annotations

import zipfile
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.atomic import commit
from tasks.convert.csv_dialect import CsvDialect, TimeUnit, read_first_lines, sniff_dialect
from tasks.convert.csv_parse import (
    MAX_LINE_BYTES,
    LineTooLong,
    add_band_key,
    check_values,
    count_newlines,
    csv_options,
    iter_csv_pieces,
    parse_csv_piece,
    parse_simple_piece,
    text_times_to_epoch,
    to_lake_table,
)
from tasks.convert.external_sort import SortedOutput
from tasks.convert.zip_member import ZIP_ERRORS, check_member_crc, inflate_member, open_member, open_zip, single_member
from tasks.errors import CorruptArchive, InvalidData
from tasks.lake.validate import ExpectedFile, IdGaps, validate_parquet_file
from tasks.lake.writer import source_metadata_doc
from tasks.read_ahead import read_ahead
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec
from tasks.utc import datetime_to_micros


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


def _stream_csv(
    zip_path: Path,
    info: zipfile.ZipInfo,
    dialect: CsvDialect,
    spec: ArchiveSpec,
    options: ConvertOptions,
    output: SortedOutput,
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
    data = dialect.data
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
                    lines = count_newlines(piece)
                    table = parse_csv_piece(piece, line, parse_options, source, name)
                    if data.text_time_columns:
                        table = text_times_to_epoch(table, data)
                else:
                    lines = table.num_rows  # the simple parser makes one row of each line
                if data.band_key is not None:  # bookDepth: the key is built from the snapshot and its band
                    table = add_band_key(table, data, dialect.time_unit, line, source, name)
                check_values(table, lo, hi, dialect.time_unit, line, source, name, data)
                csv_rows += table.num_rows
                line += lines
                output.push(to_lake_table(table, dialect))
        except LineTooLong:
            raise InvalidData(source, f"{name}: line {line} is longer than {MAX_LINE_BYTES} bytes") from None
    if csv_rows == 0:
        raise InvalidData(source, f"{name}: no {data.name} (the CSV has no data line)")
    return csv_rows


def _source_metadata(
    spec: ArchiveSpec, sha256: str, member: str, dialect: CsvDialect, csv_rows: int, output: SortedOutput
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
    return source_metadata_doc(spec.market, spec.symbol, [source], spec.dataset)


def convert_archive(
    zip_path: Path, spec: ArchiveSpec, sha256: str, out_path: Path, options: ConvertOptions
) -> ConversionResult:
    """Convert the archive `zip_path` (described by `spec`, of its dataset) into the lake file `out_path`.

    Streams the single CSV member, checks every value, sorts by the dataset's key
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
    output: SortedOutput | None = None
    data = spec.data
    try:
        with open_zip(zip_path, source) as zf:
            info = single_member(zf, source)
            try:
                with open_member(zf, info, source) as member:
                    first, second = read_first_lines(member)
                dialect = sniff_dialect(first, second, spec.market, source, info.filename, data)
                output = SortedOutput(out_path, options, source, data)
                csv_rows = _stream_csv(zip_path, info, dialect, spec, options, output, source)
            except ZIP_ERRORS as exc:
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
            ExpectedFile(rows=output.rows, start=spec.start, end=spec.end, market=spec.market, symbol=spec.symbol,
                         dataset=spec.dataset),
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
