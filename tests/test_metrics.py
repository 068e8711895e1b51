"""Futures metrics (USD-M and COIN-M, daily archives, 5-minute rows) through the dataset-generic core.

The archives are generated in the published dialect (`tests.fake_archive.metrics`), with the
time written as text (`2024-01-01 00:05:00`). Each test states what a stage must make of them.
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
from tasks.datasets import METRICS
from tasks.errors import InvalidData
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions, Settings
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive.generate import write_zip
from tests.fake_archive.metrics import day_of_metrics, render_metrics_csv

OPTS = ConvertOptions(row_group_rows=100)
DAY = date(2024, 1, 1)


def test_paths_markets_and_granularity_of_metrics(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "metrics")
    assert spec.key == "data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-01.zip"
    assert spec.lake_dir(Path("/d")) == Path("/d/lake/metrics/market=um/symbol=BTCUSDT")
    base: dict[str, Any] = {"data_dir": tmp_path, "symbols": ("BTCUSDT",), "start": "2024-01-01",
                            "end": "2024-01-31", "datasets": ("metrics",)}
    assert Settings(**base, market="cm", granularity="auto").dataset == "metrics"
    with pytest.raises(ValidationError, match="metrics is published for um and cm only, not spot"):
        Settings(**base, market="spot")
    with pytest.raises(ValidationError, match="metrics is published daily only: use --granularity daily or auto"):
        Settings(**base, market="um", granularity="monthly")


def test_a_day_converts_its_text_times_and_drops_the_symbol(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "metrics")
    m = day_of_metrics(DAY, seed=1)
    zip_path = write_zip(tmp_path / spec.file_name, spec.csv_name, render_metrics_csv(m, "BTCUSDT"))
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == 288
    table = pq.read_table(result.path)
    assert table.schema == METRICS.schema.with_metadata(table.schema.metadata)
    assert "symbol" not in table.schema.names
    times = table.column("create_time").to_pylist()
    assert times[0] == datetime(2024, 1, 1, tzinfo=UTC) and times[-1] == datetime(2024, 1, 1, 23, 55, tzinfo=UTC)
    assert np.allclose(table.column("sum_open_interest").to_numpy(), m.values[:, 0])
    report = validate_parquet_file(result.path, ExpectedFile(dataset="metrics"))
    assert report.id_gaps.count == 0


def test_a_missing_five_minutes_is_a_gap_and_a_bad_time_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("cm", "BTCUSD_PERP", "daily", DAY, "metrics")
    lines = render_metrics_csv(day_of_metrics(DAY, seed=2), "BTCUSD_PERP").splitlines(keepends=True)
    without = b"".join(lines[:11] + lines[13:])  # header + 10 rows, then 2 rows left out
    result = convert_archive(write_zip(tmp_path / spec.file_name, spec.csv_name, without), spec, "f" * 64,
                             spec.staging_file(tmp_path), OPTS)
    report = validate_parquet_file(result.path, ExpectedFile(dataset="metrics"))
    assert (report.id_gaps.count, report.id_gaps.missing_ids) == (1, 2)
    for bad, says in ((lines[1].replace(b"2024-01-01 00:00:00", b"1704067200000"), "is not a time"),
                      (lines[1].replace(b"2024-01-01 00:00:00", b"2024-01-02 00:00:00"), "outside the archive")):
        body = b"".join([lines[0], bad, *lines[2:]])
        other = tmp_path / says.replace(" ", "-")
        with pytest.raises(InvalidData, match=says) as refused:
            convert_archive(write_zip(other / spec.file_name, spec.csv_name, body), spec, "f" * 64,
                            spec.staging_file(other), OPTS)
        assert spec.file_name in str(refused.value)


@pytest.mark.slow
def test_flow_lands_metrics_days_and_reports_a_missing_one(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    from flows.status import lake_status
    from tests.test_flow_e2e import run, statuses

    fa: Any = fake_archive
    days = [date(2024, 1, d) for d in (1, 2, 4)]  # the 3rd is not published
    specs = [ArchiveSpec("um", "BTCUSDT", "daily", d, "metrics") for d in days]
    for i, (d, s) in enumerate(zip(days, specs, strict=True)):
        fa.publish(s, render_metrics_csv(day_of_metrics(d, seed=i), "BTCUSDT"))
    data = tmp_path / "data"
    state, report = run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0],
                        end=date(2024, 1, 4), datasets=("metrics",), features=())
    assert state.is_completed(), report.summary()
    assert [statuses(report)[s.key] for s in specs] == ["ingested"] * 3
    assert [(m.day, m.reason) for m in report.missing] == [(date(2024, 1, 3), "daily archive not published")]
    [lake] = lake_files(data, "um", "BTCUSDT", "metrics")
    assert pq.read_metadata(lake).num_rows == 3 * 288
    [gaps] = report.gap_reports
    assert gaps.dataset == "metrics" and gaps.not_published == [date(2024, 1, 3)]
    [row] = [r for r in lake_status(data, today=date(2024, 1, 5)) if r.dataset == "metrics"]
    assert (row.days, row.rows, row.next_update) == (3, 3 * 288, "up to date")
