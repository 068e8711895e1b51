"""UTC days and epoch microseconds: the lake's time arithmetic, in one place.

A trade's `time` is an int64 count of microseconds since 1970-01-01 00:00 UTC, and a day
is [00:00, 24:00) UTC: the archive's daily files and every day range of the CLI are UTC
days (docs/binance-archive.md). Integer arithmetic only, so no float rounding at any
date: `datetime.timestamp()` goes through a float.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

#: Microseconds in a day.
DAY_US = 86_400_000_000
EPOCH_DAY = date(1970, 1, 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def day_start_us(day: date) -> int:
    """Microseconds since the epoch at 00:00 UTC of `day`."""
    return (day - EPOCH_DAY).days * DAY_US


def day_range_us(first: date, last: date) -> tuple[int, int]:
    """[start of `first`, start of the day after `last`): the µs of the days first..last, both inclusive."""
    return day_start_us(first), day_start_us(last) + DAY_US


def day_of_us(micros: int) -> date:
    """The UTC day that holds the instant `micros`."""
    return EPOCH_DAY + timedelta(days=int(micros) // DAY_US)


def micros_to_datetime(micros: int) -> datetime:
    """Exact UTC datetime of a count of microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=int(micros))


def datetime_to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    return (moment - EPOCH) // timedelta(microseconds=1)
