"""The paper's table as named numbers: the figures of one scale-bias study, and intervals over replicates.

:func:`study_figures` flattens a :class:`~kernels.study.Study` into ``{name: value}`` (see :data:`FIGURES` for the
names and what each is), so a table, a JSON file and a confidence interval all read the same keys. A study with
nothing to attribute has no figures (an empty mapping): a replicate where v(x) = v(0) is counted apart, never
averaged in as zeros.

:func:`interval` is the percentile interval of a figure over replicates (bootstrap resamples of the agents, or
populations drawn with other seeds), NaN replicates left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kernels.bias import top_share
from kernels.inequality import gini
from kernels.study import Study
from kernels.tiers import TIER_NAMES, tier_shares

GAME_NAMES = GAMES = ("restricted", "same_game")

FIGURES: dict[str, str] = {
    **{f"full.{t}": f"full-scale share of the {t} tier" for t in TIER_NAMES},
    "full.middle_tail": "full-scale share of the middle and tail tiers together (what a head-only study misses)",
    **{
        f"{g}.{t}": f"share of the {t} tier in the panel's own attribution ({g.replace('_', ' ')})"
        for g in GAME_NAMES
        for t in TIER_NAMES
    },
    "panel_share": "the panel's share of the full-scale attribution",
    **{
        f"{g}.c_star": f"c*: the rescaling that best maps the panel's attribution on the truth ({g})"
        for g in GAME_NAMES
    },
    **{f"{g}.r_star": f"r*: what no rescaling removes, relative L2 ({g})" for g in GAME_NAMES},
    **{f"{g}.spearman": f"rank correlation, panel vs full-scale attribution of the panel ({g})" for g in GAMES},
    **{f"{g}.tvd": f"total variation distance of tier shares, panel vs full ({g})" for g in GAME_NAMES},
    "panel_in_head": "1 when every panel member is in the head tier (its shares are then (1, 0, 0) by construction)",
    "full.top_k": "share of the full-scale attribution held by the k largest accounts",
    "full.gini": "Gini coefficient of the full-scale attribution",
    **{f"{g}.top_k": f"share of the panel's attribution held by its k largest accounts ({g})" for g in GAME_NAMES},
}


def study_figures(study: Study, top_k: int = 10) -> dict[str, float]:
    """The figures of :data:`FIGURES` for ``study`` (empty when it has nothing to attribute)."""
    if study.nothing:
        return {}
    phi = np.asarray(study.full.phi, np.float64)
    full = tier_shares(phi, study.tiers)
    out = {f"full.{t}": float(full[i]) for i, t in enumerate(TIER_NAMES)}
    out["full.middle_tail"] = float(full[1] + full[2])
    out["full.top_k"] = top_share(phi, top_k)
    out["full.gini"] = gini(phi)
    if study.panel.size:
        out["panel_in_head"] = float(np.all(np.asarray(study.tiers)[study.panel] == 0))
    for g in GAME_NAMES:
        game = study.games.get(g)
        if game is None:
            continue
        b = game.bias
        out.update({f"{g}.{t}": float(v) for t, v in zip(TIER_NAMES, b.tiers_panel, strict=True)})
        out["panel_share"] = float(b.panel_share)
        out[f"{g}.c_star"] = float(b.rescale)
        out[f"{g}.r_star"] = float(b.residual)
        out[f"{g}.spearman"] = float(b.spearman)
        out[f"{g}.tvd"] = float(b.tvd)
        out[f"{g}.top_k"] = top_share(np.asarray(game.attribution.phi, np.float64), top_k)
    return out


@dataclass(frozen=True)
class Interval:
    """A figure over replicates: the point estimate (the figure on the population itself), the percentile interval
    ``low``–``high`` at ``level``, the replicates' ``mean`` (its distance from the estimate is the resampling's
    bias for this figure), the replicates it rests on and those with no value (NaN, or nothing to attribute)."""

    estimate: float
    low: float
    high: float
    level: float
    replicates: int
    missing: int
    mean: float = math.nan

    @property
    def covers(self) -> bool:
        """Whether the interval holds the estimate (False flags a biased resampling for this figure)."""
        return not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low <= self.estimate <= self.high

    def as_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "replicates": self.replicates,
            "missing": self.missing,
            "mean": self.mean,
        }


def interval(estimate: float, samples: Sequence[float], level: float = 0.95) -> Interval:
    """The percentile interval of ``samples`` at ``level`` around ``estimate`` (NaN bounds when fewer than two
    replicates have a value)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    values = np.asarray([s for s in samples if s is not None and math.isfinite(s)], np.float64)
    missing = len(samples) - len(values)
    if len(values) < 2:
        return Interval(estimate, math.nan, math.nan, level, len(values), missing)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(lo), float(hi), level, len(values), missing, float(values.mean()))


def intervals(
    estimate: Mapping[str, float], replicates: Sequence[Mapping[str, float]], level: float = 0.95
) -> dict[str, Interval]:
    """:func:`interval` of every figure of ``estimate`` over ``replicates`` (a replicate lacking a figure counts as
    missing)."""
    return {
        name: interval(value, [r.get(name, math.nan) for r in replicates], level) for name, value in estimate.items()
    }


__all__ = ["FIGURES", "GAME_NAMES", "Interval", "interval", "intervals", "study_figures"]
