"""Serve the pipeline's deployments from this process: no work pool or worker needed.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve --data-dir ./data --symbols BTCUSDT

Runs started from the UI, and the daily schedule, execute here on the flows'
DaskTaskRunner (`BINANCE_LAKE_DASK_ADDRESS` points it at an existing Dask scheduler).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from flows.daily_update import daily_update
from flows.full_pipeline import full_pipeline

#: When the daily update runs (UTC), and why: see prefect.yaml.
DAILY_CRON = "30 6 * * *"


def build(data_dir: str, market: str, symbols: Sequence[str]) -> list[RunnerDeployment]:
    """The daily-update deployment (scheduled) and the back-fill one (manual, from the UI).

    Module-path entrypoints, as in prefect.yaml: the Dask workers must import the flow's module.
    """
    # `to_deployment` returns a coroutine only when called from async code.
    daily: RunnerDeployment = cast(Any, daily_update.to_deployment)(
        name="daily-update",
        description="Fetch new and late days up to yesterday (UTC), merge, validate, report gaps.",
        tags=["binance-lake", "daily"],
        cron=DAILY_CRON,
        entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"data_dir": data_dir, "market": market, "symbols": list(symbols), "reprobe_days": 3},
        concurrency_limit=1,
    )
    backfill: RunnerDeployment = cast(Any, full_pipeline.to_deployment)(
        name="full-pipeline",
        description="Back-fill Binance trade archives into the lake (manual runs from the UI).",
        tags=["binance-lake", "backfill"],
        concurrency_limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [daily, backfill]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve both deployments until interrupted."""
    p = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--market", default="spot", choices=["spot", "um", "cm"])
    p.add_argument("--symbols", nargs="+", default=["BTCUSDT", "ETHUSDT"])
    args = p.parse_args(argv)
    serve(*build(args.data_dir, args.market, args.symbols))


if __name__ == "__main__":
    main()
