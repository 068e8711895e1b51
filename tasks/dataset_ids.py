"""Dataset ids and the path pieces they give, without the schemas (no pyarrow: the CLIs check ids first).

An id is `trades`, `aggTrades`, `fundingRate`, `metrics`, `bookDepth`, `bookTicker`, or a kline family with its interval
(`klines-1m`, `indexPriceKlines-1h`, `markPriceKlines-1d`, `premiumIndexKlines-5m`); `tasks.datasets` holds
what each dataset is (schema, dialects, key, continuity). Which markets and granularities
publish a dataset is here too, so that a command is refused before any import.
"""

from __future__ import annotations

import functools
import re
from datetime import date
from typing import Literal

from tasks.errors import UnsafePath

#: Kline intervals and their length in µs; `1s` is published for spot only. `1mo` has no
#: fixed length (None): its rows are checked for order, not for spacing.
_MINUTE_US = 60_000_000
KLINE_INTERVALS: dict[str, int | None] = {
    "1s": 1_000_000,
    "1m": _MINUTE_US,
    "3m": 3 * _MINUTE_US,
    "5m": 5 * _MINUTE_US,
    "15m": 15 * _MINUTE_US,
    "30m": 30 * _MINUTE_US,
    "1h": 60 * _MINUTE_US,
    "2h": 120 * _MINUTE_US,
    "4h": 240 * _MINUTE_US,
    "6h": 360 * _MINUTE_US,
    "8h": 480 * _MINUTE_US,
    "12h": 720 * _MINUTE_US,
    "1d": 1440 * _MINUTE_US,
    "3d": 3 * 1440 * _MINUTE_US,
    "1w": 7 * 1440 * _MINUTE_US,
    "1mo": None,
}
#: Intervals whose rows do not fit in one day: published monthly only.
MONTHLY_ONLY_INTERVALS = frozenset({"3d", "1w", "1mo"})
#: Datasets kline-shaped and split by interval (one id per interval, `markPriceKlines-1h`).
#: The price klines (index, mark, premium index) are USD-M and COIN-M only, and have no 1s.
KLINE_FAMILY: tuple[str, ...] = ("klines", "indexPriceKlines", "markPriceKlines", "premiumIndexKlines")
PRICE_KLINES = frozenset(KLINE_FAMILY[1:])
#: The names `--dataset` accepts.
DATASET_NAMES: tuple[str, ...] = ("trades", "aggTrades", *KLINE_FAMILY, "fundingRate", "metrics", "bookDepth",
                                  "bookTicker")
#: Datasets without an interval: their id is their name.
_PLAIN_IDS = frozenset({"trades", "aggTrades", "fundingRate", "metrics", "bookDepth", "bookTicker"})
_FUTURES = ("um", "cm")
#: The markets that publish a dataset, where not all three do (docs/binance-archive.md).
MARKETS_OF: dict[str, tuple[str, ...]] = {"fundingRate": _FUTURES, "metrics": _FUTURES, "bookTicker": _FUTURES,
                                          "bookDepth": _FUTURES, "klines-1s": ("spot",)}
#: The last day a dataset was published for a market, where Binance stopped publishing it: a
#: known end, not missing days. bookTicker: USD-M after 2024-03-31, COIN-M after 2024-10-15
#: (binance-public-data#334, #372, #380).
PUBLICATION_ENDED: dict[tuple[str, str], date] = {
    ("bookTicker", "um"): date(2024, 3, 31),
    ("bookTicker", "cm"): date(2024, 10, 15),
}
#: Why, for the summary.
PUBLICATION_ENDED_WHY = {"bookTicker": "binance-public-data#334, #372, #380"}
#: Datasets published monthly only (besides the long kline intervals).
MONTHLY_ONLY_DATASETS = frozenset({"fundingRate"})
#: Datasets published in daily archives only.
DAILY_ONLY_DATASETS = frozenset({"metrics", "bookDepth"})
_INTERVAL_RE = re.compile(r"\A(1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1mo)\Z")
_KNOWN = ("trades, aggTrades, fundingRate, metrics, bookDepth, bookTicker, or klines, indexPriceKlines, "
          "markPriceKlines or premiumIndexKlines with -<interval>")


def all_dataset_ids() -> tuple[str, ...]:
    """Every dataset id, in the order status lists them: trades, aggTrades, each kline family by interval, the rest."""
    kline_ids = [f"{name}-{i}" for name in KLINE_FAMILY for i in KLINE_INTERVALS
                 if name == "klines" or i != "1s"]
    return ("trades", "aggTrades", *kline_ids, "fundingRate", "metrics", "bookDepth", "bookTicker")


def check_interval(interval: str) -> str:
    """`interval` if it is a published kline interval, else UnsafePath naming the allowed ones."""
    if not isinstance(interval, str) or not _INTERVAL_RE.fullmatch(interval):
        raise UnsafePath(repr(interval), f"a kline interval must be one of {', '.join(KLINE_INTERVALS)}")
    return interval


@functools.cache
def parse_id(dataset_id: str) -> tuple[str, str | None]:
    """(name, interval or None) of a dataset id; UnsafePath for anything but the ids above."""
    if dataset_id in _PLAIN_IDS:
        return dataset_id, None
    if isinstance(dataset_id, str) and "-" in dataset_id:
        name, _, interval = dataset_id.partition("-")
        if name in KLINE_FAMILY:
            if name in PRICE_KLINES and interval == "1s":
                raise UnsafePath(repr(dataset_id), f"{name} has no 1s interval (klines-1s is spot's)")
            return name, check_interval(interval)
    raise UnsafePath(repr(dataset_id), f"a dataset is {_KNOWN}")


def publication_end(dataset_id: str, market: str) -> date | None:
    """The last day the archive published the dataset for the market, if it stopped; None while it goes on."""
    return PUBLICATION_ENDED.get((dataset_id, market))


def markets_of(dataset_id: str) -> tuple[str, ...]:
    """The markets whose archive publishes the dataset."""
    if parse_id(dataset_id)[0] in PRICE_KLINES:
        return _FUTURES
    return MARKETS_OF.get(dataset_id, ("spot", "um", "cm"))


def monthly_only(dataset_id: str) -> bool:
    """True for a dataset published in monthly archives only (fundingRate, klines of 3d, 1w, 1mo)."""
    _, interval = parse_id(dataset_id)
    return dataset_id in MONTHLY_ONLY_DATASETS or interval in MONTHLY_ONLY_INTERVALS


def daily_only(dataset_id: str) -> bool:
    """True for a dataset published in daily archives only (metrics, bookDepth)."""
    return dataset_id in DAILY_ONLY_DATASETS


def granularities_of(dataset_id: str) -> tuple[Literal["daily", "monthly"], ...]:
    """The granularities the archive publishes the dataset in."""
    if monthly_only(dataset_id):
        return ("monthly",)
    if daily_only(dataset_id):
        return ("daily",)
    return ("daily", "monthly")


def archive_folder(dataset_id: str, symbol: str) -> str:
    """The folder under `data/<market>/<granularity>/`: `trades/BTCUSDT/`, `klines/BTCUSDT/1m/`."""
    name, interval = parse_id(dataset_id)
    return f"{name}/{symbol}/" if interval is None else f"{name}/{symbol}/{interval}/"


def file_tag(dataset_id: str) -> str:
    """The word between symbol and date in file names: `trades`, `aggTrades`, `1m`."""
    name, interval = parse_id(dataset_id)
    return interval if interval is not None else name


def lake_folder(dataset_id: str) -> str:
    """The folder under `lake/` (and `staging/`): `trades`, `aggTrades`, `klines/interval=1m`."""
    name, interval = parse_id(dataset_id)
    return name if interval is None else f"{name}/interval={interval}"


def listing_folder(dataset_id: str) -> str:
    """The folder under `data/<market>/<granularity>/` whose sub-folders are symbols: `trades`, `klines`."""
    return parse_id(dataset_id)[0]


def dataset_ids(names: tuple[str, ...] | list[str] | None, intervals: tuple[str, ...] | list[str] | None
                ) -> tuple[str, ...]:
    """Dataset ids of the command line's `--dataset` names and `--interval`s, in the order given.

    Each kline family once per interval (default 1m); `--interval` alone means klines. Not
    checked here: `Settings` refuses an unknown dataset or interval with its own message.
    """
    out: list[str] = []
    for name in names or ("klines",):
        if name in KLINE_FAMILY:
            out.extend(f"{name}-{i}" for i in intervals or ("1m",))
        else:
            out.append(name)
    return tuple(dict.fromkeys(out))
