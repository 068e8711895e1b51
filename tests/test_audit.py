"""The audit finds exactly the disagreements injected between trades, aggTrades and klines, and nothing else."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tasks.audit.between_datasets import audit_symbol, report_path, write_audit_report
from tasks.convert.archive import convert_archive
from tasks.lake.compact import compact_symbol
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Market
from tests.fake_archive.derived import (
    aggregate,
    klines_of,
    render_agg_csv,
    render_klines_csv,
    with_orders,
)
from tests.fake_archive.generate import generate_trades, render_csv

OPTS = ConvertOptions(row_group_rows=5000)
DAY = date(2024, 1, 1)
DATASETS = ("trades", "aggTrades", "klines-1m", "klines-1h")


def _us(day: date) -> int:
    return int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000


def _land(data_dir: Path, spec: ArchiveSpec, body: bytes) -> None:
    zip_path = data_dir / "zips" / spec.file_name
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(spec.csv_name, body)
    convert_archive(zip_path, spec, "0" * 64, spec.staging_file(data_dir), OPTS)


def build_lake(data_dir: Path, market: Market, days: int, *, skip_trade_on: int | None = None,
               wrong_high_on: int | None = None) -> dict[str, object]:
    """Land `days` days of trades, aggTrades, 1m and 1h klines derived from the same trades; inject faults.

    `skip_trade_on`: on that day, one aggTrade leaves out its first trade (qty adjusted, so
    only the coverage is wrong). `wrong_high_on`: on that day, one 1m kline's high is 1,000.00 too high.
    """
    injected: dict[str, object] = {}
    next_id, next_agg = 1, 1
    for i in range(days):
        day = DAY + timedelta(days=i)
        trades_spec = ArchiveSpec(market, "BTCUSDT", "daily", day)
        trades = with_orders(generate_trades(5000, trades_spec.start, trades_spec.end, next_id, seed=i,
                                             market=market), seed=i)
        next_id += len(trades)
        _land(data_dir, trades_spec, render_csv(trades, market, day))
        agg = aggregate(trades, next_agg)
        next_agg += len(agg)
        if skip_trade_on == i:
            k = int(np.flatnonzero(agg.last_trade_id > agg.first_trade_id)[10])
            skipped = int(agg.first_trade_id[k])
            agg.qty_units[k] -= trades.qty_units[trades.id == skipped][0]
            agg.first_trade_id[k] += 1
            injected["skipped_trade"] = skipped
        _land(data_dir, ArchiveSpec(market, "BTCUSDT", "daily", day, "aggTrades"), render_agg_csv(agg, market, day))
        one = klines_of(trades, _us(day), _us(day + timedelta(days=1)))
        if wrong_high_on == i:
            m = int(np.flatnonzero(one.trades > 0)[100])
            one.high[m] += 100_000  # 1,000.00 above: above every other high of its hour too
            injected["wrong_high_minute"] = datetime.fromtimestamp(one.open_time_us[m] / 1e6, UTC).isoformat()
        _land(data_dir, ArchiveSpec(market, "BTCUSDT", "daily", day, "klines-1m"), render_klines_csv(one, market, day))
        hour = klines_of(trades, _us(day), _us(day + timedelta(days=1)), 3_600_000_000)
        _land(data_dir, ArchiveSpec(market, "BTCUSDT", "daily", day, "klines-1h"), render_klines_csv(hour, market, day))
    for ds in DATASETS:
        compact_symbol(data_dir, market, "BTCUSDT", 1 << 30, OPTS, consolidate=True, dataset_id=ds)
    return injected


@pytest.mark.parametrize("market", ["spot", "um"])
def test_agreeing_datasets_give_no_mismatch(tmp_path: Path, market: Market) -> None:
    build_lake(tmp_path, market, days=2)
    report = audit_symbol(tmp_path, market, "BTCUSDT", DAY, DAY + timedelta(days=1), DATASETS)
    assert report.mismatches == []
    assert report.checked == {"aggTrades vs trades": 2, "klines-1m vs trades": 2, "klines-1h vs klines-1m": 2}
    assert report.rows["trades"] == 10_000 and report.rows["klines-1m"] == 2 * 1440 and report.rows["klines-1h"] == 48


def test_injected_disagreements_are_found_exactly(tmp_path: Path) -> None:
    injected = build_lake(tmp_path, "um", days=3, skip_trade_on=1, wrong_high_on=2)
    report = audit_symbol(tmp_path, "um", "BTCUSDT", DAY, DAY + timedelta(days=2), DATASETS)
    found = {(m.day, m.kind, m.count) for m in report.mismatches}
    assert found == {
        ("2024-01-02", "aggTrades vs trades: trades no aggTrade covers", 1),
        ("2024-01-03", "klines-1m vs trades: high differs", 1),
        # The wrong 1m high also makes its hour disagree with the 1m klines: a second, true, finding.
        ("2024-01-03", "klines-1h vs klines-1m: high differs", 1),
    }
    by_kind = {m.kind: m for m in report.mismatches}
    assert by_kind["aggTrades vs trades: trades no aggTrade covers"].samples == (f"trade {injected['skipped_trade']}",)
    assert by_kind["klines-1m vs trades: high differs"].samples[0].startswith(str(injected["wrong_high_minute"]))
    path = write_audit_report(tmp_path, report)
    assert path == report_path(tmp_path, "um", "BTCUSDT")
    assert len(json.loads(path.read_text())["mismatches"]) == 3
    lines = report.summary_lines()
    assert lines[0] == "audit um/BTCUSDT: aggTrades vs trades on 3 days, 1 mismatches"


def test_audit_of_part_of_the_range_and_of_one_dataset(tmp_path: Path) -> None:
    build_lake(tmp_path, "um", days=2, wrong_high_on=0)
    later = audit_symbol(tmp_path, "um", "BTCUSDT", DAY + timedelta(days=1), DAY + timedelta(days=1), DATASETS)
    assert later.mismatches == [] and later.checked["klines-1m vs trades"] == 1
    alone = audit_symbol(tmp_path, "um", "BTCUSDT", DAY, DAY + timedelta(days=1), ("trades",))
    assert alone.checked == {} and alone.mismatches == []


def test_one_second_klines_are_checked_through_the_minutes_they_make(tmp_path: Path) -> None:
    """1s klines (spot) cannot be rebuilt from 1m ones: the 1m klines are rebuilt from them instead."""
    build_lake(tmp_path, "spot", days=1)
    spec = ArchiveSpec("spot", "BTCUSDT", "daily", DAY)
    trades = with_orders(generate_trades(5000, spec.start, spec.end, 1, seed=0, market="spot"), seed=0)
    second = klines_of(trades, _us(DAY), _us(DAY + timedelta(days=1)), 1_000_000)
    s = int(np.flatnonzero(second.trades > 0)[50])
    second.high[s] += 100_000  # 1,000.00 above its minute's high
    _land(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", DAY, "klines-1s"), render_klines_csv(second, "spot", DAY))
    compact_symbol(tmp_path, "spot", "BTCUSDT", 1 << 30, OPTS, consolidate=True, dataset_id="klines-1s")
    report = audit_symbol(tmp_path, "spot", "BTCUSDT", DAY, DAY, (*DATASETS, "klines-1s"))
    assert report.checked["klines-1m vs klines-1s"] == 1
    assert [(m.kind, m.count) for m in report.mismatches] == [("klines-1m vs klines-1s: high differs", 1)]
