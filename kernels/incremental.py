"""Sequential (one agent joins at a time) evaluators for the built-in linear-stem indicators.

Permutation-sampled Shapley walks each permutation adding one agent at a time. With a linear stem e = W x the
exposure changes only at the attenders of the joining agent, so the marginal change of v costs O(in-degree)
(``reach``, ``saturation``) or O(two-hop neighbourhood) (``cascade``) instead of a full O(|W|) evaluation.
These are float64 numpy: the per-step work is small and sequential, where a compiled array kernel would not help.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _gather_ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions indptr[r]:indptr[r+1] for every r in rows, concatenated."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(ends - np.cumsum(lens), lens)
    return offsets + np.arange(total)


class _Sequential:
    def __init__(self, x: np.ndarray, graph: Any) -> None:
        self.x = np.asarray(x, np.float64)
        self.indptr, self.att, self.w = graph.csr_by_source()
        self.n = graph.n

    def _attenders(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.att[lo:hi], self.w[lo:hi]


class ReachIncremental(_Sequential):
    """v = sum_j log1p(e_j)."""

    def reset(self) -> None:
        self.e = np.zeros(self.n)

    def add(self, i: int) -> float:
        """Marginal change of sum_j log1p(e_j) when agent i joins (only i's attenders change)."""
        att, w = self._attenders(i)
        if att.size == 0 or self.x[i] == 0:
            return 0.0
        touched = np.unique(att)
        before = np.log1p(self.e[touched]).sum()
        np.add.at(self.e, att, w * self.x[i])
        return float(np.log1p(self.e[touched]).sum() - before)


class _Saturated:
    """v = K (1 - exp(-S/K)) of the S its base evaluator adds up (listed after it in the bases): tracks S."""

    k: float
    s: float

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.s = 0.0

    def add(self, i: int) -> float:
        s_new = self.s + super().add(i)  # type: ignore[misc]
        delta = self.k * (np.exp(-self.s / self.k) - np.exp(-s_new / self.k))
        self.s = s_new
        return float(delta)


class SaturationIncremental(_Saturated, ReachIncremental):
    """v = K (1 - exp(-S/K)), S = sum_j log1p(e_j)."""

    def __init__(self, x: np.ndarray, graph: Any, capacity: float) -> None:
        ReachIncremental.__init__(self, x, graph)
        self.k = float(capacity)


class CascadeIncremental(_Sequential):
    """Two-hop cascade: updates e1 at the joining agent's attenders, their adoption a, and e2 one hop further."""

    def __init__(self, x: np.ndarray, graph: Any, kappa: float, theta: float, rho: float) -> None:
        super().__init__(x, graph)
        self.kappa, self.theta, self.rho = kappa, theta, rho

    def _adopt(self, e: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.kappa * (np.log1p(e) - self.theta)))

    def reset(self) -> None:
        self.e1 = np.zeros(self.n)
        self.a = np.full(self.n, self._adopt(np.zeros(1))[0])
        # e2 = W (rho a): attender att gets w * rho * a[source]
        src = np.repeat(np.arange(self.n), np.diff(self.indptr))
        self.e2 = np.bincount(self.att, weights=self.w * self.rho * self.a[src], minlength=self.n)

    def add(self, i: int) -> float:
        att, w = self._attenders(i)
        if att.size == 0 or self.x[i] == 0:
            return 0.0
        hop1 = np.unique(att)
        pos2 = _gather_ranges(self.indptr, hop1)
        att2, w2 = self.att[pos2], self.w[pos2]
        counts2 = self.indptr[hop1 + 1] - self.indptr[hop1]
        touched = np.unique(np.concatenate([hop1, att2]))
        before = self._adopt(self.e1[touched] + self.e2[touched]).sum()
        np.add.at(self.e1, att, w * self.x[i])
        a_old = self.a[hop1].copy()
        self.a[hop1] = self._adopt(self.e1[hop1])
        da = np.repeat(self.a[hop1] - a_old, counts2)
        np.add.at(self.e2, att2, w2 * self.rho * da)
        return float(self._adopt(self.e1[touched] + self.e2[touched]).sum() - before)


class LinearIncremental(_Sequential):
    """v = sum_i c_i x_i, a linear indicator (``exposure``: c = W^T 1; ``activity``: c = 1): a joining agent
    adds c_i x_i whoever joined before it."""

    def __init__(self, x: np.ndarray, graph: Any, coefficients: np.ndarray) -> None:
        super().__init__(x, graph)
        self.c = np.asarray(coefficients, np.float64)

    def reset(self) -> None:
        pass

    def add(self, i: int) -> float:
        return float(self.c[i] * self.x[i])


class SaturatedLinearIncremental(_Saturated, LinearIncremental):
    """v = K (1 - exp(-c.x)): a saturating function of one linear aggregate."""

    def __init__(self, x: np.ndarray, graph: Any, c: np.ndarray, capacity: float) -> None:
        LinearIncremental.__init__(self, x, graph, c)
        self.k = float(capacity)
