#!/usr/bin/env bash
# Stop what infra/start.sh started, found by its PID files under $BINANCE_LAKE_RUN_DIR.
#
#   infra/stop.sh [all | prefect | dask | COMPONENT...]
#
# COMPONENT: prefect-worker, dask-workers, dask-scheduler, prefect-server (stopped in that
# order: the worker stops taking runs first, the server goes last so everything still
# running can report its final state). No argument or `all` stops everything.
#
# Each component gets SIGTERM, then up to $BINANCE_LAKE_STOP_TIMEOUT seconds [20] to exit;
# whatever of its process tree is left (Dask worker processes, flow-run subprocesses) gets
# SIGTERM, then SIGKILL. PID files are removed. Idempotent: stopping what is not running
# only removes a stale PID file, and exits 0. A PID file whose process is no longer that
# component (its PID was reused) is treated as stale: that process is never signalled.
#
# Environment: BINANCE_LAKE_RUN_DIR [$BINANCE_LAKE_HOME/.run], BINANCE_LAKE_STOP_TIMEOUT [20];
# see infra/README.md.
#
# A flow run killed here stays Running in the UI: cancel it with
# `prefect flow-run cancel <id>` once the server is back (infra/README.md, troubleshooting).
set -euo pipefail

# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

select_components "${BASH_SOURCE[0]}" no "$@"

[[ -d "$BINANCE_LAKE_RUN_DIR" ]] || { log "nothing to stop: no run directory $BINANCE_LAKE_RUN_DIR"; exit 0; }

# Ctrl-C must not leave a half-stopped component without its PID file: finish the one in hand.
trap 'log "interrupted: finishing the component being stopped"' INT

for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[i]}"
    if wants "$c"; then
        stop_component "$c"
    fi
done
