from __future__ import annotations

import dataclasses
import gc
import weakref

import jax
import numpy as np
import pytest

from kernels import AttentionGraph, bucket
from kernels import graph as graph_module
from kernels.graph import padded


def test_exposure_and_transpose_match_dense() -> None:
    rng = np.random.default_rng(0)
    n, m = 40, 300
    att, src, w = rng.integers(0, n, m), rng.integers(0, n, m), rng.random(m)
    g = AttentionGraph(att, src, w, n)
    dense = np.zeros((n, n))
    np.add.at(dense, (att, src), w)  # W[j, i] for edge j -> i (duplicates add)
    x, y = rng.random(n), rng.random(n)
    np.testing.assert_allclose(np.asarray(g.exposure(x)), dense @ x, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g.transpose(y)), dense.T @ y, rtol=1e-5)
    assert np.all(np.diff(g.attender) >= 0), "edges are kept sorted by attender"


def test_padded_graph_gives_same_products() -> None:
    rng = np.random.default_rng(1)
    n = 1500
    g = AttentionGraph(rng.integers(0, n, 5000), rng.integers(0, n, 5000), rng.random(5000), n)
    p = g.padded(np.dtype(np.float32))
    assert p.size == bucket(n) and p.size >= n
    x = np.zeros(p.size, np.float32)
    x[:n] = rng.random(n)
    np.testing.assert_allclose(np.asarray(p.exposure(x))[:n], np.asarray(g.exposure(x[:n])), rtol=1e-5)
    assert float(p.total(np.ones(p.size, np.float32))) == n, "padding agents are excluded from totals"


def test_bucket_growth_is_bounded() -> None:
    sizes = [bucket(s) for s in range(1, 200_000, 997)]
    assert all(b >= s for b, s in zip(sizes, range(1, 200_000, 997), strict=True))
    for s in (1025, 5000, 65_536):  # small sizes double: few compilations while a population grows from nothing
        assert s <= bucket(s) < 2 * s and bucket(s) & (bucket(s) - 1) == 0
    for s in (77_777, 1_670_000, 13_000_000):  # large ones grow by ~19%: little padding where a call costs
        assert s <= bucket(s) <= 1.2 * s + 128
    assert bucket(10_000) == bucket(10_050), "small growth stays inside one bucket"
    assert len({bucket(s) for s in range(1, 20_000)}) == 6, "1024 ... 32768: a replay's first hours compile 6 sizes"


def test_subgraph_is_induced_and_reindexed() -> None:
    g = AttentionGraph(np.array([0, 1, 2, 3]), np.array([1, 2, 3, 0]), np.array([1.0, 2.0, 3.0, 4.0]), 4)
    sub = g.subgraph(np.array([2, 1]))
    # only edge 1 -> 2 survives; agent 2 is index 0 and agent 1 index 1
    assert sub.n == 2 and sub.edges == 1
    assert (int(sub.attender[0]), int(sub.source[0]), float(sub.weight[0])) == (1, 0, 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_subgraph_equals_the_mask_of_every_edge(seed: int) -> None:
    """The induced subgraph read from the attender-sorted rows is the one a mask over every edge gives, edge for
    edge and in the same order (agents in any order, with and without self-loops and repeated pairs)."""
    rng = np.random.default_rng(seed)
    n, e = int(rng.integers(1, 300)), int(rng.integers(1, 3000))
    g = AttentionGraph(rng.integers(0, n, e), rng.integers(0, n, e), rng.random(e), n)
    agents = rng.permutation(n)[: int(rng.integers(1, n + 1))]
    remap = np.full(n, -1)
    remap[agents] = np.arange(len(agents))
    a, s = remap[g.attender], remap[g.source]
    keep = (a >= 0) & (s >= 0)
    order = np.argsort(a[keep], kind="stable")
    sub = g.subgraph(agents)
    assert sub.n == len(agents)
    np.testing.assert_array_equal(sub.attender, a[keep][order])
    np.testing.assert_array_equal(sub.source, s[keep][order])
    np.testing.assert_array_equal(sub.weight, g.weight[keep][order])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0, 1], [1], [1.0, 1.0], 3), "same length"),
        (([0, 5], [1, 0], [1.0, 1.0], 3), "attender index 5 is out of range"),
        (([0, 1], [1, -1], [1.0, 1.0], 3), "source index -1 is out of range"),
        (([0, 1], [1, 0], [1.0, -2.0], 3), "negative"),
        (([0, 1], [1, 0], [1.0, np.nan], 3), "non-finite"),
        (([0, 1], [1, 0], [1.0, np.inf], 3), "non-finite"),
        (([], [], [], 3), "no edges"),
        (([0], [0], [1.0], 0), "at least one agent"),
        (([0.5], [0], [1.0], 3), "integers"),
        (([[0]], [[0]], [[1.0]], 3), "1-D"),
    ],
)
def test_bad_graph_is_a_clear_value_error(args: tuple, message: str) -> None:
    att, src, w, n = args
    with pytest.raises(ValueError, match=message):
        AttentionGraph(np.asarray(att), np.asarray(src), np.asarray(w), n)


def _reference_pad(g: AttentionGraph, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """The padding as specified: zero-weight edges (attender n_pad - 1, source 0), mask over the real agents."""
    n_pad, e_pad = bucket(g.n), bucket(g.edges)
    att = np.r_[g.attender, np.full(e_pad - g.edges, n_pad - 1)].astype(g.attender.dtype)
    src = np.r_[g.source, np.zeros(e_pad - g.edges)].astype(g.source.dtype)
    w = np.r_[g.weight, np.zeros(e_pad - g.edges)].astype(dtype)
    return att, src, w, np.arange(n_pad) < g.n


def test_graph_is_immutable_and_caches_nothing_on_itself() -> None:
    rng = np.random.default_rng(2)
    att, src, w = rng.integers(0, 30, 80), rng.integers(0, 30, 80), rng.random(80)
    g = AttentionGraph(att, src, w, 30)
    assert dataclasses.is_dataclass(g) and type(g).__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.n = 31  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g._padded = {}  # type: ignore[attr-defined]
    for arr in (g.attender, g.source, g.weight):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0
    assert att.flags.writeable and w.flags.writeable, "the caller's arrays are left as they were"
    before = dict(vars(g))
    p = g.padded(np.dtype(np.float32))
    assert vars(g).keys() == before.keys() == {"attender", "source", "weight", "n"}, "nothing cached on the graph"
    assert all(vars(g)[k] is v for k, v in before.items())
    assert padded(g, np.float32) is p and g.padded(np.dtype("float32")) is p, "cached per (graph, dtype)"


def test_padded_copy_is_bit_identical_and_per_dtype() -> None:
    rng = np.random.default_rng(3)
    n, m = 1300, 4000
    g = AttentionGraph(rng.integers(0, n, m), rng.integers(0, n, m), rng.random(m) * 3, n)
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            p = g.padded(np.dtype(dtype))
        assert np.asarray(p.weight).dtype == dtype and int(p.n) == n
        got = (np.asarray(p.attender), np.asarray(p.source), np.asarray(p.weight), np.asarray(p.mask))
        for a, b in zip(got, _reference_pad(g, np.dtype(dtype)), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert g.padded(np.float32) is not g.padded(np.float64)


def test_padded_cache_does_not_keep_graphs_alive() -> None:
    g = AttentionGraph(np.array([0, 1]), np.array([1, 0]), None, 2)
    g.padded(np.float32)
    ref = weakref.ref(g)
    assert g in graph_module._padded_cache
    entries = len(graph_module._padded_cache)
    del g
    gc.collect()
    assert ref() is None, "the cache must not hold the graph"
    assert len(graph_module._padded_cache) <= entries - 1, "the dead graph's entry went with it"
