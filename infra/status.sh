#!/usr/bin/env bash
# Show what infra/start.sh started: each component's state and PID, and whether the Prefect
# API and the Dask scheduler answer.
#
#   infra/status.sh
#
# Exit status: 0 when every component runs, 3 when any does not (LSB `status` convention).
# Environment: as infra/start.sh (BINANCE_LAKE_RUN_DIR, PREFECT_HOST, PREFECT_PORT,
# DASK_SCHEDULER_HOST, DASK_SCHEDULER_PORT, ...); see infra/README.md.
set -euo pipefail

# shellcheck source=infra/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rc=0
for c in "${COMPONENTS[@]}"; do
    if pid="$(running_pid "$c")"; then
        printf '%-15s running  pid %-8s log %s\n' "$c" "$pid" "$(log_file "$c")"
    elif [[ -f "$(pid_file "$c")" ]]; then
        printf '%-15s stale PID file %s (infra/stop.sh %s removes it)\n' "$c" "$(pid_file "$c")" "$c"
        rc=3
    else
        printf '%-15s stopped\n' "$c"
        rc=3
    fi
done
if prefect_healthy; then
    echo "Prefect API:    $LAKE_API_URL healthy (UI: $PREFECT_UI_URL)"
else
    echo "Prefect API:    $LAKE_API_URL does not answer"
fi
if scheduler_listening; then
    echo "Dask scheduler: $DASK_ADDRESS, $(dask_worker_count 2>/dev/null || echo '?') workers"
else
    echo "Dask scheduler: $DASK_ADDRESS does not answer"
fi
exit "$rc"
