"""Concentration of an attribution: the Gini coefficient and the Lorenz curve (pure numpy, float64).

Both look at the positive part of ``values``: attributions of the built-in indicators are non-negative, and float
noise (or a user indicator) can give tiny or real negative phi, which a concentration measure cannot place, so they
count as zero. Agents are ordered by ascending value, so the Lorenz curve is convex and the Gini coefficient is
twice the area between it and the diagonal.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _positive_sorted(values: Any) -> np.ndarray:
    return np.sort(np.clip(np.asarray(values, np.float64).ravel(), 0.0, None))


def gini(values: Any) -> float:
    """Gini coefficient of the positive part of ``values``: 0 for an equal split, (n-1)/n when one of n agents holds
    everything. Empty or all-zero input gives 0.

    G = 2 sum_i i v_(i) / (n sum v) - (n + 1) / n with v_(1) <= ... <= v_(n), clipped to [0, 1] against rounding.
    """
    v = _positive_sorted(values)
    n, total = len(v), float(v.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.clip(2.0 * (ranks @ v) / (n * total) - (n + 1) / n, 0.0, 1.0))


def lorenz(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of the positive part of ``values``: n + 1 points (population fraction, attribution fraction)
    from (0, 0) to (1, 1), agents sorted by ascending value. All-zero input gives the diagonal (an equal split, as
    :func:`gini` says 0); empty input gives the single point (0, 0).
    """
    v = _positive_sorted(values)
    n, total = len(v), float(v.sum())
    xs = np.linspace(0.0, 1.0, n + 1)
    ys = np.concatenate([[0.0], np.cumsum(v) / total]) if total > 0 else xs.copy()
    return xs, ys
