"""An independent float64 oracle of every built-in indicator: its own v and its hand-derived gradient in numpy
(nothing from ``kernels`` but the graph's arrays), integrated along the path by composite Gauss–Legendre with
2,048 nodes. ``kernels.attribute`` must agree with it to float64 precision at 256 nodes, and every oracle is
checked against its own v by finite differences and by completeness, so a wrong formula in both (the second hop
of the cascade doubled, say) cannot pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from kernels import AttentionGraph, attribute

from ..conftest import random_graph

Array = np.ndarray


def _w(g: AttentionGraph, x: Array) -> Array:
    """e_j = sum_i W_ji x_i."""
    return np.bincount(g.attender, weights=g.weight * x[g.source], minlength=g.n)


def _wt(g: AttentionGraph, y: Array) -> Array:
    """(W^T y)_i = sum_j W_ji y_j."""
    return np.bincount(g.source, weights=g.weight * y[g.attender], minlength=g.n)


def _sigmoid(z: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def cascade(g: AttentionGraph, kappa: float = 2.0, theta: float = 3.0, rho: float = 1.0) -> tuple[Callable, Callable]:
    """v = sum_j s(e1_j + e2_j) - v0, s(u) = sigmoid(kappa (log1p(u) - theta)), e1 = W x, e2 = W (rho s(e1));
    dv/dx = W^T d + W^T (rho s'(e1) * W^T d), d = s'(e1 + e2), s'(u) = kappa s (1 - s) / (1 + u)."""

    def s(u: Array) -> Array:
        return _sigmoid(kappa * (np.log1p(u) - theta))

    def ds(u: Array) -> Array:
        return kappa * s(u) * (1.0 - s(u)) / (1.0 + u)

    def raw(x: Array) -> float:
        e1 = _w(g, x)
        return float(s(e1 + _w(g, rho * s(e1))).sum())

    def v(x: Array) -> float:
        return raw(x) - raw(np.zeros(g.n))

    def grad(x: Array) -> Array:
        e1 = _w(g, x)
        d = ds(e1 + _w(g, rho * s(e1)))
        back = _wt(g, d)
        return back + _wt(g, rho * ds(e1) * back)

    return v, grad


def reach(g: AttentionGraph) -> tuple[Callable, Callable]:
    """v = sum_j log1p(e_j); dv/dx = W^T (1 / (1 + e))."""
    return (lambda x: float(np.log1p(_w(g, x)).sum())), (lambda x: _wt(g, 1.0 / (1.0 + _w(g, x))))


def saturation(g: AttentionGraph, capacity_per_agent: float = 1.0) -> tuple[Callable, Callable]:
    """v = K (1 - exp(-S / K)), S = sum_j log1p(e_j), K = capacity_per_agent n; dv/dx = exp(-S / K) dS/dx."""
    k = capacity_per_agent * g.n
    v_reach, g_reach = reach(g)
    return (lambda x: k * -np.expm1(-v_reach(x) / k)), (lambda x: np.exp(-v_reach(x) / k) * g_reach(x))


def exposure(g: AttentionGraph) -> tuple[Callable, Callable]:
    """v = sum_j e_j; dv/dx = W^T 1."""
    return (lambda x: float(_w(g, x).sum())), (lambda x: _wt(g, np.ones(g.n)))


def activity(g: AttentionGraph) -> tuple[Callable, Callable]:
    """v = sum_i x_i; dv/dx = 1."""
    return (lambda x: float(x.sum())), (lambda x: np.ones(g.n))


ORACLES = {"cascade": cascade, "reach": reach, "saturation": saturation, "exposure": exposure, "activity": activity}


def path_integral(grad: Callable[[Array], Array], x: Array, panels: int = 128, order: int = 16) -> Array:
    """phi_i = x_i int_0^1 dv/dx_i(a x) da by composite Gauss–Legendre (``panels`` x ``order`` nodes)."""
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(0.0, 1.0, panels + 1)
    total = np.zeros_like(x)
    for lo, hi in itertools.pairwise(edges):
        for node, weight in zip(lo + (t + 1) * (hi - lo) / 2, w * (hi - lo) / 2, strict=True):
            total += weight * grad(node * x)
    return x * total


def _population(seed: int, n: int = 60) -> tuple[Array, AttentionGraph]:
    rng = np.random.default_rng(seed)
    g = random_graph(rng, n, 5 * n)
    x = rng.choice([0.0, 1.0, 2.0, 5.0, 20.0], size=n)
    return x, g


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_each_oracle_is_its_own_v_by_finite_differences_and_completeness(name: str) -> None:
    x, g = _population(1)
    v, grad = ORACLES[name](g)
    h = 1e-6
    for i in np.flatnonzero(x)[:8]:
        step = np.zeros(g.n)
        step[i] = h
        assert grad(x)[i] == pytest.approx((v(x + step) - v(x - step)) / (2 * h), rel=1e-6, abs=1e-9)
    assert path_integral(grad, x).sum() == pytest.approx(v(x) - v(np.zeros(g.n)), rel=1e-12)


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("seed", [2, 3])
def test_kernels_attribute_equals_the_oracle(name: str, seed: int) -> None:
    x, g = _population(seed)
    _, grad = ORACLES[name](g)
    want = path_integral(grad, x)
    got = attribute(name, x, g, nodes=256, dtype="float64")
    assert np.linalg.norm(got.phi - want) <= 1e-9 * np.linalg.norm(want)
    v, _ = ORACLES[name](g)
    assert got.value - got.baseline == pytest.approx(v(x) - v(np.zeros(g.n)), rel=1e-12)


def test_the_oracle_tells_a_doubled_second_hop_from_the_cascade() -> None:
    """The mutation no axiom notices: e2 = W (2 rho s(e1)) is efficient, symmetric and dummy-respecting too."""
    x, g = _population(4)
    right = path_integral(cascade(g)[1], x)
    wrong = path_integral(cascade(g, rho=2.0)[1], x)
    got = attribute("cascade", x, g, nodes=256, dtype="float64").phi
    assert np.linalg.norm(got - right) < 1e-9 * np.linalg.norm(right) < np.linalg.norm(got - wrong) * 1e-3
