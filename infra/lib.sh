# shellcheck shell=bash
# Shared by infra/start.sh, infra/stop.sh and infra/status.sh: settings, PID files, process
# trees and health checks. Sourced, not run. See infra/README.md for every variable.
#
#   BINANCE_LAKE_HOME        repository root (default: the parent of infra/); the working
#                            directory and PYTHONPATH of every component, and the path the
#                            deployments' `pull` step changes to
#   BINANCE_LAKE_RUN_DIR     where logs (<component>.log) and PID files (<component>.pid) go
#                            (default: $BINANCE_LAKE_HOME/.run)
#   BINANCE_LAKE_DATA_DIR    the lake's data dir, created if missing and exported to the
#                            Prefect worker and the Dask workers (default: $BINANCE_LAKE_HOME/data)
#   BINANCE_LAKE_VENV        virtualenv whose bin/ goes first on PATH when it exists and no
#                            virtualenv is active (default: $BINANCE_LAKE_HOME/.venv)
#   PREFECT_HOST, PREFECT_PORT            Prefect server address (127.0.0.1, 4200)
#   BINANCE_LAKE_WORK_POOL   process work pool the worker polls (binance-lake)
#   BINANCE_LAKE_WORKER_NAME name of the Prefect worker (binance-lake-<hostname>)
#   DASK_SCHEDULER_HOST, DASK_SCHEDULER_PORT  Dask scheduler address (127.0.0.1, 8786)
#   DASK_WORKER_HOST         address the Dask workers (and their nannies) listen on (127.0.0.1)
#   DASK_TLS_DIR             certificates made by infra/make-dask-certs.sh: TLS with mutual
#                            authentication between scheduler, workers and clients (empty: none)
#   DASK_WORKERS             Dask worker processes, one thread each (2)
#   DASK_WORKER_MEMORY_LIMIT memory limit per Dask worker process (auto)
#   DASK_DASHBOARD_PORT      Dask dashboard port; empty: no dashboard, it needs bokeh (empty)
#   DASK_DASHBOARD_HOST      address the dashboard listens on, when there is one (127.0.0.1)
#   BINANCE_LAKE_START_TIMEOUT  seconds to wait for each component to be ready (90)
#   BINANCE_LAKE_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL when stopping (20)

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BINANCE_LAKE_HOME="${BINANCE_LAKE_HOME:-$(cd "$INFRA_DIR/.." && pwd)}"
BINANCE_LAKE_RUN_DIR="${BINANCE_LAKE_RUN_DIR:-$BINANCE_LAKE_HOME/.run}"
BINANCE_LAKE_DATA_DIR="${BINANCE_LAKE_DATA_DIR:-$BINANCE_LAKE_HOME/data}"
BINANCE_LAKE_VENV="${BINANCE_LAKE_VENV:-$BINANCE_LAKE_HOME/.venv}"
PREFECT_HOST="${PREFECT_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
BINANCE_LAKE_WORK_POOL="${BINANCE_LAKE_WORK_POOL:-binance-lake}"
BINANCE_LAKE_WORKER_NAME="${BINANCE_LAKE_WORKER_NAME:-binance-lake-$(hostname)}"
DASK_SCHEDULER_HOST="${DASK_SCHEDULER_HOST:-127.0.0.1}"
DASK_SCHEDULER_PORT="${DASK_SCHEDULER_PORT:-8786}"
DASK_WORKER_HOST="${DASK_WORKER_HOST:-127.0.0.1}"
DASK_TLS_DIR="${DASK_TLS_DIR:-}"
DASK_WORKERS="${DASK_WORKERS:-2}"
DASK_WORKER_MEMORY_LIMIT="${DASK_WORKER_MEMORY_LIMIT:-auto}"
DASK_DASHBOARD_PORT="${DASK_DASHBOARD_PORT:-}"
DASK_DASHBOARD_HOST="${DASK_DASHBOARD_HOST:-127.0.0.1}"
BINANCE_LAKE_START_TIMEOUT="${BINANCE_LAKE_START_TIMEOUT:-90}"
BINANCE_LAKE_STOP_TIMEOUT="${BINANCE_LAKE_STOP_TIMEOUT:-20}"

PREFECT_UI_URL="http://$PREFECT_HOST:$PREFECT_PORT"
LAKE_API_URL="$PREFECT_UI_URL/api"
DASK_PROTOCOL=tcp
if [[ -n "$DASK_TLS_DIR" ]]; then
    DASK_PROTOCOL=tls
    # Absolute: the components run from $BINANCE_LAKE_HOME.
    if [[ -d "$DASK_TLS_DIR" ]]; then DASK_TLS_DIR="$(cd "$DASK_TLS_DIR" && pwd)"; fi
    # Every Dask client started from here (the readiness checks, the Prefect worker's flow
    # runs) presents the client certificate; nothing of ours speaks plain tcp:// to Dask.
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
    export DASK_DISTRIBUTED__COMM__TLS__CA_FILE="$DASK_TLS_DIR/ca.pem"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT="$DASK_TLS_DIR/client.pem"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY="$DASK_TLS_DIR/client-key.pem"
fi
DASK_ADDRESS="$DASK_PROTOCOL://$DASK_SCHEDULER_HOST:$DASK_SCHEDULER_PORT"

# In the order they start; stop.sh walks it backwards (the worker stops taking runs first,
# the server goes last so everything still running can report its final state).
# shellcheck disable=SC2034  # used by the scripts that source this file
COMPONENTS=(prefect-server dask-scheduler dask-workers prefect-worker)

# The repository's virtualenv, unless the caller chose one: a plain `infra/start.sh` from a
# fresh shell then runs the pinned prefect and dask, not whatever is on PATH.
if [[ -z "${VIRTUAL_ENV:-}" && -x "$BINANCE_LAKE_VENV/bin/python" ]]; then
    PATH="$BINANCE_LAKE_VENV/bin:$PATH"
fi

log() { printf '%s %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The header comment of script $1, as its usage text.
usage_of() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$1"; }

# Components asked for on the command line (filled by select_components).
declare -A WANT=()

# select_components SCRIPT SHOW_USAGE_ON_ERROR [NAME...]: fill WANT from the command line
# (all, prefect, dask, or one component; no name means all).
select_components() {
    local script=$1 usage_on_error=$2 arg c
    shift 2
    for arg in "${@:-all}"; do
        case "$arg" in
            all) for c in "${COMPONENTS[@]}"; do WANT[$c]=1; done ;;
            prefect) WANT[prefect-server]=1 WANT[prefect-worker]=1 ;;
            dask) WANT[dask-scheduler]=1 WANT[dask-workers]=1 ;;
            prefect-server | prefect-worker | dask-scheduler | dask-workers) WANT[$arg]=1 ;;
            -h | --help) usage_of "$script"; exit 0 ;;
            *) [[ "$usage_on_error" == yes ]] && usage_of "$script" >&2; die "unknown component: $arg" ;;
        esac
    done
}
wants() { [[ -n "${WANT[$1]:-}" ]]; }

pid_file() { printf '%s/%s.pid' "$BINANCE_LAKE_RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log' "$BINANCE_LAKE_RUN_DIR" "$1"; }

# What a component's command line contains: a PID file whose process no longer shows it is
# stale (the PID was reused by something else), and that process is never signalled.
signature() {
    case "$1" in
        prefect-server) echo "prefect server start" ;;
        prefect-worker) echo "prefect worker start" ;;
        dask-scheduler) echo "dask scheduler" ;;
        dask-workers) echo "dask worker" ;;
        *) die "unknown component $1" ;;
    esac
}

# alive PID...: prints those PIDs that still run (zombies count as gone: once a process has
# exited, nothing is left to stop; its parent reaps it whenever it does).
alive() {
    (($# > 0)) || return 0
    local IFS=,
    { ps -o pid=,stat= -p "$*" 2>/dev/null || true; } | awk '$2 !~ /^Z/ { print $1 }'
}

# running_pid COMPONENT: prints the PID from its PID file if that process is alive and is
# that component; fails otherwise (no file, dead process, or a PID reused by another program).
# `ps -ww`: without it ps cuts the command line at $COLUMNS (set in many CI shells), and a
# long venv path pushes the signature past the cut, so a live server looked dead.
running_pid() {
    local file pid args
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -n "$(alive "$pid")" ]] || return 1
    args="$(ps -ww -o args= -p "$pid" 2>/dev/null)" || return 1
    [[ "$args" == *"$(signature "$1")"* ]] || return 1
    printf '%s\n' "$pid"
}

# tree ROOT: ROOT, its process group (each component leads its own, see launch) and every
# descendant, including children that started a session of their own (the Prefect process
# worker isolates each flow run in its own process group).
tree() {
    ps -e -o pid=,ppid=,pgid= | awk -v root="$1" '
        { pid[NR] = $1; ppid[NR] = $2; pgid[NR] = $3 }
        END {
            keep[root] = 1
            for (i = 1; i <= NR; i++) if (pgid[i] == root) keep[pid[i]] = 1
            do {
                changed = 0
                for (i = 1; i <= NR; i++)
                    if (!(pid[i] in keep) && (ppid[i] in keep)) { keep[pid[i]] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

# launch COMPONENT COMMAND...: runs COMMAND in the background in a session of its own, output
# appended to the component's log, its PID in the component's PID file. Its own session:
# closing the terminal that ran start.sh does not hang it up, and stop.sh can find the whole
# process tree (uvicorn, Dask nannies and their worker processes, flow-run subprocesses).
launch() {
    local name="$1" file
    shift
    file="$(pid_file "$name")"
    rm -f "$file"
    log "starting $name: $*"
    # The PID is written by the process itself, before exec: it is the PID of the command,
    # whether or not setsid had to fork to get a new session. `env --default-signal`: bash
    # starts background commands with SIGINT ignored, and the Prefect worker's SIGTERM handler
    # works by sending itself SIGINT, so an inherited SIG_IGN makes it ignore SIGTERM.
    # shellcheck disable=SC2016  # $$ and $@ are expanded by the inner shell, on purpose
    setsid bash -c 'echo "$$" >"$0.tmp" && mv "$0.tmp" "$0" && exec env --default-signal=INT,QUIT "$@"' \
        "$file" "$@" \
        >>"$(log_file "$name")" 2>&1 </dev/null &
    local waited=0
    until [[ -s "$file" ]]; do
        ((waited++ < 100)) || die "$name did not start (see $(log_file "$name"))"
        sleep 0.05
    done
    LAUNCHED+=("$name")
}

# port_open HOST PORT: something accepts TCP connections there (bash's /dev/tcp, no netcat).
port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# http_get URL: the body, failing on a non-2xx answer or no answer.
http_get() {
    curl -fsS --max-time 5 "$1" 2>/dev/null
}

http_post_json() {
    curl -fsS --max-time 5 -X POST -H 'Content-Type: application/json' -d "$2" "$1" 2>/dev/null
}

# wait_for COMPONENT WHAT CHECK...: polls CHECK until it succeeds; fails if the component's
# process died meanwhile or after BINANCE_LAKE_START_TIMEOUT seconds, showing its log's tail.
wait_for() {
    local name="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + BINANCE_LAKE_START_TIMEOUT))
    until "$@"; do
        if ! running_pid "$name" >/dev/null; then
            tail -n 30 "$(log_file "$name")" >&2 || true
            die "$name exited before $what (log: $(log_file "$name"))"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$(log_file "$name")" >&2 || true
            die "$name: no $what after ${BINANCE_LAKE_START_TIMEOUT}s (log: $(log_file "$name"))"
        fi
        sleep 0.5
    done
}

prefect_healthy() { [[ "$(http_get "$LAKE_API_URL/health")" == "true" ]]; }

# The worker is ready once the server lists it on its pool (it registers with its first heartbeat).
worker_registered() {
    http_post_json "$LAKE_API_URL/work_pools/$BINANCE_LAKE_WORK_POOL/workers/filter" '{}' |
        grep -qF "\"name\":\"$BINANCE_LAKE_WORKER_NAME\""
}

scheduler_listening() { port_open "$DASK_SCHEDULER_HOST" "$DASK_SCHEDULER_PORT"; }

# dask_worker_count: how many workers the scheduler has (fails if it cannot be reached).
dask_worker_count() {
    python - "$DASK_ADDRESS" <<'PY'
import sys

from distributed import Client

with Client(sys.argv[1], timeout=10) as client:
    print(len(client.scheduler_info(n_workers=-1)["workers"]))
PY
}

dask_workers_ready() {
    local n
    n="$(dask_worker_count 2>/dev/null)" || return 1
    ((n >= DASK_WORKERS))
}

# stop COMPONENT: SIGTERM to the component, up to BINANCE_LAKE_STOP_TIMEOUT seconds for it to
# exit, SIGTERM to whatever of its tree outlived it, then SIGKILL to anything left. Removes the
# PID file. Stopping a component that is not running only removes a stale PID file.
stop_component() {
    local name="$1" file pid deadline
    local -a pids left
    file="$(pid_file "$name")"
    if ! pid="$(running_pid "$name")"; then
        if [[ -f "$file" ]]; then
            log "$name: not running, removing stale PID file $file"
            rm -f "$file"
        fi
        return 0
    fi
    mapfile -t pids < <(tree "$pid")
    log "stopping $name (pid $pid, ${#pids[@]} processes)"
    # The leader alone first: the Dask CLI closes its nannies in order, the Prefect worker
    # stops polling, the server shuts its services down. Signalling the whole group at once
    # would make nannies restart the worker processes they see dying.
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + BINANCE_LAKE_STOP_TIMEOUT))
    while [[ -n "$(alive "$pid")" ]] && ((SECONDS < deadline)); do sleep 0.2; done
    mapfile -t left < <(alive "${pids[@]}")
    if ((${#left[@]} > 0)) && [[ -z "$(alive "$pid")" ]]; then
        # Orphans of a leader that did exit: give them a short, polite notice.
        kill -TERM "${left[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while [[ -n "$(alive "${left[@]}")" ]] && ((SECONDS < deadline)); do sleep 0.2; done
        mapfile -t left < <(alive "${pids[@]}")
    fi
    if ((${#left[@]} > 0)); then
        log "$name: ${#left[@]} processes still running after SIGTERM, sending SIGKILL: ${left[*]}"
        kill -KILL "${left[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while [[ -n "$(alive "${left[@]}")" ]] && ((SECONDS < deadline)); do sleep 0.2; done
        mapfile -t left < <(alive "${pids[@]}")
        ((${#left[@]} == 0)) || die "$name: processes survived SIGKILL: ${left[*]}"
    fi
    rm -f "$file"
    log "$name stopped"
}
