"""Index, mark and premium-index price klines (USD-M and COIN-M) through the klines machinery.

The archives are generated in the published layout and dialect (`tests.fake_archive.price_klines`):
the klines' twelve columns and header, zero volumes, a premium index that goes negative.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.convert.archive import convert_archive
from tasks.dataset_ids import all_dataset_ids, dataset_ids
from tasks.datasets import PRICE_KLINES_SCHEMA, dataset
from tasks.errors import InvalidData, UnsafePath
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions, Settings
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive.generate import write_zip
from tests.fake_archive.price_klines import day_of_price_klines, render_price_klines_csv

OPTS = ConvertOptions(row_group_rows=200)
DAY = date(2024, 1, 1)


def test_ids_paths_and_markets_of_the_price_klines(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "markPriceKlines-1m")
    assert spec.key == "data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip"
    assert spec.lake_dir(Path("/d")) == Path("/d/lake/markPriceKlines/interval=1m/market=um/symbol=BTCUSDT")
    monthly = ArchiveSpec("cm", "BTCUSD_PERP", "monthly", DAY, "premiumIndexKlines-1w")
    assert monthly.key == "data/futures/cm/monthly/premiumIndexKlines/BTCUSD_PERP/1w/BTCUSD_PERP-1w-2024-01.zip"
    assert dataset_ids(["indexPriceKlines", "klines"], ["1m", "1h"]) == (
        "indexPriceKlines-1m", "indexPriceKlines-1h", "klines-1m", "klines-1h")
    assert "premiumIndexKlines-1mo" in all_dataset_ids() and "markPriceKlines-1s" not in all_dataset_ids()
    with pytest.raises(UnsafePath, match="markPriceKlines has no 1s interval"):
        dataset("markPriceKlines-1s")
    base: dict[str, Any] = {"data_dir": tmp_path, "symbols": ("BTCUSDT",), "start": "2024-01-01",
                            "end": "2024-01-31"}
    assert Settings(**base, market="um", datasets=("markPriceKlines-1h",)).dataset == "markPriceKlines-1h"
    with pytest.raises(ValidationError, match="indexPriceKlines-1m is published for um and cm only, not spot"):
        Settings(**base, market="spot", datasets=("indexPriceKlines-1m",))
    with pytest.raises(ValidationError, match="premiumIndexKlines-1w is published monthly only"):
        Settings(**base, market="um", granularity="daily", datasets=("premiumIndexKlines-1w",))


def test_a_premium_index_day_keeps_its_negative_prices_and_drops_the_zero_volumes(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "premiumIndexKlines-1m")
    k = day_of_price_klines(DAY, seed=3, premium=True)
    assert (k.ohlc < 0).any() and (k.ohlc > 0).any()
    zip_path = write_zip(tmp_path / spec.file_name, spec.csv_name, render_price_klines_csv(k, premium=True))
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == 1440
    table = pq.read_table(result.path)
    assert table.schema.names == PRICE_KLINES_SCHEMA.names  # no volume columns: they hold 0
    assert np.array_equal(np.column_stack([table.column(c).to_numpy() for c in ("open", "high", "low", "close")]),
                          k.ohlc)
    assert table.column("count").to_pylist() == [60] * 1440
    assert table.column("close_time").to_pylist()[0] == datetime(2024, 1, 1, 0, 0, 59, 999000, tzinfo=UTC)
    report = validate_parquet_file(result.path, ExpectedFile(dataset="premiumIndexKlines-1m"))
    assert report.id_gaps.count == 0


def test_a_missing_minute_is_a_gap_and_a_mark_price_below_zero_or_a_low_above_high_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("cm", "BTCUSD_PERP", "daily", DAY, "markPriceKlines-1m")
    lines = render_price_klines_csv(day_of_price_klines(DAY, seed=4)).splitlines(keepends=True)
    without = b"".join(lines[:101] + lines[104:])  # three minutes left out
    result = convert_archive(write_zip(tmp_path / spec.file_name, spec.csv_name, without), spec, "f" * 64,
                             spec.staging_file(tmp_path), OPTS)
    report = validate_parquet_file(result.path, ExpectedFile(dataset="markPriceKlines-1m"))
    assert (report.id_gaps.count, report.id_gaps.missing_ids) == (1, 3)
    fields = lines[1].decode().rstrip("\n").split(",")
    negative = ",".join([fields[0], "-1.00", fields[2], "-2.00", *fields[4:]]) + "\n"
    swapped = ",".join([fields[0], fields[1], fields[3], fields[2], *fields[4:]]) + "\n"
    for bad, says in ((negative, "open not a positive finite number"), (swapped, "low above")):
        other = tmp_path / says.replace(" ", "-")
        with pytest.raises(InvalidData, match=says) as refused:
            convert_archive(write_zip(other / spec.file_name, spec.csv_name, b"".join([lines[0], bad.encode(),
                                                                                        *lines[2:]])),
                            spec, "f" * 64, spec.staging_file(other), OPTS)
        assert spec.file_name in str(refused.value)


@pytest.mark.slow
def test_flow_lands_mark_and_index_prices_and_status_lists_them(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    from flows.status import lake_status
    from tests.test_flow_e2e import run, statuses

    fa: Any = fake_archive
    days = [date(2024, 1, 1), date(2024, 1, 2)]
    published = {}
    for ds, step in (("markPriceKlines-1m", 60_000), ("indexPriceKlines-1h", 3_600_000)):
        for i, d in enumerate(days):
            s = ArchiveSpec("um", "BTCUSDT", "daily", d, ds)
            fa.publish(s, render_price_klines_csv(day_of_price_klines(d, step, seed=i)))
            published[s.key] = ds
    data = tmp_path / "data"
    state, report = run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0], end=days[-1],
                        datasets=("markPriceKlines-1m", "indexPriceKlines-1h"), features=())
    assert state.is_completed(), report.summary()
    assert [statuses(report)[k] for k in published] == ["ingested"] * 4
    for ds, rows in (("markPriceKlines-1m", 2 * 1440), ("indexPriceKlines-1h", 2 * 24)):
        [lake] = lake_files(data, "um", "BTCUSDT", ds)
        assert pq.read_metadata(lake).num_rows == rows
    listed = {r.dataset: (r.days, r.rows) for r in lake_status(data, today=date(2024, 1, 3))}
    assert listed == {"markPriceKlines-1m": (2, 2880), "indexPriceKlines-1h": (2, 48)}
