# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# Shared settings for ops/kafka/{fetch,start,stop}.sh. Sourced, not run.
#
# Environment (all optional):
#   SKYATTR_KAFKA_VERSION   Kafka version to run (default 4.1.2; Maven Central serves 4.0.0-4.4.0)
#   SKYATTR_KAFKA_HOME      cache root (default $HOME/.cache/skyattr-kafka); jars go to <home>/<version>/libs
#   SKYATTR_KAFKA_PORT      PLAINTEXT port on 127.0.0.1 (default 9092); the KRaft controller uses port+1
#   SKYATTR_KAFKA_DATA_DIR  config, pid file, broker log and log.dirs (default <home>/<version>/data-<port>)
#   SKYATTR_KAFKA_HEAP_OPTS JVM heap flags (default "-Xms256m -Xmx512m")
#   SKYATTR_KAFKA_START_TIMEOUT  seconds to wait for the broker to answer (default 90)
#   SKYATTR_KAFKA_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30)
#   SKYATTR_KAFKA_PYTHON    interpreter for the readiness probe (default: repo .venv/bin/python, else python3)
#   JAVA_HOME / MVN         java (17+) and maven to use (default: `java` and `mvn` on PATH)

KAFKA_OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_REPO_ROOT="$(cd "$KAFKA_OPS_DIR/../.." && pwd)"

KAFKA_VERSION="${SKYATTR_KAFKA_VERSION:-4.1.2}"
KAFKA_HOME_DIR="${SKYATTR_KAFKA_HOME:-${HOME:?HOME is not set}/.cache/skyattr-kafka}"
KAFKA_PORT="${SKYATTR_KAFKA_PORT:-9092}"
KAFKA_HOST="127.0.0.1"

if ! [[ "$KAFKA_PORT" =~ ^[0-9]+$ ]] || ((KAFKA_PORT < 1 || KAFKA_PORT > 65534)); then
    echo "ERROR: SKYATTR_KAFKA_PORT must be a port number below 65535, got '$KAFKA_PORT'" >&2
    exit 2
fi
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))

KAFKA_VERSION_DIR="$KAFKA_HOME_DIR/$KAFKA_VERSION"
KAFKA_LIBS_DIR="$KAFKA_VERSION_DIR/libs"
KAFKA_LIBS_MARKER="$KAFKA_LIBS_DIR/.complete"
KAFKA_DATA_DIR="${SKYATTR_KAFKA_DATA_DIR:-$KAFKA_VERSION_DIR/data-$KAFKA_PORT}"
KAFKA_PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
KAFKA_LOG_FILE="$KAFKA_DATA_DIR/broker.log"
KAFKA_PROPS_FILE="$KAFKA_DATA_DIR/server.properties"
KAFKA_LOG4J_FILE="$KAFKA_DATA_DIR/log4j2.xml"
KAFKA_LOG_DIRS="$KAFKA_DATA_DIR/kraft-logs"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    KAFKA_JAVA="$JAVA_HOME/bin/java"
else
    KAFKA_JAVA="java"
fi

kafka_log() {
    printf '[skyattr-kafka] %s\n' "$*"
}

kafka_die() {
    printf '[skyattr-kafka] ERROR: %s\n' "$*" >&2
    exit 1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
kafka_port_open() {
    (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null
}

# True if pid $1 exists and is not a zombie.
kafka_pid_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(ps -p "$1" -o stat= 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z* ]]
}

# Prints the pid from the pid file if that process is alive and is our broker; fails otherwise.
kafka_running_pid() {
    local pid args
    [[ -f "$KAFKA_PID_FILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$KAFKA_PID_FILE")"
    [[ -n "$pid" ]] || return 1
    kafka_pid_alive "$pid" || return 1
    # Guard against a recycled pid: the command line must be our kafka.Kafka with our server.properties.
    args="$(tr "\\0" " " <"/proc/$pid/cmdline" 2>/dev/null || ps -ww -p "$pid" -o args= 2>/dev/null || true)"
    [[ "$args" == *kafka.Kafka* && "$args" == *"$KAFKA_PROPS_FILE"* ]] || return 1
    printf '%s\n' "$pid"
}
