"""The host CSR products: the same numbers as the XLA products and a dense W, through grad and vmap."""

from __future__ import annotations

import gc
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import attribute, get_indicator
from kernels import host_products as hp
from kernels.graph import HOST_FROM_EDGES, resolve_products


@pytest.fixture(scope="module")
def large() -> kernels.Population:
    """Enough edges for the threaded blocks."""
    pop = kernels.heavy_tailed_population(20_000, edges_per_agent=8.0, seed=5)
    assert pop.graph.edges >= hp.THREADED_FROM_EDGES
    return pop


def _dense(g: kernels.AttentionGraph) -> np.ndarray:
    m = np.zeros((g.n, g.n))
    np.add.at(m, (g.attender, g.source), g.weight)
    return m


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_products_match_a_dense_matrix(monkeypatch: pytest.MonkeyPatch, threads: str) -> None:
    monkeypatch.setenv("SKYATTR_KERNEL_THREADS", threads)
    monkeypatch.setattr(hp, "THREADED_FROM_EDGES", 1)
    rng = np.random.default_rng(int(threads))
    g = kernels.AttentionGraph(rng.integers(0, 50, 400), rng.integers(0, 50, 400), rng.random(400), 50)
    dense = _dense(g)
    x = rng.random(50)
    with jax.enable_x64(True):
        pg = g.padded(np.float64, "host")
        assert pg.products == "host"
        xp = jnp.asarray(np.pad(x, (0, pg.size - 50)))
        e = np.asarray(jax.jit(lambda v, gg: gg.exposure(v))(xp, pg))[:50]
        t = np.asarray(jax.jit(lambda v, gg: gg.transpose(v))(xp, pg))[:50]
        batch = jnp.stack([xp, 2 * xp, xp**2])
        eb = np.asarray(jax.jit(jax.vmap(lambda v: pg.exposure(v)))(batch))[:, :50]
        grad = np.asarray(jax.grad(lambda v: jnp.sum(jnp.sin(pg.exposure(v))))(xp))[:50]
    np.testing.assert_allclose(e, dense @ x, rtol=1e-13)
    np.testing.assert_allclose(t, dense.T @ x, rtol=1e-13)
    np.testing.assert_allclose(eb, np.stack([dense @ x, dense @ (2 * x), dense @ x**2]), rtol=1e-13)
    np.testing.assert_allclose(grad, dense.T @ np.cos(dense @ x), rtol=1e-12)


@pytest.mark.parametrize("name", ["reach", "cascade", "saturation"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_host_and_xla_attributions_agree(large: kernels.Population, name: str, dtype: str) -> None:
    host = attribute(name, large.x, large.graph, nodes=16, dtype=dtype, products="host")
    xla = attribute(name, large.x, large.graph, nodes=16, dtype=dtype, products="xla")
    assert (host.products, xla.products) == ("host", "xla")
    tol = 1e-12 if dtype == "float64" else 2e-5
    scale = np.max(np.abs(xla.phi))
    assert scale > 0
    assert np.max(np.abs(host.phi - xla.phi)) / scale < tol
    assert abs(host.value - xla.value) <= tol * abs(xla.value)


def test_auto_chooses_the_host_for_large_graphs_on_a_cpu(
    large: kernels.Population, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert jax.default_backend() == "cpu"
    assert resolve_products("auto", HOST_FROM_EDGES) == "host"
    # a graph of the 100k-account archive's size (~5*10^5 edges) keeps XLA products: alone the host ones gain
    # ~1.2x there, next to a busy ingest thread they lose (each callback waits for the GIL)
    assert resolve_products("auto", 600_000) == "xla"
    assert attribute("reach", large.x, large.graph, nodes=4).products == "xla"
    monkeypatch.setattr(kernels.graph, "HOST_FROM_EDGES", large.graph.edges)
    assert attribute("reach", large.x, large.graph, nodes=4).products == "host"
    small = kernels.heavy_tailed_population(200, seed=1)
    assert attribute("reach", small.x, small.graph, nodes=4).products == "xla"
    assert resolve_products("xla", 10**9) == "xla"
    with pytest.raises(ValueError, match="products must be one of auto, host, xla, sharded, got 'gpu'"):
        resolve_products("gpu")


def test_cascade_written_gradient_equals_jax_grad_of_its_head(large: kernels.Population) -> None:
    for params in ({}, {"kappa": 2.5, "theta": 1.0, "rho": 0.5}, {"kappa": 3.0, "theta": -2.0}, {"theta": 40.0}):
        ind = get_indicator("cascade", **params)
        with jax.enable_x64(True):
            g = large.graph.padded(np.float64, "xla")
            x = jnp.asarray(np.pad(large.x, (0, g.size - large.graph.n)))
            for a in (0.001, 0.1, 1.0):
                e = a * g.exposure(x)
                written, _ = ind.head_grad(e, x, g)
                traced, _ = jax.grad(ind.head, argnums=(0, 1))(e, x, g)
                assert np.all(np.isfinite(np.asarray(written)))
                np.testing.assert_allclose(np.asarray(written), np.asarray(traced), rtol=1e-9, atol=1e-300)


def test_registration_goes_with_its_graph() -> None:
    rng = np.random.default_rng(0)
    g = kernels.AttentionGraph(rng.integers(0, 30, 90), rng.integers(0, 30, 90), None, 30)
    before = hp.registered()
    g.padded(np.float32, "host")
    assert hp.registered() == before + 1
    del g
    gc.collect()
    assert hp.registered() == before


def test_attributions_from_several_threads_at_once_all_finish(large: kernels.Population) -> None:
    """A daemon attributes in two worker threads; with host products each run's callbacks wait on XLA's CPU pool,
    and two runs at once used to hang there for good (the 100k-account replay did). They take turns now."""
    import threading

    ind = get_indicator("cascade")
    want = attribute(ind, large.x, large.graph, products="host").phi
    got: list[np.ndarray] = []

    def runs() -> None:
        for _ in range(25):
            got.append(attribute(ind, large.x, large.graph, products="host").phi)

    threads = [threading.Thread(target=runs, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90  # ~2 s of work on two cores
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert len(got) == 50, f"a thread is stuck ({len(got)} of 50 runs done)"
    for phi in got:
        np.testing.assert_array_equal(phi, want)


def test_host_kernels_compile_once_per_agent_bucket_whatever_the_edges() -> None:
    """With host products the device graph carries no edges, so a population whose edge count crosses a bucket
    (every few runs of a growing replay) reuses its compilation."""
    from kernels.graph import bucket

    sparse = kernels.heavy_tailed_population(9_000, edges_per_agent=4.0, seed=8)
    dense = kernels.heavy_tailed_population(9_000, edges_per_agent=16.0, seed=8)
    assert bucket(sparse.graph.edges) != bucket(dense.graph.edges) and bucket(sparse.graph.n) == bucket(dense.graph.n)
    ind = get_indicator("cascade", theta=2.5)  # parameters of its own: a compilation no other test has made
    first = attribute(ind, sparse.x, sparse.graph, products="host")
    second = attribute(ind, dense.x, dense.graph, products="host")
    assert first.compiled and not second.compiled
    np.testing.assert_allclose(
        second.phi, attribute(ind, dense.x, dense.graph, products="xla").phi, rtol=2e-4, atol=1e-6
    )
