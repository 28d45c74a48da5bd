"""The vertex bootstrap of a network: copies carry their agent's activity, visibility and every edge, each edge
between each copy of its ends (Snijders & Borgatti 1999). Expected values are built by hand here."""

from __future__ import annotations

from collections import Counter

import numpy as np

from kernels import AttentionGraph
from kernels.resample import vertex_bootstrap


class Drawn:
    """An rng whose ``integers`` returns the draw given (the bootstrap sorts it)."""

    def __init__(self, draw: list[int]) -> None:
        self.draw = np.array(draw)

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        assert (low, high, size) == (0, len(self.draw), len(self.draw))
        return self.draw


def _edges(g: AttentionGraph) -> Counter[tuple[int, int, float]]:
    return Counter(zip(g.attender.tolist(), g.source.tolist(), g.weight.tolist(), strict=True))


def _ring() -> tuple[np.ndarray, np.ndarray, AttentionGraph]:
    g = AttentionGraph(np.array([0, 1, 2, 1]), np.array([1, 2, 0, 0]), np.array([2.0, 1.0, 3.0, 0.5]), 3)
    return np.array([5.0, 1.0, 7.0]), np.array([10.0, 20.0, 30.0]), g


def test_every_agent_drawn_once_is_the_population_itself() -> None:
    x, vis, g = _ring()
    x2, vis2, g2, drawn = vertex_bootstrap(x, vis, g, Drawn([2, 0, 1]))  # type: ignore[arg-type]
    assert drawn.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(vis2, vis)
    assert _edges(g2) == _edges(g)


def test_copies_carry_their_agents_activity_and_every_edge_between_copies() -> None:
    """Agent 0 drawn twice, agent 1 once, agent 2 never: new agents 0 and 1 copy 0, new agent 2 copies 1. The
    edge 0 -> 1 (weight 2) becomes one edge from each copy of 0 to the copy of 1; 1 -> 0 (0.5) one from the copy
    of 1 to each copy of 0; the edges touching agent 2 vanish with it."""
    x, vis, g = _ring()
    x2, vis2, g2, drawn = vertex_bootstrap(x, vis, g, Drawn([1, 0, 0]))  # type: ignore[arg-type]
    assert drawn.tolist() == [0, 0, 1]
    assert x2.tolist() == [5.0, 5.0, 1.0] and vis2.tolist() == [10.0, 10.0, 20.0]
    assert _edges(g2) == Counter({(0, 2, 2.0): 1, (1, 2, 2.0): 1, (2, 0, 0.5): 1, (2, 1, 0.5): 1})
    assert g2.n == 3


def test_an_edge_survives_once_in_expectation() -> None:
    """E[copies(u) copies(v)] = 1 - 1/n for u != v under n draws with replacement: the resampled graph keeps the
    original's size on average."""
    rng = np.random.default_rng(7)
    n, m = 60, 400
    att = rng.integers(0, n, m)
    src = (att + rng.integers(1, n, m)) % n  # never a self-loop
    g = AttentionGraph(att, src, np.ones(m), n)
    sizes = [vertex_bootstrap(np.ones(n), np.ones(n), g, rng)[2].edges for _ in range(3000)]
    want = m * (1 - 1 / n)
    assert abs(np.mean(sizes) - want) < 4 * np.std(sizes) / np.sqrt(len(sizes))
