"""Synthetic heavy-tailed populations for tests, benchmarks and demonstrations.

Shaped after the real network (DESIGN §7): follower counts are Pareto-distributed, activity is heavy-tailed and
mildly correlated with visibility, about a third of accounts are inactive in the window, and attention is
preferential: an edge's source is drawn in proportion to visibility (most engagement flows to a small head) while
its attender is drawn in proportion to activity (the large tail does the attending). Edge weights follow the
interaction mix of the real sample (likes 70%, reposts 10%, ...) with the default per-kind weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels.graph import AttentionGraph

# kind: (share of interactions in the real sample, attention weight)
INTERACTION_MIX = {
    "like": (0.70, 1.0),
    "repost": (0.10, 2.0),
    "reply": (0.09, 3.0),
    "quote": (0.02, 3.0),
    "follow": (0.09, 0.5),
}


# Least-squares fit, in log(1 + count), of the Lomax follower and activity models to the quantiles of 5.95 million
# Bluesky accounts (2024; docs/calibration.md gives the source, the data, the fit and its residuals).
CALIBRATED = {"follower_exponent": 0.952, "follower_scale": 2.546, "activity_exponent": 0.998}


@dataclass(frozen=True)
class Population:
    x: np.ndarray
    visibility: np.ndarray
    graph: AttentionGraph


DRAW_CHUNK = 1 << 20  # edges drawn at a time: a progress report each, and sorted keys that stay in cache
SORTED_SEARCH = 1 << 12  # weights from which a chunk is searched in sorted order (below it, the cdf is in cache)

Progress = Callable[[int, int], None]  # (done, total): called as a long build goes


def _draw(
    cdf: np.ndarray, count: int, rng: np.random.Generator, on_chunk: Callable[[int], None] | None = None
) -> np.ndarray:
    """``count`` indices drawn in proportion to the increments of ``cdf``.

    The uniforms come from ``rng`` chunk by chunk, which is the same stream as one call (a double takes one draw of
    the generator), so the result does not depend on the chunk size. Each chunk is searched in sorted order and put
    back: the binary searches then walk ``cdf`` forwards instead of jumping across it at random, about four times
    faster once ``cdf`` outgrows the cache (10^6 agents)."""
    out = np.empty(count, np.int64)
    for start in range(0, count, DRAW_CHUNK):
        keys = rng.random(min(DRAW_CHUNK, count - start)) * cdf[-1]
        if len(cdf) >= SORTED_SEARCH:
            order = np.argsort(keys)
            found = np.empty(len(keys), np.int64)
            found[order] = np.searchsorted(cdf, keys[order], side="right")
        else:
            found = np.searchsorted(cdf, keys, side="right")
        out[start : start + len(keys)] = found
        if on_chunk is not None:
            on_chunk(len(keys))
    return np.minimum(out, len(cdf) - 1)


def heavy_tailed_population(
    n: int,
    edges_per_agent: float = 8.0,
    seed: int = 0,
    *,
    follower_exponent: float = 1.1,
    activity_exponent: float = 1.6,
    inactive_fraction: float = 0.3,
    follower_scale: float = 20.0,
    progress: Progress | None = None,
) -> Population:
    """A random population of ``n`` agents with about ``edges_per_agent * n`` attention edges (self-loops
    removed, duplicates merged by the kernels' sums). ``progress(done, total)`` hears the build's work in edge
    steps, the part of it that grows with the edges: each edge is drawn at both ends and then sorted into the graph
    (``total`` = 3 · edges). Follower counts are floor(``follower_scale`` · Lomax(``follower_exponent``)); activity
    is heavy-tailed with ``activity_exponent`` (:data:`CALIBRATED` holds values fitted to published Bluesky
    figures, docs/calibration.md)."""
    if n < 2:
        raise ValueError(f"a synthetic population needs at least 2 agents, got {n}")
    rng = np.random.default_rng(seed)
    followers = np.floor(rng.pareto(follower_exponent, n) * follower_scale)
    propensity = rng.pareto(activity_exponent, n) + 0.2
    propensity *= (1.0 + followers) ** 0.15
    active = rng.random(n) >= inactive_fraction
    x = np.where(active, np.ceil(propensity * 3.0), 0.0)
    edges = round(edges_per_agent * n)
    drawn = 0

    def on_chunk(count: int) -> None:
        nonlocal drawn
        drawn += count
        if progress is not None:
            progress(drawn, 3 * edges)

    attender = _draw(np.cumsum(np.where(active, propensity, 0.02)), edges, rng, on_chunk)
    source = _draw(np.cumsum((1.0 + followers) ** 0.7), edges, rng, on_chunk)
    shares = np.array([v[0] for v in INTERACTION_MIX.values()])
    weights = np.array([v[1] for v in INTERACTION_MIX.values()])
    kind = _draw(np.cumsum(shares), edges, rng)
    keep = attender != source
    graph = AttentionGraph(attender[keep], source[keep], weights[kind[keep]], n)
    on_chunk(edges)
    return Population(x=x, visibility=followers, graph=graph)
