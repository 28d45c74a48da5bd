"""The calibrated generator's constants are the least-squares fit docs/calibration.md says they are, refitted here
from the published quantiles with scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from kernels.synthetic import CALIBRATED, heavy_tailed_population

FOLLOWERS = {0.5: 1, 0.95: 95, 0.995: 1000, 0.999: 2300}
POSTS = {0.5: 7, 0.95: 292, 0.99: 1000, 0.999: 8800}


def _fit(quantiles: dict[float, int]) -> tuple[float, float]:
    p, q = np.array(list(quantiles)), np.array(list(quantiles.values()), np.float64)

    def residual(theta: np.ndarray) -> np.ndarray:
        a, s = np.exp(theta)
        return np.log1p(s * ((1 - p) ** (-1 / a) - 1)) - np.log1p(q)

    a, s = np.exp(least_squares(residual, x0=[0.0, 0.0]).x)
    return float(a), float(s)


def test_the_constants_are_the_fit_to_the_published_quantiles() -> None:
    a, s = _fit(FOLLOWERS)
    assert CALIBRATED["follower_exponent"] == pytest.approx(a, abs=1e-3)
    assert CALIBRATED["follower_scale"] == pytest.approx(s, abs=1e-3)
    assert CALIBRATED["activity_exponent"] == pytest.approx(_fit(POSTS)[0], abs=1e-3)


def test_a_calibrated_population_has_the_fitted_follower_quantiles() -> None:
    pop = heavy_tailed_population(200_000, 1.0, 0, **CALIBRATED)
    got = np.quantile(pop.visibility, [0.95, 0.995])
    a, s = CALIBRATED["follower_exponent"], CALIBRATED["follower_scale"]
    want = np.floor(s * ((1 - np.array([0.95, 0.995])) ** (-1 / a) - 1))
    np.testing.assert_allclose(got, want, rtol=0.1)
