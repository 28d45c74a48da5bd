"""Aumann–Shapley axioms as properties over random small graphs (hypothesis)."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import AttentionGraph, attribute, get_indicator

INDICATORS = st.sampled_from(["reach", "cascade", "saturation", "exposure"])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs(draw: st.DrawFn, min_n: int = 3, max_n: int = 12) -> tuple[np.ndarray, AttentionGraph]:
    n = draw(st.integers(min_n, max_n))
    m = draw(st.integers(1, 4 * n))
    att = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    w = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=m, max_size=m))
    x = draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0, 40.0, 900.0]), min_size=n, max_size=n))
    return np.array(x), AttentionGraph(np.array(att), np.array(src), np.array(w), n)


@SETTINGS
@given(data=graphs(), name=INDICATORS)
def test_dummy_agents_get_zero(data: tuple[np.ndarray, AttentionGraph], name: str) -> None:
    x, g = data
    # make agent 0 unattended: drop every edge whose source is 0
    keep = g.source != 0
    if not keep.any():
        return
    g0 = AttentionGraph(g.attender[keep], g.source[keep], g.weight[keep], g.n)
    x = x.copy()
    x[0] = 50.0
    x[1] = 0.0
    a = attribute(name, x, g0, nodes=32, dtype="float64")
    assert a.phi[0] == 0.0, "nobody attends to agent 0"
    assert a.phi[1] == 0.0, "agent 1 has no activity"


@SETTINGS
@given(data=graphs(min_n=4), name=INDICATORS, dup=st.lists(st.tuples(st.integers(2, 11), st.booleans()), max_size=8))
def test_symmetric_agents_get_equal_attribution(
    data: tuple[np.ndarray, AttentionGraph], name: str, dup: list[tuple[int, bool]]
) -> None:
    """Agents 0 and 1 get identical activity and identical in- and out-edges."""
    x, g = data
    n = g.n
    others = g.attender >= 2
    others &= g.source >= 2
    att, src, w = list(g.attender[others]), list(g.source[others]), list(g.weight[others])
    for k, outgoing in dup:
        k = k % n
        if k < 2:
            continue
        for agent in (0, 1):
            att.append(agent if outgoing else k)
            src.append(k if outgoing else agent)
            w.append(1.5)
    att += [0, 1, 2]
    src += [1, 0, 0]
    w += [2.0, 2.0, 1.0]
    att.append(2)
    src.append(1)
    w.append(1.0)
    x = x.copy()
    x[0] = x[1] = 7.0
    sym = AttentionGraph(np.array(att), np.array(src), np.array(w), n)
    a = attribute(name, x, sym, nodes=32, dtype="float64")
    np.testing.assert_allclose(a.phi[0], a.phi[1], rtol=1e-10, atol=1e-12)


@SETTINGS
@given(data=graphs())
def test_linearity(data: tuple[np.ndarray, AttentionGraph]) -> None:
    x, g = data
    reach, cascade = get_indicator("reach"), get_indicator("cascade")

    def both(x: jax.Array, graph: kernels.AttentionGraph) -> jax.Array:
        return reach(x, graph) + 3.0 * cascade(x, graph)

    a1 = attribute(reach, x, g, nodes=32, dtype="float64")
    a2 = attribute(cascade, x, g, nodes=32, dtype="float64")
    a12 = attribute(both, x, g, nodes=32, dtype="float64")
    np.testing.assert_allclose(a12.phi, a1.phi + 3.0 * a2.phi, rtol=1e-9, atol=1e-10)


@SETTINGS
@given(data=graphs(), name=INDICATORS)
def test_efficiency_on_arbitrary_small_graphs(data: tuple[np.ndarray, AttentionGraph], name: str) -> None:
    x, g = data
    a = attribute(name, x, g, nodes=64, dtype="float64")
    delta = a.value - a.baseline
    assert abs(a.phi.sum() - delta) <= 1e-6 * max(abs(delta), 1e-3)
