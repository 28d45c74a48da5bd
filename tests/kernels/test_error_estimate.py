"""``attribute(..., estimate_error=True)``: phi at m nodes against phi at 2m, an error bar that means what it says.

The true error is measured against the independent float64 oracle of tests/kernels/test_oracle.py (hand-derived
gradients, 2,048-node composite Gauss–Legendre); the estimate must bound it within a factor of 2, in relative L2 and
agent by agent, over node counts where the rule is far from converged and for thresholds as steep as κ = 32, where
the completeness residual understates the error by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import attribute, get_indicator
from tests.kernels.test_oracle import ORACLES, _population, cascade, path_integral

FLOOR = 1e-12  # float64: below this the two are the same number


@pytest.mark.parametrize("kappa", [2.0, 8.0, 32.0])
@pytest.mark.parametrize("seed", [2, 3])
def test_the_estimate_bounds_the_true_error_within_a_factor_of_two(kappa: float, seed: int) -> None:
    x, g = _population(seed, n=200)
    want = path_integral(cascade(g, kappa=kappa)[1], x, panels=256)
    ind = get_indicator("cascade", kappa=kappa)
    for nodes in (8, 16, 32, 64, 128):
        a = attribute(ind, x, g, nodes=nodes, dtype="float64", estimate_error=True)
        assert a.error_estimate is not None and a.error_max is not None
        true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
        assert true <= 2 * a.error_estimate + FLOOR, (nodes, true, a.error_estimate)
        assert a.error_estimate <= 2 * true + FLOOR, "and does not cry wolf"
        assert np.max(np.abs(a.phi - want)) <= 2 * a.error_max + FLOOR * np.max(np.abs(want)), nodes


def test_the_residual_is_no_error_bar_but_the_estimate_is() -> None:
    """At κ = 32 and 32 nodes the completeness residual is several times below the true error; the estimate is not."""
    x, g = _population(3, n=200)
    want = path_integral(cascade(g, kappa=32.0)[1], x, panels=256)
    a = attribute(get_indicator("cascade", kappa=32.0), x, g, nodes=32, dtype="float64", estimate_error=True)
    true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
    assert a.residual < true / 3 and true <= 2 * a.error_estimate


@pytest.mark.parametrize("name", ["reach", "saturation", "exposure"])
def test_every_indicator_gets_an_estimate_and_converged_ones_a_small_one(name: str) -> None:
    x, g = _population(5, n=100)
    want = path_integral(ORACLES[name](g)[1], x)
    a = attribute(name, x, g, nodes=64, dtype="float64", estimate_error=True)
    true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
    assert a.error_estimate is not None and true <= 2 * a.error_estimate + FLOOR and a.error_estimate < 1e-6
    assert attribute(name, x, g, nodes=64, dtype="float64").error_estimate is None, "only when asked for"
