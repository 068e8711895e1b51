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

declare -A WANT=()
for arg in "${@:-all}"; do
    case "$arg" in
        all) for c in "${COMPONENTS[@]}"; do WANT[$c]=1; done ;;
        prefect) WANT[prefect-server]=1 WANT[prefect-worker]=1 ;;
        dask) WANT[dask-scheduler]=1 WANT[dask-workers]=1 ;;
        prefect-server | prefect-worker | dask-scheduler | dask-workers) WANT[$arg]=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown component: $arg" ;;
    esac
done

[[ -d "$BINANCE_LAKE_RUN_DIR" ]] || { log "nothing to stop: no run directory $BINANCE_LAKE_RUN_DIR"; exit 0; }

# Ctrl-C must not leave a half-stopped component without its PID file: finish the one in hand.
trap 'log "interrupted: finishing the component being stopped"' INT

for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[i]}"
    if [[ -n "${WANT[$c]:-}" ]]; then
        stop_component "$c"
    fi
done
