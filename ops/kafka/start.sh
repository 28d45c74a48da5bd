#!/usr/bin/env bash
# Start a single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1, no Docker.
# Usage: ops/kafka/start.sh        (env: SKYATTR_KAFKA_PORT/_VERSION/_HOME/_DATA_DIR, see ops/kafka/README.md)
# Fetches the jars on first use, formats storage once, waits until the broker answers. Idempotent.
set -euo pipefail

# shellcheck source=_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,4s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) kafka_die "unknown argument: $1 (try --help)" ;;
esac

START_TIMEOUT="${SKYATTR_KAFKA_START_TIMEOUT:-90}"
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

# ---------------------------------------------------------------- readiness helpers

probe_python=""
if [[ -n "${SKYATTR_KAFKA_PYTHON:-}" ]]; then
    probe_python="$SKYATTR_KAFKA_PYTHON"
elif [[ -x "$KAFKA_REPO_ROOT/.venv/bin/python" ]]; then
    probe_python="$KAFKA_REPO_ROOT/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1; then
    probe_python="python3"
fi
last_probe_msg="port $KAFKA_PORT not accepting connections yet"

# True once the port accepts connections and (if Python exists) the broker answers ApiVersions + Metadata.
broker_ready() {
    if ! kafka_port_open "$KAFKA_PORT"; then
        last_probe_msg="port $KAFKA_PORT not accepting connections yet"
        return 1
    fi
    [[ -n "$probe_python" ]] || return 0
    if last_probe_msg="$("$probe_python" "$KAFKA_OPS_DIR/probe.py" "$BOOTSTRAP" 2>&1)"; then
        return 0
    fi
    return 1
}

show_log_tail() {
    if [[ -f "$KAFKA_LOG_FILE" ]]; then
        echo "----- last 50 lines of $KAFKA_LOG_FILE -----" >&2
        tail -n 50 "$KAFKA_LOG_FILE" >&2
        echo "--------------------------------------------" >&2
    else
        echo "(no broker log at $KAFKA_LOG_FILE)" >&2
    fi
}

# Waits for pid $1 to serve; on failure prints the log tail and, if $2 == kill, stops the process.
wait_until_ready() {
    local pid="$1" on_fail="$2" started=$SECONDS
    local deadline=$((SECONDS + START_TIMEOUT))
    while :; do
        if ! kafka_pid_alive "$pid"; then
            show_log_tail
            rm -f "$KAFKA_PID_FILE"
            kafka_die "broker process $pid exited during startup (log: $KAFKA_LOG_FILE)"
        fi
        if broker_ready; then
            kafka_log "ready after $((SECONDS - started)) s: $last_probe_msg"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            if [[ "$on_fail" == kill ]]; then
                kill -KILL "$pid" 2>/dev/null || true
                rm -f "$KAFKA_PID_FILE"
                kafka_log "killed broker pid $pid"
            fi
            kafka_die "broker on $BOOTSTRAP did not come up within ${START_TIMEOUT} s (last check: $last_probe_msg)"
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- already running?

# Serialise concurrent start.sh runs for the same data dir (flock is util-linux; skipped where absent).
mkdir -p "$KAFKA_DATA_DIR"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$KAFKA_DATA_DIR/.start.lock"
    flock -w $((START_TIMEOUT + 120)) 9 || kafka_die "another start.sh for $KAFKA_DATA_DIR holds the lock"
fi

if pid="$(kafka_running_pid)"; then
    if kafka_port_open "$KAFKA_PORT"; then
        kafka_log "Kafka $KAFKA_VERSION already running on $BOOTSTRAP (pid $pid, data $KAFKA_DATA_DIR)"
        exit 0
    fi
    kafka_log "Kafka $KAFKA_VERSION is starting (pid $pid); waiting up to ${START_TIMEOUT} s"
    wait_until_ready "$pid" keep
    exit 0
fi
if [[ -f "$KAFKA_PID_FILE" ]]; then
    kafka_log "removing stale pid file $KAFKA_PID_FILE"
    rm -f "$KAFKA_PID_FILE"
fi
for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if kafka_port_open "$p"; then
        kafka_die "127.0.0.1:$p is already in use by another process (not this script's broker for" \
            "data dir $KAFKA_DATA_DIR). Stop it or choose another SKYATTR_KAFKA_PORT (uses port and port+1)."
    fi
done

# ---------------------------------------------------------------- java + jars

command -v "$KAFKA_JAVA" >/dev/null 2>&1 || kafka_die "java not found (install a JDK 17+ or set JAVA_HOME)"
java_version_line="$("$KAFKA_JAVA" -version 2>&1 | head -n 1)"
java_major="$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"$java_version_line")"
read -r java_major java_minor <<<"$java_major"
[[ "$java_major" == 1 ]] && java_major="${java_minor:-0}"
if ! [[ "$java_major" =~ ^[0-9]+$ ]] || ((java_major < 17)); then
    kafka_die "Kafka $KAFKA_VERSION needs Java 17+, found: $java_version_line (set JAVA_HOME)"
fi

if [[ ! -f "$KAFKA_LIBS_MARKER" ]]; then
    bash "$KAFKA_OPS_DIR/fetch.sh"
fi
CLASSPATH_GLOB="$KAFKA_LIBS_DIR/*"

# ---------------------------------------------------------------- config

mkdir -p "$KAFKA_DATA_DIR" "$KAFKA_LOG_DIRS"

cat >"$KAFKA_PROPS_FILE" <<EOF
# Written by ops/kafka/start.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_LOG_DIRS

# Single node: every replication factor / ISR is 1.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0

# Small footprint for tests / CI.
num.network.threads=2
num.io.threads=2
log.retention.hours=24
log.segment.bytes=104857600
EOF

cat >"$KAFKA_LOG4J_FILE" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by ops/kafka/start.sh: everything to stdout, which start.sh appends to broker.log. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log.LogLoader" level="WARN"/>
  </Loggers>
</Configuration>
EOF

read -r -a heap_opts <<<"${SKYATTR_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
jvm_opts=(
    "${heap_opts[@]}"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_LOG4J_FILE"
    "-Dkafka.logs.dir=$KAFKA_DATA_DIR"
)

# ---------------------------------------------------------------- format storage (once per data dir)

run_storage_tool() {
    # kafka.tools.StorageTool (Scala, in kafka_2.13 up to at least 4.1); newer releases may move it to Java.
    local cls out
    for cls in kafka.tools.StorageTool org.apache.kafka.tools.StorageTool; do
        if out="$("$KAFKA_JAVA" -Xmx256m "-Dlog4j2.configurationFile=$KAFKA_LOG4J_FILE" \
            -cp "$CLASSPATH_GLOB" "$cls" "$@" 2>&1)"; then
            printf '%s\n' "$out"
            return 0
        fi
        if ! grep -q -e 'Could not find or load main class' -e 'ClassNotFoundException' <<<"$out"; then
            printf '%s\n' "$out" >&2
            return 1
        fi
    done
    echo "no StorageTool class found in $KAFKA_LIBS_DIR" >&2
    return 1
}

if [[ ! -f "$KAFKA_LOG_DIRS/meta.properties" ]]; then
    kafka_log "formatting KRaft storage in $KAFKA_LOG_DIRS"
    uuid_out="$(run_storage_tool random-uuid)" || kafka_die "StorageTool random-uuid failed (see above)"
    cluster_id="$(grep -E '^[A-Za-z0-9_-]{22}$' <<<"$uuid_out" | tail -n 1 || true)"
    [[ -n "$cluster_id" ]] || kafka_die "StorageTool random-uuid printed no cluster id: $uuid_out"
    run_storage_tool format --config "$KAFKA_PROPS_FILE" --cluster-id "$cluster_id" --ignore-formatted \
        >>"$KAFKA_LOG_FILE" || kafka_die "StorageTool format failed (see above)"
fi

# ---------------------------------------------------------------- launch

launcher=(nohup)
command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)

kafka_log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT, data $KAFKA_DATA_DIR)"
printf '\n===== %s start.sh: starting Kafka %s =====\n' "$(date -u +%FT%TZ)" "$KAFKA_VERSION" >>"$KAFKA_LOG_FILE"
(
    cd "$KAFKA_DATA_DIR"
    exec "${launcher[@]}" "$KAFKA_JAVA" "${jvm_opts[@]}" -cp "$CLASSPATH_GLOB" kafka.Kafka "$KAFKA_PROPS_FILE" \
        >>"$KAFKA_LOG_FILE" 2>&1 </dev/null 9>&-
) &
pid=$!
printf '%s\n' "$pid" >"$KAFKA_PID_FILE"

wait_until_ready "$pid" kill
kafka_log "Kafka $KAFKA_VERSION up on $BOOTSTRAP (pid $pid, log $KAFKA_LOG_FILE)"
kafka_log "export SKYATTR_KAFKA_BOOTSTRAP=$BOOTSTRAP"
