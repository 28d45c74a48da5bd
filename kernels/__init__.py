"""skyattr kernels: pure array functions for macro-indicator attribution (no I/O).

Aumann–Shapley path-integral attribution of population-level indicators to agents, the Shapley oracles it is
checked against, visibility tiers, the small-study panel and the scale-bias figures that compare the two, and the
concentration measures (Gini, Lorenz) of an attribution.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernels import defaults
    from kernels.attribution import Attribution, attribute
    from kernels.bias import AlertDecision, AlertThresholds, ScaleBias, decide_alert, scale_bias
    from kernels.compile_cache import default_cache_dir, use_compilation_cache
    from kernels.graph import AttentionGraph, PaddedGraph, bucket
    from kernels.indicators import (
        ENTRY_POINT_GROUP,
        IncrementalEvaluator,
        Indicator,
        available_indicators,
        get_indicator,
        linear_closed_form,
        reach_closed_form,
        register_indicator,
    )
    from kernels.inequality import gini, lorenz
    from kernels.panel import GAMES, panel_attribution, select_panel
    from kernels.quadrature import gauss_legendre
    from kernels.shapley import ShapleyEstimate, exact_shapley, sampled_shapley
    from kernels.study import Study, scale_study
    from kernels.synthetic import Population, heavy_tailed_population
    from kernels.tiers import TIER_NAMES, assign_tiers, tier_shares

# public name -> the module defining it, imported on first use: `import kernels` alone costs nothing, so a
# command that never computes (`skyattr --help`) never loads JAX
_WHERE: dict[str, str] = {
    "AlertDecision": "kernels.bias",
    "AlertThresholds": "kernels.bias",
    "decide_alert": "kernels.bias",
    "AttentionGraph": "kernels.graph",
    "Attribution": "kernels.attribution",
    "ENTRY_POINT_GROUP": "kernels.indicators",
    "IncrementalEvaluator": "kernels.indicators",
    "Indicator": "kernels.indicators",
    "PaddedGraph": "kernels.graph",
    "Population": "kernels.synthetic",
    "ScaleBias": "kernels.bias",
    "ShapleyEstimate": "kernels.shapley",
    "TIER_NAMES": "kernels.tiers",
    "assign_tiers": "kernels.tiers",
    "attribute": "kernels.attribution",
    "available_indicators": "kernels.indicators",
    "bucket": "kernels.graph",
    "default_cache_dir": "kernels.compile_cache",
    "defaults": "kernels.defaults",
    "exact_shapley": "kernels.shapley",
    "gauss_legendre": "kernels.quadrature",
    "get_indicator": "kernels.indicators",
    "gini": "kernels.inequality",
    "heavy_tailed_population": "kernels.synthetic",
    "linear_closed_form": "kernels.indicators",
    "lorenz": "kernels.inequality",
    "panel_attribution": "kernels.panel",
    "GAMES": "kernels.panel",
    "reach_closed_form": "kernels.indicators",
    "register_indicator": "kernels.indicators",
    "sampled_shapley": "kernels.shapley",
    "Study": "kernels.study",
    "scale_study": "kernels.study",
    "scale_bias": "kernels.bias",
    "select_panel": "kernels.panel",
    "tier_shares": "kernels.tiers",
    "use_compilation_cache": "kernels.compile_cache",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    module = importlib.import_module(where)
    value = module if where == f"kernels.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "ENTRY_POINT_GROUP",
    "GAMES",
    "TIER_NAMES",
    "AlertDecision",
    "AlertThresholds",
    "AttentionGraph",
    "Attribution",
    "IncrementalEvaluator",
    "Indicator",
    "PaddedGraph",
    "Population",
    "ScaleBias",
    "ShapleyEstimate",
    "Study",
    "assign_tiers",
    "attribute",
    "available_indicators",
    "bucket",
    "decide_alert",
    "default_cache_dir",
    "defaults",
    "exact_shapley",
    "gauss_legendre",
    "get_indicator",
    "gini",
    "heavy_tailed_population",
    "linear_closed_form",
    "lorenz",
    "panel_attribution",
    "reach_closed_form",
    "register_indicator",
    "sampled_shapley",
    "scale_bias",
    "scale_study",
    "select_panel",
    "tier_shares",
    "use_compilation_cache",
]
