#!/usr/bin/env bash
# Start the pipeline's infrastructure on this machine, each part a background process with
# its log and PID file under $BINANCE_LAKE_RUN_DIR, then print where the UI is.
#
#   infra/start.sh [all | prefect | dask | COMPONENT...]
#
# COMPONENT: prefect-server, prefect-worker, dask-scheduler, dask-workers. `prefect` is the
# server and the worker, `dask` the scheduler and the workers; no argument or `all` starts
# everything. A component already running is left alone; a stale PID file is replaced.
#
#   prefect-server   `prefect server start` (API and UI), ready when /api/health answers true
#   prefect-worker   a process worker on the work pool (created if missing), PREFECT_API_URL
#                    pointing at the server; its flow runs use the Dask scheduler below
#   dask-scheduler   `dask scheduler`, ready when its port accepts connections
#   dask-workers     `dask worker --nworkers $DASK_WORKERS --nthreads 1`, PYTHONPATH at the
#                    repository so they import `tasks` and `flows`; ready when the scheduler
#                    counts them all
#
# Environment (defaults in brackets; infra/README.md has the full table):
#   BINANCE_LAKE_HOME [repository root]    BINANCE_LAKE_RUN_DIR [$BINANCE_LAKE_HOME/.run]
#   BINANCE_LAKE_DATA_DIR [$BINANCE_LAKE_HOME/data]  BINANCE_LAKE_VENV [$BINANCE_LAKE_HOME/.venv]
#   PREFECT_HOST [127.0.0.1]  PREFECT_PORT [4200]  PREFECT_HOME [Prefect's: ~/.prefect, holds the database]
#   BINANCE_LAKE_WORK_POOL [binance-lake]  BINANCE_LAKE_WORKER_NAME [binance-lake-<hostname>]
#   BINANCE_LAKE_DASK_ADDRESS [the scheduler below, when it runs]: Dask scheduler of worker-run flows
#   DASK_SCHEDULER_HOST [127.0.0.1]  DASK_SCHEDULER_PORT [8786]  DASK_WORKERS [2]
#   DASK_WORKER_HOST [127.0.0.1]  DASK_WORKER_MEMORY_LIMIT [auto]
#   DASK_DASHBOARD_PORT [empty: no dashboard; it needs bokeh]  DASK_DASHBOARD_HOST [127.0.0.1]
#   DASK_TLS_DIR [empty: plain TCP] certificates from infra/make-dask-certs.sh: scheduler and
#                workers speak TLS (tls://) and accept only peers with a certificate of that CA
#   BINANCE_LAKE_START_TIMEOUT [90] seconds per component  BINANCE_LAKE_STOP_TIMEOUT [20]
#
# Exit status: 0 when every requested component is ready; 1 otherwise, after stopping what
# this invocation started (what was already running is left running).
set -euo pipefail

# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

declare -a LAUNCHED=()
select_components "${BASH_SOURCE[0]}" yes "$@"

# On failure, stop what this invocation launched: a half-started set-up holding ports is
# worse than none. Each stop runs in a subshell so one failing stop does not skip the others.
cleanup() {
    local rc=$? i
    trap - EXIT
    if ((rc != 0 && ${#LAUNCHED[@]} > 0)); then
        log "start failed: stopping what this run started (${LAUNCHED[*]})"
        for ((i = ${#LAUNCHED[@]} - 1; i >= 0; i--)); do
            (stop_component "${LAUNCHED[i]}") || true
        done
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ "$DASK_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "DASK_WORKERS must be a positive integer, not '$DASK_WORKERS'"
if [[ -n "$DASK_TLS_DIR" ]] && { wants dask-scheduler || wants dask-workers || wants prefect-worker; }; then
    for f in ca.pem scheduler.pem scheduler-key.pem worker.pem worker-key.pem client.pem client-key.pem; do
        [[ -r "$DASK_TLS_DIR/$f" ]] || die "DASK_TLS_DIR=$DASK_TLS_DIR has no readable $f (make them: infra/make-dask-certs.sh DIR)"
    done
fi
command -v curl >/dev/null || die "curl is needed for the health checks"
mkdir -p "$BINANCE_LAKE_RUN_DIR" "$BINANCE_LAKE_DATA_DIR"
BINANCE_LAKE_RUN_DIR="$(cd "$BINANCE_LAKE_RUN_DIR" && pwd)"
BINANCE_LAKE_DATA_DIR="$(cd "$BINANCE_LAKE_DATA_DIR" && pwd)"
cd "$BINANCE_LAKE_HOME"
command -v prefect >/dev/null || die "no prefect on PATH: activate the virtualenv or set BINANCE_LAKE_VENV"
command -v dask >/dev/null || die "no dask on PATH: activate the virtualenv or set BINANCE_LAKE_VENV"

# Every component imports the project from the repository, wherever it is started from.
export PYTHONPATH="$BINANCE_LAKE_HOME${PYTHONPATH:+:$PYTHONPATH}"
export BINANCE_LAKE_HOME BINANCE_LAKE_DATA_DIR

# A port held by anything but our own component: say so now rather than time out later.
check_port() {
    local name="$1" host="$2" port="$3" var="$4"
    if ! running_pid "$name" >/dev/null && port_open "$host" "$port"; then
        die "$host:$port is already in use by another process (find it: ss -ltnp 'sport = :$port'); stop it or set $var"
    fi
}

start_prefect_server() {
    running_pid prefect-server >/dev/null && { log "prefect-server already running"; return 0; }
    check_port prefect-server "$PREFECT_HOST" "$PREFECT_PORT" PREFECT_PORT
    # No telemetry from a self-hosted server (and none can leave this machine anyway).
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
        launch prefect-server prefect server start --host "$PREFECT_HOST" --port "$PREFECT_PORT"
}

# tls_args ROLE: the TLS options of `dask scheduler`/`dask worker` (none without DASK_TLS_DIR).
tls_args() {
    [[ -n "$DASK_TLS_DIR" ]] || return 0
    printf '%s\n' --tls-ca-file "$DASK_TLS_DIR/ca.pem" --tls-cert "$DASK_TLS_DIR/$1.pem" \
        --tls-key "$DASK_TLS_DIR/$1-key.pem"
}

# Without a dashboard, the scheduler and the workers still run an HTTP server (metrics, logs
# and call stacks under /info), by default on every interface (the scheduler's on :8787):
# here it listens on 127.0.0.1 at a free port and serves no route at all.
NO_HTTP=(--no-dashboard --dashboard-address 127.0.0.1:0)

start_dask_scheduler() {
    running_pid dask-scheduler >/dev/null && { log "dask-scheduler already running"; return 0; }
    check_port dask-scheduler "$DASK_SCHEDULER_HOST" "$DASK_SCHEDULER_PORT" DASK_SCHEDULER_PORT
    local -a dashboard=("${NO_HTTP[@]}") tls routes=(env DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES='[]')
    if [[ -n "$DASK_DASHBOARD_PORT" ]]; then
        dashboard=(--dashboard --dashboard-address "$DASK_DASHBOARD_HOST:$DASK_DASHBOARD_PORT")
        routes=()
    fi
    mapfile -t tls < <(tls_args scheduler)
    launch dask-scheduler "${routes[@]}" dask scheduler --host "$DASK_SCHEDULER_HOST" --port "$DASK_SCHEDULER_PORT" \
        --protocol "$DASK_PROTOCOL" "${tls[@]}" "${dashboard[@]}"
}

start_dask_workers() {
    running_pid dask-workers >/dev/null && { log "dask-workers already running"; return 0; }
    # One thread per process: conversions are CPU-bound Python, so parallelism comes from
    # processes, not threads sharing a GIL. The workers report task runs to the Prefect API.
    local -a tls
    mapfile -t tls < <(tls_args worker)
    PREFECT_API_URL="$LAKE_API_URL" DASK_DISTRIBUTED__WORKER__HTTP__ROUTES='[]' \
        launch dask-workers dask worker "$DASK_ADDRESS" --nworkers "$DASK_WORKERS" --nthreads 1 \
        --host "$DASK_WORKER_HOST" "${tls[@]}" \
        --memory-limit "$DASK_WORKER_MEMORY_LIMIT" --name binance-lake "${NO_HTTP[@]}" \
        --local-directory "$BINANCE_LAKE_RUN_DIR/dask-worker-space"
}

ensure_work_pool() {
    # GET answers 404 for a missing pool; only then create it (create fails on an existing one).
    if http_get "$LAKE_API_URL/work_pools/$BINANCE_LAKE_WORK_POOL" >/dev/null; then
        return 0
    fi
    log "creating work pool $BINANCE_LAKE_WORK_POOL (process)"
    PREFECT_API_URL="$LAKE_API_URL" prefect work-pool create "$BINANCE_LAKE_WORK_POOL" --type process \
        >>"$(log_file prefect-worker)" 2>&1 ||
        http_get "$LAKE_API_URL/work_pools/$BINANCE_LAKE_WORK_POOL" >/dev/null ||
        die "could not create work pool $BINANCE_LAKE_WORK_POOL (see $(log_file prefect-worker))"
}

start_prefect_worker() {
    running_pid prefect-worker >/dev/null && { log "prefect-worker already running"; return 0; }
    prefect_healthy || die "the Prefect server at $LAKE_API_URL does not answer: start prefect-server first"
    ensure_work_pool
    # Flow runs started by the worker inherit this environment: they report to this server,
    # find the deployments' code at $BINANCE_LAKE_HOME (the `pull` step) and, when a scheduler
    # runs here, convert on it instead of starting a private local cluster per run.
    local dask_address="${BINANCE_LAKE_DASK_ADDRESS:-}"
    if [[ -z "$dask_address" ]] && running_pid dask-scheduler >/dev/null; then
        dask_address="$DASK_ADDRESS"
    fi
    PREFECT_API_URL="$LAKE_API_URL" BINANCE_LAKE_DASK_ADDRESS="$dask_address" \
        launch prefect-worker prefect worker start --pool "$BINANCE_LAKE_WORK_POOL" --type process \
        --name "$BINANCE_LAKE_WORKER_NAME"
}

# Launch what needs nothing else first, then wait, so the server's ~10 s start overlaps the
# cluster's.
if wants prefect-server; then start_prefect_server; fi
if wants dask-scheduler; then start_dask_scheduler; fi
if wants dask-workers; then
    if ! wants dask-scheduler && ! scheduler_listening; then
        die "no Dask scheduler at $DASK_ADDRESS: start dask-scheduler first"
    fi
    start_dask_workers
fi
if wants prefect-server; then wait_for prefect-server "answer on $LAKE_API_URL/health" prefect_healthy; fi
if wants dask-scheduler; then wait_for dask-scheduler "listener on $DASK_ADDRESS" scheduler_listening; fi
if wants prefect-worker; then start_prefect_worker; fi
if wants dask-workers; then wait_for dask-workers "$DASK_WORKERS workers on $DASK_ADDRESS" dask_workers_ready; fi
if wants prefect-worker; then
    wait_for prefect-worker "registration on pool $BINANCE_LAKE_WORK_POOL" worker_registered
fi

echo "Logs and PID files: $BINANCE_LAKE_RUN_DIR"
if running_pid prefect-server >/dev/null; then
    echo "Prefect UI:         $PREFECT_UI_URL"
    echo "Prefect API:        export PREFECT_API_URL=$LAKE_API_URL"
fi
if running_pid prefect-worker >/dev/null; then
    echo "Prefect worker:     $BINANCE_LAKE_WORKER_NAME on pool $BINANCE_LAKE_WORK_POOL"
fi
if running_pid dask-scheduler >/dev/null; then
    echo "Dask scheduler:     $DASK_ADDRESS  (python -m flows.full_pipeline --dask-address $DASK_ADDRESS ...)"
    if [[ -n "$DASK_DASHBOARD_PORT" ]]; then
        echo "Dask dashboard:     http://$DASK_DASHBOARD_HOST:$DASK_DASHBOARD_PORT/status"
    fi
fi
echo "Data dir:           $BINANCE_LAKE_DATA_DIR"
