"""Which archive is which: names, URLs and local paths, as tiny pure functions.

Real URLs look like
https://data.binance.vision/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip
https://data.binance.vision/data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01.zip
https://data.binance.vision/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks import dataset_ids as ids
from tasks.errors import UnsafePath

if TYPE_CHECKING:
    from tasks.datasets import Dataset

Market = Literal["spot", "um", "cm"]
Granularity = Literal["daily", "monthly"]

MARKETS: tuple[Market, ...] = ("spot", "um", "cm")
#: Path segment of each market in the archive.
MARKET_PATH: dict[str, str] = {"spot": "spot", "um": "futures/um", "cm": "futures/cm"}

# Names are matched whole with `fullmatch` (and the patterns end in `\Z`, not `$`): `$`
# also matches before a trailing newline, which let `BTCUSDT\n` through and created
# `symbol=BTCUSDT\n` folders. Digits are `[0-9]`, not `\d`, which matches any Unicode
# digit (`２０２４` would parse as 2024 and name another archive than the listed one).
SYMBOL_RE = re.compile(r"\A[A-Z0-9_]{1,40}\Z")
_DAILY_NAME = r"\A(?P<symbol>[A-Z0-9_]{{1,40}})-{tag}-(?P<y>[0-9]{{4}})-(?P<m>[0-9]{{2}})-(?P<d>[0-9]{{2}})\.zip\Z"
_MONTHLY_NAME = r"\A(?P<symbol>[A-Z0-9_]{{1,40}})-{tag}-(?P<y>[0-9]{{4}})-(?P<m>[0-9]{{2}})\.zip\Z"
_NAME_PATTERNS: dict[tuple[str, str], re.Pattern[str]] = {}


def _name_pattern(tag: str, granularity: str) -> re.Pattern[str]:
    pattern = _NAME_PATTERNS.get((tag, granularity))
    if pattern is None:
        text = _DAILY_NAME if granularity == "daily" else _MONTHLY_NAME
        pattern = _NAME_PATTERNS[(tag, granularity)] = re.compile(text.format(tag=re.escape(tag)))
    return pattern


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is a safe archive symbol (`[A-Z0-9_]{1,40}`, whole), else raise UnsafePath."""
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise UnsafePath(repr(symbol), "a symbol must match [A-Z0-9_]{1,40}")
    return symbol


def month_end(day: date) -> date:
    """Last day of `day`'s month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


#: The file beside a refused archive's quarantine path that says why it was refused.
QUARANTINE_NOTE_SUFFIX = ".reason.json"


@dataclass(frozen=True, order=True)
class ArchiveSpec:
    """One published archive: a (market, symbol) day or month of one dataset (`tasks.datasets`)."""

    market: Market
    symbol: str
    granularity: Granularity
    period: date  # the day, or the first day of the month
    dataset: str = "trades"  # a dataset id: trades, aggTrades, klines-1m

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        ids.parse_id(self.dataset)  # refuses an unknown dataset
        if self.granularity == "monthly" and self.period.day != 1:
            raise ValueError(f"monthly archive period must start on day 1, got {self.period}")

    @property
    def data(self) -> Dataset:
        """The dataset's declaration (`tasks.datasets`: schema, dialects, key)."""
        from tasks.datasets import dataset

        return dataset(self.dataset)

    @property
    def first_day(self) -> date:
        return self.period

    @property
    def last_day(self) -> date:
        return self.period if self.granularity == "daily" else month_end(self.period)

    def days(self) -> list[date]:
        """Every calendar day the archive covers."""
        n = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=i) for i in range(n)]

    @property
    def start(self) -> datetime:
        """Inclusive UTC start of the archive's period."""
        return datetime.combine(self.first_day, datetime.min.time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive UTC end of the archive's period."""
        return datetime.combine(self.last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)

    @property
    def label(self) -> str:
        """`2024-01-01` for a day, `2024-01` for a month."""
        return self.period.isoformat() if self.granularity == "daily" else self.period.strftime("%Y-%m")

    @property
    def file_name(self) -> str:
        """`BTCUSDT-trades-2024-01-01.zip`."""
        return f"{self.symbol}-{ids.file_tag(self.dataset)}-{self.label}.zip"

    @property
    def csv_name(self) -> str:
        """The CSV member Binance puts in the ZIP: `BTCUSDT-trades-2024-01-01.csv`."""
        return f"{self.symbol}-{ids.file_tag(self.dataset)}-{self.label}.csv"

    @property
    def folder_key(self) -> str:
        """`data/spot/daily/trades/BTCUSDT/`: the listing prefix of this symbol's archives."""
        return symbol_prefix(self.market, self.granularity, self.symbol, self.dataset)

    @property
    def key(self) -> str:
        """`data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip`."""
        return self.folder_key + self.file_name

    def url(self, base_url: str) -> str:
        """Full archive URL under `base_url` (https://data.binance.vision)."""
        return f"{base_url.rstrip('/')}/{self.key}"

    def checksum_url(self, base_url: str) -> str:
        """URL of the sibling `.zip.CHECKSUM` file."""
        return self.url(base_url) + ".CHECKSUM"

    def local_zip(self, data_dir: Path) -> Path:
        """Where the verified download lives: `<data_dir>/archive/<key>`."""
        return data_dir / "archive" / self.key

    def quarantine_zip(self, data_dir: Path) -> Path:
        """Where a refused archive is kept for inspection: `<data_dir>/quarantine/<key>`."""
        return data_dir / "quarantine" / self.key

    def quarantine_note(self, data_dir: Path) -> Path:
        """Why the archive was refused (a download or a merge): `<data_dir>/quarantine/<key>.reason.json`."""
        return data_dir / "quarantine" / (self.key + QUARANTINE_NOTE_SUFFIX)

    def lake_dir(self, data_dir: Path) -> Path:
        """`<data_dir>/lake/<dataset>/market=<m>/symbol=<S>`."""
        return lake_symbol_dir(data_dir, self.market, self.symbol, self.dataset)

    @property
    def range_file_name(self) -> str:
        """A Parquet file named by the archive's date range: `2024-01-01_2024-01-31.parquet`."""
        return range_file_name(self.first_day, self.last_day)

    def lake_file(self, data_dir: Path) -> Path:
        """Where this archive's rows land when it gets a lake file of its own."""
        return self.lake_dir(data_dir) / self.range_file_name

    def staging_file(self, data_dir: Path) -> Path:
        """The converted archive waiting to be merged into the lake (`<data_dir>/staging/<dataset>/...`)."""
        return staging_symbol_dir(data_dir, self.market, self.symbol, self.dataset) / self.range_file_name

    def __str__(self) -> str:
        return self.key


def symbol_prefix(market: str, granularity: str, symbol: str, dataset_id: str = "trades") -> str:
    """`data/futures/um/monthly/trades/BTCUSDT/`, `data/spot/daily/klines/BTCUSDT/1m/`."""
    return f"data/{MARKET_PATH[market]}/{granularity}/{ids.archive_folder(dataset_id, check_symbol(symbol))}"


def dataset_prefix(market: str, granularity: str, dataset_id: str = "trades") -> str:
    """`data/spot/daily/aggTrades/`: the listing prefix whose sub-folders are the dataset's symbols."""
    return f"data/{MARKET_PATH[market]}/{granularity}/{ids.listing_folder(dataset_id)}/"


def lake_symbol_dir(data_dir: Path, market: str, symbol: str, dataset_id: str = "trades") -> Path:
    """`<data_dir>/lake/trades/market=spot/symbol=BTCUSDT` (`lake/klines/interval=1m/...` for klines)."""
    return data_dir / "lake" / ids.lake_folder(dataset_id) / f"market={market}" / f"symbol={check_symbol(symbol)}"


def staging_symbol_dir(data_dir: Path, market: str, symbol: str, dataset_id: str = "trades") -> Path:
    """`<data_dir>/staging/trades/market=spot/symbol=BTCUSDT`: converted archives not yet merged."""
    return (data_dir / "staging" / ids.lake_folder(dataset_id) / f"market={market}"
            / f"symbol={check_symbol(symbol)}")


def range_file_name(first_day: date, last_day: date) -> str:
    """`2024-01-01_2024-01-31.parquet`: lake files are named by the days they cover."""
    return f"{first_day.isoformat()}_{last_day.isoformat()}.parquet"


def parse_archive_name(
    market: Market, granularity: Granularity, name: str, dataset_id: str = "trades"
) -> ArchiveSpec | None:
    """Parse `BTCUSDT-trades-2024-01-01.zip` (daily) or `...-2024-01.zip` (monthly); None if not one."""
    m = _name_pattern(ids.file_tag(dataset_id), granularity).fullmatch(name)
    if not m:
        return None
    try:
        day = date(int(m["y"]), int(m["m"]), int(m["d"]) if granularity == "daily" else 1)
    except ValueError:
        return None
    return ArchiveSpec(market, m["symbol"], granularity, day, dataset_id)
