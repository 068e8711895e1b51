"""The one typed settings object, built from the CLI, deployment parameters or environment.

Environment variables use the prefix `BINANCE_LAKE_` (e.g. `BINANCE_LAKE_CONCURRENCY=16`);
explicit arguments win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.archive_spec import Market, check_symbol
from tasks.errors import UnsafePath

Step = Literal["download", "convert", "merge", "optimize", "validate", "gaps", "features", "cleanup"]
#: Every step, in the order a run performs them.
ALL_STEPS: tuple[Step, ...] = ("download", "convert", "merge", "optimize", "validate", "gaps", "features", "cleanup")
#: What a run does unless told otherwise: optimize re-packs files left under target by
#: earlier merges (cheap when there is nothing to do); cleanup deletes downloaded archives
#: (the lake's backup), so it only runs when asked for.
STEPS: tuple[Step, ...] = ("download", "convert", "merge", "optimize", "validate", "gaps", "features")

DEFAULT_BASE_URL = "https://data.binance.vision"
DEFAULT_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"


@dataclass(frozen=True)
class ConvertOptions:
    """What shapes the Parquet output of one archive (part of its cache key)."""

    row_group_rows: int = 1_048_576
    csv_block_bytes: int = 4 << 20  # fastest and flattest memory in benchmarks/README.md's sweep
    sort_chunk_rows: int = 4_000_000
    zstd_level: int = 3


class Settings(BaseSettings):
    """Everything a pipeline run needs to know; frozen once built."""

    model_config = SettingsConfigDict(env_prefix="BINANCE_LAKE_", extra="forbid", frozen=True)

    data_dir: Path = Field(description="Root of the lake, downloads and quarantine.")
    market: Market = Field("spot", description="spot, um (USD-M futures) or cm (COIN-M futures).")
    symbols: tuple[str, ...] = Field(description="Archive symbols, e.g. BTCUSDT or BTCUSD_PERP.")
    start: date = Field(description="First day to ingest (UTC, inclusive).")
    end: date = Field(description="Last day to ingest (UTC, inclusive).")
    granularity: Literal["daily", "monthly", "auto"] = Field(
        "auto", description="auto: monthly archives for whole published months, daily for the rest."
    )
    base_url: str = DEFAULT_BASE_URL
    listing_url: str = DEFAULT_LISTING_URL
    concurrency: int = Field(8, ge=1, le=64, description="Downloads in flight at once.")
    steps: tuple[Step, ...] = STEPS
    retries: int = Field(4, ge=0, le=20, description="Retries of a transient network failure.")
    retry_base_delay: float = Field(2.0, ge=0, description="First retry delay (s); doubles each time.")
    connect_timeout: float = Field(30.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence on a socket (s).")
    row_group_rows: int = Field(1_048_576, ge=1_000)
    csv_block_bytes: int = Field(4 << 20, ge=1 << 16)
    sort_chunk_rows: int = Field(4_000_000, ge=1_000, description="Rows held in memory when sorting.")
    zstd_level: int = Field(3, ge=1, le=22)
    target_file_bytes: int = Field(
        1 << 30, ge=1 << 20,
        description="Lake files are packed up to this size (bytes); see the README for why 1 GiB.",
    )
    truncation_tolerance_s: float = Field(
        3600.0, gt=0, description="A day whose first or last trade is farther than this from its bounds is flagged.",
    )
    features: tuple[str, ...] = Field(
        ("ema_dollar_imbalance",),
        description="Bar kinds to compute, each `kind[:field=value,...]` (see tasks/features.py PRESETS).",
    )
    ingest_batch_bytes: int = Field(
        8 << 20, ge=0,
        description="Small archives are converted in batches of about this many bytes (one Dask task each); "
        "a bigger archive (about 0.5 s of work or more) gets a task of its own.",
    )
    ingest_batch_archives: int = Field(128, ge=1, description="At most this many archives per conversion task.")
    lock_wait_s: float = Field(0.0, ge=0, description="How long a run waits for another run on the same data dir.")
    dask_address: str | None = Field(None, description="Existing Dask scheduler; default a local cluster.")
    dask_workers: int = Field(1, ge=1, description="Workers of the local cluster.")
    dask_threads_per_worker: int = Field(
        default_factory=lambda: os.cpu_count() or 2, ge=1, description="Threads per worker (default: one per core)."
    )
    dask_processes: bool = Field(
        False, description="Local cluster of worker processes instead of threads in the flow's process.",
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s for s in value.replace(",", " ").split() if s)
        return value

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
        if isinstance(value, str):
            return tuple(s for s in value.split() if s)
        return value

    @field_validator("features")
    @classmethod
    def _check_features(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from tasks.features import parse_feature  # numba compiles lazily: importing is cheap

        names = [parse_feature(v).name for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"two features share a name: {names}; give one `name=...`")
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _split_steps(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s for s in value.replace(",", " ").split() if s)
        return value

    @field_validator("base_url", "listing_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_range(self) -> Settings:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    @property
    def convert_options(self) -> ConvertOptions:
        """The conversion knobs, as a small hashable value for tasks and cache keys."""
        return ConvertOptions(self.row_group_rows, self.csv_block_bytes, self.sort_chunk_rows, self.zstd_level)
