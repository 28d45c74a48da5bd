"""Start-up: the command line answers without loading JAX, and JAX's backend search prints nothing."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import kernels

PROBE = """
import sys
from typer.testing import CliRunner
from streamer.app.cli import app
for args in (["--help"], ["run", "--help"], ["replay", "--help"], ["report", "--help"], ["attribute", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("jax", "jaxlib", "scipy", "matplotlib") if m in sys.modules)
print(",".join(heavy))
"""


def test_help_loads_no_jax_scipy_or_matplotlib() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"`--help` imported {out.stdout.strip()}"


def test_every_public_kernel_name_is_the_object_its_module_defines() -> None:
    """The package resolves its names on first use; a submodule of the same name must never shadow them."""
    for info in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"kernels.{info.name}")  # every submodule loaded: the attributes they set are there
    for name in kernels.__all__:
        value = getattr(kernels, name)
        where = importlib.import_module(kernels._WHERE[name])
        assert value is (where if where.__name__ == f"kernels.{name}" else getattr(where, name)), name
    assert callable(kernels.scale_bias)


def test_the_replay_log_has_no_tpu_line(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", "--quiet", "--no-progress", "--interval", "86400"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tpu" not in out.stderr.lower() and "libtpu" not in out.stderr, out.stderr[:500]


RUN_PROBE = """
import asyncio, sys
from streamer.app.daemon import live_pipeline
from streamer.app.settings import load_settings

async def main():
    stop = asyncio.Event()
    seen = []

    def ready(daemon):
        seen.append(("jax" in sys.modules, daemon.metrics.port is not None))
        stop.set()

    settings = load_settings(flags={"relay": "ws://127.0.0.1:1", "metrics_port": 0, "indicator": "reach"}, env={})
    await live_pipeline(settings, tables=False, stop=stop, on_ready=ready)
    print(seen)

asyncio.run(main())
"""


def test_run_serves_its_endpoints_before_jax_has_loaded() -> None:
    """The configuration (indicator and parameters included) is checked and /healthz is served without JAX: a
    probe sees a live process within a second or two, not after the 5-10 s JAX takes to import."""
    out = subprocess.run([sys.executable, "-c", RUN_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[(False, True)]", out.stdout
