"""Serve the pipeline's deployments from this process: no work pool or worker needed.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve --data-dir ./data --symbols BTCUSDT

Runs started from the UI, and the daily schedule (06:30 UTC), execute here on the flows'
DaskTaskRunner (`BINANCE_LAKE_DASK_ADDRESS` points it at an existing Dask scheduler). The
back-fill's runs take the lake from `--data-dir` (exported as `BINANCE_LAKE_DATA_DIR`) and
every setting not in its run form from the `BINANCE_LAKE_*` environment.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # `--version` and a bad `--data-dir` answer before Prefect's import (seconds)
    from tasks.preflight import early_exit

    early_exit(sys.argv[1:])

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.backfill import backfill
from flows.daily_update import daily_update
from tasks.errors import DataDirRefused
from tasks.preflight import open_usable_data_dir, version_line
from tasks.settings import CliParser

#: When the daily update runs, and why: see prefect.yaml. Always in UTC, named explicitly
#: (the days are UTC days), whatever the server's or the browser's time zone.
DAILY_CRON = "30 6 * * *"
DAILY_TIMEZONE = "UTC"


def build(data_dir: str, market: str, symbols: Sequence[str]) -> list[RunnerDeployment]:
    """The daily-update deployment (scheduled) and the back-fill one (manual, from the UI).

    Module-path entrypoints, as in prefect.yaml: the Dask workers must import the flow's module.
    """
    # `to_deployment` returns a coroutine only when called from async code.
    daily: RunnerDeployment = cast(Any, daily_update.to_deployment)(
        name="daily-update",
        description="Every day at 06:30 UTC: fetch new and late days up to yesterday (UTC), merge, validate, "
        "report gaps.",
        tags=["binance-lake", "daily"],
        schedules=[Cron(DAILY_CRON, timezone=DAILY_TIMEZONE)],
        entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"data_dir": data_dir, "market": market, "symbols": list(symbols), "reprobe_days": 3},
        concurrency_limit=1,
    )
    backfill_deployment: RunnerDeployment = cast(Any, backfill.to_deployment)(
        name="backfill",
        description="Back-fill Binance trade archives into the lake for a market, symbols and days (UTC); "
        "started by hand from the UI.",
        tags=["binance-lake", "backfill"],
        concurrency_limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [daily, backfill_deployment]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve both deployments until interrupted; exit 2 with one line for an unusable data dir."""
    p = CliParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None,
                   help="the lake of both deployments (default: $BINANCE_LAKE_DATA_DIR, else ./data)")
    p.add_argument("--market", default="spot", choices=["spot", "um", "cm"],
                   help="the daily update's market: spot, um (USD-M futures) or cm (COIN-M futures); default spot")
    p.add_argument("--symbols", nargs="+", default=["BTCUSDT", "ETHUSDT"],
                   help="the daily update's symbols (default BTCUSDT ETHUSDT)")
    p.add_argument("--create", action="store_true",
                   help="create the data dir's missing parent folders too (without it, a missing parent is "
                   "refused as a likely typo)")
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    args = p.parse_args(argv)
    given = args.data_dir or os.environ.get("BINANCE_LAKE_DATA_DIR")
    data_dir = os.path.abspath(given or "./data")
    try:
        # Before the runner starts: a typo or a read-only folder is said now, not at 06:30 UTC.
        open_usable_data_dir(Path(given or data_dir), create=args.create or given is None)
    except DataDirRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The back-fill's runs (subprocesses of this one) read their lake from the environment.
    os.environ["BINANCE_LAKE_DATA_DIR"] = data_dir
    serve(*build(data_dir, args.market, args.symbols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
