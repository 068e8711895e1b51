"""Bars beside the funding rate and the open interest in force when they closed (an as-of join, backward)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tasks.errors import LakeReadError
from tasks.lake import as_of, read_bars_annotated, read_dataset

T = pa.timestamp("us", tz="UTC")


def _t(*minutes: int) -> pa.Array:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    return pa.array([base + timedelta(minutes=m) for m in minutes], T)


def test_each_left_row_gets_the_last_right_row_at_or_before_it_never_a_later_one() -> None:
    left = pa.table({"close_time": _t(0, 5, 10, 479, 480, 1000)})
    right = pa.table({"calc_time": _t(1, 480, 960), "rate": [0.1, 0.2, 0.3]})
    out = as_of(left, right, "close_time", "calc_time", {"rate": "funding_rate"}, "funding_time")
    assert out["funding_rate"].to_pylist() == [None, 0.1, 0.1, 0.1, 0.2, 0.3]  # equal time: in force
    assert out["funding_time"].to_pylist()[1:3] == _t(1, 1).to_pylist()
    empty = as_of(left, right.slice(0, 0), "close_time", "calc_time", {"rate": "funding_rate"})
    assert empty["funding_rate"].null_count == len(left)
    with pytest.raises(ValueError, match="not sorted"):
        as_of(left, right.take([1, 0, 2]), "close_time", "calc_time", {"rate": "r"})


def test_spot_and_a_missing_dataset_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(LakeReadError, match="um and cm only"):
        read_bars_annotated(tmp_path, "spot", "BTCUSDT", "ema_dollar_imbalance")
    (tmp_path / "lake" / "trades").mkdir(parents=True)
    with pytest.raises(LakeReadError, match=r"not in this lake .*back-fill it with --dataset"):
        read_dataset(tmp_path, "um", "BTCUSDT", "fundingRate")
    with pytest.raises(LakeReadError, match="a dataset is"):
        read_dataset(tmp_path, "um", "BTCUSDT", "fundingrate")


@pytest.mark.slow
def test_bars_read_with_funding_and_open_interest_from_the_lake(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    from tasks.source.archive_spec import ArchiveSpec
    from tests.fake_archive import publish_day
    from tests.fake_archive.funding import month_of_funding, render_funding_csv
    from tests.fake_archive.metrics import day_of_metrics, render_metrics_csv
    from tests.test_flow_e2e import run

    fa: Any = fake_archive
    days = [date(2024, 1, 1), date(2024, 1, 2)]
    n = 20_000
    for i, d in enumerate(days):
        publish_day(fa, "um", "BTCUSDT", d, n, 1 + i * n, i)
        fa.publish(ArchiveSpec("um", "BTCUSDT", "daily", d, "metrics"), render_metrics_csv(day_of_metrics(d, i),
                                                                                           "BTCUSDT"))
    funding = month_of_funding(date(2024, 1, 1), seed=3)
    fa.publish(ArchiveSpec("um", "BTCUSDT", "monthly", date(2024, 1, 1), "fundingRate"), render_funding_csv(funding))
    data = tmp_path / "data"
    state, report = run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0], end=days[-1],
                        datasets=("trades", "fundingRate", "metrics"), features=("dollar:threshold=5e5",))
    assert state.is_completed(), report.summary()
    bars = read_bars_annotated(data, "um", "BTCUSDT", "dollar", "2024-01-01", "2024-01-02")
    assert len(bars) > 10
    close = bars["close_time"].cast(pa.int64()).to_numpy()
    calc = funding.calc_time_ms * 1000
    # The funding event in force: the last calc time at or before the close, from the lake's table.
    expected = np.searchsorted(calc, close, side="right") - 1
    got = bars["funding_time"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    assert np.array_equal(got[expected >= 0], calc[expected[expected >= 0]])
    assert (bars["funding_time"].cast(pa.int64()).fill_null(0).to_numpy() <= close).all()
    oi = bars["open_interest_time"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    assert (oi <= close).all() and (close - oi < 5 * 60_000_000).all()  # a row every 5 minutes
    assert bars["open_interest"].null_count == 0 and bars["funding_rate"].null_count == int((expected < 0).sum())
