"""fundingRate (USD-M and COIN-M, monthly archives) through the dataset-generic core.

The archives are generated in the published dialect (`tests.fake_archive.funding`): one row
per funding event, an interval that moves from 8 h to 4 h mid-month (freqtrade#12583), calc
times a few ms past the hour. Each test states what a stage must make of them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.convert.archive import convert_archive
from tasks.datasets import FUNDING_RATE, dataset_ids
from tasks.errors import InvalidData
from tasks.lake.compact import compact_symbol
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions, Settings
from tasks.source.archive_spec import ArchiveSpec, parse_archive_name
from tests.fake_archive.funding import month_of_funding, render_funding_csv
from tests.fake_archive.generate import write_zip

OPTS = ConvertOptions(row_group_rows=50)
JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)
SWITCH = {date(2024, 1, 20): 4}  # from the 20th on, every 4 h


def test_paths_markets_and_granularity_of_funding_rates(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "monthly", JAN, "fundingRate")
    assert spec.key == "data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-01.zip"
    assert spec.lake_dir(Path("/d")) == Path("/d/lake/fundingRate/market=um/symbol=BTCUSDT")
    assert parse_archive_name("cm", "monthly", "BTCUSD_PERP-fundingRate-2024-01.zip", "fundingRate") == ArchiveSpec(
        "cm", "BTCUSD_PERP", "monthly", JAN, "fundingRate")
    assert dataset_ids(("fundingRate", "trades"), None) == ("fundingRate", "trades")
    base: dict[str, Any] = {"data_dir": tmp_path, "symbols": ("BTCUSDT",), "start": "2024-01-01",
                            "end": "2024-01-31", "datasets": ("fundingRate",)}
    assert Settings(**base, market="um", granularity="auto").dataset == "fundingRate"
    assert Settings(**base, market="cm", granularity="monthly").dataset == "fundingRate"
    with pytest.raises(ValidationError, match="fundingRate is published for um and cm only, not spot"):
        Settings(**base, market="spot", granularity="auto")
    with pytest.raises(ValidationError, match="fundingRate is published monthly only: use --granularity monthly"):
        Settings(**base, market="um", granularity="daily")


@pytest.mark.parametrize("header", [True, False])
def test_a_month_converts_with_its_intervals_as_published(tmp_path: Path, header: bool) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "monthly", JAN, "fundingRate")
    f = month_of_funding(JAN, seed=1, hours_from=SWITCH)
    assert len(f) == 19 * 3 + 12 * 6  # 8 h to the 19th, then 4 h
    zip_path = write_zip(tmp_path / "f.zip", spec.csv_name, render_funding_csv(f, header=header))
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == len(f) and result.time_unit == "ms"
    table = pq.read_table(result.path)
    assert table.schema == FUNDING_RATE.schema.with_metadata(table.schema.metadata)
    assert (table.column("calc_time").cast("int64").to_numpy() == f.calc_time_ms * 1000).all()
    assert table.column("funding_interval_hours").to_pylist() == f.interval_hours.tolist()
    assert np.allclose(table.column("last_funding_rate").to_numpy(), f.rate_units / 1e8)
    assert (table.column("last_funding_rate").to_numpy() < 0).any()  # negative rates are kept
    report = validate_parquet_file(result.path, ExpectedFile(dataset="fundingRate"))
    assert report.rows == len(f) and report.id_gaps.count == 0
    # A row published twice, identically, is dropped (#203), as for trades.
    lines = render_funding_csv(f, header=header).splitlines(keepends=True)
    twice = write_zip(tmp_path / "twice.zip", spec.csv_name, b"".join([*lines[:9], lines[8], *lines[9:]]))
    again = convert_archive(twice, spec, "e" * 64, spec.staging_file(tmp_path / "twice"), OPTS)
    assert (again.rows, again.duplicates_dropped) == (len(f), 1)


@pytest.mark.parametrize("fault, says", [
    ("outside", "calc_time outside the archive.s period"),
    ("conflict", "appears twice with different values"),
    ("interval", "funding_interval_hours"),
    ("header", "is not the expected"),
])
def test_a_bad_month_is_refused_naming_the_file_and_the_reason(tmp_path: Path, fault: str, says: str) -> None:
    spec = ArchiveSpec("cm", "BTCUSD_PERP", "monthly", JAN, "fundingRate")
    lines = render_funding_csv(month_of_funding(JAN, seed=2)).splitlines(keepends=True)
    if fault == "outside":  # an event of February in January's archive
        lines.append(b"1706745600000,8,0.00010000\n")
    elif fault == "conflict":  # the same calc time twice, with two rates
        time, hours, _ = lines[4].split(b",")
        lines.insert(5, b",".join([time, hours, b"0.00099999\n"]))
    elif fault == "interval":
        lines[3] = b",".join([lines[3].split(b",")[0], b"0", lines[3].split(b",")[2]])
    else:
        lines[0] = b"calc_time,funding_rate,interval\n"
    zip_path = write_zip(tmp_path / spec.file_name, spec.csv_name, b"".join(lines))
    with pytest.raises(InvalidData, match=says) as refused:
        convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert spec.file_name in str(refused.value)
    assert not list(tmp_path.joinpath("staging").rglob("*.parquet"))


def test_months_merge_into_one_verified_file(tmp_path: Path) -> None:
    rows = 0
    for i, month in enumerate((JAN, FEB)):
        spec = ArchiveSpec("um", "BTCUSDT", "monthly", month, "fundingRate")
        f = month_of_funding(month, seed=i, hours_from=SWITCH)
        rows += len(f)
        convert_archive(write_zip(tmp_path / f"{i}.zip", spec.csv_name, render_funding_csv(f)), spec, f"{i}" * 64,
                        spec.staging_file(tmp_path), OPTS)
    result = compact_symbol(tmp_path, "um", "BTCUSDT", 1 << 30, OPTS, consolidate=True, dataset_id="fundingRate")
    assert len(result.staged_merged) == 2
    [lake] = lake_files(tmp_path, "um", "BTCUSDT", "fundingRate")
    assert lake.name == "2024-01-01_2024-02-29.parquet" and pq.read_metadata(lake).num_rows == rows
    validate_parquet_file(lake, ExpectedFile(dataset="fundingRate"))


@pytest.mark.slow
def test_flow_lands_funding_months_reports_the_unpublished_one_then_lands_it_late(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    from flows.daily_update import daily_update
    from flows.runtime import dask_runner_for
    from flows.status import lake_status
    from tests.test_flow_e2e import lake_digest, run, statuses

    fa: Any = fake_archive
    months = {JAN: month_of_funding(JAN, 1, SWITCH), FEB: month_of_funding(FEB, 2), MAR: month_of_funding(MAR, 3)}
    specs = {m: ArchiveSpec("um", "BTCUSDT", "monthly", m, "fundingRate") for m in months}
    for m in (JAN, FEB):  # March is published late (#328: monthly files come mid-month)
        fa.publish(specs[m], render_funding_csv(months[m]))
    data = tmp_path / "data"
    kw: dict[str, Any] = {"market": "um", "symbols": ("BTCUSDT",), "start": JAN, "end": date(2024, 3, 31),
                          "granularity": "auto", "datasets": ("fundingRate",), "features": ()}
    state, report = run(fa, data, dask_address, **kw)
    assert state.is_completed(), report.summary()
    st = statuses(report)
    assert st[specs[JAN].key] == st[specs[FEB].key] == "ingested"
    assert sorted({m.day.month for m in report.missing}) == [3] and len(report.missing) == 31
    [lake] = lake_files(data, "um", "BTCUSDT", "fundingRate")
    assert pq.read_metadata(lake).num_rows == len(months[JAN]) + len(months[FEB])
    assert not report.validation_errors
    [row] = [r for r in lake_status(data, today=date(2024, 4, 2)) if r.dataset == "fundingRate"]
    assert (row.market, row.symbol, row.days, row.rows) == ("um", "BTCUSDT", 60, len(months[JAN]) + len(months[FEB]))
    assert row.next_update == "1 month: 2024-03..2024-03 (monthly archives, usually out by mid-month)"
    assert row.gaps == "not reported day by day (no fixed spacing of rows)"

    def update(today: date) -> Any:
        state = daily_update.with_options(task_runner=dask_runner_for(dask_address))(
            data_dir=data, market="um", symbols=["BTCUSDT"], reprobe_days=3, today=today,
            base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address, datasets=["fundingRate"],
            return_state=True,
        )
        assert state.is_completed(), state.message
        return state.result()

    # On April 3rd March is not out yet: before mid-month that is no missing day (#328), and
    # April, whose archive comes in May, is not asked for at all.
    report = update(date(2024, 4, 3))
    assert report.missing == [] and report.outcomes == []
    assert ("fundingRate 2024-03: the monthly archive is not out yet for BTCUSDT (monthly archives come by "
            "mid-month, #328): a later update fetches it") in report.notes
    # March is published: the daily update lands it; January and February stay as they were.
    before = {k: v for k, v in lake_digest(data).items() if "fundingRate" in k}
    fa.publish(specs[MAR], render_funding_csv(months[MAR]))
    report = update(date(2024, 4, 3))
    assert statuses(report)[specs[MAR].key] == "ingested"
    assert report.missing == []
    assert not any("re-probe window" in n for n in report.notes), report.notes
    [row] = [r for r in lake_status(data, today=date(2024, 4, 3)) if r.dataset == "fundingRate"]
    assert row.next_update == "up to date"
    [lake] = lake_files(data, "um", "BTCUSDT", "fundingRate")
    table = pq.read_table(lake)
    assert table.num_rows == sum(len(f) for f in months.values())
    times = table.column("calc_time").cast("int64").to_numpy()
    assert (np.diff(times) > 0).all()
    assert before != lake_digest(data)  # the lake file took March in


def test_auto_plans_whole_months_of_a_dataset_published_monthly_only() -> None:
    from tasks.source.plan import plan_symbol

    plan = plan_symbol("um", "BTCUSDT", date(2024, 1, 10), date(2024, 2, 5), "auto", set(), {JAN}, {}, "fundingRate")
    assert plan.archives == [ArchiveSpec("um", "BTCUSDT", "monthly", JAN, "fundingRate")]
    assert {m.reason for m in plan.missing} == {"monthly archive not published"}
    assert [m.day for m in plan.missing] == [date(2024, 2, d) for d in range(1, 6)]
    # trades in the same range: daily for the partial months, as before
    trades = plan_symbol("um", "BTCUSDT", date(2024, 1, 10), date(2024, 1, 11), "auto", {date(2024, 1, 10)}, {JAN},
                         {})
    assert [s.granularity for s in trades.archives] == ["daily"]


def test_last_months_archive_is_missing_only_after_mid_month() -> None:
    from flows.daily_update import _not_due_yet
    from tasks.report import PipelineReport
    from tasks.source.plan import MissingDay

    def report() -> PipelineReport:
        return PipelineReport(missing=[MissingDay("um", "BTCUSDT", date(2024, 3, d), "monthly archive not published",
                                                  "fundingRate") for d in (1, 31)]
                              + [MissingDay("um", "BTCUSDT", date(2024, 3, 5), "daily archive not published")])
    early = report()
    _not_due_yet(early, date(2024, 4, 15))
    assert [m.dataset for m in early.missing] == ["trades"] and "not out yet" in early.notes[0]
    late = report()
    _not_due_yet(late, date(2024, 4, 16))
    assert len(late.missing) == 3 and late.notes == []


def test_the_month_due_moves_at_mid_month() -> None:
    from flows.daily_update import last_due_month

    assert last_due_month(date(2024, 4, 3)) == date(2024, 2, 1)  # March's archive is not due yet
    assert last_due_month(date(2024, 4, 15)) == date(2024, 2, 1)
    assert last_due_month(date(2024, 4, 16)) == date(2024, 3, 1)
    assert last_due_month(date(2024, 1, 20)) == date(2023, 12, 1)
