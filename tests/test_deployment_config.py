"""prefect.yaml and the serve() deployments, checked offline against the flows' signatures."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule
from prefect.utilities.callables import parameter_schema

from tests.conftest import REPO

ALLOWED_KEYS = {"name", "description", "entrypoint", "tags", "parameters", "work_pool", "concurrency_limit",
                "schedules", "version", "enforce_parameter_schema"}
SCHEDULE_KEYS = {"cron", "timezone", "active", "day_or"}


def deployments() -> list[dict[str, object]]:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert set(config) <= {"name", "prefect-version", "build", "push", "pull", "deployments"}
    return list(config["deployments"])


@pytest.mark.parametrize("dep", deployments(), ids=lambda d: str(d["name"]))
def test_prefect_yaml_entrypoints_load_and_parameters_validate(dep: dict[str, object]) -> None:
    assert set(dep) <= ALLOWED_KEYS, set(dep) - ALLOWED_KEYS
    # A module path, importable by the Dask workers (a file path is loaded as a top-level module).
    module = str(dep["entrypoint"]).partition(":")[0]
    assert re.fullmatch(r"flows\.\w+", module) and (REPO / (module.replace(".", "/") + ".py")).is_file()
    flow = load_flow_from_entrypoint(str(dep["entrypoint"]))
    params = dep["parameters"]
    assert isinstance(params, dict)
    validated = flow.validate_parameters(params)
    assert set(params) <= set(validated)
    assert dep["work_pool"] == {"name": "binance-lake", "work_queue_name": "default"}
    assert dep["concurrency_limit"] == 1


def test_daily_update_is_scheduled_after_publication_in_utc() -> None:
    daily = next(d for d in deployments() if d["name"] == "daily-update")
    [schedule] = daily["schedules"]  # type: ignore[misc]
    assert set(schedule) <= SCHEDULE_KEYS
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.timezone == "UTC"
    # The server's own schedule model computes the next run times.
    server_cron = ServerCronSchedule(cron=cron.cron, timezone=cron.timezone)
    [nxt] = asyncio.run(server_cron.get_dates(n=1, start=datetime(2024, 1, 1, tzinfo=UTC)))
    assert (nxt.hour, nxt.minute) == (6, 30)
    full = next(d for d in deployments() if d["name"] == "backfill")
    assert "schedules" not in full  # back-fills are started by hand


def test_serve_deployments_build() -> None:
    from deployments.serve import DAILY_CRON, build

    daily, backfill = build("./data", "spot", ["BTCUSDT"])
    assert daily.entrypoint == "flows.daily_update.daily_update"  # the runner's module-path form
    assert backfill.entrypoint == "flows.backfill.backfill"
    assert daily.schedules and daily.schedules[0].schedule.cron == DAILY_CRON
    assert daily.schedules[0].schedule.timezone == "UTC"
    from flows.backfill import backfill as backfill_flow

    schema = parameter_schema(backfill_flow.fn)
    assert schema.required == ["symbols", "start", "end"] and not schema.definitions
