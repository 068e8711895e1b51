"""The one typed settings object, built from the CLI, deployment parameters or environment.

Environment variables use the prefix `BINANCE_LAKE_` (e.g. `BINANCE_LAKE_CONCURRENCY=16`);
explicit arguments win over the environment. Lists are plain text, not JSON:
`BINANCE_LAKE_SYMBOLS=BTCUSDT,ETHUSDT` and `BINANCE_LAKE_STEPS=download,convert` (commas or
spaces), `BINANCE_LAKE_FEATURES="dollar:threshold=1e7,name=d10m;tick"` (a feature spec has
commas of its own, so specs are separated by `;` or spaces); a JSON list (`["BTCUSDT"]`)
is read too. Every number is bounded, NaN and infinities are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.dataset_ids import daily_only, markets_of, monthly_only, parse_id
from tasks.errors import UnsafePath
from tasks.source.archive_spec import Market, check_symbol

Step = Literal["download", "convert", "merge", "optimize", "validate", "gaps", "audit", "features", "cleanup"]
#: Every step, in the order a run performs them.
ALL_STEPS: tuple[Step, ...] = ("download", "convert", "merge", "optimize", "validate", "gaps", "audit", "features",
                               "cleanup")
#: What a run does unless told otherwise: optimize re-packs files left under target by
#: earlier merges (cheap when there is nothing to do); cleanup deletes downloaded archives
#: (the lake's backup), so it only runs when asked for.
STEPS: tuple[Step, ...] = ("download", "convert", "merge", "optimize", "validate", "gaps", "audit", "features")

DEFAULT_BASE_URL = "https://data.binance.vision"
DEFAULT_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
#: Days a run may name: Binance opened in July 2017; a later end than this is a typo (and
#: 9999-12-31 + 1 day would overflow).
EARLIEST_DAY = date(2017, 1, 1)
LATEST_DAY = date(2099, 12, 31)
#: The bars a run computes unless told otherwise (see tasks/features/incremental.py PRESETS).
DEFAULT_FEATURES: tuple[str, ...] = ("ema_dollar_imbalance",)
#: At most this many `--features` per run (each one reads every symbol's trades).
MAX_FEATURES = 32
_ISO_DAY = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_URL = re.compile(r"\Ahttps?://[A-Za-z0-9.\-\[\]:]+(?:/[!-~]*)?\Z")  # printable ASCII, no space
_DASK_ADDRESS = re.compile(r"\A(?:[a-z][a-z0-9+.\-]*://)?[A-Za-z0-9.\-\[\]:_]+\Z")


@dataclass(frozen=True)
class ConvertOptions:
    """What shapes the Parquet output of one archive (part of its cache key)."""

    row_group_rows: int = 1_048_576
    csv_block_bytes: int = 4 << 20  # fastest and flattest memory in benchmarks/README.md's sweep
    sort_chunk_rows: int = 4_000_000
    zstd_level: int = 3


class Settings(BaseSettings):
    """Everything a pipeline run needs to know; frozen once built."""

    # NaN and infinities are refused in every float field (NaN passes no bound check); an
    # empty variable (`BINANCE_LAKE_STEPS=`) counts as unset.
    model_config = SettingsConfigDict(env_prefix="BINANCE_LAKE_", extra="forbid", frozen=True, allow_inf_nan=False,
                                      env_ignore_empty=True)

    data_dir: Path = Field(description="Root of the lake, downloads and quarantine.")
    market: Market = Field("spot", description="spot, um (USD-M futures) or cm (COIN-M futures).")
    # NoDecode: the environment gives these lists as plain text, split below, not as JSON
    # (pydantic-settings' default, which failed with a traceback on `BTCUSDT,ETHUSDT`).
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(description="Archive symbols, e.g. BTCUSDT or BTCUSD_PERP.")
    start: date = Field(description="First day to ingest (UTC, inclusive).")
    end: date = Field(description="Last day to ingest (UTC, inclusive).")
    granularity: Literal["daily", "monthly", "auto"] = Field(
        "auto", description="auto: monthly archives for whole published months, daily for the rest."
    )
    datasets: Annotated[tuple[str, ...], NoDecode] = Field(
        ("trades",), description="Datasets, in order: trades, aggTrades, fundingRate, metrics, klines-<interval> "
        "(e.g. klines-1m), indexPriceKlines-, markPriceKlines-, premiumIndexKlines-<interval>."
    )
    base_url: str = DEFAULT_BASE_URL
    listing_url: str = DEFAULT_LISTING_URL
    concurrency: int = Field(8, ge=1, le=64, description="Downloads in flight at once.")
    steps: Annotated[tuple[Step, ...], NoDecode] = STEPS
    retries: int = Field(4, ge=0, le=20, description="Retries of a transient network failure.")
    retry_base_delay: float = Field(2.0, ge=0, le=60, description="First retry delay (s); doubles each time.")
    connect_timeout: float = Field(30.0, gt=0, le=600)
    read_timeout: float = Field(120.0, gt=0, le=3600, description="Longest silence on a socket (s).")
    min_download_rate: float = Field(
        32_768.0, gt=0, le=1e10, description="Slowest average rate an archive may arrive at (bytes/s): its deadline is "
        "download_deadline_floor_s + listed size / this; a slower body is a transient fault.",
    )
    download_deadline_floor_s: float = Field(
        30.0, gt=0, le=3600,
        description="Seconds every request gets on top of its size's share (all a listing page gets).",
    )
    download_size_margin_bytes: int = Field(
        1 << 20, ge=0, le=1 << 30,
        description="An archive longer than its listed size plus this is refused, and not kept.",
    )
    retry_after_cap_s: float = Field(
        60.0, ge=0, le=3600, description="Longest wait a 429/503 Retry-After can impose (s).",
    )
    allow_cross_host_redirects: bool = Field(
        False, description="Follow redirects to other hosts (default: same host only)."
    )
    ingest_batch_wait_s: float = Field(
        1.0, gt=0, le=600, description="A partial batch of verified archives goes to conversion once no download has "
        "finished for this long (s), so slow downloads never hold back converting the others.",
    )
    # Upper bounds: what one conversion may hold in memory (a row group, a CSV block, a
    # sort chunk of about 50 bytes a row).
    row_group_rows: int = Field(1_048_576, ge=1_000, le=1 << 24)
    csv_block_bytes: int = Field(4 << 20, ge=1 << 16, le=1 << 28)
    sort_chunk_rows: int = Field(4_000_000, ge=1_000, le=1 << 26, description="Rows held in memory when sorting.")
    zstd_level: int = Field(3, ge=1, le=22)
    target_file_bytes: int = Field(
        1 << 30, ge=1 << 20, le=1 << 36,
        description="Lake files are packed up to this size (bytes); see the README for why 1 GiB.",
    )
    truncation_tolerance_s: float = Field(
        3600.0, gt=0, le=86_400,
        description="A day whose first or last trade is farther than this from its bounds is flagged.",
    )
    features: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_FEATURES,
        description="Bar kinds to compute, each `kind[:field=value,...]` (see tasks/features/incremental.py PRESETS); "
        "in one string, specs are separated by `;` or spaces.",
    )
    ingest_batch_bytes: int = Field(
        8 << 20, ge=0, le=1 << 32,
        description="Small archives are converted in batches of about this many bytes (one Dask task each); "
        "a bigger archive (about 0.5 s of work or more) gets a task of its own.",
    )
    ingest_batch_archives: int = Field(
        128, ge=1, le=10_000, description="At most this many archives per conversion task.",
    )
    lock_wait_s: float = Field(
        0.0, ge=0, le=86_400, description="How long a run waits for another run on the same data dir (s).",
    )
    dask_address: str | None = Field(None, description="Existing Dask scheduler; default a local cluster.")
    dask_workers: int = Field(1, ge=1, le=256, description="Workers of the local cluster.")
    dask_threads_per_worker: int = Field(
        default_factory=lambda: os.cpu_count() or 2, ge=1, le=1024,
        description="Threads per worker (default: one per core).",
    )
    dask_processes: bool = Field(
        False, description="Local cluster of worker processes instead of threads in the flow's process.",
    )
    audit_sources: bool = Field(
        False, description="Also download the other source of the same days (the monthly archive of days taken "
        "daily, the daily archives of a month taken monthly), never landed, so the audit compares monthly with daily "
        "(binance-public-data#475).",
    )
    strict: bool = Field(
        False, description="Fail the run on any refused archive, also one already refused under the same "
        "published checksum (by default such a known refusal is reported but fails only the run that found it).",
    )

    @field_validator("datasets", mode="before")
    @classmethod
    def _split_datasets(cls, value: object) -> object:
        return split_list(value, r"[\s,]+", ",")

    @field_validator("datasets")
    @classmethod
    def _check_datasets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one dataset is needed: trades, aggTrades, fundingRate, metrics, "
                             "klines-<interval>, ...")
        try:
            for v in value:
                parse_id(v)
            return tuple(dict.fromkeys(value))
        except UnsafePath as exc:
            raise ValueError(str(exc)) from None

    @field_validator("symbols", "steps", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        return split_list(value, r"[\s,]+", ",")

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one symbol is needed")
        try:
            return tuple(dict.fromkeys(check_symbol(s) for s in value))
        except UnsafePath as exc:
            raise ValueError(str(exc)) from None

    @field_validator("features", mode="before")
    @classmethod
    def _split_features(cls, value: object) -> object:
        return split_list(value, r"[\s;]+", ";")

    @field_validator("features")
    @classmethod
    def _check_features(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value == DEFAULT_FEATURES:
            return value  # a preset: no need to import the bars module (pandas, Numba: 1.3 s) to check it
        from tasks.features.incremental import parse_feature

        if len(value) > MAX_FEATURES:
            raise ValueError(f"{len(value)} features given: allowed at most {MAX_FEATURES}")
        names = [parse_feature(v).name for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"two features share a name: {names}; give one `name=...`")
        return value

    @field_validator("steps")
    @classmethod
    def _some_step(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"at least one step is needed, of {','.join(ALL_STEPS)}")
        return value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso_day(cls, value: object) -> object:
        # pydantic would also take a Unix time ("1704067200") or a datetime string as a day.
        return parse_day(value) if isinstance(value, str) else value

    @field_validator("start", "end")
    @classmethod
    def _day_in_range(cls, value: date) -> date:
        if not EARLIEST_DAY <= value <= LATEST_DAY:
            raise ValueError(f"{value} is out of range: allowed {EARLIEST_DAY}..{LATEST_DAY}")
        return value

    @field_validator("base_url", "listing_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        if len(value) > 2000 or not _URL.fullmatch(value):
            raise ValueError(f"{value[:100]!r} is not a URL: http(s)://host[:port][/path], printable ASCII, no spaces")
        return value.rstrip("/")

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if not value:
            return None  # an empty BINANCE_LAKE_DASK_ADDRESS: the local cluster
        if len(value) > 300 or not _DASK_ADDRESS.fullmatch(value):
            raise ValueError(f"{value[:100]!r} is not a Dask scheduler address, e.g. tcp://10.0.0.5:8786")
        return value

    @model_validator(mode="after")
    def _check_range(self) -> Settings:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        for d in self.datasets:
            if self.market not in markets_of(d):
                what = "klines of 1s are" if d == "klines-1s" else f"{d} is"
                raise ValueError(f"{what} published for {' and '.join(markets_of(d))} only, not {self.market}")
        monthly = [d for d in self.datasets if monthly_only(d)]
        if monthly and self.granularity == "daily":
            raise ValueError(f"{', '.join(monthly)} {'are' if len(monthly) > 1 else 'is'} published monthly only: "
                             "use --granularity monthly or auto")
        daily = [d for d in self.datasets if daily_only(d)]
        if daily and self.granularity == "monthly":
            raise ValueError(f"{', '.join(daily)} {'are' if len(daily) > 1 else 'is'} published daily only: "
                             "use --granularity daily or auto")
        return self

    @property
    def dataset(self) -> str:
        """The dataset a pipeline pass works on: the first of `datasets` (a run makes one pass per dataset)."""
        return self.datasets[0]

    @property
    def trades(self) -> bool:
        """True when this pass is over trades (the dataset features and repairs work from)."""
        return self.dataset == "trades"

    @property
    def convert_options(self) -> ConvertOptions:
        """The conversion knobs, as a small hashable value for tasks and cache keys."""
        return ConvertOptions(self.row_group_rows, self.csv_block_bytes, self.sort_chunk_rows, self.zstd_level)


def parse_day(text: str) -> date:
    """`YYYY-MM-DD` (nothing else) within EARLIEST_DAY..LATEST_DAY, else ValueError naming it."""
    if not _ISO_DAY.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not a day YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a day of the calendar") from None
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValueError(f"{day} is out of range: allowed {EARLIEST_DAY}..{LATEST_DAY}")
    return day


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message (see --help)` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def describe_settings_error(exc: ValidationError, given: Collection[str] = ()) -> str:
    """One line for a refused Settings: each bad setting named as given, its value and what is allowed.

    A field in `given` came from the command line (`--concurrency`); any other from its
    environment variable when one is set (`BINANCE_LAKE_CONCURRENCY`).
    """
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            problems.append(msg)
            continue
        field = str(err["loc"][0])
        label = _setting_source(field, given)
        if err["type"] == "missing":
            problems.append(f"{label} is required")
        elif err["type"] == "value_error":
            problems.append(f"{label}: {msg}")  # our own validators name the value
        else:
            value = repr(err.get("input"))
            value = value if len(value) <= 80 else value[:77] + "..."
            allowed = _allowed(field)
            if err["type"] in _RANGE_ERRORS and allowed:
                problems.append(f"{label}={value} is out of range: allowed {allowed}")
            else:
                problems.append(f"{label}={value}: {msg}" + (f" (allowed {allowed})" if allowed else ""))
    return "error: " + "; ".join(problems)


def _setting_source(field: str, given: Collection[str]) -> str:
    if field not in given:
        name = f"BINANCE_LAKE_{field}".upper()
        for key, value in os.environ.items():
            if key.upper() == name and value:  # pydantic-settings reads them case-insensitively
                return key
    return "--" + field.replace("_", "-")


def _allowed(field: str) -> str:
    """`1..64`, `> 0 and <= 600`: a numeric field's bounds, from its Field(ge=..., le=...)."""
    info = Settings.model_fields.get(field)
    bounds: dict[str, object] = {}
    for item in info.metadata if info else []:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                bounds[key] = getattr(item, key)
    if "ge" in bounds and "le" in bounds:
        return f"{bounds['ge']}..{bounds['le']}"
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {v}" for k, v in bounds.items())


def split_list(value: object, separators: str, item_separator: str) -> object:
    """A list setting from text: split on the `separators` pattern, or read as a JSON list (`[...]`).

    Items of a list or tuple are split on `item_separator` only (`--symbols BTCUSDT,ETHUSDT`),
    not on whitespace: `BTCUSDT\n` stays as given, for the symbol check to refuse. Anything
    else is returned for pydantic to refuse.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return tuple(filter(None, re.split(separators, text)))
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"{text[:100]!r} starts with [ but is not a JSON list") from None
        if not isinstance(value, list):
            raise ValueError(f"{text[:100]!r} starts with [ but is not a JSON list")
    if isinstance(value, list | tuple):
        return tuple(part for item in value for part in (
            filter(None, item.split(item_separator)) if isinstance(item, str) else [item]))
    return value
