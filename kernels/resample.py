"""Resampling a population for confidence intervals: the vertex bootstrap of a network.

A study's figures (tier shares, the panel's share, c*, r*) are computed on one population, one window of the
network. How much would they move on another population drawn from the same process? For agents connected by a
graph the units are not independent, so the bootstrap resamples *vertices* and keeps the edges among them (Snijders &
Borgatti 1999, "Non-parametric standard errors and tests for network statistics", Connections 22(2)): draw n agents
with replacement; each draw is a copy of its agent (activity, visibility); every edge u → v of the population becomes
one edge between each copy of u and each copy of v. An agent drawn k times thus appears k times, each copy with all
of its attention, and an edge survives in expectation once (E[copies(u) · copies(v)] = 1 for u ≠ v as n grows).

Pure numpy; the figures are then computed on the resampled population exactly as on the original.
"""

from __future__ import annotations

import numpy as np

from kernels.graph import AttentionGraph


def vertex_bootstrap(
    x: np.ndarray, visibility: np.ndarray, graph: AttentionGraph, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, AttentionGraph, np.ndarray]:
    """One vertex-bootstrap replicate: ``(x, visibility, graph, drawn)``, with ``drawn[j]`` the original agent that
    new agent ``j`` copies (new agents are ordered by the agent they copy)."""
    n = graph.n
    x, visibility = np.asarray(x), np.asarray(visibility)
    if x.shape != (n,) or visibility.shape != (n,):
        raise ValueError(f"x and visibility must have one entry per agent ({n}), got {x.shape} and {visibility.shape}")
    drawn = np.sort(rng.integers(0, n, n))
    copies = np.bincount(drawn, minlength=n)
    first = np.concatenate([[0], np.cumsum(copies)[:-1]])  # the first copy of each original agent
    att, src, w = graph.attender, graph.source, graph.weight
    cu, cv = copies[att], copies[src]
    mult = cu * cv
    edge = np.repeat(np.arange(len(att)), mult)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(mult) - mult, mult)  # the pair's index within its edge
    new_att = first[att[edge]] + k // cv[edge]
    new_src = first[src[edge]] + k % cv[edge]
    new_graph = AttentionGraph(new_att, new_src, w[edge], n, allow_empty=True)
    return x[drawn], visibility[drawn], new_graph, drawn


__all__ = ["vertex_bootstrap"]
