"""bookTicker (USD-M and COIN-M best bid and ask, daily) and the end of its publication.

Binance stopped publishing it (USD-M after 2024-03-31, COIN-M after 2024-10-15: #334, #372,
#380). The days after that end are a known fact: neither planned nor reported missing.
The archives are generated in the published dialect (`tests.fake_archive.book_ticker`).
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
from tasks.datasets import BOOK_TICKER
from tasks.errors import InvalidData
from tasks.lake.inventory import lake_files
from tasks.lake.validate import ExpectedFile, validate_parquet_file
from tasks.settings import ConvertOptions, Settings
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.plan import plan_symbol
from tasks.source.run_plan import RunPlan, SymbolPlan
from tests.fake_archive.book_ticker import day_of_book_ticker, render_book_ticker_csv
from tests.fake_archive.generate import write_zip

OPTS = ConvertOptions(row_group_rows=1_000)
DAY = date(2024, 3, 30)


def test_paths_markets_and_the_known_end(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookTicker")
    assert spec.key == "data/futures/um/daily/bookTicker/BTCUSDT/BTCUSDT-bookTicker-2024-03-30.zip"
    with pytest.raises(ValidationError, match="bookTicker is published for um and cm only, not spot"):
        Settings(data_dir=tmp_path, symbols=("BTCUSDT",), start="2024-01-01", end="2024-01-02", market="spot",
                 datasets=("bookTicker",))
    published = {date(2024, 3, d) for d in range(28, 32)}
    plan = plan_symbol("um", "BTCUSDT", date(2024, 3, 29), date(2024, 4, 3), "daily", published, set(), {},
                       "bookTicker")
    assert [s.period for s in plan.archives] == [date(2024, 3, d) for d in (29, 30, 31)]
    assert plan.missing == [] and plan.ended == (date(2024, 3, 31), 3)
    after = plan_symbol("um", "BTCUSDT", date(2024, 5, 1), date(2024, 5, 2), "daily", published, set(), {},
                        "bookTicker")
    assert after.archives == [] and after.missing == [] and after.ended == (date(2024, 3, 31), 2)
    cm = plan_symbol("cm", "BTCUSD_PERP", date(2024, 3, 29), date(2024, 4, 1), "daily", set(), set(), {},
                     "bookTicker")
    assert cm.ended is None and len(cm.missing) == 4  # COIN-M still published then: these days are missing
    rp = RunPlan("um", date(2024, 3, 29), date(2024, 4, 3), "daily", True,
                 [SymbolPlan("BTCUSDT", archives=plan.archives, ended=plan.ended)], dataset="bookTicker")
    assert ("  BTCUSDT: publication of bookTicker for um ended 2024-03-31 (binance-public-data#334, #372, #380): "
            "3 days after it not asked for") in rp.render().splitlines()


def test_a_day_converts_with_event_times_past_midnight_and_a_bad_row_is_refused(tmp_path: Path) -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookTicker")
    b = day_of_book_ticker(DAY, seed=1)
    lines = render_book_ticker_csv(b).splitlines(keepends=True)
    shuffled = [lines[0], *np.random.default_rng(0).permutation(lines[1:]).tolist()]  # any order: sorted by id
    result = convert_archive(write_zip(tmp_path / spec.file_name, spec.csv_name, b"".join(shuffled)), spec,
                             "f" * 64, spec.staging_file(tmp_path), OPTS)
    assert result.rows == len(b)
    table = pq.read_table(result.path)
    assert table.schema == BOOK_TICKER.schema.with_metadata(table.schema.metadata)
    assert table.column("update_id").to_pylist() == b.update_id.tolist()
    assert np.array_equal(table.column("best_ask_price").to_numpy(), b.ask_cents / 100)
    assert table.column("event_time").to_pylist()[-1] == datetime(2024, 3, 31, 0, 0, 0, 3000, tzinfo=UTC)
    assert validate_parquet_file(result.path, ExpectedFile(dataset="bookTicker")).rows == len(b)
    fields = lines[1].decode().rstrip("\n").split(",")
    cases = (
        (",".join([*fields[:5], "1711670400000", fields[6]]), "transaction_time outside the archive's period"),
        (",".join([fields[0], "0.00", *fields[2:]]), "best_bid_price not a positive finite number"),
        (",".join([*fields[:2], "-1.000", *fields[3:]]), "best_bid_qty negative"),
    )
    for bad, says in cases:
        other = tmp_path / str(abs(hash(says)))
        with pytest.raises(InvalidData, match=says) as refused:
            convert_archive(write_zip(other / spec.file_name, spec.csv_name,
                                      b"".join([lines[0], (bad + "\n").encode(), *lines[2:]])),
                            spec, "f" * 64, spec.staging_file(other), OPTS)
        assert spec.file_name in str(refused.value)


@pytest.mark.slow
def test_flow_lands_the_last_days_and_reports_the_end_not_missing_days(
    tmp_path: Path, fake_archive: object, dask_address: str, prefect_api: str
) -> None:
    from flows.status import lake_status
    from tests.test_flow_e2e import run, statuses

    fa: Any = fake_archive
    days = [date(2024, 3, 30), date(2024, 3, 31)]
    specs = [ArchiveSpec("um", "BTCUSDT", "daily", d, "bookTicker") for d in days]
    first = 4_000_000_000_000
    for i, (d, s) in enumerate(zip(days, specs, strict=True)):
        b = day_of_book_ticker(d, seed=i, first_id=first)
        first = int(b.update_id[-1])
        fa.publish(s, render_book_ticker_csv(b))
    data = tmp_path / "data"
    state, report = run(fa, data, dask_address, market="um", symbols=("BTCUSDT",), start=days[0],
                        end=date(2024, 4, 2), datasets=("bookTicker",), features=())
    assert state.is_completed(), report.summary()
    assert [statuses(report)[s.key] for s in specs] == ["ingested"] * 2
    assert report.missing == []
    assert any("publication of bookTicker for um ended 2024-03-31" in n and "2 days after it" in n
               for n in report.notes), report.notes
    [lake] = lake_files(data, "um", "BTCUSDT", "bookTicker")
    assert pq.read_metadata(lake).num_rows == 2 * 5_000
    [row] = lake_status(data, today=date(2024, 6, 1))
    assert (row.dataset, row.days, row.next_update) == ("bookTicker", 2, "up to date: publication ended 2024-03-31")
