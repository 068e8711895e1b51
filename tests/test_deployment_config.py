"""prefect.yaml and the serve() deployment, checked offline against the flow's signature."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from tests.conftest import REPO

ALLOWED_KEYS = {"name", "description", "entrypoint", "tags", "parameters", "work_pool", "concurrency_limit",
                "schedules", "version", "enforce_parameter_schema"}


def test_prefect_yaml_entrypoints_load_and_parameters_validate() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["deployments"], "no deployments"
    for dep in config["deployments"]:
        assert set(dep) <= ALLOWED_KEYS, set(dep) - ALLOWED_KEYS
        path, _, name = dep["entrypoint"].partition(":")
        assert (REPO / path).is_file()
        flow = load_flow_from_entrypoint(str(REPO / path) + ":" + name)
        validated = flow.validate_parameters(dep["parameters"])
        assert validated["settings"].symbols == tuple(dep["parameters"]["settings"]["symbols"])
        assert dep["work_pool"]["name"] == "binance-lake" and dep["concurrency_limit"] == 1


def test_serve_deployment_builds() -> None:
    from flows.full_pipeline import full_pipeline

    dep = full_pipeline.to_deployment(name="full-pipeline")
    assert dep.entrypoint == "flows/full_pipeline.py:full_pipeline"
    schema = parameter_schema(full_pipeline.fn)
    assert schema.required == ["settings"] and "Settings" in schema.definitions
    assert Path(REPO / "deployments" / "serve.py").is_file()
