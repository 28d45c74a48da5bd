"""Load a population (activity, visibility, attention edges) from an .npz file or make a synthetic one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import kernels

if TYPE_CHECKING:
    from kernels import AttentionGraph, Population

NPZ_FIELDS = ("x", "visibility", "attender", "source", "weight")


def load_npz(path: Path) -> Population:
    """Arrays ``x``, ``visibility``, ``attender``, ``source`` and ``weight`` (n = len(x)); ``ValueError`` names a
    missing or malformed field."""
    hint = "an .npz of arrays x, visibility, attender, source, weight, as `skyattr replay --snapshot-out` writes"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ValueError(f"cannot read population file {path}: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":  # numpy would guess at pickles for anything that is not a zip or .npy
        raise ValueError(f"population file {path} is not {hint} ({'empty' if not magic else 'not a zip archive'})")
    try:
        data = np.load(path, allow_pickle=False)
        files = data.files
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"population file {path} is not {hint}: {exc}") from None
    missing = [f for f in NPZ_FIELDS if f not in files]
    if missing:
        raise ValueError(f"population file {path} lacks array(s): {', '.join(missing)}")
    x = np.asarray(data["x"], np.float64)
    vis = np.asarray(data["visibility"], np.float64)
    if vis.shape != x.shape:
        raise ValueError(f"visibility has length {len(vis)} but x has {len(x)}")
    graph = kernels.AttentionGraph(data["attender"], data["source"], data["weight"], len(x))
    return kernels.Population(x=x, visibility=vis, graph=graph)


def write_npz(
    path: Path, x: np.ndarray, visibility: np.ndarray, graph: AttentionGraph | None, dids: list[str] | None = None
) -> None:
    """The population file :func:`load_npz` reads (an empty edge list when there is no graph); ``dids`` names the
    agents when they are real accounts."""
    empty = np.zeros(0, np.int64)
    arrays = {
        "x": x,
        "visibility": visibility,
        "attender": graph.attender if graph is not None else empty,
        "source": graph.source if graph is not None else empty,
        "weight": graph.weight if graph is not None else np.zeros(0),
    }
    if dids is not None:
        arrays["dids"] = np.array(dids)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stubs read **kwds as allow_pickle


def save_npz(pop: Population, path: Path) -> None:
    write_npz(path, pop.x, pop.visibility, pop.graph)


def synthetic(
    agents: int, edges_per_agent: float, seed: int, progress: Callable[[int, int], None] | None = None
) -> Population:
    return kernels.heavy_tailed_population(agents, edges_per_agent, seed, progress=progress)
