"""Serve the pipeline's deployments from this process: no work pool or worker needed.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Runs started from the UI execute here, on the flow's DaskTaskRunner
(`BINANCE_LAKE_DASK_ADDRESS` points it at an existing Dask scheduler).
"""

from __future__ import annotations

from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.full_pipeline import full_pipeline


def main() -> None:
    """Serve the back-fill deployment until interrupted."""
    # `to_deployment` returns a coroutine only when called from async code.
    backfill: RunnerDeployment = cast(Any, full_pipeline.to_deployment)(
        name="full-pipeline",
        description="Back-fill Binance trade archives into the lake (manual runs from the UI).",
        tags=["binance-lake", "backfill"],
        concurrency_limit=1,
    )
    serve(backfill)


if __name__ == "__main__":
    main()
