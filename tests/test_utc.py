"""tasks.utc: the lake's day and microsecond arithmetic, against the standard library."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from tasks.utc import DAY_US, datetime_to_micros, day_of_us, day_range_us, day_start_us, micros_to_datetime

DAYS = [date(1970, 1, 1), date(1969, 12, 31), date(2000, 2, 29), date(2017, 7, 14), date(2024, 2, 29),
        date(2024, 12, 31), date(2025, 1, 1), date(2099, 12, 31)]


@pytest.mark.parametrize("day", DAYS)
def test_day_start_and_range_match_the_standard_library(day: date) -> None:
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    assert day_start_us(day) == (midnight - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    lo, hi = day_range_us(day, day + timedelta(days=2))
    assert (lo, hi - lo) == (day_start_us(day), 3 * DAY_US)


@pytest.mark.parametrize("day", DAYS)
def test_every_instant_of_a_day_maps_back_to_it_and_its_edges_do_not(day: date) -> None:
    start = day_start_us(day)
    for us in (start, start + 1, start + DAY_US // 2, start + DAY_US - 1):
        assert day_of_us(us) == day
    assert day_of_us(start - 1) == day - timedelta(days=1)
    assert day_of_us(start + DAY_US) == day + timedelta(days=1)


def test_micros_and_datetimes_round_trip_exactly_where_floats_would_not() -> None:
    # 2262-04-11 is past int64 nanoseconds but fine in µs; a float timestamp loses the last µs there.
    for us in (0, -1, 1_704_067_200_123_457, 9_223_372_036_854 * 1000 + 775):
        moment = micros_to_datetime(us)
        assert moment.tzinfo is UTC and datetime_to_micros(moment) == us
    assert datetime_to_micros(datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1_704_067_200_000_001
