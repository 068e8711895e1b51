"""Prefect flows: composition, fan-out, artifacts and the CLI entry points."""

import os

# Prefect's client sends usage telemetry and, in a terminal, writes a device id and markers
# under ~/.prefect/.sdk_telemetry at import (Prefect 3.9): nothing outside the data dir is
# written, and nothing is sent, unless the user asks (DO_NOT_TRACK=0). Set before any flow
# module imports Prefect.
os.environ.setdefault("DO_NOT_TRACK", "1")
