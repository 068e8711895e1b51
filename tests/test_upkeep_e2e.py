"""Lake upkeep through the flow: daily merge, back-fill, re-publication, gaps, cleanup, status, the lock."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from flows.status import lake_status, render
from flows.status import main as status_main
from tasks.lake.gaps import report_path
from tasks.lake.inventory import lake_files, lake_inventory
from tasks.lock import data_dir_lock
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive import FakeArchive, publish_day
from tests.test_flow_e2e import assert_lake_file_matches, run, statuses

pytestmark = pytest.mark.slow
N = 2000


def common(start: str, end: str, **kw: Any) -> dict[str, Any]:
    return {"market": "spot", "symbols": ("BTCUSDT",), "start": date.fromisoformat(start),
            "end": date.fromisoformat(end), "granularity": "daily", **kw}


def test_daily_merge_backfill_republication_gaps_cleanup_and_status(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fa, data = fake_archive, tmp_path / "data"
    d = [date(2024, 1, i) for i in range(1, 6)]
    # Day 3 is not published yet; day 2 ends at noon (a truncated upload, #413); day 4 skips 7 ids.
    pubs = {
        1: publish_day(fa, "spot", "BTCUSDT", d[0], N, 1, 1),
        2: publish_day(fa, "spot", "BTCUSDT", d[1], N, 1 + N, 2, end=datetime(2024, 1, 2, 12, tzinfo=UTC)),
        4: publish_day(fa, "spot", "BTCUSDT", d[3], N, 1 + 3 * N, 4, gaps=[(1 + 3 * N + 100, 1 + 3 * N + 106)]),
    }
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-04"))
    assert state.is_completed(), state.message
    assert [p.name for p in lake_files(data, "spot", "BTCUSDT")] == ["2024-01-01_2024-01-04.parquet"]
    gaps = json.loads(report_path(data, "spot", "BTCUSDT").read_text())
    assert gaps["not_published"] == ["2024-01-03"]
    assert [t["day"] for t in gaps["truncated"]] == ["2024-01-02"]
    assert [(g["day"], g["missing_ids"]) for g in gaps["id_gaps_inside"]] == [("2024-01-04", 7)]
    assert [(g["after"], g["before"], g["missing_ids"]) for g in gaps["id_gaps_between"]] == [
        ("2024-01-02", "2024-01-04", N)]

    # Next day's update: day 5 appended to the file; day 3, published late, back-filled inside it.
    pubs[3] = publish_day(fa, "spot", "BTCUSDT", d[2], N, 1 + 2 * N, 3)
    pubs[5] = publish_day(fa, "spot", "BTCUSDT", d[4], N, 1 + 4 * N + 7, 5)  # after day 4's gap
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-05"))
    assert state.is_completed(), state.message
    st = statuses(report)
    assert st[pubs[3].key] == st[pubs[5].key] == "ingested" and st[pubs[1].key] == "cached"
    assert [p.name for p in lake_files(data, "spot", "BTCUSDT")] == ["2024-01-01_2024-01-05.parquet"]
    assert set(report.compactions[0].changed_days) == {d[2], d[4]}
    for p in pubs.values():
        assert_lake_file_matches(data, p)

    # Day 2 re-published complete (a new checksum): re-ingested, its rows swapped in the merged file.
    fixed = publish_day(fa, "spot", "BTCUSDT", d[1], N, 1 + N, 22)
    assert fixed.sha256 != pubs[2].sha256
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-05"))
    assert state.is_completed(), state.message
    assert statuses(report)[fixed.key] == "ingested" and report.compactions[0].replaced_archives == (fixed.key,)
    assert_lake_file_matches(data, fixed)
    gaps = json.loads(report_path(data, "spot", "BTCUSDT").read_text())
    assert gaps["truncated"] == [] and gaps["not_published"] == [] and gaps["id_gaps_between"] == []
    assert any(a.key == "lake-gaps" for a in _artifacts(state))

    # Readers: pyarrow, Dask, DuckDB and Polars, with partition pruning and a time filter.
    lake = data / "lake" / "trades"
    day4 = (datetime(2024, 1, 4, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC))
    dataset = ds.dataset(lake, format="parquet", partitioning="hive")
    flt = (ds.field("symbol") == "BTCUSDT") & (ds.field("time") >= day4[0]) & (ds.field("time") < day4[1])
    assert dataset.to_table(filter=flt).num_rows == N
    ddf = dd.read_parquet(str(lake), filters=[("symbol", "==", "BTCUSDT"), ("time", ">=", day4[0])])
    assert len(ddf) == 2 * N
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM read_parquet('{lake}/*/*/*.parquet', hive_partitioning=true) "
                    "WHERE symbol = 'BTCUSDT' AND market = 'spot'").fetchone()
    assert n is not None and n[0] == 5 * N
    pl_n = pl.scan_parquet(f"{lake}/**/*.parquet", hive_partitioning=True).filter(
        pl.col("symbol") == "BTCUSDT").select(pl.len()).collect().item()
    assert pl_n == 5 * N

    # Status: days, rows, files; the next update's days.
    [row] = lake_status(data, today=date(2024, 1, 8))
    assert (row.days, row.first_day, row.last_day, row.rows, row.files) == (5, d[0], d[4], 5 * N, 1)
    assert row.next_update == "2 days: 2024-01-06..2024-01-07"
    assert "\033[" in render([row], colour=True) and "\033[" not in render([row], colour=False)
    assert status_main(["--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "BTCUSDT" in out and "\033[" not in out  # captured output is not a terminal: plain text

    # Cleanup (asked for): the verified downloads go, bytes freed reported; the lake stays as it is.
    zips = sorted((data / "archive").rglob("*.zip"))
    freed = sum(p.stat().st_size + p.with_name(p.name + ".CHECKSUM").stat().st_size for p in zips)
    before = {p: p.read_bytes() for p in lake_files(data, "spot", "BTCUSDT")}
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-05", steps=("cleanup",)))
    assert state.is_completed(), state.message
    assert report.cleanups[0].bytes_freed == freed and len(report.cleanups[0].removed) == 5
    assert not list((data / "archive").rglob("*.zip"))
    assert {p: p.read_bytes() for p in lake_files(data, "spot", "BTCUSDT")} == before


def _artifacts(state: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))))


def test_second_run_on_a_locked_data_dir_is_refused_and_other_symbols_are_not_blocked(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data = fake_archive, tmp_path / "data"
    good = publish_day(fa, "spot", "ETHUSDT", date(2024, 1, 1), N, 1, 1)
    bad = publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1), N, 1, 2, bad_checksum=True)
    with data_dir_lock(data, run="first-run"):
        state, _ = _run_locked(fa, data, dask_address)
        assert state.is_failed() and "locked" in state.message and "first-run" in state.message
    assert not (data / "lake").exists()
    # Unlocked: BTCUSDT's refused day does not keep ETHUSDT out of the lake.
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-01", symbols=("BTCUSDT", "ETHUSDT")))
    assert state.is_failed() and statuses(report) == {good.key: "ingested", bad.key: "refused"}
    assert_lake_file_matches(data, good)
    assert [e.path.name for e in lake_inventory(data, "spot", "ETHUSDT")] == ["2024-01-01_2024-01-01.parquet"]
    assert ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1)).quarantine_zip(data).exists()
    gaps = json.loads(report_path(data, "spot", "BTCUSDT").read_text())
    assert [r["day"] for r in gaps["refused"]] == ["2024-01-01"] and "checksum" in gaps["refused"][0]["reason"]


def _run_locked(fa: FakeArchive, data: Path, dask_address: str) -> tuple[Any, Any]:
    from flows.full_pipeline import full_pipeline
    from flows.runtime import dask_runner
    from tasks.settings import Settings

    settings = Settings(data_dir=data, base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address,
                        **common("2024-01-01", "2024-01-01", symbols=("BTCUSDT", "ETHUSDT")))
    state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    return state, state.result(raise_on_failure=False)


def test_lock_waits_then_refuses_naming_the_holder(tmp_path: Path) -> None:
    from tasks.errors import LakeLocked

    with data_dir_lock(tmp_path, run="holder"):
        t0 = datetime.now(UTC)
        with pytest.raises(LakeLocked, match="holder") as err, data_dir_lock(tmp_path, wait_seconds=0.3):
            pass
        assert datetime.now(UTC) - t0 >= timedelta(seconds=0.3)
        assert str(tmp_path) in str(err.value)
    with data_dir_lock(tmp_path):  # released with the first holder
        pass


def _publish_derived_day(fa: FakeArchive, day: date, first_id: int, first_agg: int, seed: int,
                         drop_minutes: int = 0) -> dict[str, Any]:
    """Publish the day's aggTrades and 1m klines (derived from the same generated trades); {dataset: (spec, rows)}.

    `drop_minutes`: the klines archive leaves out its last minutes (a truncated upload).
    """
    from tests.fake_archive.derived import aggregate, klines_of, render_agg_csv, render_klines_csv, with_orders
    from tests.fake_archive.generate import generate_trades

    spec = ArchiveSpec("spot", "BTCUSDT", "daily", day)
    trades = with_orders(generate_trades(N, spec.start, spec.end, first_id, seed, market="spot"), seed=seed)
    agg = aggregate(trades, first_agg)
    start = int(spec.start.timestamp()) * 1_000_000
    k = klines_of(trades, start, start + 86_400_000_000)
    lines = render_klines_csv(k, "spot", day).splitlines(keepends=True)
    klines_body = b"".join(lines[: len(lines) - drop_minutes])
    out: dict[str, Any] = {}
    for ds_id, body, rows in (("aggTrades", render_agg_csv(agg, "spot", day), len(agg)),
                              ("klines-1m", klines_body, len(k) - drop_minutes)):
        s = ArchiveSpec("spot", "BTCUSDT", "daily", day, ds_id)
        out[ds_id] = (fa.publish(s, body), s, rows)
    return out


def test_upkeep_of_agg_trades_and_klines(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    """The trades upkeep above, for aggTrades and 1m klines in one run: daily merge, a late day back-filled,
    a re-published day swapped in, gaps per dataset, status per dataset, cleanup."""
    fa, data = fake_archive, tmp_path / "data"
    d = [date(2024, 1, i) for i in range(1, 5)]
    datasets = ("aggTrades", "klines-1m")
    aggs = [1]  # each day's first aggTrade id

    def day(i: int, seed: int, drop: int = 0) -> dict[str, Any]:
        return _publish_derived_day(fa, d[i], 1 + i * N, aggs[i], seed, drop)

    pubs = {0: day(0, 0)}
    aggs.append(aggs[0] + pubs[0]["aggTrades"][2])
    pubs[1] = day(1, 1, drop=30)  # its klines end 30 minutes early
    aggs.append(aggs[1] + pubs[1]["aggTrades"][2])
    # Day 3 is not published yet.
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-03", datasets=datasets))
    assert state.is_completed(), state.message
    for ds_id in datasets:
        assert [p.name for p in lake_files(data, "spot", "BTCUSDT", ds_id)] == ["2024-01-01_2024-01-02.parquet"]
    gaps = {g.dataset: g for g in report.gap_reports}
    assert gaps["aggTrades"].not_published == [d[2]] and gaps["klines-1m"].not_published == [d[2]]
    assert gaps["klines-1m"].id_gaps_inside == [{"day": "2024-01-02", "gaps": 1, "missing_ids": 30}]
    assert gaps["aggTrades"].id_gaps_inside == [] and gaps["aggTrades"].truncated == []

    # Next day: day 3 published late and day 4 new; both merged into the one file of each dataset.
    pubs[2] = day(2, 2)
    aggs.append(aggs[2] + pubs[2]["aggTrades"][2])
    pubs[3] = day(3, 3)
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-04", datasets=datasets))
    assert state.is_completed(), state.message
    st = statuses(report)
    for ds_id in datasets:
        assert st[pubs[2][ds_id][1].key] == st[pubs[3][ds_id][1].key] == "ingested"
        assert st[pubs[0][ds_id][1].key] == "cached"
        [lake] = lake_files(data, "spot", "BTCUSDT", ds_id)
        assert lake.name == "2024-01-01_2024-01-04.parquet"
        assert pq_rows(lake) == sum(p[ds_id][2] for p in pubs.values())
    assert {c.dataset: set(c.changed_days) for c in report.compactions} == {ds_id: {d[2], d[3]} for ds_id in datasets}

    # Day 2's klines re-published complete (a new checksum): re-ingested, swapped into the merged file.
    fixed = day(1, 1)["klines-1m"]
    state, report = run(fa, data, dask_address, **common("2024-01-01", "2024-01-04", datasets=datasets))
    assert state.is_completed(), state.message
    assert statuses(report)[fixed[1].key] == "ingested"
    assert statuses(report)[pubs[1]["aggTrades"][1].key] == "cached"  # unchanged
    klines_pass = [c for c in report.compactions if c.dataset == "klines-1m"]
    assert klines_pass[0].replaced_archives == (fixed[1].key,)
    [lake] = lake_files(data, "spot", "BTCUSDT", "klines-1m")
    assert pq_rows(lake) == 4 * 1440
    assert {g.dataset: g.problems for g in report.gap_reports} == {"aggTrades": 0, "klines-1m": 0}

    # Status: one row per dataset; then cleanup removes each dataset's verified downloads, the lakes stay.
    rows = {r.dataset: r for r in lake_status(data, today=date(2024, 1, 6))}
    assert set(rows) == set(datasets)
    assert all((r.days, r.files, r.next_update) == (4, 1, "1 day: 2024-01-05..2024-01-05") for r in rows.values())
    before = {p: p.read_bytes() for ds_id in datasets for p in lake_files(data, "spot", "BTCUSDT", ds_id)}
    state, report = run(fa, data, dask_address,
                        **common("2024-01-01", "2024-01-04", datasets=datasets, steps=("cleanup",)))
    assert state.is_completed(), state.message
    assert sorted(len(c.removed) for c in report.cleanups) == [4, 4]
    assert not list((data / "archive").rglob("*.zip"))
    assert {p: p.read_bytes() for ds_id in datasets for p in lake_files(data, "spot", "BTCUSDT", ds_id)} == before


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)
