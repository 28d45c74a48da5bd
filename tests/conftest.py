"""Shared fixtures: small heavy-tailed populations built by the library's own generator."""

from __future__ import annotations

import numpy as np
import pytest

import kernels


@pytest.fixture(scope="session")
def population() -> kernels.Population:
    return kernels.heavy_tailed_population(5_000, edges_per_agent=8.0, seed=7)


def random_graph(rng: np.random.Generator, n: int, edges: int, heavy: bool = True) -> kernels.AttentionGraph:
    """Random graph whose sources are drawn preferentially (heavy-tailed in-degree)."""
    p = (np.arange(1, n + 1, dtype=float) ** -1.2) if heavy else np.ones(n)
    src = rng.choice(n, size=edges, p=p / p.sum())
    att = rng.integers(0, n, size=edges)
    w = rng.choice([0.5, 1.0, 2.0, 3.0], size=edges)
    return kernels.AttentionGraph(att, src, w, n)
