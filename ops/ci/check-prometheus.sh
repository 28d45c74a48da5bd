#!/usr/bin/env bash
# Check the monitoring files: Prometheus rules (promtool check + unit tests), the Grafana dashboard (generated from
# code, no drift) and a real Prometheus scraping a replay of the daemon (tests/ops/test_monitoring.py, required
# here: SKYATTR_RUN_DEPLOY_CHECKS=1).
# Usage: bash ops/ci/check-prometheus.sh     (from any directory; env: SKYATTR_VENV, default <repo>/.venv)
# Installs what is missing: Debian's `prometheus` package (prometheus + promtool) with apt-get, without leaving its
# system service running, and the pinned Grafana dashboard library into the virtual environment.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
VENV="${SKYATTR_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
# ops/grafana/dashboard.py is written against this exact release (the committed JSON must not drift).
GRAFANA_SDK='grafana-foundation-sdk==1769699998!10.1.0'
RULES=ops/prometheus/skyattr-rules.yaml
RULE_TESTS=ops/prometheus/tests/skyattr-rules.test.yaml

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "check-prometheus: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

die() {
    echo "check-prometheus: $*" >&2
    exit 1
}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
t0=$(now_ms)
step_start=$t0
timings=()
step_done() { # name: record the seconds since the previous step
    local now
    now=$(now_ms)
    timings+=("$1 $(((now - step_start) / 1000)).$((((now - step_start) % 1000) / 100))s")
    step_start=$now
}

# ------------------------------------------------------------------------------------------ prometheus + promtool
# Debian's postinst would start (and enable) a system Prometheus on :9090. Where no policy-rc.d exists yet, a
# temporary one (exit 101 = "action forbidden") keeps invoke-rc.d from starting it; on a systemd host the unit is
# also stopped and disabled afterwards, and a SysV-started one is stopped through its own init script.
install_prometheus() {
    [[ $(id -u) -eq 0 ]] || die "prometheus/promtool missing and not root: apt-get install prometheus (or put them on PATH)"
    command -v apt-get >/dev/null 2>&1 || die "prometheus/promtool missing and no apt-get: install Prometheus (>= 2.42) by hand"
    local policy=/usr/sbin/policy-rc.d temp_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from ops/ci/check-prometheus.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        temp_policy=$policy
        # shellcheck disable=SC2064  # the path is fixed now, on purpose
        trap "rm -f '$policy'" EXIT
    fi
    echo "check-prometheus: installing Debian package prometheus (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [[ -n $temp_policy ]]; then
        rm -f "$temp_policy"
        trap - EXIT
    fi
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
}
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    install_prometheus
fi
command -v prometheus >/dev/null 2>&1 || die "prometheus still not on PATH after installing"
command -v promtool >/dev/null 2>&1 || die "promtool still not on PATH after installing"
if command -v ss >/dev/null 2>&1 && ss -Hltn 'sport = :9090' 2>/dev/null | grep -q .; then
    echo "check-prometheus: note: something listens on :9090 (the tests use free ports of their own)" >&2
fi
prom_version=$(prometheus --version 2>&1 | head -n1)
step_done prometheus

# ------------------------------------------------------------------------------------------ python environment
[[ -x $PY ]] || die "no virtual environment at $VENV: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"
if [[ "$("$PY" -c 'import importlib.metadata as m; print(m.version("grafana-foundation-sdk"))' 2>/dev/null)" \
    != "${GRAFANA_SDK#*==}" ]]; then
    echo "check-prometheus: installing $GRAFANA_SDK into $VENV" >&2
    "$PY" -m pip install --quiet "$GRAFANA_SDK"
fi
step_done python-deps

# ------------------------------------------------------------------------------------------ the checks
promtool check rules "$RULES"
step_done "promtool-check"
promtool test rules "$RULE_TESTS"
step_done "promtool-test"

summary="not run here (SKYATTR_CHECK_NO_PYTEST=1: the caller's test run includes tests/ops/test_monitoring.py)"
if [[ "${SKYATTR_CHECK_NO_PYTEST:-0}" != 1 ]]; then
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    SKYATTR_RUN_DEPLOY_CHECKS=1 "$PY" -m pytest -q -p no:cacheprovider tests/ops/test_monitoring.py 2>&1 | tee "$log"
    summary=$(grep -E '^[0-9]+ (passed|failed)' "$log" | tail -n1 || true)
    step_done pytest
fi

total=$((($(now_ms) - t0) / 1000))
echo "OK check-prometheus: ${prom_version%% (*}; rules valid; rule unit tests pass; pytest ${summary:-ok};" \
    "$(printf '%s, ' "${timings[@]}")total ${total}s"
