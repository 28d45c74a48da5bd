"""Visibility tiers and tier shares of attribution.

Tiers are by visibility rank (followers, or distinct attenders): head = the top ``head`` fraction, middle = the next
``middle`` fraction, tail = the rest. Ranks are by visibility descending, ties broken by agent index ascending, so
the assignment is deterministic. Tier sizes are ceil(fraction * n), so any non-empty population has a head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels import defaults

HEAD, MIDDLE, TAIL = 0, 1, 2
TIER_NAMES = ("head", "middle", "tail")


def visibility_order(visibility: Any) -> np.ndarray:
    """Agent indices from most to least visible; ties by index ascending."""
    vis = np.asarray(visibility, np.float64)
    if vis.ndim != 1:
        raise ValueError(f"visibility must be a 1-D array, got shape {vis.shape}")
    if not np.all(np.isfinite(vis)):
        raise ValueError("visibility has non-finite entries (NaN or inf)")
    return np.argsort(-vis, kind="stable")  # stable: equal visibilities keep index order (a lexsort's result)


def _count(fraction: float, n: int) -> int:
    return min(n, math.ceil(fraction * n - 1e-9))


def assign_tiers(visibility: Any, head: float = defaults.HEAD, middle: float = defaults.MIDDLE) -> np.ndarray:
    """int8 tier per agent: 0 head, 1 middle, 2 tail."""
    if not (0 < head <= 1 and 0 <= middle <= 1 and head + middle <= 1):
        raise ValueError(f"tier fractions must satisfy 0 < head, 0 <= middle, head + middle <= 1; got {head}, {middle}")
    order = visibility_order(visibility)
    n = len(order)
    tiers = np.full(n, TAIL, np.int8)
    n_head = _count(head, n)
    n_mid = min(n - n_head, _count(middle, n))
    tiers[order[:n_head]] = HEAD
    tiers[order[n_head : n_head + n_mid]] = MIDDLE
    return tiers


def tier_shares(phi: Any, tiers: Any) -> np.ndarray:
    """Share of total attribution per tier (head, middle, tail); the three always sum to 1.

    * Signed: a tier whose agents lower the indicator (negative phi) gets a negative share, and the others then
      exceed their positive part; shares are sum_{i in tier} phi_i / sum_i phi_i.
    * If sum phi is zero relative to sum |phi| (within 1e-12) the signed ratio is meaningless, so shares of
      |phi| are returned instead.
    * If every phi is zero (v(x) = v(0): nothing to attribute) there is nothing to share: all three are NaN. (A
      fallback such as the tiers' population fractions would be a figure about nothing, and a panel that sees
      nothing of a phenomenon the population shows would get a TVD from it.)
    """
    phi = np.asarray(phi, np.float64)
    tiers = np.asarray(tiers)
    if phi.shape != tiers.shape or phi.ndim != 1:
        raise ValueError(f"phi and tiers must be 1-D arrays of equal length, got {phi.shape} and {tiers.shape}")
    if not np.all(np.isfinite(phi)):
        raise ValueError("phi has non-finite entries (NaN or inf)")
    if tiers.size and (tiers.min() < HEAD or tiers.max() > TAIL):
        raise ValueError("tiers must be 0 (head), 1 (middle) or 2 (tail)")
    idx = tiers.astype(np.int64)
    total, mass = phi.sum(), np.abs(phi).sum()
    if mass == 0:
        return np.full(3, np.nan)
    if abs(total) <= 1e-12 * mass:
        return np.bincount(idx, weights=np.abs(phi), minlength=3) / mass
    return np.bincount(idx, weights=phi, minlength=3) / total
