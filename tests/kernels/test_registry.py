"""The indicator registry: built-ins with documented defaults, the decorator, the entry-point group."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import attribute, get_indicator, register_indicator


def test_builtins_are_registered_with_documented_defaults() -> None:
    assert {"reach", "cascade", "saturation"} <= set(kernels.available_indicators())
    assert dict(get_indicator("cascade").params) == {"kappa": 2.0, "theta": 3.0, "rho": 1.0}
    assert dict(get_indicator("saturation").params) == {"capacity_per_agent": 1.0, "capacity": None}
    assert get_indicator("cascade") is get_indicator("cascade"), "instances are cached so kernels compile once"
    assert get_indicator("cascade", kappa=4.0) is not get_indicator("cascade")


def test_unknown_names_and_bad_parameters_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown indicator 'nope'; known: .*cascade"):
        get_indicator("nope")
    with pytest.raises(ValueError, match="bad parameters for indicator 'reach'"):
        get_indicator("reach", kappa=1.0)
    with pytest.raises(ValueError, match="kappa must be a positive finite number"):
        get_indicator("cascade", kappa=-1.0)
    with pytest.raises(ValueError, match="capacity"):
        get_indicator("saturation", capacity=0.0)


def test_decorated_user_indicator_is_attributed(population: kernels.Population) -> None:
    @register_indicator("test_active_exposed")
    def active_exposed(threshold: float = 2.0) -> object:
        return lambda x, g: g.total(jax.nn.sigmoid(g.exposure(x) - threshold))

    ind = get_indicator("test_active_exposed", threshold=1.0)
    assert ind.name == "test_active_exposed" and not ind.linear_stem
    a = attribute(ind, population.x, population.graph, nodes=64, dtype="float64")
    assert a.path == "generic"
    assert a.residual < 1e-6
    assert a.value > 0 and np.all(np.isfinite(a.phi))


def test_entry_point_group_loads_third_party_indicators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that declares ``[project.entry-points."skyattr.indicators"]`` is found without importing it."""
    pkg = tmp_path / "thirdparty_indicators.py"
    pkg.write_text(
        "import jax.numpy as jnp\n"
        "def squared_reach(scale=1.0):\n"
        "    return lambda x, g: scale * g.total(jnp.log1p(g.exposure(x)) ** 2)\n"
    )
    dist = tmp_path / "thirdparty_indicators-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-indicators\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{kernels.ENTRY_POINT_GROUP}]\nsquared_reach = thirdparty_indicators:squared_reach\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert "squared_reach" in kernels.available_indicators()
        ind = get_indicator("squared_reach", scale=2.0)
        g = kernels.AttentionGraph(np.array([1]), np.array([0]), np.array([1.0]), 2)
        assert float(ind(jnp.array([3.0, 0.0]), g)) == pytest.approx(2.0 * np.log1p(3.0) ** 2, rel=1e-6)
    finally:
        from kernels import indicators

        indicators._FACTORIES.pop("squared_reach", None)
        sys.modules.pop("thirdparty_indicators", None)


def test_kernels_never_import_the_daemon() -> None:
    """kernels/ is a pure library: no module in it may import streamer (I/O lives at the edges)."""
    root = Path(kernels.__file__).parent
    offenders = [
        p.name
        for p in root.glob("*.py")
        if any(line.strip().startswith(("import streamer", "from streamer")) for line in p.read_text().splitlines())
    ]
    assert offenders == []
    probe = "import sys, kernels; print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamer'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
