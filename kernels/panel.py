"""The visibility-biased panel that small studies use, and the attribution such a study would compute.

A small study picks the ~100 most visible accounts that are active, collects their activity and the attention
among them, and runs the indicator on that panel alone: same indicator, x and W restricted to the panel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.attribution import Attribution, _attribute
from kernels.defaults import DTYPE, NODES, PANEL_SIZE
from kernels.graph import AttentionGraph
from kernels.indicators import Indicator, as_indicator
from kernels.tiers import visibility_order
from kernels.validation import check_activity, check_positive_int


def select_panel(visibility: Any, x: Any, size: int = PANEL_SIZE) -> np.ndarray:
    """Indices of the ``size`` most visible agents with x > 0, most visible first (ties by index).
    Fewer are returned when fewer agents are active."""
    size = check_positive_int(size, "size")
    vis = np.asarray(visibility, np.float64)
    x = check_activity(x, len(vis))
    order = visibility_order(vis)
    return order[x[order] > 0][:size].astype(np.int64)


def panel_attribution(
    indicator: Indicator | str | Any,
    x: Any,
    graph: AttentionGraph,
    panel: Any,
    nodes: int = NODES,
    dtype: str = DTYPE,
) -> Attribution:
    """Attribution computed on the panel's induced subgraph only (phi in panel order).

    A panel with no attention among its members has v constant, and gets phi = 0 rather than an error.
    """
    ind = as_indicator(indicator)
    panel = np.asarray(panel, np.int64)
    if panel.ndim != 1 or panel.size == 0:
        raise ValueError("panel must be a non-empty 1-D array of agent indices")
    if panel.min() < 0 or panel.max() >= graph.n:
        raise ValueError(f"panel index out of range for n={graph.n} agents")
    if len(np.unique(panel)) != len(panel):
        raise ValueError("panel has duplicate agent indices")
    x = check_activity(x, graph.n)
    return _attribute(ind, x[panel], graph.subgraph(panel), nodes, dtype)
