"""Scale bias: how far a panel study's attribution is from the full-population attribution.

For the panel agents P, compare a = phi_full[P] (their full-scale attribution) with b = phi_panel (what the panel
study computes):

* ``tvd``: total variation distance between tier shares, full population vs panel.
* ``panel_share``: the panel's share of the full-scale attribution, sum(a) / sum(phi_full).
* ``rescale`` c* = argmin_c ||a - c b|| = <a, b> / <b, b>; ``residual`` r* = ||a - c* b|| / ||a||: the part of the
  gap that no global rescaling removes (0 iff the panel attribution is proportional to the truth).
* ``spearman``: rank correlation of a and b (NaN if either is constant).
* ``top10_full`` / ``top10_panel``: share of the total held by the 10 largest attributions in each.

The alert (:func:`decide_alert`) reads two figures that are not true by construction, both of the ``same_game``
study (see below): **residual**, r* > tau_res (the panel's attribution is not proportional to its members'
full-scale attribution: a panel study ranks and weighs its own accounts wrongly, whatever constant it rescales by),
and **coverage**, panel_share < tau_cov (the panel's accounts hold less than that share of the full-scale
attribution: most of the phenomenon is caused by accounts the panel never sees, so even an exact panel study
describes a minority of it). An active alert resolves only when r* <= clear · tau_res and
1 − panel_share <= clear · (1 − tau_cov). The TVD of tier shares is published but decides nothing: once the panel
lies inside the head tier (every panel member is among the top 1 % by visibility, N >~ 10^4) the panel's shares
are (1, 0, 0) and the TVD is 1 − the full head share, whatever the panel computes.

A panel that sees nothing (its attribution all zero: v of the panel is constant) while the full population shows a
phenomenon is a finding, not a gap in the figures: ``panel_sees_nothing`` is set, its tier shares and the TVD are
NaN (there are no shares to compare), c* = 0 and r* = 1 (no rescaling of nothing recovers any of it), so the alert
fires on r*.

The panel's attribution b comes from one of two games (:mod:`kernels.panel`): ``restricted`` (the indicator on the
panel alone, as a small study computes it) or ``same_game`` (the full game, only the panel active). The figures of
the two are kept apart: their difference is the effect of the restriction, and what the same game leaves is the
effect of the indicator's nonlinearity. When is the same game's r* zero?

**Theorem.** Write x^P for x with every agent outside the panel P set to 0, and
g_i(y) = ∫₀¹ ∂v/∂x_i(a y) da, so that phi_i(y) = y_i g_i(y). In the same game a_i = x_i g_i(x) and
b_i = x_i g_i(x^P) for i in P, hence

    r* = 0  ⇔  g_i(x) / g_i(x^P) is the same for every panel member with x_i g_i(x^P) ≠ 0.

(r* = 0 iff a is a multiple of b.) In particular:

1. *v linear*, v = c·x: g_i ≡ c_i, the ratio is 1 and a = b (``exposure``, ``activity``).
2. *v = f(c·x) for any differentiable f* (a function of one linear aggregate, e.g. a saturating response to the
   total exposure): g_i(y) = c_i (f(c·y) − f(0)) / c·y, so the ratio (f(c·x) − f(0)) c·x^P / ((f(c·x^P) − f(0)) c·x)
   is common to all i. Nonlinearity alone does not make r* > 0; and the same holds for the quadrature sum, whose
   error is in that common factor only.
3. *No interaction between the panel and the rest*, v(x) = h(x_P) + k(x_{−P}): ∂v/∂x_i for i in P does not read
   x_{−P}, so g_i(x) = g_i(x^P) and the ratio is 1.

r* > 0 exactly when switching the rest of the population off changes the panel members' path-averaged marginals
by different factors: for ``reach`` (v = Σ_j log(1 + e_j)), ∂v/∂x_i = Σ_j W_ji / (1 + e_j) reads the exposure of
i's own attenders, so a panel member whose attenders also attend active non-panel accounts loses less marginal
value at full scale than one whose attenders attend only it (tests/kernels/test_panel_games.py builds both). The
same holds for ``cascade`` and ``saturation`` (log1p of each exposure, not of one aggregate) on any graph where
the panel's attenders see different amounts of non-panel activity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels.defaults import ALERT_CLEAR, TAU_COVERAGE, TAU_RES
from kernels.tiers import tier_shares

if TYPE_CHECKING:  # the thresholds and figures load without JAX or scipy
    from kernels.attribution import Attribution


CRITERIA = ("residual", "coverage")  # what the alert can fire on, in the order it names them


@dataclass(frozen=True)
class AlertThresholds:
    """tau_res (0.2: a fifth of the panel's full-scale attribution, in L2, that no rescaling recovers), tau_cov (0.5:
    the panel must hold the majority of the full-scale attribution) and the fraction of each allowance within which
    an active alert resolves (hysteresis)."""

    residual: float = TAU_RES
    coverage: float = TAU_COVERAGE
    clear: float = ALERT_CLEAR

    def __post_init__(self) -> None:
        if not (np.isfinite(self.residual) and self.residual >= 0):
            raise ValueError(f"alert threshold residual must be a finite number >= 0, got {self.residual!r}")
        if not (np.isfinite(self.coverage) and 0 <= self.coverage <= 1):
            raise ValueError(f"alert threshold coverage must be in [0, 1], got {self.coverage!r}")
        if not (0 < self.clear <= 1):
            raise ValueError(f"alert clear ratio must be in (0, 1], got {self.clear!r}")


@dataclass(frozen=True)
class AlertDecision:
    """The alert after one run: ``firing``; ``criteria`` that are past their thresholds at this run (named in
    :data:`CRITERIA` order; empty while a firing alert waits inside its hysteresis band, and when it resolves);
    ``severity``: ``critical`` when a figure is twice as far past its threshold (r* > 2 tau_res, or the panel's
    share below tau_cov / 2), else ``warning``; ``info`` when not firing."""

    firing: bool
    criteria: tuple[str, ...]
    severity: str


def _three(shares: np.ndarray) -> tuple[float, float, float]:
    """Head, middle and tail shares as plain floats."""
    head, middle, tail = (float(v) for v in shares)
    return head, middle, tail


def decide_alert(bias: ScaleBias, thresholds: AlertThresholds | None = None, active: bool = False) -> AlertDecision:
    """The alert from the ``same_game`` figures ``bias``, given the state after the previous run (``active``).
    An undefined panel share (the full attribution sums to 0) fires nothing on coverage."""
    t = thresholds or AlertThresholds()
    share = bias.panel_share
    covered = math.isnan(share)
    over = {
        "residual": bias.residual > t.residual,
        "coverage": not covered and share < t.coverage,
    }
    criteria = tuple(name for name in CRITERIA if over[name])
    if active:
        cleared = bias.residual <= t.residual * t.clear and (covered or 1.0 - share <= t.clear * (1.0 - t.coverage))
        firing = not cleared
    else:
        firing = bool(criteria)
    if not firing:
        return AlertDecision(False, criteria, "info")
    critical = bias.residual > 2 * t.residual or (not covered and share < t.coverage / 2)
    return AlertDecision(True, criteria, "critical" if critical else "warning")


@dataclass(frozen=True)
class ScaleBias:
    tiers_full: tuple[float, float, float]
    tiers_panel: tuple[float, float, float]
    tvd: float
    panel_share: float
    rescale: float
    residual: float
    spearman: float
    top10_full: float
    top10_panel: float
    panel_size: int
    panel_sees_nothing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_share(phi: np.ndarray, k: int = 10) -> float:
    """Share of the total held by the ``k`` largest entries (NaN when the total is 0)."""
    total = phi.sum()
    if total == 0:
        return math.nan
    top = np.partition(phi, len(phi) - k)[len(phi) - k :] if len(phi) > k else phi
    return float(np.sort(top)[::-1].sum()) / float(total)  # summed largest first, as a full sort's first k


def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks of ``a``, tied values sharing the mean of their ranks (``scipy.stats.rankdata``'s default)."""
    a = np.asarray(a)
    order = np.argsort(a, kind="stable")
    ordered = a[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # the start of each run of equal values
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a), np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of the average ranks), as ``scipy.stats.spearmanr`` gives it for two finite 1-D
    samples. Here rather than scipy's because importing ``scipy.stats`` costs ~0.7 s, a tenth of a short replay."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.clip(ra @ rb / math.sqrt(float(ra @ ra) * float(rb @ rb)), -1.0, 1.0))


def scale_bias(full: Attribution, panel: Any, panel_attr: Attribution, tiers: Any) -> ScaleBias:
    """Scale-bias figures of a panel study (``panel`` indices, ``panel_attr`` its attribution) against the
    full-population attribution ``full``, with ``tiers`` the full population's tier per agent."""
    phi = np.asarray(full.phi, np.float64)
    panel = np.asarray(panel, np.int64)
    tiers = np.asarray(tiers)
    b = np.asarray(panel_attr.phi, np.float64)
    if tiers.shape != phi.shape:
        raise ValueError(f"tiers has length {len(tiers)} but the full attribution has {len(phi)} agents")
    if b.shape != panel.shape:
        raise ValueError(f"panel attribution has {len(b)} entries but the panel has {len(panel)} agents")
    if panel.size and (panel.min() < 0 or panel.max() >= len(phi)):
        raise ValueError("panel index out of range")
    a = phi[panel]
    s_full, s_panel = tier_shares(phi, tiers), tier_shares(b, tiers[panel])
    bb = float(b @ b)
    c = float(a @ b) / bb if bb > 0 else 0.0
    na = float(np.linalg.norm(a))
    r = float(np.linalg.norm(a - c * b)) / na if na > 0 else 0.0
    total = phi.sum()
    return ScaleBias(
        tiers_full=_three(s_full),
        tiers_panel=_three(s_panel),
        tvd=float(0.5 * np.abs(s_full - s_panel).sum()),
        panel_share=float(a.sum() / total) if total != 0 else math.nan,
        rescale=c,
        residual=r,
        spearman=_spearman(a, b),
        top10_full=top_share(phi),
        top10_panel=top_share(b),
        panel_size=int(panel.size),
        panel_sees_nothing=bool(panel.size and not np.any(b)),
    )
