"""Gini coefficient and Lorenz curve of an attribution: exact values on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels.inequality import gini, lorenz


def _gini_pairs(values: np.ndarray) -> float:
    """Definition: mean absolute difference over all ordered pairs / (2 * mean)."""
    v = np.clip(np.asarray(values, np.float64), 0.0, None)
    return float(np.abs(v[:, None] - v[None, :]).sum() / (2 * len(v) ** 2 * v.mean()))


def test_exported_from_kernels() -> None:
    assert kernels.gini is gini and kernels.lorenz is lorenz
    assert {"gini", "lorenz"} <= set(kernels.__all__)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50])
def test_gini_of_equal_values_is_zero(n: int) -> None:
    assert gini(np.full(n, 2.5)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 50])
def test_gini_when_one_agent_holds_everything(n: int) -> None:
    v = np.zeros(n)
    v[n // 2] = 7.0
    assert gini(v) == pytest.approx((n - 1) / n, abs=1e-12)


def test_gini_exact_small_cases() -> None:
    assert gini([1.0, 3.0]) == pytest.approx(0.25, abs=1e-15)  # |1-3| * 2 / (2 * 4 * 2)
    assert gini([1.0, 2.0, 3.0]) == pytest.approx(2 / 9, abs=1e-15)
    assert gini([0.0, 0.0, 1.0, 1.0]) == pytest.approx(0.5, abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = rng.pareto(1.5, 40)
        assert gini(v) == pytest.approx(_gini_pairs(v), rel=1e-12)


def test_gini_order_scale_and_shape_do_not_matter() -> None:
    v = np.array([4.0, 0.5, 2.0, 9.0, 1.0, 0.0])
    assert gini(v[::-1]) == pytest.approx(gini(v), abs=1e-15)
    assert gini(1e6 * v) == pytest.approx(gini(v), rel=1e-12)
    assert gini(v.reshape(2, 3)) == pytest.approx(gini(v), abs=1e-15)


def test_gini_negative_zero_and_empty() -> None:
    assert gini([-5.0, 0.0, 3.0]) == pytest.approx(gini([0.0, 0.0, 3.0])) == pytest.approx(2 / 3)
    assert gini(np.zeros(5)) == 0.0
    assert gini([-1.0, -2.0]) == 0.0
    assert gini([]) == 0.0
    assert isinstance(gini([1, 2]), float)


def test_lorenz_endpoints_and_shape() -> None:
    xs, ys = lorenz([3.0, 1.0, 0.0, 4.0])
    np.testing.assert_array_equal(xs, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ys, [0.0, 0.0, 0.125, 0.5, 1.0], rtol=0, atol=1e-15)
    assert (xs[0], ys[0]) == (0.0, 0.0) and (xs[-1], ys[-1]) == (1.0, 1.0)
    assert np.all(np.diff(ys) >= 0) and np.all(ys <= xs + 1e-15), "convex, below the diagonal"


def test_lorenz_equal_split_is_the_diagonal_and_one_holder_is_the_corner() -> None:
    xs, ys = lorenz(np.ones(4))
    np.testing.assert_allclose(ys, xs, atol=1e-15)
    xs, ys = lorenz([0.0, 0.0, 0.0, 5.0])
    np.testing.assert_array_equal(ys, [0.0, 0.0, 0.0, 0.0, 1.0])
    xs, ys = lorenz(np.zeros(3))  # nothing to split: the diagonal, as gini says 0
    np.testing.assert_array_equal(ys, xs)
    xs, ys = lorenz([])
    np.testing.assert_array_equal(xs, [0.0])
    np.testing.assert_array_equal(ys, [0.0])


def test_gini_is_twice_the_area_between_diagonal_and_lorenz() -> None:
    v = np.random.default_rng(1).exponential(size=200)
    xs, ys = lorenz(v)
    area = float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))  # trapezoids: exact for the piecewise-linear curve
    assert gini(v) == pytest.approx(1.0 - 2.0 * area, abs=1e-12)
