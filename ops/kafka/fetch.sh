#!/usr/bin/env bash
# Resolve the Kafka broker jars from Maven Central into $SKYATTR_KAFKA_HOME/<version>/libs (once).
# Usage: ops/kafka/fetch.sh [--force]      (start.sh calls this; run it alone to warm a CI cache)
set -euo pipefail

# shellcheck source=_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help)
            sed -n '2,3s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) kafka_die "unknown argument: $arg (try --help)" ;;
    esac
done

if ((force == 0)) && [[ -f "$KAFKA_LIBS_MARKER" ]]; then
    kafka_log "Kafka $KAFKA_VERSION jars already cached in $KAFKA_LIBS_DIR"
    exit 0
fi

MVN="${MVN:-mvn}"
command -v "$MVN" >/dev/null 2>&1 ||
    kafka_die "Maven ('$MVN') not found on PATH; it is needed once to fetch the Kafka jars (apt-get install maven)"

mkdir -p "$KAFKA_VERSION_DIR"
tmp_dir="$(mktemp -d "$KAFKA_VERSION_DIR/.libs.XXXXXX")"
mvn_log="$tmp_dir.mvn.log"
cleanup() {
    rm -rf "$tmp_dir" "$mvn_log"
    rmdir "$KAFKA_VERSION_DIR" 2>/dev/null || true # only if empty (a failed first fetch)
}
trap cleanup EXIT

kafka_log "fetching Kafka $KAFKA_VERSION broker jars from Maven Central into $KAFKA_LIBS_DIR ..."
started=$SECONDS
if ! "$MVN" -q -B -U -Dstyle.color=never -f "$KAFKA_OPS_DIR/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime \
    -DoutputDirectory="$tmp_dir/libs" >"$mvn_log" 2>&1; then
    {
        echo "----- last 40 lines of Maven output -----"
        tail -n 40 "$mvn_log" | sed -e $'s/\x1b\[[0-9;]*m//g'
        echo "-----------------------------------------"
    } >&2
    kafka_die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies." \
        "Check SKYATTR_KAFKA_VERSION (Maven Central serves 4.0.0-4.4.0) and that Maven Central is reachable" \
        "(proxy / ~/.m2/settings.xml)."
fi

shopt -s nullglob
jars=("$tmp_dir"/libs/*.jar)
shopt -u nullglob
core_jar="$tmp_dir/libs/kafka_2.13-$KAFKA_VERSION.jar"
if ((${#jars[@]} == 0)) || [[ ! -f "$core_jar" ]]; then
    kafka_die "Maven succeeded but $(basename "$core_jar") is missing from the copied jars (${#jars[@]} jars)"
fi

printf '%s\n' "$KAFKA_VERSION" >"$tmp_dir/libs/.complete"
rm -rf "$KAFKA_LIBS_DIR"
mv "$tmp_dir/libs" "$KAFKA_LIBS_DIR"
kafka_log "cached ${#jars[@]} jars ($(du -sh "$KAFKA_LIBS_DIR" | cut -f1)) in $((SECONDS - started)) s"
