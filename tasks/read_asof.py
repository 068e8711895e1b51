"""Bars next to what was in force when they closed: the funding rate, the open interest.

    from tasks.lake import read_bars_annotated
    bars = read_bars_annotated("data", "um", "BTCUSDT", "ema_dollar_imbalance", "2024-01-01", "2024-01-31")
    # + funding_rate, funding_interval_hours, funding_time, open_interest, open_interest_value, open_interest_time

An as-of join, backward: each bar gets the last funding event (`fundingRate`) and the last
5-minute metrics row (`metrics`) at or before its `close_time`, never a later one, so nothing
from the future leaks into a bar. `funding_time` / `open_interest_time` say which row that
was: a bar after a gap in the metrics carries an old value, and its time shows how old.
A bar with nothing before it gets nulls. Funding is read from 40 days before `start` (events
come every 1 to 8 hours), metrics from the day before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.errors import LakeReadError
from tasks.read import Day, _day, read_bars, read_dataset

#: How far before the range the last funding event and metrics row are looked for.
FUNDING_LOOKBACK = timedelta(days=40)
METRICS_LOOKBACK = timedelta(days=1)
#: (dataset, its time column, {its column: the name it gets beside the bars}, the name of the time it carries)
_ANNOTATIONS = {
    "funding": ("fundingRate", "calc_time",
                {"last_funding_rate": "funding_rate", "funding_interval_hours": "funding_interval_hours"},
                "funding_time", FUNDING_LOOKBACK),
    "open_interest": ("metrics", "create_time",
                      {"sum_open_interest": "open_interest", "sum_open_interest_value": "open_interest_value"},
                      "open_interest_time", METRICS_LOOKBACK),
}


def as_of(left: pa.Table, right: pa.Table, left_on: str, right_on: str, columns: dict[str, str],
          time_name: str | None = None) -> pa.Table:
    """`left` with `right`'s `columns` (renamed as mapped) from its last row whose `right_on` <= `left_on`.

    Both time columns are timestamps; `right` must be sorted by `right_on` (the lake's
    datasets are). Rows of `left` with no such row get nulls. `time_name`: also add
    `right_on` of the row taken, under that name.
    """
    times = right[right_on].cast(pa.int64()).to_numpy()
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():
        raise ValueError(f"the right table is not sorted by {right_on}")
    at = left[left_on].cast(pa.int64()).to_numpy()
    index = np.searchsorted(times, at, side="right") - 1
    found = index >= 0
    take = pa.array(np.where(found, index, 0), mask=~found) if len(right) else pa.nulls(len(left), pa.int64())
    out = left
    pairs = [*columns.items(), *([(right_on, time_name)] if time_name else [])]
    for source, name in pairs:
        column = right[source]
        values = column.take(take) if len(right) else pa.nulls(len(left), column.type)
        out = out.append_column(pa.field(name, column.type, nullable=True), values)
    return out


def read_bars_annotated(data_dir: str | Path, market: str, symbol: str, feature: str, start: Day | None = None,
                        end: Day | None = None, columns: Sequence[str] | None = None, *, funding: bool = True,
                        open_interest: bool = True) -> pa.Table:
    """`read_bars` with the funding rate and the open interest in force at each bar's close (see the module).

    USD-M and COIN-M only. Raises `LakeReadError` when a dataset asked for is not in the lake
    (back-fill it with `--dataset fundingRate` / `--dataset metrics`), and as `read_bars` does.
    """
    if market not in ("um", "cm"):
        raise LakeReadError(f"market={market!r}", "funding and open interest exist for um and cm only")
    bars = read_bars(data_dir, market, symbol, feature, start, end, columns)
    if columns is not None and "close_time" not in columns:
        raise LakeReadError(f"columns={list(columns)!r}", "close_time is needed to annotate the bars")
    first = _day(start, "start")
    if first is None and len(bars):
        first = bars["close_time"][0].as_py().date()
    for wanted, (dataset_id, time_column, renamed, time_name, lookback) in _ANNOTATIONS.items():
        if not (funding if wanted == "funding" else open_interest):
            continue
        since = None if first is None else first - lookback
        right = read_dataset(data_dir, market, symbol, dataset_id, since, end, [time_column, *renamed])
        bars = as_of(bars, right, "close_time", time_column, renamed, time_name)
    return bars
