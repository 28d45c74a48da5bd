"""Aumann–Shapley path-integral attribution.

phi_i = x_i * integral_0^1 dv/dx_i(a x) da, computed with a quadrature rule (see :mod:`kernels.quadrature`):
phi = x * sum_k w_k grad v(a_k x). The integral satisfies efficiency (sum phi = v(x) - v(0)), symmetry, dummy and
linearity, at the cost of m gradient evaluations, O(m |W|), instead of the exponential cost of exact Shapley.

Two paths:

* ``generic``: ``jax.grad`` of the indicator at every node. Works for any JAX indicator.
* ``linear-stem``: for v(x) = H(W x, x), grad v(a x) = W^T dH/de(a e, a x) + dH/dx(a e, a x) with e = W x computed
  once, so the node sum is pulled inside one W^T product: phi = x * (W^T sum_k w_k dH/de_k + sum_k w_k dH/dx_k).
  For ``reach`` the per-node work is then elementwise; for ``cascade`` it saves the stem's product at every node.

Both run jit-compiled on the default JAX device, over a graph padded to a size bucket (compiled once per bucket,
reused while the population grows inside it), scanning over the nodes in chunks so memory stays O(chunk * n).

The result holds the math only (and where it ran); callers that want the wall-clock time of a call time it
themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernels import defaults
from kernels.graph import AttentionGraph, PaddedGraph, bucket, resolve_products
from kernels.indicators import Indicator, as_indicator
from kernels.quadrature import RULES, rule_nodes
from kernels.validation import check_activity, check_dtype, check_positive_int

PATHS = ("auto", "linear-stem", "generic")
CHOICES = ("auto", *RULES)  # what ``rule`` may be
# "auto" takes the graded rule only when its error estimate is under a quarter of the plain rule's: the estimates are
# within a factor 2 of the true error (tests/kernels/test_error_estimate.py), so the graded rule is then truly the
# better one, and where the two cannot be told apart (both unconverged) plain Gauss-Legendre stays.
GRADED_MARGIN = 4.0
# Estimates below this many units in the last place of the dtype are rounding, not quadrature: two such rules are
# equally good, and which is "smaller" would flip with the order of a sum (a run on other hardware, shards merged in
# another order), so plain Gauss-Legendre stays.
ESTIMATE_NOISE_ULPS = 16
# The most nodes an error-driven count (``tolerance``) doubles to: 32 times the default start of 8, past what the
# built-in indicators need for 10^-6 at 1.67 million agents (benchmarks/RESULTS.md, time to accuracy).
MAX_NODES = 256


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`attribute`.

    ``residual`` is the completeness residual |sum phi - (v(x) - v(0))| / |v(x) - v(0)|; when v(x) = v(0) it is
    the absolute |sum phi| instead (there is nothing to be relative to). ``span`` is the largest exposure, which
    sets the graded quadrature rule. ``device`` names the device(s) it ran on (:func:`device_name`); ``compiled``
    says whether this call had to trace (and so compile) the kernel, i.e. it was the first for its indicator, node
    count, path, rule, dtype and size bucket. No wall-clock time: a caller that wants it times the call.

    The residual is no error bar: quadrature errors cancel in the sum. With ``estimate_error`` the attribution is
    computed again at twice the nodes: ``error_estimate`` is ‖phi_m − phi_2m‖ / ‖phi_2m‖ (relative L2) and
    ``error_max`` the largest |phi_m,i − phi_2m,i| (in phi's units), estimates of phi's own error that bound the
    true one within a factor of 2 against a 2,048-node oracle for the built-in indicators, κ = 32 included
    (tests/kernels/test_error_estimate.py). None when not asked for.
    """

    phi: np.ndarray
    value: float
    baseline: float
    residual: float
    nodes: int
    indicator: str = ""
    dtype: str = "float32"
    path: str = "generic"
    rule: str = "log-graded"
    span: float = 0.0
    device: str = "cpu"
    compiled: bool = False
    products: str = "xla"
    error_estimate: float | None = None
    error_max: float | None = None

    @property
    def total(self) -> float:
        return float(np.sum(self.phi, dtype=np.float64))


CPU_CHUNK_UP_TO = 1 << 19  # padded agents up to which several nodes at once beat 1 on a CPU
HOST_CHUNK = 8


def default_chunk(agents: int = 0, products: str = "xla") -> int:
    """Nodes evaluated together. On a CPU 4 while the agent vectors stay in cache (measured with JAX 0.10 on a
    2-core EPYC: 1.4-1.8x faster than one at a time from 10^3 to 6.5*10^4 agents, 10 % at 2.5*10^5, 12 % slower
    at 10^6, where four vectors of n no longer fit), 1 beyond; 8 on accelerators (batching fills the device).
    With the host CSR products (``products="host"``) 8 up to 2^19 agents (one CSR-times-dense product reads each
    edge once for all 8: cascade at 6.5*10^4 agents 87 ms with 1, 36 ms with 8) and 1 beyond (1.4 s with 1, 1.8 s
    with 8 at 1.67*10^6)."""
    if jax.default_backend() != "cpu":
        return 8
    if products == "host":
        return HOST_CHUNK if agents <= CPU_CHUNK_UP_TO else 1
    return 4 if agents <= CPU_CHUNK_UP_TO else 1


# Kernels with host products run one at a time. Each product already spreads over every core, so two at once gain
# nothing; and two at once can deadlock: a callback's input is a device array, reading it waits on XLA's CPU
# thread pool, and with as many kernels blocked in callbacks as that pool has threads (two, on two cores) nothing
# is left to make it ready.
_host_kernels = threading.Lock()

# Set by a kernel's Python body, which JAX runs only when it traces (a cache miss, followed by a compilation); read
# by the caller around one call. Thread-local because tracing runs synchronously in the calling thread, so calls in
# other threads cannot mark this one as compiled. (Public means only: no private jit-cache attributes.)
_tracing = threading.local()


@functools.lru_cache(maxsize=64)
def _kernel(indicator: Indicator, nodes: int, chunk: int, path: str, rule: str) -> Any:
    n_chunks = -(-nodes // chunk)
    pad = n_chunks * chunk - nodes

    def node_table(span: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
        a, w = rule_nodes(nodes, span, rule, dtype)
        a = jnp.concatenate([a, jnp.ones(pad, dtype)]).reshape(n_chunks, chunk)
        w = jnp.concatenate([w, jnp.zeros(pad, dtype)]).reshape(n_chunks, chunk)
        return a, w

    def run(x: jax.Array, g: PaddedGraph) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        _tracing.traced = True  # trace-time side effect: runs once per compilation, not per call
        zeros = jnp.zeros_like(x)
        e = g.exposure(x)
        span = jnp.max(jnp.where(g.mask, e, 0))
        alphas, weights = node_table(span, x.dtype)
        if path == "linear-stem":
            head = indicator.head
            assert head is not None  # the linear-stem path is chosen only for an indicator with a head
            grad_head = indicator.head_grad or jax.grad(head, argnums=(0, 1))

            def body(carry: tuple[jax.Array, jax.Array], aw: tuple[jax.Array, jax.Array]) -> Any:
                a, w = aw
                ge, gx = jax.vmap(lambda al: grad_head(al * e, al * x, g))(a)
                return (carry[0] + w @ ge, carry[1] + w @ gx), None

            (acc_e, acc_x), _ = jax.lax.scan(body, (zeros, zeros), (alphas, weights))
            phi = x * (g.transpose(acc_e) + acc_x)
            value, baseline = head(e, x, g), head(zeros, zeros, g)
        else:
            grad_v = jax.grad(indicator.value)

            def body_g(acc: jax.Array, aw: tuple[jax.Array, jax.Array]) -> Any:
                a, w = aw
                return acc + w @ jax.vmap(lambda al: grad_v(al * x, g))(a), None

            acc, _ = jax.lax.scan(body_g, zeros, (alphas, weights))
            phi = x * acc
            value, baseline = indicator.value(x, g), indicator.value(zeros, g)
        return phi, value, baseline, span

    return jax.jit(run)


def device_name(products: str) -> str:
    """The device(s) an attribution with ``products`` runs on, as JAX names them: ``cpu:0``, ``gpu:0 NVIDIA H100
    80GB HBM3``, and for products sharded over every device ``gpu:0-3 NVIDIA H100 80GB HBM3``. A result says
    which card gave its ``runtime_s``, and a pod on the wrong node shows in the results, not only in its logs."""
    devices = jax.devices() if products == "sharded" else [jax.devices()[0]]
    first = devices[0]
    where = f"{first.platform}:{first.id}" + (f"-{devices[-1].id}" if len(devices) > 1 else "")
    kind = str(getattr(first, "device_kind", "") or "")
    if kind.lower() == first.platform:  # the CPU's kind is "cpu": nothing to add
        kind = ""
    return f"{where} {kind}".strip()


def attribute(
    indicator: Indicator | str | Any,
    x: Any,
    graph: AttentionGraph,
    nodes: int = defaults.NODES,
    dtype: str = defaults.DTYPE,
    *,
    path: str = "auto",
    rule: str = "log-graded",
    chunk: int | None = None,
    products: str = "auto",
    estimate_error: bool = False,
    tolerance: float | None = None,
    max_nodes: int = MAX_NODES,
    on_pass: Callable[[int], None] | None = None,
) -> Attribution:
    """Aumann–Shapley attribution of ``indicator`` at activity ``x`` on ``graph``.

    ``path="auto"`` takes the linear-stem path when the indicator has one. ``dtype="float64"`` runs the whole
    computation in double precision (JAX x64 enabled for this call only). ``products`` chooses how the sparse
    products run (:func:`kernels.graph.resolve_products`: threaded host CSR on a CPU, XLA on an accelerator).
    ``rule="auto"`` computes both rules of :mod:`kernels.quadrature` at m and 2m nodes and returns the graded one
    only when its error estimate is under 1/:data:`GRADED_MARGIN` of plain Gauss–Legendre's, else the plain one,
    with its estimate: twice the cost of a fixed rule with ``estimate_error``, and never a worse rule than plain
    Gauss–Legendre. ``on_pass(nodes)`` hears each quadrature pass over the graph as it ends (a long job's progress:
    :func:`passes` says how many nodes there will be at most).

    ``tolerance`` makes the node count error-driven: ``nodes`` is where it starts, and it doubles (up to
    ``max_nodes``) until the estimate's largest per-agent error is within ``tolerance`` of the total attribution
    (:func:`share_error`, each agent's share of v(x) − v(0) to that many units); the result is the first node count
    that passes, with its estimate (so always ``estimate_error``). Each doubling costs a pass at the new count, so
    a start near the count the indicator needs (8 for the built-in ones at 10⁻⁴, ``benchmarks/accuracy.py``) costs
    about 3.5 times that count, where a fixed count with an estimate costs 3 times a count chosen blind.
    """
    ind = as_indicator(indicator)
    if not isinstance(graph, AttentionGraph):
        raise ValueError(f"graph must be an AttentionGraph, got {type(graph).__name__}")
    if graph.edges == 0:
        raise ValueError("graph has no edges: attribution on an empty attention graph is undefined")
    if rule not in CHOICES:
        raise ValueError(f"rule must be one of {', '.join(CHOICES)}, got {rule!r}")
    if tolerance is not None and not (math.isfinite(tolerance) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be a share in (0, 1), got {tolerance!r}")
    max_nodes = max(check_positive_int(max_nodes, "max_nodes"), check_positive_int(nodes, "nodes"))
    fixed = ("uniform", "log-graded") if rule == "auto" else (rule,)
    best: Attribution | None = None
    for r in fixed:
        if best is not None and (best.span <= 1.0 or best.nodes < 4):  # the graded rule is the plain one there
            break

        def at(m: int, r: str = r) -> Attribution:
            a = _attribute(ind, x, graph, m, dtype, path=path, rule=r, chunk=chunk, products=products)
            if on_pass is not None:
                on_pass(a.nodes)
            return a

        a = at(nodes)
        if not (estimate_error or rule == "auto" or tolerance is not None):
            return a
        b = at(2 * a.nodes)
        a = _with_estimate(a, b)
        while tolerance is not None and share_error(a) > tolerance and 2 * b.nodes <= max_nodes:
            a, b = b, at(2 * b.nodes)
            a = _with_estimate(a, b)
        if best is None or _better(a, best, tolerance):
            best = a
    assert best is not None
    return best


def share_error(a: Attribution) -> float:
    """The estimate's largest per-agent error as a share of the total attribution Σ|phi| (v(x) − v(0) for an
    indicator whose phi are all of one sign; Σ|phi| is never zero where phi is not): the unit in which the
    product reports who causes how much. inf without an estimate; 0 where phi is zero."""
    if a.error_max is None:
        return math.inf
    scale = float(np.sum(np.abs(a.phi), dtype=np.float64))
    return a.error_max / scale if scale > 0 else 0.0


def passes(
    nodes: int,
    rule: str = "log-graded",
    estimate_error: bool = False,
    tolerance: float | None = None,
    max_nodes: int = MAX_NODES,
) -> int:
    """The most quadrature nodes :func:`attribute` evaluates over the graph: ``nodes`` for a fixed rule, three
    times that with its error estimate (m and 2m nodes), six times with ``rule="auto"`` (both rules, each with its
    estimate; fewer when the graded rule is the plain one and is skipped); with a ``tolerance``, every doubling up
    to ``max_nodes`` for each rule."""
    rules = 2 if rule == "auto" else 1
    if tolerance is not None:
        m = 2 * nodes
        total = nodes + m
        while 2 * m <= max_nodes:
            m *= 2
            total += m
        return rules * total
    return nodes * (6 if rule == "auto" else 3 if estimate_error else 1)


def _better(graded: Attribution, plain: Attribution, tolerance: float | None = None) -> bool:
    """Whether ``graded``'s error estimate is clearly below ``plain``'s (see :data:`GRADED_MARGIN`); with a
    ``tolerance``, the one that met it at fewer nodes is better whatever its estimate (it is the cheaper answer
    of the accuracy asked for), and between two that met it at the same count the estimates decide."""
    if tolerance is not None:
        met = {k: share_error(a) <= tolerance for k, a in (("graded", graded), ("plain", plain))}
        if met["graded"] and (not met["plain"] or graded.nodes < plain.nodes):
            return True
        if met["plain"] and (not met["graded"] or plain.nodes < graded.nodes):
            return False
    noise = ESTIMATE_NOISE_ULPS * float(np.finfo(check_dtype(graded.dtype)).eps)
    return max(graded.error_estimate or 0.0, noise) * GRADED_MARGIN < max(plain.error_estimate or 0.0, noise)


def _with_estimate(a: Attribution, b: Attribution) -> Attribution:
    """``a`` (m nodes) with the error estimate from ``b`` (the same rule at 2m nodes)."""
    diff = a.phi - b.phi
    norm = float(np.linalg.norm(b.phi))
    relative = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
    return replace(a, error_estimate=relative, error_max=float(np.max(np.abs(diff))) if diff.size else 0.0)


def _attribute(
    ind: Indicator,
    x: Any,
    graph: AttentionGraph,
    nodes: int,
    dtype: str,
    *,
    path: str = "auto",
    rule: str = "log-graded",
    chunk: int | None = None,
    products: str = "auto",
) -> Attribution:
    """:func:`attribute` without the non-empty-graph check (a panel's induced subgraph may have no edges)."""
    x64 = check_activity(x, graph.n)
    np_dtype = check_dtype(dtype)
    nodes = check_positive_int(nodes, "nodes")
    products = resolve_products(products, graph.edges)
    chunk = check_positive_int(chunk, "chunk") if chunk is not None else default_chunk(bucket(graph.n), products)
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if path == "auto":
        path = "linear-stem" if ind.linear_stem else "generic"
    if path == "linear-stem" and not ind.linear_stem:
        raise ValueError(f"indicator {ind.name!r} has no linear stem; use path='generic'")
    chunk = min(chunk, nodes)
    fn = _kernel(ind, nodes, chunk, path, rule)
    with jax.enable_x64(np_dtype == np.float64):
        g = graph.padded(np_dtype, products)
        x_pad = np.zeros(g.size, np_dtype)
        x_pad[: graph.n] = x64
        _tracing.traced = False
        with _host_kernels if products == "host" else contextlib.nullcontext():
            phi, value, baseline, span = jax.block_until_ready(fn(jnp.asarray(x_pad), g))
        compiled = _tracing.traced
    phi = np.asarray(phi, np.float64)[: graph.n]
    value, baseline = float(value), float(baseline)
    delta = value - baseline
    gap = abs(float(np.sum(phi)) - delta)
    residual = gap / abs(delta) if delta != 0 else gap
    return Attribution(
        phi=phi,
        value=value,
        baseline=baseline,
        residual=residual,
        nodes=nodes,
        indicator=ind.name,
        dtype=dtype,
        path=path,
        rule=rule,
        span=float(span),
        device=device_name(products),
        compiled=compiled,
        products=products,
    )
