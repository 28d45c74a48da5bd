"""W·x and Wᵀ·y on the host CPU as JAX operations: scipy CSR products over a thread pool.

Why: XLA's CPU scatter and gather run on one thread with a per-element overhead, so a product of W costs about
twice a scipy CSR mat-vec of the same W on one core (1.67·10⁶ agents, 1.3·10⁷ edges, 2-core EPYC: 40 ms against
20 ms), and the scatter of Wᵀ·y is no better. A CSR product is a tight loop that releases the GIL, so rows split
into blocks of equal edge counts run on every core at once. Each product becomes a ``jax.pure_callback`` with a
custom VJP (the adjoint of W·x is Wᵀ·y and the other way round), so the indicators, ``jax.grad``, ``vmap`` and
``jit`` see an ordinary differentiable linear map.

The matrices live here, not in the traced arrays: a graph is registered once per (graph, dtype) and carries only
an integer token into the kernels, so one compilation per size bucket still serves every graph of that bucket.
A registration is dropped when its graph is collected.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

# Below this many edges a product takes tens of microseconds and handing blocks to threads costs more than it saves.
THREADED_FROM_EDGES = 1 << 17


def threads() -> int:
    """Threads per product: the cores this process may use (``SKYATTR_KERNEL_THREADS`` overrides)."""
    configured = os.environ.get("SKYATTR_KERNEL_THREADS", "").strip()
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Operator:
    """One sparse matrix split into row blocks of about equal edge counts."""

    def __init__(self, matrix: sp.csr_matrix, parts: int) -> None:
        self.shape, self.dtype = matrix.shape, matrix.dtype
        if parts <= 1 or matrix.nnz < THREADED_FROM_EDGES:
            self.blocks = [(0, matrix)]
        else:
            cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, parts + 1)[1:-1])
            bounds = [0, *sorted(set(int(c) for c in cuts)), matrix.shape[0]]
            self.blocks = [(lo, matrix[lo:hi]) for lo, hi in itertools.pairwise(bounds) if hi > lo]

    def apply(self, v: np.ndarray) -> np.ndarray:
        """The product with each row of ``v`` (shape ``(..., n)``), in ``v``'s dtype. Several rows (quadrature
        nodes batched by ``vmap``) go through one CSR-times-dense product per block, which reads each edge once
        for all of them."""
        rows = v.reshape(-1, v.shape[-1])
        out = np.empty((rows.shape[0], self.shape[0]), v.dtype)
        dense = rows[0] if rows.shape[0] == 1 else np.ascontiguousarray(rows.T)

        def one(task: tuple[int, sp.csr_matrix]) -> None:
            lo, block = task
            product = block @ dense
            out[:, lo : lo + block.shape[0]] = product if product.ndim == 1 else product.T

        pool = _thread_pool() if len(self.blocks) > 1 else None
        if pool is None:
            for task in self.blocks:
                one(task)
        else:
            list(pool.map(one, self.blocks))
        return out.reshape((*v.shape[:-1], self.shape[0]))


class _Registered:
    def __init__(self, forward: _Operator, adjoint: _Operator) -> None:
        self.forward, self.adjoint = forward, adjoint


_registry: dict[int, _Registered] = {}
_tokens = itertools.count(1)
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor | None:
    """The shared pool, made on the first threaded product (a product on one block never asks for it)."""
    global _pool
    if _pool is not None:
        return _pool
    with _lock:
        if _pool is None and threads() > 1:
            _pool = ThreadPoolExecutor(threads(), thread_name_prefix="skyattr-spmv")
        return _pool


def register(
    owner: object, attender: np.ndarray, source: np.ndarray, weight: np.ndarray, size: int, dtype: np.dtype
) -> int:
    """Build W (rows: attenders) and Wᵀ (rows: sources) on ``size`` agents for ``dtype`` and return the token the
    kernels pass to :func:`exposure` and :func:`transpose`; the matrices go when ``owner`` is collected.

    ``attender`` must be sorted (as :class:`~kernels.graph.AttentionGraph` keeps it): W is then built from its
    row pointers without a sort, and Wᵀ by scipy's counting transpose, both O(edges + agents)."""
    counts = np.bincount(attender, minlength=size)
    indptr = np.zeros(size + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    index_dtype = np.int32 if len(source) < 2**31 and size < 2**31 else np.int64
    w = sp.csr_matrix(
        (np.asarray(weight, dtype), np.asarray(source, index_dtype), indptr.astype(index_dtype)), shape=(size, size)
    )
    wt = w.T.tocsr()
    parts = threads()
    entry = _Registered(_Operator(w, parts), _Operator(wt, parts))
    with _lock:
        token = next(_tokens)
        _registry[token] = entry
    weakref.finalize(owner, _registry.pop, token, None)
    return token


def registered() -> int:
    """How many graphs hold host matrices now (for tests of their lifetime)."""
    return len(_registry)


def _host(direction: str) -> Any:
    def run(token: np.ndarray, v: np.ndarray) -> np.ndarray:
        entry = _registry[int(np.ravel(token)[0])]
        op = entry.forward if direction == "forward" else entry.adjoint
        wide = v.dtype == np.uint32  # a float64 vector travels as its bits: see _call
        values = np.ascontiguousarray(v).view(np.float64).reshape(v.shape[:-1]) if wide else np.asarray(v, op.dtype)
        out = op.apply(values)
        return out.view(np.uint32).reshape(v.shape) if wide else out

    return run


_forward_host, _adjoint_host = _host("forward"), _host("adjoint")


def _call(fn: Any, token: jax.Array | int, v: jax.Array) -> jax.Array:
    """``fn`` on the host. A float64 vector crosses as pairs of uint32 bits: the callback runs on a thread of
    XLA's, where JAX's x64 switch (a per-thread setting when scoped by ``jax.enable_x64``) may be off, and JAX
    would then narrow the vector and the result to float32 on the way."""
    if v.dtype == jnp.float64:
        bits = jax.lax.bitcast_convert_type(v, jnp.uint32)
        out = jax.pure_callback(
            fn, jax.ShapeDtypeStruct(bits.shape, bits.dtype), token, bits, vmap_method="expand_dims"
        )
        return jax.lax.bitcast_convert_type(out, jnp.float64)
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(v.shape, v.dtype), token, v, vmap_method="expand_dims")


@jax.custom_vjp
def exposure(token: jax.Array | int, x: jax.Array) -> jax.Array:
    """W·x on the host."""
    return _call(_forward_host, token, x)


@jax.custom_vjp
def transpose(token: jax.Array | int, y: jax.Array) -> jax.Array:
    """Wᵀ·y on the host."""
    return _call(_adjoint_host, token, y)


def _no_token_cotangent(token: jax.Array) -> Any:
    return np.zeros(jnp.shape(token), jax.dtypes.float0)


exposure.defvjp(
    lambda token, x: (exposure(token, x), token),
    lambda token, ct: (_no_token_cotangent(token), transpose(token, ct)),
)
transpose.defvjp(
    lambda token, y: (transpose(token, y), token),
    lambda token, ct: (_no_token_cotangent(token), exposure(token, ct)),
)
