from datetime import date
from pathlib import Path

import pytest

from tasks.errors import UnsafePath
from tasks.source.archive_spec import ArchiveSpec, check_symbol, parse_archive_name

BASE = "https://data.binance.vision"


def test_daily_spot_url() -> None:
    spec = ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1))
    assert spec.url(BASE) == "https://data.binance.vision/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip"
    assert spec.checksum_url(BASE + "/") == spec.url(BASE) + ".CHECKSUM"
    assert spec.csv_name == "BTCUSDT-trades-2024-01-01.csv"


def test_monthly_futures_urls() -> None:
    um = ArchiveSpec("um", "BTCUSDT", "monthly", date(2024, 2, 1))
    assert um.url(BASE) == "https://data.binance.vision/data/futures/um/monthly/trades/BTCUSDT/BTCUSDT-trades-2024-02.zip"
    cm = ArchiveSpec("cm", "BTCUSD_PERP", "daily", date(2024, 1, 2))
    assert cm.key == "data/futures/cm/daily/trades/BTCUSD_PERP/BTCUSD_PERP-trades-2024-01-02.zip"
    assert (um.first_day, um.last_day) == (date(2024, 2, 1), date(2024, 2, 29))  # leap year
    assert len(um.days()) == 29


def test_local_paths_stay_under_data_dir() -> None:
    spec = ArchiveSpec("um", "BTCUSDT", "monthly", date(2024, 2, 1))
    root = Path("/d")
    assert spec.lake_file(root) == Path("/d/lake/trades/market=um/symbol=BTCUSDT/2024-02-01_2024-02-29.parquet")
    assert spec.local_zip(root) == Path("/d/archive/data/futures/um/monthly/trades/BTCUSDT/BTCUSDT-trades-2024-02.zip")
    assert spec.quarantine_zip(root).is_relative_to(root / "quarantine")


@pytest.mark.parametrize("bad", ["../etc", "btcusdt", "BTC/USDT", "", "BTC USDT", "A" * 41, "BTC..USDT"])
def test_symbol_outside_alphabet_is_refused(bad: str) -> None:
    with pytest.raises(UnsafePath, match="symbol"):
        check_symbol(bad)
    with pytest.raises(UnsafePath):
        ArchiveSpec("spot", bad, "daily", date(2024, 1, 1))


def test_parse_archive_names() -> None:
    assert parse_archive_name("spot", "daily", "BTCUSDT-trades-2024-01-31.zip") == ArchiveSpec(
        "spot", "BTCUSDT", "daily", date(2024, 1, 31)
    )
    assert parse_archive_name("um", "monthly", "BTCUSDT-trades-2024-02.zip") == ArchiveSpec(
        "um", "BTCUSDT", "monthly", date(2024, 2, 1)
    )
    assert parse_archive_name("spot", "daily", "BTCUSDT-trades-2024-02-30.zip") is None
    assert parse_archive_name("spot", "daily", "BTCUSDT-aggTrades-2024-01-01.zip") is None
    assert parse_archive_name("spot", "monthly", "BTCUSDT-trades-2024-01-01.zip") is None


@pytest.mark.parametrize("bad", ["BTCUSDT\n", "BTCUSDT\r\n", "\nBTCUSDT", "BTCUSDT\x00", "BTCUSDT ", "ＢＴＣ", "BTC٠"])
def test_symbol_with_a_trailing_newline_or_odd_character_is_refused(bad: str) -> None:
    # `$` matched before a trailing newline and created `symbol=BTCUSDT\n` folders.
    with pytest.raises(UnsafePath, match="symbol"):
        check_symbol(bad)
    with pytest.raises(UnsafePath):
        ArchiveSpec("spot", bad, "daily", date(2024, 1, 1)).lake_dir(Path("/d"))


def test_symbol_of_forty_characters_is_the_longest() -> None:
    assert check_symbol("A" * 40) == "A" * 40
    assert parse_archive_name("spot", "daily", "A" * 41 + "-trades-2024-01-01.zip") is None


@pytest.mark.parametrize(
    ("granularity", "name"),
    [
        ("daily", "BTCUSDT-trades-2024-01-01.zip\n"),
        ("daily", "BTCUSDT\n-trades-2024-01-01.zip"),
        ("daily", "BTCUSDT-trades-２０２４-01-01.zip"),  # fullwidth digits: \d would take them as 2024
        ("daily", "BTCUSDT-trades-2024-01-0١.zip"),  # an Arabic-Indic digit
        ("monthly", "BTCUSDT-trades-2024-01.zip\n"),
        ("monthly", "BTCUSDT-trades-2024-01.zip.CHECKSUM"),
    ],
)
def test_archive_names_are_matched_whole_and_in_ascii(granularity: str, name: str) -> None:
    assert parse_archive_name("spot", granularity, name) is None  # type: ignore[arg-type]
