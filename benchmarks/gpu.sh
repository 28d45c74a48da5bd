#!/usr/bin/env bash
# The kernels on an NVIDIA GPU, in one prepared run: a fresh virtual environment with the `gpu` extra (JAX with its
# CUDA 12 plugin, from the package registry), a check that JAX sees the GPU, then `python -m benchmarks.gpu`, which
# prints the table and writes it as JSON and Markdown (gpu.json, gpu.md) into $OUT (default benchmarks/gpu-out),
# then `python -m benchmarks.daemon_device` (daemon_device.json, .md: device memory across runs, first run after a
# restart).
#
#   bash benchmarks/gpu.sh                         # on the GPU machine: ~2 min to install, the table in < 8 min
#   bash benchmarks/gpu.sh --cpu --sizes 2000 5000   # the same script on a CPU, small (CI runs this: tests/benchmarks)
#
# Arguments go to benchmarks/gpu.py. SKYATTR_GPU_VENV=DIR uses (and makes, when missing) that environment instead of
# .venv-gpu; SKYATTR_GPU_SKIP_INSTALL=1 uses the current `python` as it is. Python 3.12 when there is one: pip finds
# JAX 0.12 there (3.11 stops at 0.10.2, whose GPU scatter-add is slow: jax issue #38806).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/gpu-out}"
cpu=0
for arg in "$@"; do
  [ "$arg" = "--cpu" ] && cpu=1
done

if [ "${SKYATTR_GPU_SKIP_INSTALL:-0}" = 1 ]; then
  PY="${PYTHON:-python}"
else
  VENV="${SKYATTR_GPU_VENV:-.venv-gpu}"
  if [ ! -x "$VENV/bin/python" ]; then
    BASE=""
    for candidate in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 python3; do
      if "$candidate" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        BASE="$candidate"
        break
      fi
    done
    [ -n "$BASE" ] || { echo "gpu.sh: no Python 3.11+ found" >&2; exit 2; }
    "$BASE" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    extra=".[gpu]"
    [ "$cpu" = 1 ] && extra="."
    "$VENV/bin/python" -m pip install --quiet -e "$extra"
  fi
  PY="$VENV/bin/python"
fi

"$PY" - "$cpu" <<'EOF'
import sys

import jax

devices = jax.devices()
print(f"JAX {jax.__version__}: {', '.join(f'{d.platform}:{d.device_kind}' for d in devices)}")
if sys.argv[1] != "1" and devices[0].platform != "gpu":
    sys.exit("gpu.sh: JAX sees no GPU (is the NVIDIA driver there, and did the cuda12 plugin install?)")
EOF

timeout 480 "$PY" -m benchmarks.gpu --out "$OUT" "$@"

# The attributor as the daemon runs it on this device (benchmarks/daemon_device.py): the device memory held across
# runs of a moving window, and the first run after a restart with the compilation cache. Small with --cpu (CI).
daemon=(--agents 1000000 --runs 9 --restart-agents 1671587)
[ "$cpu" = 1 ] && daemon=(--agents 3000 --runs 6 --restart-agents 3000)
timeout 300 "$PY" -m benchmarks.daemon_device --out "$OUT" "${daemon[@]}"
