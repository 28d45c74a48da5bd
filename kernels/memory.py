"""How much device memory one attribution takes, from the compiler, before any array exists.

Whether 10^7 agents and 10^8 edges fit one 80 GB GPU, or need the edges sharded over several, is answered by
compiling the attribution kernel for the graph's padded shapes (abstract arrays: nothing is allocated) and reading
XLA's own accounting of the compiled program: its arguments (the graph and the activity), its output and its
temporaries (per device when the edges are sharded). That is the figure the device will need, for the backend it
is compiled for; ``benchmarks/gpu.py`` sets it beside the peak a GPU reports after the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from kernels import defaults
from kernels.attribution import _kernel, default_chunk
from kernels.graph import PaddedGraph, bucket, edge_mesh, equal_pieces
from kernels.indicators import as_indicator


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds for one attribution pass (see the module doc)."""

    agents: int
    edges: int
    devices: int
    chunk: int
    arguments: int
    output: int
    temporaries: int

    @property
    def total(self) -> int:
        return self.arguments + self.output + self.temporaries

    def fits(self, device_bytes: float, headroom: float = 0.9) -> bool:
        """Whether it fits a device of ``device_bytes`` with ``headroom`` of it usable."""
        return self.total <= headroom * device_bytes


def plan(
    agents: int,
    edges: int,
    indicator: str = "cascade",
    nodes: int = defaults.NODES,
    dtype: str = defaults.DTYPE,
    *,
    chunk: int | None = None,
    devices: int = 1,
) -> MemoryPlan:
    """The memory of one pass of ``nodes`` nodes on ``agents`` agents and ``edges`` edges, the edges sharded over
    the first ``devices`` devices of the backend (1: one device, XLA products). ``chunk``: nodes evaluated
    together (default: the backend's, :func:`kernels.attribution.default_chunk`)."""
    if devices < 1 or devices > jax.device_count():
        raise ValueError(f"devices must be between 1 and {jax.device_count()} here, got {devices}")
    ind = as_indicator(indicator)
    dt = jnp.dtype(dtype)
    n_pad, e_pad = bucket(agents), bucket(edges)
    chunk = min(chunk or default_chunk(n_pad, "xla"), nodes)
    path = "linear-stem" if ind.linear_stem else "generic"
    if devices == 1:
        mesh, cut, whole = None, None, None
        products = "xla"
    else:
        e_pad = equal_pieces(e_pad, devices)
        mesh, cut, whole = edge_mesh(jax.devices()[:devices])
        products = "sharded"

    def shaped(shape: tuple[int, ...], kind: Any, sharding: NamedSharding | None) -> Any:
        return jax.ShapeDtypeStruct(shape, kind, sharding=sharding)  # stands for an array in PaddedGraph

    graph = PaddedGraph(
        shaped((e_pad,), jnp.int32, cut),
        shaped((e_pad,), jnp.int32, cut),
        shaped((e_pad,), dt, cut),
        shaped((n_pad,), jnp.bool_, whole),
        shaped((), jnp.int32, whole),
        shaped((), jnp.int32, whole),
        products,
        mesh,
    )
    x = shaped((n_pad,), dt, whole)
    with jax.enable_x64(dt == jnp.float64):
        compiled = _kernel(ind, nodes, chunk, path, "log-graded").lower(x, graph).compile()
    stats = compiled.memory_analysis()
    return MemoryPlan(
        agents,
        edges,
        devices,
        chunk,
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
    )
