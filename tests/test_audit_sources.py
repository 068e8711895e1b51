"""Monthly against daily: the audit finds exactly the rows injected into one source and not the other.

The archives are generated in the published dialects: a monthly archive of January 2024
whose first three days are also published as daily archives. One daily archive lacks a row
of the monthly one, another has a different quantity in one row; nothing else differs.
"""

from __future__ import annotations

import zipfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.audit.between_datasets import AuditReport
from tasks.audit.between_sources import audit_sources, held_source_pairs
from tasks.lake.inventory import lake_files
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.plan import counterpart_specs
from tests.fake_archive.derived import AggTrades, aggregate, render_agg_csv, with_orders
from tests.fake_archive.generate import checksum_text, generate_trades

OPTS = ConvertOptions(row_group_rows=2000)
JAN = date(2024, 1, 1)
DAYS = [JAN + timedelta(days=i) for i in range(3)]
CHECK = "aggTrades monthly vs daily"


def _concat(parts: list[AggTrades]) -> AggTrades:
    cols = ("agg_id", "price_ticks", "qty_units", "first_trade_id", "last_trade_id", "time_us", "is_buyer_maker",
            "is_best_match")
    return AggTrades(*(np.concatenate([getattr(p, c) for p in parts]) for c in cols),
                     qty_decimals=parts[0].qty_decimals)


def sources() -> tuple[AggTrades, list[AggTrades], dict[str, int]]:
    """(the monthly archive's rows, each day's daily rows, what was injected)."""
    days, next_id, next_agg = [], 1, 1
    for i, day in enumerate(DAYS):
        spec = ArchiveSpec("spot", "BTCUSDT", "daily", day, "aggTrades")
        trades = with_orders(generate_trades(3000, spec.start, spec.end, next_id, seed=i, market="spot"), seed=i)
        next_id += len(trades)
        days.append(aggregate(trades, next_agg))
        next_agg += len(days[-1])
    monthly = _concat(days)
    dropped = int(days[1].agg_id[40])  # on the 2nd, the daily archive lacks a row the monthly has
    daily = [days[0], days[1].take(np.flatnonzero(days[1].agg_id != dropped)), days[2]]
    changed = int(days[2].agg_id[7])  # on the 3rd, one row's qty differs
    qty = days[2].qty_units.copy()
    qty[7] += 1
    daily[2] = AggTrades(days[2].agg_id, days[2].price_ticks, qty, days[2].first_trade_id, days[2].last_trade_id,
                         days[2].time_us, days[2].is_buyer_maker, days[2].is_best_match, days[2].qty_decimals)
    return monthly, daily, {"dropped": dropped, "changed": changed}


def _store(data_dir: Path, spec: ArchiveSpec, body: bytes) -> None:
    """A verified download, as the download step leaves it: the zip and its `.CHECKSUM`."""
    path = spec.local_zip(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(spec.csv_name, body)
    path.with_name(path.name + ".CHECKSUM").write_text(checksum_text(path.read_bytes(), spec.file_name))


def test_counterparts_are_the_other_source_of_the_requested_days() -> None:
    daily_days = set(DAYS)
    planned = [ArchiveSpec("spot", "BTCUSDT", "daily", d) for d in DAYS]
    got = counterpart_specs("spot", "BTCUSDT", DAYS[0], DAYS[-1], daily_days, {JAN}, planned)
    assert got == [ArchiveSpec("spot", "BTCUSDT", "monthly", JAN)]
    monthly = [ArchiveSpec("spot", "BTCUSDT", "monthly", JAN)]
    assert counterpart_specs("spot", "BTCUSDT", JAN, date(2024, 1, 31), daily_days, {JAN}, monthly) == planned
    # A month not published monthly, or with none of the requested days published daily: nothing to compare.
    assert counterpart_specs("spot", "BTCUSDT", date(2024, 2, 1), date(2024, 2, 3), daily_days, {JAN}, []) == []
    assert counterpart_specs("spot", "BTCUSDT", JAN, DAYS[-1], set(), {JAN}, monthly) == []


def test_monthly_against_daily_finds_exactly_the_injected_rows(tmp_path: Path) -> None:
    monthly, daily, injected = sources()
    _store(tmp_path, ArchiveSpec("spot", "BTCUSDT", "monthly", JAN, "aggTrades"), render_agg_csv(monthly, "spot", JAN))
    for day, rows in zip(DAYS, daily, strict=True):
        _store(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", day, "aggTrades"), render_agg_csv(rows, "spot", day))
    # A daily zip without its .CHECKSUM was never verified: not compared.
    _store(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 4), "aggTrades"), b"x")
    ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 4), "aggTrades").local_zip(tmp_path).with_name(
        "BTCUSDT-aggTrades-2024-01-04.zip.CHECKSUM").unlink()
    [(m, held)] = list(held_source_pairs(tmp_path, "spot", "BTCUSDT", "aggTrades", JAN, date(2024, 1, 31)))
    assert m.granularity == "monthly" and [s.period for s in held] == DAYS

    report = AuditReport("spot", "BTCUSDT", JAN.isoformat(), date(2024, 1, 31).isoformat())
    audit_sources(tmp_path, "spot", "BTCUSDT", "aggTrades", JAN, date(2024, 1, 31), OPTS, report)
    assert report.checked == {CHECK: 3}
    found = [(x.day, x.kind, x.count) for x in report.mismatches]
    assert found == [("2024-01-02", f"{CHECK}: rows only in the monthly archive", 1),
                     ("2024-01-03", f"{CHECK}: rows that differ", 1)]
    assert report.mismatches[0].samples == (f"agg_trade_id {injected['dropped']}",)
    assert report.mismatches[1].samples[0].startswith(f"agg_trade_id {injected['changed']}: qty ")
    assert report.rows == {"aggTrades (monthly archives)": len(monthly),
                           "aggTrades (daily archives)": sum(len(d) for d in daily)}
    lines = report.summary_lines()
    assert lines[0] == f"audit spot/BTCUSDT: {CHECK} on 3 days, 2 mismatches"
    assert lines[1].startswith(f"  2024-01-02 {CHECK}: rows only in the monthly archive: 1 (e.g. agg_trade_id")
    # The conversions were temporary: nothing is left under staging, nothing landed in the lake.
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []
    assert lake_files(tmp_path, "spot", "BTCUSDT", "aggTrades") == []


def test_an_archive_that_cannot_be_converted_is_named_and_the_month_not_compared(tmp_path: Path) -> None:
    monthly, _, _ = sources()
    _store(tmp_path, ArchiveSpec("spot", "BTCUSDT", "monthly", JAN, "aggTrades"), render_agg_csv(monthly, "spot", JAN))
    _store(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", DAYS[0], "aggTrades"), b"not,a,csv\n")
    report = AuditReport("spot", "BTCUSDT", JAN.isoformat(), DAYS[0].isoformat())
    audit_sources(tmp_path, "spot", "BTCUSDT", "aggTrades", JAN, DAYS[0], OPTS, report)
    [m] = report.mismatches
    assert (m.day, m.kind, report.checked) == ("2024-01", f"{CHECK}: not compared", {})
    assert "BTCUSDT-aggTrades-2024-01-01.zip" in m.samples[0]
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []


@pytest.mark.slow
def test_flow_fetches_the_other_source_compares_it_and_lands_only_one(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    """`audit_sources`: the monthly archive of days taken daily is downloaded, compared, never landed."""
    from tasks.report import PipelineReport
    from tests.test_flow_e2e import run as run_flow

    fa: Any = fake_archive
    monthly, daily, injected = sources()
    monthly_spec = ArchiveSpec("spot", "BTCUSDT", "monthly", JAN, "aggTrades")
    fa.publish(monthly_spec, render_agg_csv(monthly, "spot", JAN))
    for day, rows in zip(DAYS, daily, strict=True):
        fa.publish(ArchiveSpec("spot", "BTCUSDT", "daily", day, "aggTrades"),
                   render_agg_csv(rows, "spot", day))

    def run(audit_sources: bool) -> PipelineReport:
        state, report = run_flow(fa, tmp_path / "data", dask_address, symbols=("BTCUSDT",), start=DAYS[0],
                                 end=DAYS[-1], granularity="daily", datasets=("aggTrades",),
                                 audit_sources=audit_sources, features=())
        assert state.is_completed(), report.summary()
        return report

    report = run(True)
    outcomes = {o.archive: o for o in report.outcomes}
    kept = outcomes[monthly_spec.key]
    assert (kept.status, kept.detail) == ("downloaded", "kept for the audit of monthly against daily, not landed")
    assert {outcomes[ArchiveSpec("spot", "BTCUSDT", "daily", d, "aggTrades").key].status for d in DAYS} == {
        "ingested"}
    [audit] = report.audits
    assert audit.checked == {CHECK: 3}
    assert [(x.day, x.kind, x.count) for x in audit.mismatches] == [
        ("2024-01-02", f"{CHECK}: rows only in the monthly archive", 1),
        ("2024-01-03", f"{CHECK}: rows that differ", 1)]
    assert audit.mismatches[0].samples == (f"agg_trade_id {injected['dropped']}",)
    # The lake holds the daily archives' rows only, and the summary says what the audit found.
    [lake] = lake_files(tmp_path / "data", "spot", "BTCUSDT", "aggTrades")
    assert pq.read_metadata(lake).num_rows == sum(len(d) for d in daily)
    assert "rows only in the monthly archive" in report.summary()
    # Status carries the verdict on the symbol's row, though the lake holds no trades.
    from flows.status import lake_status

    [row] = lake_status(tmp_path / "data", today=date(2024, 1, 5))
    assert row.dataset == "aggTrades" and "audit: 2 mismatch kinds on 2 days (2024-01-01..2024-01-03)" in row.gaps
    assert row.problems >= 2
    # Without audit_sources nothing more is fetched, and no audit runs (one dataset in the lake).
    again = run(False)
    assert monthly_spec.key not in {o.archive for o in again.outcomes} and again.audits == []
    # The monthly listing, asked for the audit only, fails past every retry: the daily days still
    # land; the run ends Failed naming that folder, and no month is compared.
    prefix = "data/spot/monthly/aggTrades/BTCUSDT/"
    fa.inject(f"listing:{prefix}", "503", times=50)
    state, failed = run_flow(fa, tmp_path / "fresh", dask_address, symbols=("BTCUSDT",), start=DAYS[0], end=DAYS[-1],
                             granularity="daily", datasets=("aggTrades",), audit_sources=True, features=())
    assert not state.is_completed()
    outcomes = {o.archive: o for o in failed.outcomes}
    assert outcomes[prefix].status == "failed" and "503" in outcomes[prefix].detail, failed.summary()
    assert {outcomes[ArchiveSpec("spot", "BTCUSDT", "daily", d, "aggTrades").key].status for d in DAYS} == {
        "ingested"}
    assert monthly_spec.key not in outcomes
    [lake] = lake_files(tmp_path / "fresh", "spot", "BTCUSDT", "aggTrades")
    assert pq.read_metadata(lake).num_rows == sum(len(d) for d in daily)
