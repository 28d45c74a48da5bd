"""Attention graph W: who attends to whom.

An edge j -> i (``attender[k] = j``, ``source[k] = i``, ``weight[k] = w``) says that agent j pays attention to
agent i with strength w. The exposure of agent j is ``e_j = sum_i W_ji x_i`` (``exposure``); its adjoint
``(W^T y)_i = sum_j W_ji y_j`` (``transpose``) carries gradients back from attenders to sources.

Two containers share one set of operations:

* :class:`AttentionGraph` is what callers build: validated numpy arrays, edges sorted by attender so the
  exposure scatter runs over sorted indices. It is immutable (a frozen dataclass over read-only arrays), so a
  padded copy made from it can never go stale.
* :class:`PaddedGraph` is what the jit-compiled kernels see: the same edges padded to a size bucket (zero-weight
  edges, zero-activity agents), so a live population that grows a little between runs reuses the compiled code.
  ``mask`` marks the real agents and ``n`` is their count, so reductions over agents (``total``) ignore padding.
  :func:`padded` makes it, once per graph and dtype: the copy is kept in a module-level cache keyed weakly by the
  graph (not on the graph), so it lives exactly as long as the graph does.

Indicators only use :meth:`exposure`, :meth:`transpose`, :meth:`total` and ``n``, so the same indicator runs on
either container.

Beyond one device (``products="sharded"``): the edges, sorted by attender, are cut into one contiguous piece per
device of a one-axis mesh (so each device holds a range of attenders with all their edges), the agent vectors are
replicated, and each product is the devices' local scatter-adds followed by one reduction (``psum``) over the
mesh. A graph too large for one device's memory is spread over several; the result equals one device's within
float rounding (the sums are taken in another order).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kernels import host_products

PRODUCTS = ("auto", "host", "xla", "sharded")
EDGE_AXIS = "edges"  # the mesh axis the sharded products cut the edges along
MIN_BUCKET = 1024  # smallest padded length (agents or edges)
FINE_FROM = 1 << 16  # sizes above this grow by 2**(1/4) per bucket, below it by 2


class _GraphOps:
    """Sparse products shared by both graph containers (JAX, traceable)."""

    attender: jax.Array | np.ndarray
    source: jax.Array | np.ndarray
    weight: jax.Array | np.ndarray

    @property
    def size(self) -> int:
        """Length of the agent axis (padded length for :class:`PaddedGraph`)."""
        raise NotImplementedError

    def exposure(self, x: jax.Array) -> jax.Array:
        """e = W x: e_j = sum over edges j->i of w * x_i."""
        x = jnp.asarray(x)
        if self._host_token is not None:
            return host_products.exposure(self._host_token, x)
        return self._over_edges(_exposure, x)

    def transpose(self, y: jax.Array) -> jax.Array:
        """W^T y: (W^T y)_i = sum over edges j->i of w * y_j."""
        y = jnp.asarray(y)
        if self._host_token is not None:
            return host_products.transpose(self._host_token, y)
        return self._over_edges(_transpose, y)

    def _over_edges(self, product: Any, v: jax.Array) -> jax.Array:
        """``product(attender, source, weight, v, size)`` over all the edges: in one piece, or on each device's
        piece of them followed by one sum over the mesh (``products="sharded"``)."""
        mesh = self._mesh
        if mesh is None:
            return product(self.attender, self.source, self.weight, v, self.size)
        size = self.size
        edges, agents = PartitionSpec(EDGE_AXIS), PartitionSpec()

        def local(att: Any, src: Any, w: Any, vec: jax.Array) -> jax.Array:
            return jax.lax.psum(product(att, src, w, vec, size), EDGE_AXIS)

        return jax.shard_map(local, mesh=mesh, in_specs=(edges, edges, edges, agents), out_specs=agents)(
            self.attender, self.source, self.weight, v
        )

    def total(self, per_agent: jax.Array) -> jax.Array:
        """Sum of a per-agent quantity over the real agents (padding excluded)."""
        return jnp.sum(per_agent)

    def real(self, per_agent: jax.Array) -> jax.Array:
        """A per-agent quantity with the padding agents set to zero (the gradient of :meth:`total`)."""
        return per_agent

    @property
    def _host_token(self) -> jax.Array | int | None:
        return None

    @property
    def _mesh(self) -> Mesh | None:
        return None


def _exposure(att: Any, src: Any, weight: Any, x: jax.Array, size: int) -> jax.Array:
    vals = jnp.asarray(weight, dtype=x.dtype) * x.at[src].get(mode="promise_in_bounds")
    return jnp.zeros(size, x.dtype).at[att].add(vals, indices_are_sorted=True, mode="promise_in_bounds")


def _transpose(att: Any, src: Any, weight: Any, y: jax.Array, size: int) -> jax.Array:
    vals = jnp.asarray(weight, dtype=y.dtype) * y.at[att].get(mode="promise_in_bounds", indices_are_sorted=True)
    return jnp.zeros(size, y.dtype).at[src].add(vals, mode="promise_in_bounds")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class AttentionGraph(_GraphOps):
    """Validated attention graph on ``n`` agents (numpy arrays, edges sorted by attender).

    Duplicate (attender, source) pairs are allowed; they act as one edge with the summed weight.
    Raises ``ValueError`` naming the problem for mismatched lengths, non-integer or out-of-range indices,
    negative or non-finite weights, ``n < 1`` and, unless ``allow_empty`` is set, a graph with no edges.

    Immutable: the fields cannot be reassigned (frozen dataclass) and the arrays are read-only (the constructor
    keeps its own sorted copies, so the caller's arrays stay writeable). Equality and hashing are by identity, as
    for any object holding arrays.
    """

    attender: np.ndarray
    source: np.ndarray
    weight: np.ndarray
    n: int

    def __init__(
        self,
        attender: np.ndarray,
        source: np.ndarray,
        weight: np.ndarray | None,
        n: int,
        *,
        allow_empty: bool = False,
    ) -> None:
        attender = np.asarray(attender)
        source = np.asarray(source)
        weight = np.ones(attender.shape, np.float64) if weight is None else np.asarray(weight)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise ValueError(f"n must be an integer number of agents, got {n!r}")
        n = int(n)
        if n < 1:
            raise ValueError(f"graph must have at least one agent, got n={n}")
        for name, arr in (("attender", attender), ("source", source), ("weight", weight)):
            if arr.ndim != 1:
                raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
        if not (len(attender) == len(source) == len(weight)):
            raise ValueError(
                "attender, source and weight must have the same length, got "
                f"{len(attender)}, {len(source)} and {len(weight)}"
            )
        for name, arr in (("attender", attender), ("source", source)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} indices must be integers, got dtype {arr.dtype}")
        if not np.issubdtype(weight.dtype, np.number) or np.issubdtype(weight.dtype, np.complexfloating):
            raise ValueError(f"weight must be real numbers, got dtype {weight.dtype}")
        if len(attender) == 0 and not allow_empty:
            raise ValueError("graph has no edges: attribution on an empty attention graph is undefined")
        for name, arr in (("attender", attender), ("source", source)):
            if arr.size:
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi >= n:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"{name} index {bad} is out of range for n={n} agents")
        if weight.size:
            if not np.all(np.isfinite(weight)):
                raise ValueError("weight has non-finite entries (NaN or inf)")
            if weight.min() < 0:
                raise ValueError("weight has negative entries: attention strengths must be >= 0")
        index_dtype = np.int32 if n < 2**31 else np.int64
        if attender.size < 2 or bool(np.all(attender[1:] >= attender[:-1])):  # already sorted (a state snapshot)
            fields = {
                "attender": attender.astype(index_dtype, copy=True),
                "source": source.astype(index_dtype, copy=True),
                "weight": weight.astype(np.float64, copy=True),
            }
        else:
            order = np.argsort(attender, kind="stable")
            fields = {
                "attender": attender[order].astype(index_dtype),
                "source": source[order].astype(index_dtype),
                "weight": weight[order].astype(np.float64),
            }
        for name, arr in fields.items():  # fresh arrays: freezing them leaves the caller's alone
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "n", n)

    @property
    def size(self) -> int:
        return self.n

    @property
    def edges(self) -> int:
        return int(self.attender.shape[0])

    def __repr__(self) -> str:
        return f"AttentionGraph(n={self.n}, edges={self.edges})"

    def csr_by_source(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, attender, weight) grouped by source: the attenders of agent i are
        ``attender[indptr[i]:indptr[i+1]]``. Used by sequential (incremental) evaluators."""
        order = np.argsort(self.source, kind="stable")
        counts = np.bincount(self.source, minlength=self.n)
        indptr = np.zeros(self.n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, self.attender[order].astype(np.int64), self.weight[order]

    def subgraph(self, agents: np.ndarray) -> AttentionGraph:
        """Induced subgraph on ``agents`` (re-indexed 0..len(agents)-1 in the given order).

        Reads only the agents' own rows of the attender-sorted edges (a panel of 100 in a graph of 5*10^5 edges
        touches a few thousand, not all of them), in the agents' order: already sorted by the new attender index."""
        agents = np.asarray(agents, dtype=np.int64)
        remap = np.full(self.n, -1, np.int64)
        remap[agents] = np.arange(len(agents))
        starts = np.searchsorted(self.attender, agents, "left")
        counts = np.searchsorted(self.attender, agents, "right") - starts
        rows = np.repeat(np.arange(len(agents)), counts)
        edge = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        s = remap[self.source[edge]]
        keep = s >= 0
        return AttentionGraph(rows[keep], s[keep], self.weight[edge[keep]], len(agents), allow_empty=True)

    def padded(self, dtype: np.dtype | type | str, products: str = "auto") -> PaddedGraph:
        """This graph padded to its size bucket, as device arrays of ``dtype`` weights: :func:`padded`."""
        return padded(self, dtype, products)


@dataclass(frozen=True)
class PaddedGraph(_GraphOps):
    """Device-side graph padded to a size bucket; a JAX pytree so it passes through ``jit``.

    ``products`` says how W·x and Wᵀ·y run: ``"xla"`` as sorted scatter-adds and gathers in XLA (any device),
    ``"host"`` as threaded scipy CSR products on the host CPU (:mod:`kernels.host_products`), for which ``token``
    names the registered matrices, or ``"sharded"``: the edges cut over the devices of ``mesh`` (see the module
    doc). Both are static: each way is its own compilation."""

    attender: jax.Array
    source: jax.Array
    weight: jax.Array
    mask: jax.Array
    n: jax.Array | int
    token: jax.Array | int = 0
    products: str = "xla"
    mesh: Mesh | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def total(self, per_agent: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(self.mask, per_agent, 0))

    def real(self, per_agent: jax.Array) -> jax.Array:
        return jnp.where(self.mask, per_agent, 0)

    @property
    def _host_token(self) -> jax.Array | int | None:
        return self.token if self.products == "host" else None

    @property
    def _mesh(self) -> Mesh | None:
        return self.mesh if self.products == "sharded" else None


jax.tree_util.register_dataclass(
    PaddedGraph, data_fields=["attender", "source", "weight", "mask", "n", "token"], meta_fields=["products", "mesh"]
)


# graph -> {dtype name: padded copy}. Weak keys (identity hash, AttentionGraph has eq=False): an entry goes when its
# graph is collected, so the cache holds no graph alive and is bounded by the graphs the caller keeps. The lock makes
# the padding happen once per (graph, dtype) when threads share a graph; the weakref callbacks that drop dead
# entries never take it (WeakKeyDictionary handles those itself).
_padded_cache: weakref.WeakKeyDictionary[AttentionGraph, dict[str, PaddedGraph]] = weakref.WeakKeyDictionary()
_padded_lock = threading.Lock()


# Host products from 2^20 edges. Measured on a 2-core EPYC (cascade, 32 nodes, alone): 1.24x faster than XLA's at
# 5.2*10^5 edges, 2.1x at 2*10^6, 1.8x at 8*10^6. Below 10^6 edges the small gain alone turns into a loss in a
# daemon replaying an archive: each product's callback waits for the GIL that the ingest thread holds (the
# 100k-account archive's attributed replay 47.8 s with host products, 38.8 s with XLA's).
HOST_FROM_EDGES = 1 << 20
# Sharded products on several accelerators from 2^24 edges (1.7*10^7): below it one device holds the graph
# (10^8 edges take ~1.6 GB as int32 ends and float32 weights) and a reduction over the mesh per product costs more
# than it saves. Chosen from the memory arithmetic, not measured: no multi-GPU machine was available.
SHARD_FROM_EDGES = 1 << 24


def resolve_products(products: str = "auto", edges: int = HOST_FROM_EDGES) -> str:
    """The way sparse products run: ``"auto"`` is ``SKYATTR_KERNEL_PRODUCTS`` when set, else ``"host"`` when JAX
    computes on the CPU and the graph has at least :data:`HOST_FROM_EDGES` edges (threaded CSR products: the
    cascade ~2x faster from 2.5*10^5 agents on a 2-core EPYC, see benchmarks/RESULTS.md), and ``"xla"`` on an
    accelerator (the products stay on the device) and for small graphs, where a host call costs more than the
    product and, because a kernel with host calls cannot enter JAX's persistent compilation cache, a restart
    would recompile. On several accelerators, ``"sharded"`` from :data:`SHARD_FROM_EDGES` edges: the edges cut
    over the devices (the module doc)."""
    if products == "auto":
        products = os.environ.get("SKYATTR_KERNEL_PRODUCTS", "").strip() or "auto"
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {', '.join(PRODUCTS)}, got {products!r}")
    if products == "auto":
        if jax.default_backend() == "cpu":
            return "host" if edges >= HOST_FROM_EDGES else "xla"
        return "sharded" if jax.device_count() > 1 and edges >= SHARD_FROM_EDGES else "xla"
    return products


def padded(graph: AttentionGraph, dtype: np.dtype | type | str, products: str = "auto") -> PaddedGraph:
    """``graph`` padded to its size bucket, as device arrays with ``dtype`` weights (cached per graph, dtype and
    way of computing products: :func:`resolve_products`).

    Padding edges have zero weight (attender: the last index, source 0); padding agents have ``mask`` False.
    The device arrays are made under the caller's JAX x64 setting (callers pad inside ``jax.enable_x64`` for
    float64), and the cached copy is returned as is on later calls.
    """
    dt = np.dtype(dtype)
    how = resolve_products(products, graph.edges)
    with _padded_lock:
        per_dtype = _padded_cache.setdefault(graph, {})
        key = f"{dt.name}/{how}"
        if key not in per_dtype:
            per_dtype[key] = _pad(graph, dt, how)
        return per_dtype[key]


def _pad(graph: AttentionGraph, dtype: np.dtype, products: str) -> PaddedGraph:
    """The padded copy. With host products the edges live in the registered CSR matrices and the device copy
    carries none: the kernel's shapes are then the agent bucket's alone, so a graph whose edge count crosses a
    bucket recompiles nothing (host kernels cannot come from the persistent cache, so each compilation counts)."""
    n_pad = bucket(graph.n)
    e_pad = bucket(graph.edges) if products != "host" else 0
    devices = jax.devices() if products == "sharded" else []
    if devices:
        e_pad = equal_pieces(e_pad, len(devices))
    att = np.full(e_pad, n_pad - 1, graph.attender.dtype)
    src = np.zeros(e_pad, graph.source.dtype)
    w = np.zeros(e_pad, dtype)
    token = 0
    if products == "host":
        token = host_products.register(graph, graph.attender, graph.source, graph.weight, n_pad, dtype)
    else:
        att[: graph.edges], src[: graph.edges], w[: graph.edges] = graph.attender, graph.source, graph.weight
    mask = np.zeros(n_pad, bool)
    mask[: graph.n] = True
    if not devices:
        return PaddedGraph(
            jnp.asarray(att),
            jnp.asarray(src),
            jnp.asarray(w),
            jnp.asarray(mask),
            jnp.asarray(graph.n, jnp.int32),
            jnp.asarray(token, jnp.int32),
            products,
        )
    mesh, cut, whole = edge_mesh(devices)
    return PaddedGraph(
        jax.device_put(att, cut),
        jax.device_put(src, cut),
        jax.device_put(w, cut),
        jax.device_put(mask, whole),
        jax.device_put(np.int32(graph.n), whole),
        jax.device_put(np.int32(token), whole),
        products,
        mesh,
    )


def equal_pieces(edges: int, devices: int) -> int:
    """``edges`` rounded up to a multiple of ``devices``: the padded length that cuts into equal pieces."""
    return -(-edges // devices) * devices


def edge_mesh(devices: list[Any]) -> tuple[Mesh, NamedSharding, NamedSharding]:
    """The one-axis mesh of ``devices``, with the sharding that cuts the edge arrays along it and the one that
    keeps an array whole on every device."""
    mesh = Mesh(np.array(devices), (EDGE_AXIS,))
    return mesh, NamedSharding(mesh, PartitionSpec(EDGE_AXIS)), NamedSharding(mesh, PartitionSpec())


def bucket(size: int) -> int:
    """Smallest bucket >= size: powers of two up to :data:`FINE_FROM`, then powers of 2**(1/4) rounded up to a
    multiple of 128; never below :data:`MIN_BUCKET`.

    A new bucket is a new compilation (~0.3-1 s on a CPU), padding is wasted work. Below ``FINE_FROM`` a call is
    cheap (a few ms), so doubling keeps a population that grows from nothing (a replay's first hours) to a handful
    of compilations; above it consecutive buckets differ by ~19%, so padding wastes at most ~19% of the work while
    a population that grows slowly recompiles only when it crosses a bucket boundary.
    """
    if size <= MIN_BUCKET:
        return MIN_BUCKET
    if size <= FINE_FROM:
        return 1 << (size - 1).bit_length()
    k = math.ceil(4 * math.log2(size / FINE_FROM) - 1e-9)
    b = FINE_FROM * 2 ** (k / 4)
    b = int(math.ceil(b / 128) * 128)
    while b < size:  # float safety
        b += 128
    return b
