"""Prefect flows: composition, fan-out, artifacts and the CLI entry points."""
