"""bookDepth (USD-M and COIN-M depth bands, daily): one row per snapshot and band, keyed by both."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.convert.archive import convert_archive
from tasks.datasets import BOOK_DEPTH
from tasks.errors import InvalidData
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions, Settings
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive.book_depth import BANDS, day_of_book_depth, render_book_depth_csv
from tests.fake_archive.generate import write_zip

OPTS = ConvertOptions(row_group_rows=500)
DAY = date(2024, 1, 1)


def test_paths_markets_and_granularity(tmp_path: Path) -> None:
    spec = ArchiveSpec("cm", "BTCUSD_PERP", "daily", DAY, "bookDepth")
    assert spec.key == "data/futures/cm/daily/bookDepth/BTCUSD_PERP/BTCUSD_PERP-bookDepth-2024-01-01.zip"
    base: dict[str, Any] = {"data_dir": tmp_path, "symbols": ("BTCUSDT",), "start": "2024-01-01",
                            "end": "2024-01-31", "datasets": ("bookDepth",)}
    with pytest.raises(ValidationError, match="bookDepth is published for um and cm only, not spot"):
        Settings(**base, market="spot")
    with pytest.raises(ValidationError, match="bookDepth is published daily only"):
        Settings(**base, market="um", granularity="monthly")


@pytest.mark.parametrize("two_decimals", [False, True], ids=["-5", "-5.00"])
def test_a_day_is_sorted_by_snapshot_then_band_in_either_spelling(tmp_path: Path, two_decimals: bool) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookDepth")
    b = day_of_book_depth(DAY, seed=1)
    lines = render_book_depth_csv(b, two_decimals=two_decimals).splitlines(keepends=True)
    body = b"".join([lines[0], *np.random.default_rng(2).permutation(lines[1:]).tolist()])  # any order
    result = convert_archive(write_zip(tmp_path / spec.file_name, spec.csv_name, body), spec, "f" * 64,
                             spec.staging_file(tmp_path), OPTS)
    assert result.rows == len(b) == 200 * 12
    table = pq.read_table(result.path)
    assert table.schema == BOOK_DEPTH.schema.with_metadata(table.schema.metadata)
    assert table.column("timestamp").to_pylist()[:12] == [b.times[0]] * 12
    assert table.column("percentage").to_pylist()[:12] == list(BANDS)
    assert np.allclose(table.column("depth").to_numpy().reshape(200, 12), b.depth)
    keys = table.column("row_key").to_numpy()
    assert (np.diff(keys) > 0).all()
    first_ms = int(b.times[0].timestamp()) * 1000
    assert b.times[0] >= datetime(2024, 1, 1, 0, 0, 8, tzinfo=UTC)
    assert keys[0] == first_ms * 100_000 - 500 + 50_000  # the first snapshot's time in ms, band -5
    assert validate_parquet_file(result.path, ExpectedFile(dataset="bookDepth")).rows == 2400


def test_a_band_that_cannot_be_keyed_or_a_negative_depth_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookDepth")
    lines = render_book_depth_csv(day_of_book_depth(DAY, snapshots=5, seed=3)).splitlines(keepends=True)
    for old, new, says in ((b",-5,", b",-0.205,", "percentage that is not a multiple of 0.01"),
                           (b",-5,", b",nan,", "percentage that is not a multiple"),
                           (b",-4,", b",-4,-", "depth negative")):
        bad = lines[1].replace(old, new) if old in lines[1] else lines[2].replace(old, new)
        other = tmp_path / str(abs(hash(says + new.decode())))
        with pytest.raises(InvalidData, match=says) as refused:
            convert_archive(write_zip(other / spec.file_name, spec.csv_name, b"".join([lines[0], bad, *lines[3:]])),
                            spec, "f" * 64, spec.staging_file(other), OPTS)
        assert spec.file_name in str(refused.value)


@pytest.mark.slow
def test_flow_lands_book_depth_days(tmp_path: Path, fake_archive: object, dask_address: str,
                                    prefect_api: str) -> None:
    from flows.status import lake_status
    from tasks.lake import read_dataset
    from tests.test_flow_e2e import run, statuses

    fa: Any = fake_archive
    days = [date(2024, 1, 1), date(2024, 1, 2)]
    specs = [ArchiveSpec("um", "BTCUSDT", "daily", d, "bookDepth") for d in days]
    for i, (d, s) in enumerate(zip(days, specs, strict=True)):
        fa.publish(s, render_book_depth_csv(day_of_book_depth(d, seed=i), two_decimals=i == 1))
    data = tmp_path / "data"
    state, report = run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0], end=days[-1],
                        datasets=("bookDepth",), features=())
    assert state.is_completed(), report.summary()
    assert [statuses(report)[s.key] for s in specs] == ["ingested"] * 2
    [lake] = lake_files(data, "um", "BTCUSDT", "bookDepth")
    assert pq.read_metadata(lake).num_rows == 2 * 2400
    second = read_dataset(data, "um", "BTCUSDT", "bookDepth", "2024-01-02", "2024-01-02")
    assert len(second) == 2400 and set(second.column("percentage").to_pylist()) == set(BANDS)
    [row] = lake_status(data, today=date(2024, 1, 3))
    assert (row.dataset, row.days, row.next_update) == ("bookDepth", 2, "up to date")
