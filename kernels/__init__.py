"""skyattr kernels: pure array functions for macro-indicator attribution (no I/O).

Aumann–Shapley path-integral attribution of population-level indicators to agents, the Shapley oracles it is
checked against, visibility tiers, the small-study panel and the scale-bias figures that compare the two, and the
concentration measures (Gini, Lorenz) of an attribution.
"""

from kernels import defaults
from kernels.attribution import Attribution, attribute
from kernels.graph import AttentionGraph, PaddedGraph, bucket
from kernels.indicators import (
    ENTRY_POINT_GROUP,
    IncrementalEvaluator,
    Indicator,
    available_indicators,
    get_indicator,
    reach_closed_form,
    register_indicator,
)
from kernels.inequality import gini, lorenz
from kernels.panel import panel_attribution, select_panel
from kernels.quadrature import gauss_legendre
from kernels.scale_bias import AlertThresholds, ScaleBias, scale_bias
from kernels.shapley import ShapleyEstimate, exact_shapley, sampled_shapley
from kernels.synthetic import Population, heavy_tailed_population
from kernels.tiers import TIER_NAMES, assign_tiers, tier_shares

__all__ = [
    "ENTRY_POINT_GROUP",
    "TIER_NAMES",
    "AlertThresholds",
    "AttentionGraph",
    "Attribution",
    "IncrementalEvaluator",
    "Indicator",
    "PaddedGraph",
    "Population",
    "ScaleBias",
    "ShapleyEstimate",
    "assign_tiers",
    "attribute",
    "available_indicators",
    "bucket",
    "defaults",
    "exact_shapley",
    "gauss_legendre",
    "get_indicator",
    "gini",
    "heavy_tailed_population",
    "lorenz",
    "panel_attribution",
    "reach_closed_form",
    "register_indicator",
    "sampled_shapley",
    "scale_bias",
    "select_panel",
    "tier_shares",
]
