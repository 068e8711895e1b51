"""The universe: every symbol's first and last published day, from the listing, kept in the lake.

A real fake archive (aiohttp on loopback, the bucket's listing XML with pagination) publishes
a symbol delisted mid-range, one listed late, a delivery contract that settled, and a monthly
archive older than the dailies. Each test states what the table, the read API and
`flows.status --universe` must make of them.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.errors import LakeReadError
from tasks.lake import universe
from tasks.lake.universe_table import read_universe, span_of, universe_path, write_universe
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.http import HttpOptions
from tasks.source.universe_scan import refresh_universe
from tests.conftest import REPO
from tests.fake_archive import FakeArchive

HTTP = HttpOptions(retries=1, retry_base_delay=0.01)
TODAY = date(2023, 6, 10)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def publish_life(fa: FakeArchive, market: str, symbol: str, days: list[date], months: list[date] = (),
                 dataset: str = "trades") -> None:
    """Archives of `symbol` on those days and months (their content does not matter to the universe)."""
    for d in days:
        fa.publish(ArchiveSpec(market, symbol, "daily", d, dataset), b"1,1.0,1.0,1.0,0,true\n")
    for m in months:
        fa.publish(ArchiveSpec(market, symbol, "monthly", m, dataset), b"1,1.0,1.0,1.0,0,true\n")


@pytest.fixture
def archive(fake_archive: FakeArchive) -> FakeArchive:
    fa = fake_archive
    publish_life(fa, "um", "BTCUSDT", _days(date(2023, 5, 1), date(2023, 6, 9)), [date(2023, 4, 1)])
    publish_life(fa, "um", "ETHUSDT", _days(date(2023, 5, 25), date(2023, 5, 31)))  # delisted on the 31st
    publish_life(fa, "um", "XRPUSDT", _days(date(2023, 6, 2), date(2023, 6, 9)))  # listed on the 2nd
    publish_life(fa, "um", "BTCUSDT_230630", _days(date(2023, 5, 20), date(2023, 6, 3)))  # settled
    return fa


def test_spans_come_from_daily_archives_to_the_day_and_monthly_ones_to_the_month() -> None:
    span = span_of("X", {date(2023, 5, 3), date(2023, 5, 9)}, {date(2023, 4, 1)})
    assert span is not None
    assert (span.first_day, span.first_precision, span.last_day, span.last_precision) == (
        date(2023, 4, 1), "month", date(2023, 5, 9), "day")
    monthly_only = span_of("X", set(), {date(2023, 1, 1), date(2023, 2, 1)})
    assert monthly_only is not None and (monthly_only.first_day, monthly_only.last_day, monthly_only.last_precision) \
        == (date(2023, 1, 1), date(2023, 2, 28), "month")
    assert span_of("X", set(), set()) is None


def test_the_universe_of_a_day_before_during_and_after_a_symbols_life(tmp_path: Path, archive: FakeArchive) -> None:
    fa = archive
    fa.page_size = 7  # the listings paginate: a symbol folder needs several pages
    scan = refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=TODAY)
    assert scan.errors == {} and scan.listed == 4
    held = read_universe(tmp_path, "um", "trades")
    assert held is not None
    btc = held.spans["BTCUSDT"]
    assert (btc.first_day, btc.first_precision, btc.last_day) == (date(2023, 4, 1), "month", date(2023, 6, 9))
    assert universe(tmp_path, "um", "2023-05-10") == ["BTCUSDT"]  # before ETHUSDT, XRPUSDT and the contract
    assert universe(tmp_path, "um", "2023-05-28") == ["BTCUSDT", "BTCUSDT_230630", "ETHUSDT"]
    assert universe(tmp_path, "um", date(2023, 6, 2)) == ["BTCUSDT", "BTCUSDT_230630", "XRPUSDT"]
    assert universe(tmp_path, "um", "2023-06-05") == ["BTCUSDT", "XRPUSDT"]  # the contract settled on the 3rd
    assert universe(tmp_path, "um", "2023-06-10") == []  # nothing published for that day (yet)
    assert universe(tmp_path, "um", "2023-03-31") == []
    with pytest.raises(LakeReadError, match="no universe table"):
        universe(tmp_path, "cm", "2023-06-01")
    with pytest.raises(LakeReadError, match="expected a day"):
        universe(tmp_path, "um", "2023-6-1")


def test_a_refresh_lists_only_after_the_last_known_archive_and_keeps_delisted_symbols(
    tmp_path: Path, archive: FakeArchive
) -> None:
    fa = archive
    refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=TODAY)
    before = len(fa.requests)
    publish_life(fa, "um", "BTCUSDT", [date(2023, 6, 10)])
    publish_life(fa, "um", "SOLUSDT", [date(2023, 6, 10)])
    fa.remove(ArchiveSpec("um", "ETHUSDT", "daily", date(2023, 5, 25)).key)  # a symbol's archives thinned
    scan = refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 6, 11))
    held = read_universe(tmp_path, "um", "trades")
    assert held is not None
    assert held.spans["BTCUSDT"].last_day == date(2023, 6, 10)
    assert held.spans["SOLUSDT"].first_day == date(2023, 6, 10)
    assert held.spans["ETHUSDT"].first_day == date(2023, 5, 25)  # the known first day is not forgotten
    # Known symbols were listed after their last archive: one page per folder, no re-listing of history.
    btc = [r.path_qs for r in fa.requests[before:] if "/daily/trades/BTCUSDT/" in r.path_qs]
    assert btc == ["/listing?delimiter=/&prefix=data/futures/um/daily/trades/BTCUSDT/"
                   "&marker=data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2023-06-09.zip.CHECKSUM"]
    assert scan.listed == 5
    # Once last month's archive is known, the monthly folder is not listed again this month.
    publish_life(fa, "um", "BTCUSDT", [], [date(2023, 5, 1)])
    refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 6, 11))
    before = len(fa.requests)
    refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 6, 12))
    assert not [r for r in fa.requests[before:] if "/monthly/trades/BTCUSDT/" in r.path_qs]
    assert [r for r in fa.requests[before:] if "/daily/trades/BTCUSDT/" in r.path_qs]
    # A month later ETHUSDT is stale: left alone, yet still in the table.
    later = refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 7, 20))
    assert "ETHUSDT" in later.spans and later.kept >= 1
    full = refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 7, 20), full=True)
    assert full.kept == 0 and full.spans["ETHUSDT"].first_day == date(2023, 5, 26)  # full: as listed now


def test_a_folder_that_cannot_be_listed_keeps_its_span_and_a_dead_listing_writes_nothing(
    tmp_path: Path, archive: FakeArchive
) -> None:
    fa = archive
    refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=TODAY)
    path = universe_path(tmp_path, "um", "trades")
    fa.inject("listing:data/futures/um/daily/trades/XRPUSDT/", "503", times=10)
    publish_life(fa, "um", "XRPUSDT", [date(2023, 6, 10)])
    scan = refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 6, 11))
    assert list(scan.errors) == ["XRPUSDT"] and "503" in scan.errors["XRPUSDT"]
    assert scan.spans["XRPUSDT"].last_day == date(2023, 6, 9)
    fa.clear_faults()
    fa.inject("listing:data/futures/um/daily/trades/", "503", times=10)
    written = path.read_bytes()
    with pytest.raises(Exception, match="503"):
        refresh_universe(tmp_path, "um", "trades", fa.listing_url, HTTP, today=date(2023, 6, 12))
    assert path.read_bytes() == written  # the table held is untouched


def test_a_damaged_table_is_refused_by_name(tmp_path: Path) -> None:
    path = write_universe(tmp_path, "um", "trades", {}, "http://x")
    assert pq.read_metadata(path).num_rows == 0
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(LakeReadError, match=str(path)):
        universe(tmp_path, "um", "2023-06-01")


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.status", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_status_refreshes_and_lists_the_universe_of_a_day(tmp_path: Path, archive: FakeArchive) -> None:
    fa = archive
    data = tmp_path / "data"
    data.mkdir()
    missing = status("--data-dir", str(data), "--universe", "--market", "um")
    assert missing.returncode == 2 and "no universe table for um trades" in missing.stderr
    done = status("--data-dir", str(data), "--universe", "--market", "um", "--refresh", "--listing-url",
                  fa.listing_url, "--date", "2023-05-28")
    assert done.returncode == 0, done.stderr
    assert "um trades: 4 symbol folders listed" in done.stderr
    lines = done.stdout.splitlines()
    assert "um trades: 4 symbols" in lines[0] and "published up to 2023-06-09" in lines[0]
    assert lines[1] == "3 of 4 symbols trading on 2023-05-28:"
    assert lines[3:] == ["BTCUSDT\t2023-04-01 (month)\t2023-06-09", "BTCUSDT_230630\t2023-05-20\t2023-06-03",
                         "ETHUSDT\t2023-05-25\t2023-05-31"]
    typo = status("--data-dir", str(data), "--universe", "--date", "2023-02-30")
    assert typo.returncode == 2 and "argument --date: '2023-02-30' is not a day of the calendar" in typo.stderr
    assert status("--data-dir", str(data), "--date", "2023-06-01").returncode == 2  # --date needs --universe
    wrong = status("--data-dir", str(data), "--universe", "--market", "spot", "--dataset", "metrics", "--refresh")
    assert wrong.returncode == 2 and "metrics is published for um and cm only" in wrong.stderr
    plain = status("--data-dir", str(data), "--plain")
    assert "universe um trades: 4 symbols" in plain.stdout


def test_a_monthly_only_symbol_is_not_taken_as_delisted_while_its_next_month_is_not_due(
    tmp_path: Path, fake_archive: FakeArchive
) -> None:
    fa = fake_archive
    publish_life(fa, "um", "BTCUSDT", [], [date(2023, 10, 1)], dataset="fundingRate")
    refresh_universe(tmp_path, "um", "fundingRate", fa.listing_url, HTTP, today=date(2023, 11, 3))
    publish_life(fa, "um", "BTCUSDT", [], [date(2023, 11, 1)], dataset="fundingRate")  # out on Dec 14th
    scan = refresh_universe(tmp_path, "um", "fundingRate", fa.listing_url, HTTP, today=date(2023, 12, 14))
    assert scan.kept == 0 and scan.spans["BTCUSDT"].last_day == date(2023, 11, 30)
    assert scan.spans["BTCUSDT"].last_precision == "month" and scan.spans["BTCUSDT"].first_precision == "month"


def _silent_server() -> tuple[socket.socket, str]:
    """A listener that accepts and never answers: a listing that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server, f"http://127.0.0.1:{server.getsockname()[1]}/listing"


@pytest.mark.parametrize("command", [["flows.status", "--universe", "--market", "um", "--refresh"],
                                     ["flows.catalog", "--market", "um"]], ids=["universe", "catalog"])
def test_ctrl_c_while_the_listing_hangs_is_one_line_and_130_and_the_table_stays(
    tmp_path: Path, command: list[str]
) -> None:
    path = write_universe(tmp_path, "um", "trades", {}, "http://x")
    before = path.read_bytes()
    server, url = _silent_server()
    try:
        data_dir = ["--data-dir", str(tmp_path)] if command[0] == "flows.status" else []
        proc = subprocess.Popen([sys.executable, "-m", *command, *data_dir, "--listing-url", url], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "listing" not in _peek(server):
            time.sleep(0.05)  # wait until the listing request is in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        server.close()
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) <= 2 and err.strip().splitlines()[-1].startswith("interrupted: "), err
    assert "Traceback" not in err and path.read_bytes() == before


def _peek(server: socket.socket) -> str:
    """`listing` once a client connected (the request is then in flight), else ''."""
    server.settimeout(0.05)
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return ""
    _CONNECTIONS.append(conn)  # held open, never answered
    return "listing"


_CONNECTIONS: list[socket.socket] = []
