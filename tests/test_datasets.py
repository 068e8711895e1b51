"""aggTrades and klines through the dataset-generic core: conversion, validation, merge.

The archives are derived from generated trades (`tests.fake_archive.derived`) and rendered
in the published dialects; each test states what a stage must make of them.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.convert.archive import convert_archive
from tasks.datasets import AGG_TRADES, TRADES, dataset, dataset_ids, klines
from tasks.errors import InvalidData, LakeValidationError, UnsafePath
from tasks.lake.compact import compact_symbol
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Market, parse_archive_name
from tests.fake_archive.derived import aggregate, klines_of, render_agg_csv, render_klines_csv, with_orders
from tests.fake_archive.generate import generate_trades, write_zip

OPTS = ConvertOptions(row_group_rows=2000)
DAY = date(2024, 1, 1)


def _trades(spec: ArchiveSpec, n: int = 6000, first_id: int = 1000, seed: int = 3):
    raw = generate_trades(n, spec.start, spec.end, first_id, seed, market=spec.market)
    return with_orders(raw, seed)


def test_paths_and_names_of_every_dataset() -> None:
    agg = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "aggTrades")
    assert agg.key == "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-01.zip"
    assert agg.lake_dir(Path("/d")) == Path("/d/lake/aggTrades/market=um/symbol=BTCUSDT")
    k = ArchiveSpec("spot", "BTCUSDT", "monthly", DAY, "klines-1m")
    assert k.key == "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip"
    assert k.lake_dir(Path("/d")) == Path("/d/lake/klines/interval=1m/market=spot/symbol=BTCUSDT")
    assert parse_archive_name("spot", "monthly", "BTCUSDT-1m-2024-01.zip", "klines-1m") == k
    # A name of another dataset is not one of this dataset's archives.
    assert parse_archive_name("um", "daily", "BTCUSDT-trades-2024-01-01.zip", "aggTrades") is None
    assert dataset_ids(("trades", "klines", "aggTrades"), ("1m", "1h")) == ("trades", "klines-1m", "klines-1h",
                                                                           "aggTrades")
    assert dataset_ids(None, ("1h",)) == ("klines-1h",) and dataset_ids(("klines",), None) == ("klines-1m",)
    for bad in ("klines-2m", "klines-../x", "candles", "trades\n"):
        with pytest.raises(UnsafePath):
            dataset(bad)
    with pytest.raises(UnsafePath):
        ArchiveSpec("spot", "BTCUSDT", "daily", DAY, "klines-7m")


@pytest.mark.parametrize("market", ["spot", "um"])
def test_agg_trades_convert_validate_and_chain(tmp_path: Path, market: Market) -> None:
    spec = ArchiveSpec(market, "BTCUSDT", "daily", DAY, "aggTrades")
    agg = aggregate(_trades(spec), first_agg_id=500)
    assert len(agg) < 6000  # orders of several fills were folded
    zip_path = write_zip(tmp_path / "a.zip", spec.csv_name, render_agg_csv(agg, market, DAY))
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == len(agg)
    assert (result.first_trade_id, result.last_trade_id) == (500, 500 + len(agg) - 1)
    table = pq.read_table(result.path)
    assert table.schema.names == AGG_TRADES.schema.names
    assert table.column("first_trade_id").to_pylist()[:3] == agg.first_trade_id[:3].tolist()
    assert np.allclose(table.column("qty").to_numpy(), agg.qty_units / 10**agg.qty_decimals)
    assert table.column("is_best_match").null_count == (0 if market == "spot" else len(agg))
    report = validate_parquet_file(result.path, ExpectedFile(dataset="aggTrades"))
    assert report.chain_gaps.count == 0 and report.chain_overlaps == 0
    # The same file checked as trades is refused: the schemas differ.
    with pytest.raises(LakeValidationError, match="schema columns differ"):
        validate_parquet_file(result.path, ExpectedFile(dataset="trades"))


def test_agg_trades_chain_break_is_reported_not_refused(tmp_path: Path) -> None:
    """An aggTrade that skips a trade id: the file lands, and the gap of trade ids is reported."""
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "aggTrades")
    agg = aggregate(_trades(spec))
    k = len(agg) // 2 + int(np.flatnonzero(agg.last_trade_id[len(agg) // 2:] > agg.first_trade_id[len(agg) // 2:])[0])
    agg.first_trade_id[k] += 1  # an order of several fills: its first trade is covered by no row now
    zip_path = write_zip(tmp_path / "a.zip", spec.csv_name, render_agg_csv(agg, "um", DAY))
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    report = validate_parquet_file(result.path, ExpectedFile(dataset="aggTrades"))
    assert report.chain_gaps.count == 1 and report.chain_gaps.missing_ids == 1
    assert report.chain_gaps.listed == ((int(agg.last_trade_id[k - 1]), int(agg.first_trade_id[k])),)


def test_agg_trade_with_first_after_last_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "aggTrades")
    agg = aggregate(_trades(spec, n=500))
    agg.first_trade_id[7] = agg.last_trade_id[7] + 5
    zip_path = write_zip(tmp_path / "a.zip", spec.csv_name, render_agg_csv(agg, "um", DAY))
    with pytest.raises(InvalidData, match=r"1 rows with first_trade_id above last_trade_id \(id \d+ \(line 9\)\)"):
        convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert not spec.staging_file(tmp_path).exists()


@pytest.mark.parametrize(("market", "unit"), [("spot", "ms"), ("spot", "us"), ("um", "ms")])
def test_klines_convert_every_minute_and_drop_ignore(tmp_path: Path, market: Market, unit: str) -> None:
    spec = ArchiveSpec(market, "BTCUSDT", "daily", DAY, "klines-1m")
    trades = _trades(ArchiveSpec(market, "BTCUSDT", "daily", DAY), n=3000)
    k = klines_of(trades, int(spec.start.timestamp()) * 1_000_000, int(spec.end.timestamp()) * 1_000_000)
    body = render_klines_csv(k, market, DAY, time_unit=unit)  # type: ignore[arg-type]
    zip_path = write_zip(tmp_path / "k.zip", spec.csv_name, body)
    result = convert_archive(zip_path, spec, "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == 1440 and result.time_unit == unit
    table = pq.read_table(result.path)
    assert "ignore" not in table.schema.names
    assert table.schema == klines("1m").schema.with_metadata(table.schema.metadata)
    opens = table.column("open_time").cast("int64").to_numpy()
    assert (np.diff(opens) == 60_000_000).all()
    closes = table.column("close_time").cast("int64").to_numpy()
    assert (closes - opens == 59_999_000 if unit == "ms" else closes - opens == 59_999_999).all()
    assert int(table.column("trades").to_numpy().sum()) == 3000
    report = validate_parquet_file(result.path, ExpectedFile(dataset="klines-1m"))
    assert report.id_gaps.count == 0


def test_klines_missing_minute_is_a_gap_and_a_bad_high_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "klines-1m")
    trades = _trades(ArchiveSpec("um", "BTCUSDT", "daily", DAY), n=3000)
    k = klines_of(trades, int(spec.start.timestamp()) * 1_000_000, int(spec.end.timestamp()) * 1_000_000)
    lines = render_klines_csv(k, "um", DAY).splitlines(keepends=True)
    without = b"".join(lines[:101] + lines[104:])  # header + 100 minutes, then 3 minutes left out
    result = convert_archive(write_zip(tmp_path / "k.zip", spec.csv_name, without), spec, "f" * 64,
                             spec.staging_file(tmp_path), OPTS)
    report = validate_parquet_file(result.path, ExpectedFile(dataset="klines-1m"))
    assert (report.id_gaps.count, report.id_gaps.missing_ids) == (1, 3)
    fields = lines[5].split(b",")
    fields[2] = b"1.00"  # a high below the open
    bad = b"".join([*lines[:5], b",".join(fields), *lines[6:]])
    with pytest.raises(InvalidData, match="open above high"):
        convert_archive(write_zip(tmp_path / "bad.zip", spec.csv_name, bad), spec, "f" * 64,
                        spec.staging_file(tmp_path / "other"), OPTS)


def test_agg_trades_merge_into_one_verified_file(tmp_path: Path) -> None:
    """Three daily aggTrades archives merge into one lake file, verified by its digest; trades untouched."""
    first = 1
    for i in range(3):
        day = DAY + timedelta(days=i)
        spec = ArchiveSpec("um", "BTCUSDT", "daily", day, "aggTrades")
        agg = aggregate(_trades(spec, n=2000, first_id=1 + 2000 * i, seed=i), first_agg_id=first)
        first += len(agg)
        zip_path = write_zip(tmp_path / f"{i}.zip", spec.csv_name, render_agg_csv(agg, "um", day))
        convert_archive(zip_path, spec, f"{i}" * 64, spec.staging_file(tmp_path), OPTS)
    result = compact_symbol(tmp_path, "um", "BTCUSDT", 1 << 30, OPTS, consolidate=True, dataset_id="aggTrades")
    assert result.dataset == "aggTrades" and len(result.staged_merged) == 3
    files = lake_files(tmp_path, "um", "BTCUSDT", "aggTrades")
    assert [f.name for f in files] == ["2024-01-01_2024-01-03.parquet"]
    assert pq.read_metadata(files[0]).num_rows == first - 1
    report = validate_parquet_file(files[0], ExpectedFile(dataset="aggTrades"))
    assert report.chain_gaps.count == 0 and report.id_gaps.count == 0
    assert lake_files(tmp_path, "um", "BTCUSDT", TRADES.id) == []


@pytest.mark.slow
def test_flow_brings_trades_agg_trades_and_klines_up_to_date(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    """One run of the flow with three datasets: each lands in its own lake, validated; a re-run is all cached."""
    from flows.full_pipeline import full_pipeline
    from flows.runtime import dask_runner
    from tasks.report import PipelineReport, RunFailed
    from tasks.settings import Settings
    from tests.fake_archive.derived import publish_derived
    from tests.fake_archive.scenarios import make_spec, publish_trades

    fa = fake_archive
    published = {}
    next_id, next_agg = 1, 1
    for i in range(2):
        day = DAY + timedelta(days=i)
        spec = make_spec("um", "BTCUSDT", day.isoformat())
        trades = with_orders(generate_trades(4000, spec.start, spec.end, next_id, seed=i, market="um"), seed=i)
        publish_trades(fa, spec, trades)  # type: ignore[arg-type]
        for ds, (s, rows) in publish_derived(fa, "um", "BTCUSDT", day, trades, next_agg).items():  # type: ignore[misc]
            published.setdefault(ds, []).append((s, rows))
        next_id += 4000
        next_agg += published["aggTrades"][-1][1]

    def run() -> PipelineReport:
        settings = Settings(data_dir=tmp_path / "data", market="um", symbols=("BTCUSDT",), start=DAY,
                            end=DAY + timedelta(days=1), granularity="daily",
                            datasets=("trades", "aggTrades", "klines-1m"), base_url=fa.base_url,  # type: ignore[attr-defined]
                            listing_url=fa.listing_url, dask_address=dask_address, retries=1,  # type: ignore[attr-defined]
                            retry_base_delay=0.01, features=())
        state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
        result = state.result(raise_on_failure=False)
        report = result.report if isinstance(result, RunFailed) else result
        assert isinstance(report, PipelineReport), result
        assert state.is_completed(), report.summary()
        return report

    report = run()
    status = {o.archive: (o.status, o.where) for o in report.outcomes}
    for specs in published.values():
        for spec, _ in specs:
            assert status[spec.key] == ("ingested", "merged"), (spec.key, status)
    data = tmp_path / "data"
    for ds, specs in published.items():
        files = lake_files(data, "um", "BTCUSDT", ds)
        assert [f.name for f in files] == ["2024-01-01_2024-01-02.parquet"], ds
        assert pq.read_metadata(files[0]).num_rows == sum(rows for _, rows in specs)
        validate_parquet_file(files[0], ExpectedFile(dataset=ds))
    assert report.validation_errors == []
    # A gap report per dataset, and none finds a gap: the archives were complete.
    assert sorted((g.dataset, g.days_in_lake, g.problems) for g in report.gap_reports) == [
        ("aggTrades", 2, 0), ("klines-1m", 2, 0), ("trades", 2, 0)]
    assert (data / "lake" / "klines" / "interval=1m" / "market=um" / "symbol=BTCUSDT").is_dir()
    # The audit compared the three, day by day, and they agree (they were derived from the same trades).
    [audit] = report.audits
    assert audit.checked == {"aggTrades vs trades": 2, "klines-1m vs trades": 2} and audit.mismatches == []
    assert (data / "reports" / "audit" / "market=um" / "symbol=BTCUSDT.json").is_file()
    # Status: one row per dataset, trades first; the trades row carries the audit's verdict.
    from flows.status import lake_status, render

    rows = lake_status(data, today=DAY + timedelta(days=3))
    assert [(r.dataset, r.days, r.rows) for r in rows] == [
        ("trades", 2, 8000), ("aggTrades", 2, sum(n for _, n in published["aggTrades"])), ("klines-1m", 2, 2880)]
    assert "audit: no mismatch" in rows[0].gaps and rows[0].problems == 0
    assert render(rows, colour=False).splitlines()[0].startswith("dataset\tmarket\tsymbol")
    # Nothing new: every archive of every dataset is reported as already in the lake.
    again = run()
    assert {o.status for o in again.outcomes} == {"cached"}, again.summary()


def test_command_line_datasets_and_intervals(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from flows.cli import settings_from_args
    from tasks.settings import describe_settings_error

    base = ["--data-dir", str(tmp_path), "--symbols", "BTCUSDT", "--start", "2024-01-01", "--end", "2024-01-02"]
    assert settings_from_args(base).datasets == ("trades",)
    got = settings_from_args([*base, "--dataset", "trades", "klines", "aggTrades", "--interval", "1m", "1h"])
    assert got.datasets == ("trades", "klines-1m", "klines-1h", "aggTrades")
    assert settings_from_args([*base, "--dataset", "klines"]).datasets == ("klines-1m",)
    for bad, words in ((["--interval", "7m"], "kline interval must be one of"),
                       (["--market", "um", "--dataset", "klines", "--interval", "1s"], "1s are published for spot"),
                       (["--granularity", "daily", "--dataset", "klines", "--interval", "1w"], "monthly only")):
        with pytest.raises(ValidationError) as info:
            settings_from_args([*base, *bad])
        assert words in describe_settings_error(info.value)


@pytest.mark.slow
def test_sigkill_at_every_file_operation_of_an_agg_trades_merge(tmp_path: Path) -> None:
    """A real process killed at each rename/unlink/exchange of an aggTrades merge: readers see the old or
    the new files, and the next merge ends byte-identical to an uninterrupted one."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    def stage(data: Path) -> None:
        first = 1
        for i in range(2):
            day = DAY + timedelta(days=i)
            spec = ArchiveSpec("spot", "BTCUSDT", "daily", day, "aggTrades")
            agg = aggregate(_trades(spec, n=3000, first_id=1 + 3000 * i, seed=i), first_agg_id=first)
            first += len(agg)
            zip_path = write_zip(tmp_path / "zips" / f"{i}.zip", spec.csv_name, render_agg_csv(agg, "spot", day))
            convert_archive(zip_path, spec, f"{i}" * 64, spec.staging_file(data), OPTS)

    def files(data: Path) -> dict[str, str]:
        root = data / "lake" / "aggTrades"
        return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(data).parts)} if root.is_dir() else {}

    def driver(data: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO), KILL_AT=str(kill_at), KILL_DATASET="aggTrades")
        return subprocess.run([sys.executable, "-m", "tests.kill_driver", "merge", str(data), str(1 << 30)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    template = tmp_path / "template"
    stage(template)
    clean = tmp_path / "clean"
    shutil.copytree(template, clean)
    done = driver(clean, 0)
    assert done.returncode == 0, done.stderr
    operations = json.loads(done.stdout.strip().splitlines()[-1])["operations"]
    expected = files(clean)
    assert len(expected) == 1 and operations >= 3
    for n in range(1, operations + 1):
        data = tmp_path / f"kill{n}"
        shutil.copytree(template, data)
        killed = driver(data, n)
        assert killed.returncode == -9, (n, killed.stderr[-500:])
        assert files(data) in ({}, expected), n  # the old set (nothing yet) or the new one, never a mix
        again = driver(data, 0)
        assert again.returncode == 0, (n, again.stderr[-500:])
        assert files(data) == expected, n
        assert not list((data / "staging").rglob("*.parquet")), n


def test_kline_gaps_read_as_times_and_intervals_in_the_summary(tmp_path: Path) -> None:
    """A day of 1m klines with 3 minutes left out: validate reports one gap of 3 intervals, as times."""
    from tasks.lake.ingest import validate_symbol
    from tasks.report import GapNote, PipelineReport

    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "klines-1m")
    trades = _trades(ArchiveSpec("um", "BTCUSDT", "daily", DAY), n=3000)
    k = klines_of(trades, int(spec.start.timestamp()) * 1_000_000, int(spec.end.timestamp()) * 1_000_000)
    lines = render_klines_csv(k, "um", DAY).splitlines(keepends=True)
    body = b"".join(lines[:101] + lines[104:])
    convert_archive(write_zip(tmp_path / "k.zip", spec.csv_name, body), spec, "f" * 64, spec.staging_file(tmp_path),
                    OPTS)
    compact_symbol(tmp_path, "um", "BTCUSDT", 1 << 30, OPTS, consolidate=False, dataset_id="klines-1m")
    result = validate_symbol(tmp_path, "um", "BTCUSDT", DAY, DAY, dataset_id="klines-1m")
    assert result.errors == () and result.dataset == "klines-1m"
    [gap] = result.gaps
    assert gap.missing_ids == 3
    report = PipelineReport(validated_files=1, gaps=[GapNote("um", "BTCUSDT", f"klines-1m {gap.where}", gap.after_id,
                                                             gap.before_id, gap.missing_ids, "klines-1m")])
    assert ("klines 2024-01-01T01:39:00+00:00 -> 2024-01-01T01:43:00+00:00 (3 intervals missing)"
            in report.summary())


def test_gap_report_of_agg_trades_and_klines(tmp_path: Path) -> None:
    """Days 1..4 asked; day 3 not published. aggTrades: one id missing inside day 2, and ids missing between
    day 2 and day 4. 1m klines: 3 minutes missing inside day 1, the first 10 minutes of day 2 missing."""
    from flows.artifacts import gap_findings, gap_overview_rows
    from flows.status import lake_status
    from flows.status_json import gap_details
    from tasks.lake.gaps import gap_report, report_path, write_gap_report
    from tasks.report import PipelineReport

    next_agg = 1
    dropped = 0
    for i in (0, 1, 3):
        day = DAY + timedelta(days=i)
        trades_spec = ArchiveSpec("um", "BTCUSDT", "daily", day)
        trades = _trades(trades_spec, n=2000, first_id=1 + 2000 * i, seed=i)
        agg = aggregate(trades, first_agg_id=next_agg)
        next_agg += len(agg) + (50 if i == 1 else 0)  # 50 aggTrade ids unpublished after day 2 (then day 3 absent)
        if i == 1:
            dropped = int(agg.agg_id[30])
            agg = agg.take(np.flatnonzero(agg.agg_id != dropped))
        spec = ArchiveSpec("um", "BTCUSDT", "daily", day, "aggTrades")
        convert_archive(write_zip(tmp_path / f"a{i}.zip", spec.csv_name, render_agg_csv(agg, "um", day)), spec,
                        "f" * 64, spec.staging_file(tmp_path), OPTS)
        if i < 2:
            kspec = ArchiveSpec("um", "BTCUSDT", "daily", day, "klines-1m")
            start = int(kspec.start.timestamp()) * 1_000_000
            k = klines_of(trades, start, start + 86_400_000_000)
            lines = render_klines_csv(k, "um", day).splitlines(keepends=True)
            body = b"".join(lines[:101] + lines[104:]) if i == 0 else b"".join(lines[:1] + lines[11:])
            convert_archive(write_zip(tmp_path / f"k{i}.zip", kspec.csv_name, body), kspec, "f" * 64,
                            kspec.staging_file(tmp_path), OPTS)
    for ds in ("aggTrades", "klines-1m"):
        compact_symbol(tmp_path, "um", "BTCUSDT", 1 << 30, OPTS, consolidate=True, dataset_id=ds)
    end = DAY + timedelta(days=3)
    unpublished = {DAY + timedelta(days=2)}

    agg_report = gap_report(tmp_path, "um", "BTCUSDT", DAY, end, unpublished, 3600.0, dataset_id="aggTrades")
    assert (agg_report.dataset, agg_report.days_in_lake, agg_report.not_published) == ("aggTrades", 3, [*unpublished])
    assert agg_report.id_gaps_inside == [{"day": "2024-01-02", "gaps": 1, "missing_ids": 1}]
    [between] = agg_report.id_gaps_between
    assert (between["after"], between["before"], between["missing_ids"]) == ("2024-01-02", "2024-01-04", 50)
    assert agg_report.truncated == [] and agg_report.not_in_lake == []
    assert "  gaps inside days: 1 days, 1 aggTrade ids missing" in agg_report.summary_lines()

    k_report = gap_report(tmp_path, "um", "BTCUSDT", DAY, end, unpublished, 3600.0, dataset_id="klines-1m")
    assert k_report.id_gaps_inside == [{"day": "2024-01-01", "gaps": 1, "missing_ids": 3},
                                       {"day": "2024-01-02", "gaps": 1, "missing_ids": 10}]
    assert k_report.id_gaps_between == [] and k_report.not_in_lake == [DAY + timedelta(days=3)]
    assert dict(gap_findings(k_report))["2024-01-02"] == "10 intervals missing inside the day (1 gap)"
    [row] = gap_overview_rows(PipelineReport(gap_reports=[k_report]))
    assert row[0] == "um/BTCUSDT klines-1m" and "2 kline gaps (13 intervals)" in str(row[3])

    # Each dataset's report has its own file; status and its JSON read it.
    for r in (agg_report, k_report):
        write_gap_report(tmp_path, r)
    assert report_path(tmp_path, "um", "BTCUSDT", "klines-1m") == (
        tmp_path / "reports/gaps/klines/interval=1m/market=um/symbol=BTCUSDT.json")
    assert not report_path(tmp_path, "um", "BTCUSDT").exists()  # trades': none was written
    rows = {r.dataset: r for r in lake_status(tmp_path, today=end)}
    assert rows["aggTrades"].gaps.startswith("1 unpublished, 1 id gaps between days, 1 days with id gaps")
    details = gap_details(tmp_path, "um", "BTCUSDT", "klines-1m")
    assert details["unit"] == "intervals" and details["totals"]["missing_ids"] == 13


def _body(dataset_id: str, day: date, first_id: int, first_agg: int, seed: int) -> tuple[bytes, int]:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", day, dataset_id)
    trades = _trades(ArchiveSpec("um", "BTCUSDT", "daily", day), n=1500, first_id=first_id, seed=seed)
    if dataset_id == "aggTrades":
        agg = aggregate(trades, first_agg)
        return render_agg_csv(agg, "um", day), len(agg)
    start = int(spec.start.timestamp()) * 1_000_000
    k = klines_of(trades, start, start + 86_400_000_000)
    return render_klines_csv(k, "um", day), len(k)


@pytest.mark.slow
@pytest.mark.parametrize("dataset_id", ["aggTrades", "klines-1m"])
def test_bad_archives_of_a_dataset_are_refused_by_name_and_change_nothing(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str, dataset_id: str
) -> None:
    """The ingest guarantees, for another dataset: corrupt, invalid and mis-checksummed archives refused by
    name and quarantined, a 503 retried, a 404 a missing day; a re-run fails no more and changes nothing."""
    from tests.fake_archive.generate import corrupt_zip
    from tests.test_flow_e2e import lake_digest, run, statuses

    fa: Any = fake_archive
    days = [DAY + timedelta(days=i) for i in range(6)]
    specs = [ArchiveSpec("um", "BTCUSDT", "daily", d, dataset_id) for d in days]
    good, rows = _body(dataset_id, days[0], 1, 1, 0)
    fa.publish(specs[0], good)
    fa.publish_zip(specs[1], corrupt_zip(_body(dataset_id, days[1], 1501, 5000, 1)[0], specs[1].csv_name,
                                         mode="garbage"))
    fa.publish(specs[2], b"1,2.0,3.0\n2,2.0,3.0\n")  # wrong column count
    fa.publish(specs[3], _body(dataset_id, days[3], 4501, 15000, 3)[0],
               checksum_override="ab" * 32)  # the .CHECKSUM names another sha256
    later, later_rows = _body(dataset_id, days[4], 6001, 20000, 4)
    fa.publish(specs[4], later)
    fa.inject(specs[4].key, "503", times=2)
    fa.publish(specs[5], _body(dataset_id, days[5], 7501, 25000, 5)[0])
    fa.inject(specs[5].key, "404")  # listed and checksummed, but the archive answers 404
    data = tmp_path / "data"
    kw: dict[str, Any] = {"market": "um", "symbols": ("BTCUSDT",), "start": days[0], "end": days[-1],
                          "granularity": "daily", "datasets": (dataset_id,), "features": ()}

    state, report = run(fa, data, dask_address, **kw)
    assert state.is_failed()
    st = statuses(report)
    assert [st[s.key] for s in specs] == ["ingested", "refused", "refused", "refused", "ingested", "missing"]
    reasons = {o.archive: o.detail for o in report.outcomes}
    assert "corrupt archive" in reasons[specs[1].key] and specs[1].file_name in reasons[specs[1].key]
    assert specs[2].file_name in reasons[specs[2].key] and "column" in reasons[specs[2].key]
    assert "checksum mismatch" in reasons[specs[3].key]
    assert fa.count(specs[4].key) == 3
    [lake] = lake_files(data, "um", "BTCUSDT", dataset_id)
    assert pq.read_metadata(lake).num_rows == rows + later_rows
    # Refused after their checksum matched: the reason is recorded; a mismatching download itself is kept aside.
    q = data / "quarantine"
    assert all(q.joinpath(s.key + ".reason.json").is_file() for s in specs[1:3]) and q.joinpath(specs[3].key).is_file()
    [gaps] = report.gap_reports
    assert gaps.dataset == dataset_id and [r["day"] for r in gaps.refused] == [str(d) for d in days[1:4]]
    assert gaps.not_published == [days[5]]
    assert not [p for p in data.rglob("*") if ".tmp-" in p.name]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(data)] == []

    # Again: the same refusals are known (the run completes), and the lake is byte-identical.
    before = lake_digest(data)
    fa.clear_faults()
    state, report = run(fa, data, dask_address, **{**kw, "end": days[4]})
    assert state.is_completed(), state.message
    assert {o.archive for o in report.known_refusals} == {s.key for s in specs[1:4]}
    assert lake_digest(data) == before
