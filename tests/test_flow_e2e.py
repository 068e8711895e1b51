"""The whole flow, end to end: fake archive over HTTP, real Prefect API, real Dask cluster."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from flows.full_pipeline import full_pipeline
from flows.runtime import dask_runner
from tasks.lake.inventory import lake_files, lake_source
from tasks.report import PipelineReport, RunFailed
from tasks.settings import Settings
from tests.fake_archive import FakeArchive, build_standard_archive, publish_day
from tests.fake_archive.generate import corrupt_zip, render_csv, traversal_zip
from tests.fake_archive.scenarios import PublishedArchive, StandardArchive, make_spec

pytestmark = pytest.mark.slow


def run(fa: FakeArchive, data_dir: Path, dask_address: str, **kw: Any) -> tuple[Any, PipelineReport]:
    """Run the flow as the CLI would (same settings object and runner), return (state, report)."""
    settings = Settings(
        data_dir=data_dir, base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address,
        retries=3, retry_base_delay=0.01, read_timeout=5, **kw,
    )
    state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    result = state.result(raise_on_failure=False)
    report = result.report if isinstance(result, RunFailed) else result
    assert isinstance(report, PipelineReport), result
    return state, report


def statuses(report: PipelineReport) -> dict[str, str]:
    return {o.archive: o.status for o in report.outcomes}


def lake_digest(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((data_dir / "lake").rglob("*")) if p.is_file()}


def archive_rows(data_dir: Path, pub: PublishedArchive) -> pa.Table:
    """The archive's rows as the lake holds them (wherever merge and optimize put them), with the file's sources."""
    held = lake_source(pub.spec, pub.sha256, data_dir)
    assert held is not None, f"no lake file holds {pub.key} from {pub.sha256}"
    path, doc = held
    assert doc["sha256"] == pub.sha256 and doc["archive"] == pub.key
    lo, hi = (int(t.timestamp()) * 1_000_000 for t in (pub.spec.start, pub.spec.end))
    table = pq.read_table(path)
    times = pc.cast(table["time"], pa.int64())
    return table.filter(pc.and_(pc.greater_equal(times, lo), pc.less(times, hi)))


def assert_lake_file_matches(data_dir: Path, pub: PublishedArchive) -> None:
    """The lake holds exactly the archive's rows: sorted, de-duplicated, µs exact."""
    table = archive_rows(data_dir, pub)
    exp = pub.expected()
    assert table.num_rows == pub.expected_rows
    np.testing.assert_array_equal(table["trade_id"].to_numpy(), exp.id)
    np.testing.assert_array_equal(table["price"].to_numpy(), exp.price)
    np.testing.assert_array_equal(table["qty"].to_numpy(), exp.qty)
    times = table["time"].cast("int64").to_numpy()
    unit_factor = 1 if pub.time_unit == "us" else 1000
    np.testing.assert_array_equal(times, exp.time(pub.time_unit) * unit_factor)


@pytest.fixture
def world(fake_archive: FakeArchive) -> StandardArchive:
    return build_standard_archive(fake_archive)


def test_spot_run_lands_good_archives_refuses_bad_and_caches_rerun(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, world: StandardArchive, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    state, report = run(fake_archive, data, dask_address, market="spot", symbols=("BTCUSDT", "ETHUSDT"),
                        start=date(2024, 1, 1), end=date(2024, 1, 3), granularity="daily")
    assert state.is_failed()
    bad = world.get("spot", "ETHUSDT", "2024-01-03")
    assert bad.key in state.message and "checksum mismatch" in state.message
    good = [a for a in world.select(market="spot") if a.spec.period.year == 2024 and not a.is_bad]
    assert statuses(report) == {**{a.key: "ingested" for a in good}, bad.key: "refused"}
    for pub in good:
        assert_lake_file_matches(data, pub)
    assert not bad.spec.lake_file(data).exists() and bad.spec.quarantine_zip(data).exists()
    assert [(m.symbol, m.day) for m in report.missing] == [("BTCUSDT", date(2024, 1, 2))]
    # The id gap inside 2024-01-03 and the missing day's ids between the two files are reported.
    sizes = sorted(g.missing_ids for g in report.gaps if g.symbol == "BTCUSDT")
    assert sizes == [10, 1200]
    # One dataset with hive partitions, as users read it.
    dataset = ds.dataset(data / "lake" / "trades", format="parquet", partitioning="hive")
    assert dataset.count_rows() == sum(a.expected_rows for a in good)

    # The run's artifacts are in the API: a table row per archive.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    table = next(a for a in arts if a.key == "ingest-archives")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["archive"]: r["status"] for r in rows} == statuses(report)
    summary = next(a for a in arts if a.key == "run-summary")
    assert "| spot/BTCUSDT | 2024-01-01_2024-01-03.parquet |" in str(summary.data)
    # Where the run's time went: every stage's span, in order, downloads ending before the merge starts.
    assert set(report.stages) == {"download", "convert", "merge", "validate", "gaps", "features"}
    assert all(a <= b for a, b in report.stages.values())
    assert report.stages["download"][0] <= report.stages["convert"][0] <= report.stages["merge"][0]
    assert report.stages["download"][1] <= report.stages["merge"][0]
    assert report.stages["convert"][1] <= report.stages["merge"][0] <= report.stages["validate"][0]
    assert "| download | 0.00 | " in str(summary.data)  # the timings table, from the first stage's start
    # The files the merge wrote (and validated in full) are not read again by the validate step.
    written = sum(len(c.files_written) for c in report.compactions)
    assert written and report.validated_at_write == written <= report.validated_files
    assert f"({written} as the merge wrote them)" in str(summary.data)
    # Logs of the tasks that ran on the Dask workers reached the run's log.
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 5  # the flow flushed the workers' logs; the API may lag a moment
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])), limit=200)
        worker_lines = [lg.message for lg in logs if lg.task_run_id is not None and "rows (" in lg.message]
        if any(good[0].key in m for m in worker_lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(good[0].key in m for m in worker_lines), [lg.message for lg in logs][:20]

    # Second run: every good archive is a cache hit and the lake is byte-identical.
    before = lake_digest(data)
    _state2, report2 = run(fake_archive, data, dask_address, market="spot", symbols=("BTCUSDT", "ETHUSDT"),
                          start=date(2024, 1, 1), end=date(2024, 1, 3), granularity="daily")
    assert statuses(report2) == {**{a.key: "cached" for a in good}, bad.key: "refused"}
    assert lake_digest(data) == before
    assert fake_archive.count(good[0].key) == 1  # not downloaded again


def test_futures_dialects_monthly_sort_dedupe_and_auto_granularity(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, world: StandardArchive, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    # USD-M before and after the header appeared (2022-08-11), daily.
    _, report = run(fake_archive, data, dask_address, market="um", symbols=("BTCUSDT",),
                    start=date(2022, 8, 10), end=date(2022, 8, 11))
    assert set(statuses(report).values()) == {"ingested"}
    for day in ("2022-08-10", "2022-08-11"):
        assert_lake_file_matches(data, world.get("um", "BTCUSDT", day))
    # auto: February as its monthly archive (interleaved ids + a duplicate row), March days as daily ones.
    state, report = run(fake_archive, data, dask_address, market="um", symbols=("BTCUSDT",),
                        start=date(2024, 2, 1), end=date(2024, 3, 2))
    assert state.is_completed(), state.message
    month = world.get("um", "BTCUSDT", "2024-02")
    assert month.interleaved and month.duplicates == 1
    assert sorted(statuses(report)) == sorted(
        [month.key, world.get("um", "BTCUSDT", "2024-03-01").key, world.get("um", "BTCUSDT", "2024-03-02").key]
    )
    assert_lake_file_matches(data, month)
    outcome = next(o for o in report.outcomes if o.archive == month.key)
    assert "1 duplicate rows dropped" in outcome.detail
    # COIN-M: base_qty where spot/USD-M have quote_qty; header present on one day, absent on the other.
    _, report = run(fake_archive, data, dask_address, market="cm", symbols=("BTCUSD_PERP",),
                    start=date(2024, 1, 1), end=date(2024, 1, 2))
    assert set(statuses(report).values()) == {"ingested"}
    pub = world.get("cm", "BTCUSD_PERP", "2024-01-02")
    table = archive_rows(data, pub)
    assert table["quote_qty"].null_count == table.num_rows
    np.testing.assert_allclose(table["base_qty"].to_numpy(), pub.expected().base_qty, rtol=0, atol=1e-8)
    # Spot 2025: microsecond times kept exactly.
    _, report = run(fake_archive, data, dask_address, market="spot", symbols=("BTCUSDT",),
                    start=date(2025, 1, 1), end=date(2025, 1, 2))
    for day in ("2025-01-01", "2025-01-02"):
        pub = world.get("spot", "BTCUSDT", day)
        assert pub.time_unit == "us"
        assert_lake_file_matches(data, pub)


def test_bad_archives_are_refused_by_name_and_change_nothing(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    fa = fake_archive
    good = publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1), 400, 1, 1)
    days = {d: make_spec("spot", "BTCUSDT", f"2024-01-0{d}") for d in range(2, 8)}
    csv = render_csv(good.trades, "spot", date(2024, 1, 1))  # rows of the wrong day: times out of bounds
    fa.publish_zip(days[2], corrupt_zip(csv, days[2].csv_name, mode="garbage"))
    fa.publish_zip(days[3], traversal_zip(csv))
    fa.publish(days[4], b"1,2.0,3.0\n2,2.0,3.0\n")  # wrong column count
    fa.publish(days[5], b"1,abc,1.0,1.0,1704412800000,True,True\n")  # unparsable number
    fa.publish(days[6], b"")  # empty CSV
    fa.publish(days[7], csv)  # times outside the archive's day
    # A listing key that would escape the data dir.
    escaping = "data/spot/daily/trades/BTCUSDT/../../../../../../evil/BTCUSDT-trades-2024-01-08.zip"
    fa.put(escaping, b"PK")

    state, report = run(fa, data, dask_address, market="spot", symbols=("BTCUSDT",), start=date(2024, 1, 1),
                        end=date(2024, 1, 8), granularity="daily")
    assert state.is_failed()
    st = statuses(report)
    assert st[good.key] == "ingested"
    reasons = {o.archive: o.detail for o in report.outcomes}
    for d, spec in days.items():
        assert st[spec.key] == "refused", (d, reasons[spec.key])
        assert spec.file_name in reasons[spec.key] or spec.key in reasons[spec.key]
        assert spec.key in state.message
    assert "corrupt archive" in reasons[days[2].key]
    assert "unsafe path" in reasons[days[3].key]
    # With delimiter=/ the bucket reports that key as the sub-folder `.../BTCUSDT/../`.
    escaped = [k for k in st if "/../" in k]
    assert escaped == ["data/spot/daily/trades/BTCUSDT/../"], st
    assert st[escaped[0]] == "refused" and "escape" in reasons[escaped[0]]
    # Only the good day is in the lake; nothing was written outside the data dir.
    lake_files = sorted(p.name for p in (data / "lake").rglob("*.parquet"))
    assert lake_files == ["2024-01-01_2024-01-01.parquet"]
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(data)]
    assert outside == []
    assert not [p for p in data.rglob("*") if ".tmp-" in p.name]  # no temporary file left

    # Re-publication with a corrupt archive must not touch the committed lake file.
    before = lake_digest(data)
    fa.publish_zip(good.spec, corrupt_zip(csv, good.spec.csv_name, mode="bad_crc"))
    state, report = run(fa, data, dask_address, market="spot", symbols=("BTCUSDT",), start=date(2024, 1, 1),
                        end=date(2024, 1, 1), granularity="daily")
    assert statuses(report)[good.key] == "refused"
    assert "corrupt archive" in next(o.detail for o in report.outcomes if o.archive == good.key)
    assert lake_digest(data) == before


def test_transient_faults_are_retried_and_404_is_not(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    a = publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1), 300, 1, 1)
    b = publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 2), 300, 301, 2)
    fa.inject(a.key, "503", times=2)
    fa.inject(b.key, "404")  # listed and checksummed, but the archive itself answers 404 once
    state, report = run(fa, tmp_path / "data", dask_address, market="spot", symbols=("BTCUSDT",),
                        start=date(2024, 1, 1), end=date(2024, 1, 2), granularity="daily")
    assert statuses(report) == {a.key: "ingested", b.key: "missing"}
    assert state.is_completed()  # a day not published is not a failure
    assert fa.count(a.key) == 3 and fa.count(b.key) == 1


def test_steps_download_then_convert_offline_then_validate(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    pubs = [publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), 300, 1 + 300 * (d - 1), d) for d in (1, 2)]
    data = tmp_path / "data"
    common: dict[str, Any] = {"market": "spot", "symbols": ("BTCUSDT",), "start": date(2024, 1, 1),
                              "end": date(2024, 1, 2), "granularity": "daily"}
    _, report = run(fa, data, dask_address, steps=("download",), **common)
    assert set(statuses(report).values()) == {"downloaded"}
    assert not (data / "lake").exists() and all(p.spec.local_zip(data).exists() for p in pubs)
    # Convert from the verified local archives: no request reaches the archive.
    fa.clear_requests()
    state, report = run(fa, data, dask_address, steps=("convert",), **common)
    assert state.is_completed() and set(statuses(report).values()) == {"ingested"}
    assert fa.requests == []
    # Converted archives wait in staging until the merge step puts them into the lake.
    assert not lake_files(data, "spot", "BTCUSDT") and all(p.spec.staging_file(data).exists() for p in pubs)
    state, report = run(fa, data, dask_address, steps=("merge", "validate"), **common)
    assert state.is_completed(), state.message
    assert [p.name for p in lake_files(data, "spot", "BTCUSDT")] == ["2024-01-01_2024-01-02.parquet"]
    assert not any(p.spec.staging_file(data).exists() for p in pubs)
    assert report.validated_files == 1 and report.gaps == []
    for p in pubs:
        assert_lake_file_matches(data, p)
    # Validation alone re-reads the lake, catches a file damaged behind the pipeline's back and
    # rebuilds it from the kept archives (tasks/lake/repair.py; tests/test_repair.py has the cases).
    victim = lake_files(data, "spot", "BTCUSDT")[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:-100])
    state, report = run(fa, data, dask_address, steps=("validate",), **common)
    assert state.is_completed(), state.message
    assert [r.file for rr in report.repairs for r in rr.repaired] == [victim.name] and victim.read_bytes() == good


def test_a_poison_pill_day_is_quarantined_and_the_later_days_land(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data, rows = fake_archive, tmp_path / "data", 2000
    for i in (1, 2, 4):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, i), rows, 1 + (i - 1) * rows, i)
    publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 3), rows, 1 + rows // 2, 3)  # ids of days 1 and 2
    kw: dict[str, Any] = {"market": "spot", "symbols": ("BTCUSDT",), "start": date(2024, 1, 1),
                          "end": date(2024, 1, 4), "granularity": "daily", "features": ()}
    state, report = run(fa, data, dask_address, steps=("download", "convert", "merge"), **kw)
    assert not state.is_completed()
    poison = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-03.zip"
    assert statuses(report)[poison] == "refused"
    assert "trade ids collide" in next(o.detail for o in report.outcomes if o.archive == poison)
    ids = ds.dataset(data / "lake" / "trades", partitioning="hive").to_table(columns=["trade_id"])["trade_id"]
    assert len(ids) == 3 * rows  # days 1, 2 and 4 landed
    assert "refused" in report.summary() and poison in report.summary()
    # The next run does not convert it again, still names it (a known refusal: the run does not fail
    # again for it), and the gap report shows the day refused.
    state, report = run(fa, data, dask_address, steps=("download", "convert", "merge", "gaps"), **kw)
    assert state.is_completed() and statuses(report)[poison] == "refused"
    assert [o.archive for o in report.known_refusals] == [poison]
    assert "quarantined by an earlier merge" in next(o.detail for o in report.outcomes if o.archive == poison)
    assert "refused again, known since " in report.summary().splitlines()[0]
    gaps = json.loads((data / "reports" / "gaps" / "market=spot" / "symbol=BTCUSDT.json").read_text())
    assert [r["day"] for r in gaps["refused"]] == ["2024-01-03"]
