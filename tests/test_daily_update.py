"""The scheduled daily update: window from the lake's state, symbol universe, late days."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from flows.daily_update import daily_update, main, select_symbols, update_window
from flows.runtime import dask_runner_for
from tasks.lake import universe
from tasks.lake.inventory import coverage, lake_inventory
from tasks.report import PipelineReport, RunFailed
from tests.fake_archive import FakeArchive, publish_day
from tests.test_flow_e2e import run


def test_update_window_after_the_last_day_or_the_reprobe_window_whichever_is_earlier() -> None:
    today = date(2024, 1, 10)
    assert update_window(None, today, 3) == (date(2024, 1, 7), date(2024, 1, 9))
    assert update_window(date(2024, 1, 9), today, 3) == (date(2024, 1, 7), date(2024, 1, 9))
    assert update_window(date(2024, 1, 2), today, 3) == (date(2024, 1, 3), date(2024, 1, 9))
    assert update_window(date(2024, 1, 8), today, 1) == (date(2024, 1, 9), date(2024, 1, 9))


def test_symbol_patterns() -> None:
    found = ["BTCUSDT", "ETHUSDT", "BTCBUSD", "XRPUSDT"]
    assert select_symbols(found, ["*USDT"], ["XRP*"]) == ["BTCUSDT", "ETHUSDT"]
    assert select_symbols(found, [], ["*BUSD"]) == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]


@pytest.mark.slow
def test_daily_update_fetches_new_days_reprobes_and_reports_late_ones(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data = fake_archive, tmp_path / "data"
    n = 500
    for i, day in enumerate([1, 2, 4, 5]):  # BTCUSDT's 2024-01-03 never appears
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, day), n, 1 + i * n, day)
    for day in range(1, 6):
        publish_day(fa, "spot", "ETHUSDT", date(2024, 1, day), n, 1 + (day - 1) * n, 10 + day)
        publish_day(fa, "spot", "BTCBUSD", date(2024, 1, day), n, 1 + (day - 1) * n, 20 + day)
    for day in (1, 2):  # delisted after the 2nd: XRPUSDT held to its end, LTCUSDT new to the lake
        publish_day(fa, "spot", "XRPUSDT", date(2024, 1, day), n, 1 + (day - 1) * n, 30 + day)
        publish_day(fa, "spot", "LTCUSDT", date(2024, 1, day), n, 1 + (day - 1) * n, 40 + day)
    run(fa, data, dask_address, market="spot", symbols=("BTCUSDT", "XRPUSDT"), start=date(2024, 1, 1),
        end=date(2024, 1, 2), granularity="daily")

    state = daily_update.with_options(task_runner=dask_runner_for(dask_address))(
        data_dir=data, market="spot", include=["*USDT"], reprobe_days=2, today=date(2024, 1, 6),
        base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address, return_state=True,
    )
    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, PipelineReport)
    held = {s: sorted(coverage(lake_inventory(data, "spot", s))) for s in ("BTCUSDT", "ETHUSDT", "BTCBUSD")}
    assert held["BTCUSDT"] == [date(2024, 1, d) for d in (1, 2, 4, 5)]
    assert held["ETHUSDT"] == [date(2024, 1, d) for d in range(1, 6)]  # no history: back-filled from its first day
    assert held["BTCBUSD"] == []  # not selected
    assert any("re-probe window: 1 day" in note for note in report.notes)
    assert "new symbol ETHUSDT: back-filled from 2024-01-01" in report.notes
    # The universe table was refreshed; the delisted symbols are treated as such.
    assert universe(data, "spot", "2024-01-02") == ["BTCBUSD", "BTCUSDT", "ETHUSDT", "LTCUSDT", "XRPUSDT"]
    assert universe(data, "spot", "2024-01-05") == ["BTCBUSD", "BTCUSDT", "ETHUSDT"]
    assert "new symbol LTCUSDT: back-filled from 2024-01-01 to its last day 2024-01-02" in report.notes
    assert sorted(coverage(lake_inventory(data, "spot", "LTCUSDT"))) == [date(2024, 1, 1), date(2024, 1, 2)]
    assert "1 symbol delisted and held to their last day, not updated: XRPUSDT (last 2024-01-02)" in report.notes
    assert not [m for m in report.missing if m.symbol in ("XRPUSDT", "LTCUSDT")]  # ended, not missing
    assert "BTCUSDT 2024-01-03" in report.summary()

    # Nothing new: everything is cached and nothing in the lake changes.
    before = {p: p.stat().st_mtime_ns for p in (data / "lake").rglob("*.parquet")}
    state = daily_update.with_options(task_runner=dask_runner_for(dask_address))(
        data_dir=data, market="spot", symbols=["BTCUSDT", "ETHUSDT"], reprobe_days=2, today=date(2024, 1, 6),
        base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address, return_state=True,
    )
    result = state.result(raise_on_failure=False)
    assert not isinstance(result, RunFailed) and state.is_completed()
    assert {o.status for o in result.outcomes} == {"cached"}
    assert {p: p.stat().st_mtime_ns for p in (data / "lake").rglob("*.parquet")} == before


@pytest.mark.slow
def test_daily_update_of_agg_trades_and_klines_starts_at_the_dataset_that_lags(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    from tests.test_upkeep_e2e import N, _publish_derived_day

    fa, data = fake_archive, tmp_path / "data"
    days = [date(2024, 1, d) for d in range(1, 5)]
    first_agg = 1
    for i, day in enumerate(days[:2]):
        first_agg += _publish_derived_day(fa, day, 1 + i * N, first_agg, i)["aggTrades"][2]
    # aggTrades held up to the 2nd, klines up to the 1st only.
    run(fa, data, dask_address, market="spot", symbols=("BTCUSDT",), start=days[0], end=days[1],
        granularity="daily", datasets=("aggTrades",), features=())
    run(fa, data, dask_address, market="spot", symbols=("BTCUSDT",), start=days[0], end=days[0],
        granularity="daily", datasets=("klines-1m",), features=())
    for i, day in enumerate(days[2:], start=2):
        first_agg += _publish_derived_day(fa, day, 1 + i * N, first_agg, i)["aggTrades"][2]

    state = daily_update.with_options(task_runner=dask_runner_for(dask_address))(
        data_dir=data, market="spot", symbols=["BTCUSDT"], reprobe_days=1, today=date(2024, 1, 5),
        base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address,
        datasets=["aggTrades", "klines-1m"], return_state=True,
    )
    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, PipelineReport)
    for ds_id in ("aggTrades", "klines-1m"):
        assert sorted(coverage(lake_inventory(data, "spot", "BTCUSDT", ds_id))) == days, ds_id
    status = {o.archive.rsplit("/", 1)[-1]: o.status for o in report.outcomes}
    # The window starts after the lagging dataset's last day (klines: the 1st), for both datasets.
    assert status["BTCUSDT-1m-2024-01-02.zip"] == "ingested" and status["BTCUSDT-aggTrades-2024-01-02.zip"] == "cached"
    assert status["BTCUSDT-aggTrades-2024-01-04.zip"] == status["BTCUSDT-1m-2024-01-04.zip"] == "ingested"
    assert lake_inventory(data, "spot", "BTCUSDT") == []  # no trades were asked for


def test_cli_rejects_bad_symbols(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--data-dir", str(tmp_path), "--symbols", "../x"]) == 2
    assert "symbols" in capsys.readouterr().err


@pytest.mark.slow
def test_daily_update_keeps_the_futures_datasets_up_to_date(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    from tasks.source.archive_spec import ArchiveSpec
    from tests.fake_archive.book_depth import day_of_book_depth, render_book_depth_csv
    from tests.fake_archive.metrics import day_of_metrics, render_metrics_csv
    from tests.fake_archive.price_klines import day_of_price_klines, render_price_klines_csv
    from tests.test_flow_e2e import statuses

    fa, data = fake_archive, tmp_path / "data"
    days = [date(2024, 1, d) for d in (1, 2, 3)]
    wanted = ("metrics", "bookDepth", "premiumIndexKlines-1h")
    rows = {"metrics": 288, "bookDepth": 200 * 12, "premiumIndexKlines-1h": 24}
    for i, d in enumerate(days):
        for ds_id, body in (("metrics", render_metrics_csv(day_of_metrics(d, i), "BTCUSDT")),
                            ("bookDepth", render_book_depth_csv(day_of_book_depth(d, seed=i))),
                            ("premiumIndexKlines-1h", render_price_klines_csv(
                                day_of_price_klines(d, 3_600_000, i, premium=True), premium=True))):
            fa.publish(ArchiveSpec("um", "BTCUSDT", "daily", d, ds_id), body)
    run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0], end=days[1],
        datasets=wanted, features=())

    def update() -> PipelineReport:
        state = daily_update.with_options(task_runner=dask_runner_for(dask_address))(
            data_dir=data, market="um", symbols=["BTCUSDT"], reprobe_days=1, today=date(2024, 1, 4),
            base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address, datasets=list(wanted),
            return_state=True,
        )
        assert state.is_completed(), state.message
        report = state.result()
        assert isinstance(report, PipelineReport)
        return report

    report = update()
    third = {ArchiveSpec("um", "BTCUSDT", "daily", days[2], d).key for d in wanted}
    assert {k: v for k, v in statuses(report).items() if k in third} == dict.fromkeys(third, "ingested")
    assert report.missing == []
    for ds_id in wanted:
        assert sorted(coverage(lake_inventory(data, "um", "BTCUSDT", ds_id))) == days, ds_id
        assert sum(s.rows for e in lake_inventory(data, "um", "BTCUSDT", ds_id) for s in e.sources) == 3 * rows[ds_id]
    again = update()  # nothing new: cached, the lake unchanged
    assert {o.status for o in again.outcomes} == {"cached"}
