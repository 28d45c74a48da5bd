"""The visibility-biased panel that small studies use, and the attribution such a study would compute.

A small study picks the ~100 most visible accounts that are active. Two games give its attribution, and the
scale-bias figures keep them apart (:mod:`kernels.bias`):

* ``restricted`` — what the study computes: the indicator on the panel alone, x and W restricted to the panel (the
  attention that non-panel accounts pay to panel accounts, and the reverse, is gone). Parameters that grow with the
  population keep the full population's value (:meth:`~kernels.indicators.Indicator.at_scale`).
* ``same_game`` — the full-scale game with only the panel's players active: the full W, every other account's
  activity at zero. It isolates the effect of the indicator's nonlinearity: with a linear indicator it equals the
  full-scale attribution on the panel exactly, so whatever remains between ``restricted`` and ``same_game`` is the
  effect of the restriction.
"""

from __future__ import annotations

from dataclasses import replace
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


GAMES = ("restricted", "same_game")


def panel_attribution(
    indicator: Indicator | str | Any,
    x: Any,
    graph: AttentionGraph,
    panel: Any,
    nodes: int = NODES,
    dtype: str = DTYPE,
    game: str = "restricted",
    rule: str = "log-graded",
) -> Attribution:
    """The panel study's attribution in ``game`` (see the module doc), phi in panel order, with the quadrature
    ``rule`` (a fixed one: pass the rule the full attribution used, so both games integrate alike).

    A panel with no attention among its members (restricted) or none to anyone (same game) has v constant, and
    gets phi = 0 rather than an error.
    """
    if game not in GAMES:
        raise ValueError(f"game must be one of {', '.join(GAMES)}, got {game!r}")
    ind = as_indicator(indicator)
    panel = np.asarray(panel, np.int64)
    if panel.ndim != 1 or panel.size == 0:
        raise ValueError("panel must be a non-empty 1-D array of agent indices")
    if panel.min() < 0 or panel.max() >= graph.n:
        raise ValueError(f"panel index out of range for n={graph.n} agents")
    if len(np.unique(panel)) != len(panel):
        raise ValueError("panel has duplicate agent indices")
    x = check_activity(x, graph.n)
    if game == "restricted":
        return _attribute(ind.at_scale(graph.n), x[panel], graph.subgraph(panel), nodes, dtype, rule=rule)
    only_panel = np.zeros_like(x)
    only_panel[panel] = x[panel]
    whole = _attribute(ind, only_panel, graph, nodes, dtype, rule=rule)
    return replace(whole, phi=whole.phi[panel])
