"""One scale-bias study of a population: the full-scale attribution, its tiers, the panel and the panel's games.

What the daemon runs every interval and what ``skyattr attribute`` runs once, computed in one place so the two can
never disagree. Pure numpy/JAX, no I/O.

**Nothing to attribute.** When |v(x) − v(0)| is at the floating-point noise of v (at most :data:`FLOOR_ULPS` units
in the last place of max(|v(x)|, |v(0)|) in the run's dtype; exactly zero when both are zero) there is no
phenomenon to split, and any tier "share" would be a share of rounding error. Such a study carries the reason in
``nothing`` and no panel, no games and no figures: callers publish that outcome in words, never shares or an alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels import defaults
from kernels.attribution import MAX_NODES, Attribution, attribute, passes
from kernels.bias import ScaleBias, scale_bias
from kernels.indicators import Indicator, as_indicator
from kernels.panel import GAMES, panel_attribution, select_panel
from kernels.tiers import assign_tiers

FLOOR_ULPS = 64  # |v(x) - v(0)| at or below this many ulps of the larger of |v(x)|, |v(0)|: nothing to attribute


def negligible(value: float, baseline: float, dtype: str) -> bool:
    """Whether v(x) − v(0) is indistinguishable from rounding noise in ``dtype`` (see the module doc)."""
    scale = max(abs(value), abs(baseline))
    return abs(value - baseline) <= FLOOR_ULPS * float(np.finfo(dtype).eps) * scale


@dataclass(frozen=True)
class PanelGame:
    """The panel study in one game: its attribution (phi in panel order) and its scale-bias figures."""

    attribution: Attribution
    bias: ScaleBias


@dataclass(frozen=True)
class Study:
    """The full-scale attribution, the tier of every agent, the panel (most visible first) and one
    :class:`PanelGame` per game; or, when ``nothing`` says why, the full attribution alone."""

    full: Attribution
    tiers: np.ndarray
    panel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    games: dict[str, PanelGame] = field(default_factory=dict)
    nothing: str = ""


def scale_study(
    indicator: Indicator | str | Any,
    x: Any,
    graph: Any,
    visibility: Any,
    *,
    nodes: int = defaults.NODES,
    dtype: str = defaults.DTYPE,
    head: float = defaults.HEAD,
    middle: float = defaults.MIDDLE,
    panel_size: int = defaults.PANEL_SIZE,
    games: tuple[str, ...] = GAMES,
    estimate_error: bool = False,
    rule: str = "auto",
    tolerance: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Study:
    """Attribute ``indicator`` over the population, tier it by ``visibility``, select the panel and attribute it in
    each of ``games`` (with ``estimate_error`` the full attribution carries its error estimate, see
    :class:`~kernels.attribution.Attribution`). The quadrature ``rule`` is the full attribution's (``auto``: the
    better of the two by their error estimates, which it then carries); the panel games use the rule it chose, and
    its node count (with a ``tolerance`` the count is error-driven, see :func:`~kernels.attribution.attribute`).
    Raises ``ValueError`` when no agent is active (there is no panel to speak of).

    ``progress(done, total)`` hears the quadrature nodes evaluated over the whole graph, the study's cost at scale:
    the full attribution's passes and the same game's (the restricted game plays on the panel's subgraph, at no
    cost worth counting). ``total`` starts at the most there can be and shrinks when a pass is not needed."""
    ind = as_indicator(indicator)
    whole_graph_games = sum(game == "same_game" for game in games)  # each a pass at the full attribution's count
    done = 0

    def on_pass(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, max(done, planned))

    most = max(MAX_NODES, nodes) if tolerance else nodes
    planned = passes(nodes, rule, estimate_error, tolerance) + whole_graph_games * most
    full = attribute(
        ind, x, graph, nodes=nodes, dtype=dtype, estimate_error=estimate_error, rule=rule, tolerance=tolerance,
        on_pass=on_pass,
    )  # fmt: skip
    planned = done + whole_graph_games * full.nodes
    tiers = assign_tiers(visibility, head=head, middle=middle)
    if negligible(full.value, full.baseline, dtype):
        return Study(full, tiers, nothing=f"v(x) = v(0) = {full.value:.6g}: nothing to attribute")
    panel = select_panel(visibility, x, size=panel_size)
    if panel.size == 0:
        raise ValueError("no active agents: the panel is empty")
    played = {}
    for game in games:
        attr = panel_attribution(ind, x, graph, panel, nodes=full.nodes, dtype=dtype, game=game, rule=full.rule)
        if game == "same_game":
            on_pass(attr.nodes)
        played[game] = PanelGame(attr, scale_bias(full, panel, attr, tiers))
    return Study(full, tiers, panel, played)
