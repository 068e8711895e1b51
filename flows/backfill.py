"""The back-fill flow started from the Prefect UI: the few parameters a user sets, typed for its form.

`full_pipeline` takes the whole `Settings` object (about 30 fields, most of them tuning
knobs), which made the deployment's run form a wall of internal fields. This flow takes
only what a user chooses per run (market, symbols, days, granularity, steps, features);
everything else comes from the worker's `BINANCE_LAKE_*` environment, as for the CLI.
Every parameter has a type the form understands (no `X | None`, no nested model), so no
field reads `Property is type "None"`.
"""

from __future__ import annotations

import os
from datetime import date
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from pydantic import ValidationError

from flows.full_pipeline import full_pipeline
from flows.runtime import default_dask_runner
from tasks.report import PipelineReport
from tasks.settings import STEPS, Settings, Step

#: The data dir when `BINANCE_LAKE_DATA_DIR` is not set: relative to the worker's working
#: directory, which prefect.yaml's pull step sets to the checkout (`BINANCE_LAKE_HOME`).
DEFAULT_DATA_DIR = "./data"
#: What the form offers for `features` by default.
DEFAULT_FEATURES: tuple[str, ...] = ("ema_dollar_imbalance",)


@flow(name="backfill", task_runner=default_dask_runner())
def backfill(
    symbols: list[str],
    start: date,
    end: date,
    market: Literal["spot", "um", "cm"] = "spot",
    granularity: Literal["auto", "daily", "monthly"] = "auto",
    steps: tuple[Step, ...] = STEPS,
    features: tuple[str, ...] = DEFAULT_FEATURES,
    datasets: tuple[str, ...] = ("trades",),
) -> PipelineReport | State[PipelineReport]:
    """Back-fill Binance trade archives into the lake for a market, symbols and a range of days.

    The lake is the worker's `BINANCE_LAKE_DATA_DIR` (default `./data` in the checkout);
    every other setting (concurrency, file size, Dask scheduler, ...) comes from the
    worker's `BINANCE_LAKE_*` variables. The run ends Failed if an archive is refused.

    Args:
        symbols: Archive symbols, e.g. BTCUSDT or ETHUSDT (BTCUSD_PERP for COIN-M).
        start: First day to ingest (UTC, inclusive).
        end: Last day to ingest (UTC, inclusive).
        market: spot, um (USD-M futures) or cm (COIN-M futures).
        granularity: auto takes monthly archives for whole published months and daily ones for the rest.
        steps: What to do, in this order: download, convert, merge, optimize, validate, gaps, audit, features, cleanup
            (cleanup deletes downloaded archives whose rows are verified in the lake).
        features: Bar kinds to compute from the lake, each `kind[:field=value,...]`, e.g. ema_dollar_imbalance
            or dollar:threshold=1e7,name=dollar_10m.
        datasets: trades, aggTrades, klines-<interval> (e.g. klines-1m, klines-1h), fundingRate, metrics,
            indexPriceKlines-, markPriceKlines-, premiumIndexKlines-<interval>, each its own lake,
            audited against each other.
    """
    settings = backfill_settings(symbols, start, end, market, granularity, steps, features, datasets)
    get_run_logger().info("back-fill %s %s %s..%s into %s", market, ", ".join(settings.symbols), start, end,
                          settings.data_dir)
    # The same run, checks and end state as the CLI's flow (its body, not a sub-flow run).
    return full_pipeline.fn(settings)


def backfill_settings(
    symbols: list[str], start: date, end: date, market: str, granularity: str, steps: tuple[str, ...],
    features: tuple[str, ...], datasets: tuple[str, ...] = ("trades",),
) -> Settings:
    """Settings from the form's parameters, the rest from `BINANCE_LAKE_*`; ValueError naming each bad one."""
    given: dict[str, Any] = {"symbols": tuple(symbols), "start": start, "end": end, "market": market,
                             "granularity": granularity, "steps": tuple(steps), "features": tuple(features),
                             "datasets": tuple(datasets)}
    if not os.environ.get("BINANCE_LAKE_DATA_DIR"):
        given["data_dir"] = DEFAULT_DATA_DIR
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ValueError(describe_parameter_error(exc, given)) from None


def describe_parameter_error(exc: ValidationError, given: dict[str, Any]) -> str:
    """One line naming each refused parameter (or `BINANCE_LAKE_*` variable) and why."""
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        field = str(err["loc"][0]) if err["loc"] else ""
        if not field:
            problems.append(msg)
        elif field in given and field != "data_dir":
            problems.append(f"parameter {field}: {msg}")
        else:
            problems.append(f"BINANCE_LAKE_{field.upper()}: {msg}")
    return "; ".join(problems)


__all__ = ["backfill", "backfill_settings"]
