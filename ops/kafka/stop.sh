#!/usr/bin/env bash
# Stop the broker started by ops/kafka/start.sh: SIGTERM, bounded wait, then SIGKILL; removes the pid file.
# Usage: ops/kafka/stop.sh [--clean]     --clean also deletes the data dir (topics, KRaft metadata, log)
set -euo pipefail

# shellcheck source=_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

clean=0
for arg in "$@"; do
    case "$arg" in
        --clean) clean=1 ;;
        -h | --help)
            sed -n '2,3s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) kafka_die "unknown argument: $arg (try --help)" ;;
    esac
done

STOP_TIMEOUT="${SKYATTR_KAFKA_STOP_TIMEOUT:-30}"

if pid="$(kafka_running_pid)"; then
    kafka_log "stopping Kafka (pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kafka_pid_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if kafka_pid_alive "$pid"; then
        kafka_log "still running after ${STOP_TIMEOUT} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in {1..20}; do
            kafka_pid_alive "$pid" || break
            sleep 0.25
        done
    fi
    if kafka_pid_alive "$pid"; then
        kafka_die "pid $pid survived SIGKILL"
    fi
    kafka_log "stopped"
else
    kafka_log "no broker running for data dir $KAFKA_DATA_DIR"
fi
rm -f "$KAFKA_PID_FILE"

if ((clean)); then
    case "$KAFKA_DATA_DIR" in
        "" | / | "$HOME" | "$KAFKA_HOME_DIR" | "$KAFKA_VERSION_DIR")
            kafka_die "refusing to delete data dir '$KAFKA_DATA_DIR'"
            ;;
    esac
    rm -rf "$KAFKA_DATA_DIR"
    kafka_log "deleted data dir $KAFKA_DATA_DIR"
fi

if kafka_port_open "$KAFKA_PORT"; then
    kafka_log "warning: 127.0.0.1:$KAFKA_PORT still accepts connections (another process owns it)"
fi
