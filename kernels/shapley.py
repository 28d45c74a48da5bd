"""Shapley values by enumeration and by permutation sampling: oracles for tests and baselines for benchmarks.

``exact_shapley`` enumerates all 2^n coalitions (n <= 16). ``sampled_shapley`` is the permutation estimator of
Castro, Gómez & Tejada (2009): for each random order, every agent is credited with v(prefix + i) - v(prefix).

* ``mode="blackbox"`` evaluates v on every prefix coalition (x restricted to the coalition): n + 1 full
  evaluations per permutation. This is what a study with an opaque macro model runs.
* ``mode="incremental"`` updates the exposure as each agent joins, using the indicator's sequential evaluator
  (linear-stem indicators only): O(neighbourhood) per step.

Coalition S means agents outside S have activity 0: v(S) = v(x * 1_S).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernels.graph import AttentionGraph, PaddedGraph
from kernels.indicators import Indicator, as_indicator
from kernels.validation import check_activity, check_dtype, check_positive_int

EXACT_MAX_AGENTS = 16
MODES = ("blackbox", "incremental")
_BATCH_FLOATS = 1 << 24  # bound on batch * (agents + edges) for batched coalition evaluation


@dataclass(frozen=True)
class ShapleyEstimate:
    """Permutation-sampling estimate: ``phi`` (mean marginal), ``stderr`` (per-agent standard error of the
    mean, from the spread over permutations), ``evaluations`` of v (blackbox) or sequential steps (incremental)."""

    phi: np.ndarray
    stderr: np.ndarray
    permutations: int
    seconds: float
    mode: str
    evaluations: int

    @property
    def relative_error(self) -> float:
        """Estimated relative L2 error sqrt(sum stderr^2) / ||phi||."""
        norm = float(np.linalg.norm(self.phi))
        return float(np.sqrt(np.sum(self.stderr**2)) / norm) if norm > 0 else math.inf


def _check_graph(graph: Any) -> AttentionGraph:
    if not isinstance(graph, AttentionGraph):
        raise ValueError(f"graph must be an AttentionGraph, got {type(graph).__name__}")
    if graph.edges == 0:
        raise ValueError("graph has no edges: attribution on an empty attention graph is undefined")
    return graph


@functools.lru_cache(maxsize=32)
def _coalition_values(indicator: Indicator) -> Any:
    """jit: (x, masks[B, n], graph) -> v(x * mask) for each mask."""

    def run(x: jax.Array, masks: jax.Array, g: Any) -> jax.Array:
        return jax.vmap(lambda m: indicator.value(x * m, g))(masks)

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _prefix_values(indicator: Indicator) -> Any:
    """jit: (x, pos[P, n], rows[B], ts[B], graph) -> v(x restricted to agents with pos[row] < t) for each pair.

    Evaluations of several permutations share one call, so small games are not dominated by dispatch."""

    def run(x: jax.Array, pos: jax.Array, rows: jax.Array, ts: jax.Array, g: PaddedGraph) -> jax.Array:
        return jax.vmap(lambda r, t: indicator.value(jnp.where(pos[r] < t, x, 0), g))(rows, ts)

    return jax.jit(run)


def exact_shapley(indicator: Indicator | str | Any, x: Any, graph: AttentionGraph) -> np.ndarray:
    """Exact Shapley values by enumerating all 2^n coalitions (float64). Refuses n > 16."""
    ind = as_indicator(indicator)
    graph = _check_graph(graph)
    n = graph.n
    if n > EXACT_MAX_AGENTS:
        raise ValueError(
            f"exact Shapley enumerates 2^n coalitions; n={n} exceeds the limit of {EXACT_MAX_AGENTS} agents "
            "(use sampled_shapley or attribute)"
        )
    x64 = check_activity(x, n)
    codes = np.arange(1 << n, dtype=np.int64)
    bits = ((codes[:, None] >> np.arange(n)) & 1).astype(np.float64)
    fn = _coalition_values(ind)
    with jax.enable_x64(True):
        g = graph.padded(np.float64)
        x_pad = jnp.asarray(np.pad(x64, (0, g.size - n)))
        masks = np.pad(bits, ((0, 0), (0, g.size - n)))
        vals = np.concatenate(
            [np.asarray(fn(x_pad, jnp.asarray(masks[s : s + 4096]), g)) for s in range(0, len(masks), 4096)]
        ).astype(np.float64)
    size = bits.sum(axis=1).astype(np.int64)
    coef = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = np.sum(coef[size[without]] * (vals[without | (1 << i)] - vals[without]))
    return phi


SPLIT_MAX_COMPOSITIONS = 1 << 22  # (pieces + 1)^n coalition compositions evaluated by split_shapley


def split_shapley(indicator: Indicator | str | Any, x: Any, graph: AttentionGraph, pieces: int) -> np.ndarray:
    """Exact Shapley values when every agent is split into ``pieces`` equal players (each with activity x_i / k and
    the agent's attention), summed back per agent (float64). ``pieces=1`` is :func:`exact_shapley`.

    Why: the Aumann–Shapley value is the limit of these as k grows (Aumann & Shapley 1974, the value of a game whose
    players are an ocean of small ones), so the gap between the path integral and exact Shapley on a small game is
    the effect of agents being *large* (atoms) relative to the indicator's curvature, not of any property of v; the
    gap shrinks as the pieces shrink. A coalition is then a composition m (pieces of each agent present): v(m) =
    v(x * m / k), and a piece of agent i joining compositions with m_i < k is weighted by the number of coalitions
    of that composition, prod_j C(k_j, m_j) with k_i = k - 1, times s! (N - s - 1)! / N! (N = n k players, s =
    sum m). Refuses more than :data:`SPLIT_MAX_COMPOSITIONS` compositions, (k + 1)^n."""
    ind = as_indicator(indicator)
    graph = _check_graph(graph)
    n = graph.n
    k = check_positive_int(pieces, "pieces")
    if (k + 1) ** n > SPLIT_MAX_COMPOSITIONS:
        raise ValueError(f"(pieces + 1)^n = {(k + 1) ** n:,} compositions exceed {SPLIT_MAX_COMPOSITIONS:,}")
    x64 = check_activity(x, n)
    grid = np.stack(np.meshgrid(*[np.arange(k + 1)] * n, indexing="ij"), axis=-1).reshape(-1, n)
    fn = _coalition_values(ind)
    with jax.enable_x64(True):
        g = graph.padded(np.float64)
        x_pad = jnp.asarray(np.pad(x64, (0, g.size - n)))
        masks = np.pad(grid / k, ((0, 0), (0, g.size - n)))
        vals = np.concatenate(
            [np.asarray(fn(x_pad, jnp.asarray(masks[s : s + 8192]), g)) for s in range(0, len(masks), 8192)]
        ).astype(np.float64)
    total = n * k
    size = grid.sum(axis=1)
    log_order = np.array([math.lgamma(s + 1) + math.lgamma(total - s) - math.lgamma(total + 1) for s in range(total)])
    log_binom = np.array([[math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1) if b <= a else -np.inf
                           for b in range(k + 1)] for a in range(k + 1)])  # fmt: skip
    strides = (k + 1) ** np.arange(n - 1, -1, -1)
    phi = np.zeros(n)
    for i in range(n):
        rows = np.flatnonzero(grid[:, i] < k)
        m = grid[rows]
        log_count = log_binom[k][m].sum(axis=1) - log_binom[k][m[:, i]] + log_binom[k - 1][m[:, i]]
        weight = np.exp(log_count + log_order[size[rows]])
        phi[i] = k * np.sum(weight * (vals[rows + strides[i]] - vals[rows]))
    return phi


def sampled_shapley(
    indicator: Indicator | str | Any,
    x: Any,
    graph: AttentionGraph,
    permutations: int,
    seed: int = 0,
    mode: str = "blackbox",
    *,
    dtype: str = "float64",
) -> ShapleyEstimate:
    """Castro et al. permutation-sampling Shapley estimate with ``permutations`` random orders from ``seed``."""
    ind = as_indicator(indicator)
    graph = _check_graph(graph)
    x64 = check_activity(x, graph.n)
    permutations = check_positive_int(permutations, "permutations")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "incremental" and ind.incremental is None:
        raise ValueError(
            f"indicator {ind.name!r} has no sequential evaluator (incremental mode needs a linear stem); "
            "use mode='blackbox'"
        )
    rng = np.random.default_rng(seed)
    n = graph.n
    samples = np.zeros((permutations, n))
    start = time.perf_counter()
    if mode == "incremental":
        assert ind.incremental is not None  # checked above
        ev = ind.incremental(x64, graph)
        for p in range(permutations):
            ev.reset()
            for i in rng.permutation(n):
                samples[p, i] = ev.add(int(i))
        evaluations = permutations * n
    else:
        np_dtype = check_dtype(dtype)
        with jax.enable_x64(np_dtype == np.float64):
            g = graph.padded(np_dtype)
            x_pad = np.zeros(g.size, np_dtype)
            x_pad[:n] = x64
            x_dev = jnp.asarray(x_pad)
            batch = 1 << max(0, min(12, int(math.log2(max(1, _BATCH_FLOATS // (g.size + len(g.weight)))))))
            group = max(1, batch // (n + 1))
            fn = _prefix_values(ind)
            for first in range(0, permutations, group):
                count = min(group, permutations - first)
                perms = [rng.permutation(n) for _ in range(count)]
                pos = np.full((group, g.size), g.size + 1, np.int32)
                for r, perm in enumerate(perms):
                    pos[r, perm] = np.arange(n, dtype=np.int32)
                rows = np.repeat(np.arange(group, dtype=np.int32), n + 1)
                ts = np.tile(np.arange(n + 1, dtype=np.int32), group)
                pad = -len(rows) % batch
                rows = np.concatenate([rows, np.zeros(pad, np.int32)])
                ts = np.concatenate([ts, np.zeros(pad, np.int32)])
                pos_dev = jnp.asarray(pos)
                vals = np.concatenate(
                    [
                        np.asarray(
                            fn(x_dev, pos_dev, jnp.asarray(rows[b : b + batch]), jnp.asarray(ts[b : b + batch]), g)
                        )
                        for b in range(0, len(rows), batch)
                    ]
                ).astype(np.float64)
                vals = vals[: group * (n + 1)].reshape(group, n + 1)
                for r, perm in enumerate(perms):
                    samples[first + r, perm] = np.diff(vals[r])
        evaluations = permutations * (n + 1)
    seconds = time.perf_counter() - start
    phi = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(permutations) if permutations > 1 else np.full(n, np.inf)
    return ShapleyEstimate(phi, stderr, permutations, seconds, mode, evaluations)
