"""How one archive's CSV is written, found per file from its first two lines, never assumed.

Header or not, per file (futures only, and not every file: #278; kline headers vary,
#283, #246); the time unit from the digit count of the first row's time: 13 digits are
ms, 16 are µs (spot switched to µs on 2025-01-01). Microseconds are kept, never truncated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO, Literal

from tasks.datasets import TRADES, Dataset, dataset
from tasks.errors import InvalidData

TimeUnit = Literal["ms", "us"]

#: Digits of an epoch time in ms (2001..2286) and in µs.
_TIME_DIGITS: dict[int, TimeUnit] = {13: "ms", 16: "us"}
#: A time written as text (metrics), UTC.
_TEXT_TIME = re.compile(rb"\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z")
#: Longest first line looked at when sniffing (a trade line is under 100 bytes).
SNIFF_LINE_BYTES = 4096


@dataclass(frozen=True)
class CsvDialect:
    """How one archive's CSV is written: its columns (lake names, file order), header, time unit, dataset."""

    columns: tuple[str, ...]
    header: bool
    time_unit: TimeUnit
    dataset: str = "trades"

    @property
    def data(self) -> Dataset:
        """The dataset's declaration."""
        return dataset(self.dataset)


def _header_matches(got: tuple[str, ...], data: Dataset, market: str) -> bool:
    expected = data.csv_headers[market]
    return got == expected or got in data.header_aliases.get(market, ())


def sniff_dialect(
    first_line: bytes, second_line: bytes, market: str, source: str, csv_name: str, data: Dataset | None = None
) -> CsvDialect:
    """Decide header and time unit from the first two lines of `csv_name` inside archive `source`.

    A header exists when the first byte is not a digit; it must then be the dataset's
    documented header for the market (or a known spelling of it). The time unit comes
    from the digit count of the first row's `data.time`. Raises InvalidData("... no
    trades") when there is no data line at all (empty file, or a header alone).
    """
    data = data or TRADES
    columns = data.columns_for(market)
    first_line = first_line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM; pyarrow skips it too
    header = bool(first_line) and not first_line[:1].isdigit()
    if header:
        expected = data.csv_headers[market]
        got = tuple(f.strip().lower() for f in first_line.decode("utf-8", "replace").split(","))
        if expected is None:
            found = first_line[:200]
            raise InvalidData(source, f"{csv_name}: line 1: {market} {data.name} archives have no header, "
                                      f"found {found!r}")
        if not _header_matches(got, data, market):
            raise InvalidData(source, f"{csv_name}: line 1: header {got} is not the expected {expected}")
    data_line, line_no = (second_line, 2) if header else (first_line, 1)
    if not data_line.strip():
        raise InvalidData(source, f"{csv_name}: no {data.name} (the CSV has no data line)")
    fields = data_line.rstrip(b"\r\n").split(b",")
    if len(fields) != len(columns):
        shown = data_line[:200]
        raise InvalidData(
            source, f"{csv_name}: line {line_no}: expected {len(columns)} columns, got {len(fields)}: {shown!r}"
        )
    time_field = fields[columns.index(data.time)].strip()
    if data.time in data.text_time_columns:
        if not _TEXT_TIME.fullmatch(time_field):
            raise InvalidData(source, f"{csv_name}: line {line_no}: {data.time} {time_field[:40]!r} is not a time "
                                      "YYYY-MM-DD HH:MM:SS")
        # Parsed to epoch µs before any check (`tasks.convert.csv_parse.text_times_to_epoch`).
        return CsvDialect(columns=columns, header=header, time_unit="us", dataset=data.id)
    if not time_field.isdigit():
        raise InvalidData(source, f"{csv_name}: line {line_no}: {data.time} {time_field[:40]!r} is not an integer")
    unit = _TIME_DIGITS.get(len(time_field))
    if unit is None:
        raise InvalidData(
            source,
            f"{csv_name}: line {line_no}: {data.time} {time_field.decode()} has {len(time_field)} digits, "
            "expected 13 (ms) or 16 (µs)",
        )
    return CsvDialect(columns=columns, header=header, time_unit=unit, dataset=data.id)


def read_first_lines(member: IO[bytes]) -> tuple[bytes, bytes]:
    """The member's first two lines (each at most `SNIFF_LINE_BYTES`), for `sniff_dialect`."""
    first = member.readline(SNIFF_LINE_BYTES)
    second = member.readline(SNIFF_LINE_BYTES) if first else b""
    return first, second
