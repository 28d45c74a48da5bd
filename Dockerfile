# syntax=docker/dockerfile:1
#
# skyattr daemon image. Build, run and GPU notes: ops/docker/README.md. Lint and static checks (no Docker needed):
# ops/ci/check-docker.sh and tests/ops/test_dockerfile.py.
#
#   docker build -t skyattr:0.1.0 .                                    # CPU (jax + jaxlib from PyPI)
#   docker build --build-arg VARIANT=cuda -t skyattr:0.1.0-cuda .      # NVIDIA GPU: installs the `gpu` extra
#
# Base image: python:3.12.12-slim-bookworm, pinned by the digest of its multi-architecture index. That digest was
# taken from public references (several independent repositories pin this exact tag@digest); it could not be checked
# against the registry from the machine where this file was written (no Docker engine, no registry access there).
# Verify or bump it with:  docker buildx imagetools inspect python:3.12.12-slim-bookworm
# Builder and runtime must use the same base: the venv's bin/python is a symlink to /usr/local/bin/python3.12.
# Python 3.12, not 3.11: pip resolves JAX 0.12 there (3.11 stops at JAX 0.10.2; pyproject.toml says why it matters).
#
# VARIANT=cuda: the jax[cuda12] wheels bundle the CUDA runtime, cuDNN, cuBLAS, NCCL and ptxas (nvidia-* wheels), so
# the base stays slim; the node still needs the NVIDIA driver and the NVIDIA container toolkit (docker run --gpus all,
# or the device plugin in Kubernetes). Without a GPU the cuda image falls back to the CPU with a warning.

ARG VARIANT=cpu

# ---------------------------------------------------------------------------------------------------------------------
FROM python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c AS builder

ARG VARIANT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Only what the wheel is built from: the metadata, the README it names, and the two packages (with the bundled
# archive streamer/data/* and the schemas streamer/schemas/*.json as package data).
COPY pyproject.toml README.md ./
COPY kernels/ kernels/
COPY streamer/ streamer/

# Build the wheel, then install it with the VARIANT's extras into a self-contained venv; pip and setuptools are removed
# from the venv afterwards (the runtime never installs anything, and no dependency needs them at run time). Every
# dependency has a binary wheel for CPython 3.12 on linux/amd64, so no compiler is needed.
RUN python -m venv /opt/venv \
 && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && case "${VARIANT}" in \
      cpu) extras="[distributed]" ;; \
      cuda) extras="[gpu,distributed]" ;; \
      *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
 && set -- /wheels/skyattr-*.whl \
 && /opt/venv/bin/python -m pip install --no-cache-dir "${1}${extras}" \
 && /opt/venv/bin/python -m pip uninstall --yes setuptools pip \
 && /opt/venv/bin/skyattr --help > /dev/null

# ---------------------------------------------------------------------------------------------------------------------
FROM python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c AS runtime

ARG VARIANT

LABEL org.opencontainers.image.title="skyattr" \
      org.opencontainers.image.description="Live Aumann-Shapley attribution on the Bluesky firehose, with scale-bias alerts" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.skyattr.variant="${VARIANT}"

# Read-only root filesystem: everything that would write outside the volume goes to /tmp (mount a tmpfs there);
# Compiled kernels are kept on the volume (SKYATTR_COMPILATION_CACHE), so a restarted container does not recompile.
# /metrics binds all interfaces here (the daemon's own default is loopback): `docker run -p 9464:9464` and the
# orchestrator's probes reach the container from outside it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SKYATTR_CHECKPOINT_DIR=/var/lib/skyattr/checkpoints \
    SKYATTR_COMPILATION_CACHE=/var/lib/skyattr/jax-cache \
    SKYATTR_METRICS_HOST=0.0.0.0

# uid/gid 10001, numeric in USER so that Kubernetes' runAsNonRoot can verify it. The data directory is created and
# owned here so that a fresh named volume mounted on it inherits the ownership.
RUN groupadd --system --gid 10001 skyattr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/skyattr --create-home --shell /usr/sbin/nologin skyattr \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/skyattr /var/lib/skyattr/checkpoints

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/skyattr

# /metrics, /healthz, /readyz (streamer.app.settings.DEFAULT_METRICS_PORT; `run` serves it by default, `replay` does not).
EXPOSE 9464
VOLUME ["/var/lib/skyattr"]

# Liveness only (/healthz); readiness (/readyz: state restored and relay connected) is for the orchestrator to probe.
# No curl in slim images: python's urllib, which raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('SKYATTR_METRICS_PORT') or '9464'), timeout=4)"]

ENTRYPOINT ["skyattr"]
CMD ["run"]
