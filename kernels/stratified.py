"""The panel a small study should have used: a stratified random sample of accounts, with sampling weights.

A visibility panel (the N most-followed accounts) sees only the head: however well it measures its own accounts,
its tier shares are (1, 0, 0) once it lies inside the head tier. The survey answer is a *stratified* sample: the
active accounts split into strata (here the visibility tiers), n_h accounts drawn at random in stratum h, each
weighted by N_h / n_h (the accounts of its stratum it stands for), so that the weighted sum over the sample is an
unbiased estimate of the population's (Horvitz & Thompson 1952; Cochran, *Sampling Techniques*, ch. 5).

Allocation is Neyman's, n_h ∝ N_h S_h (S_h the spread of the attribution in stratum h: a pilot's, in practice),
which minimises the variance of the estimated total for a given n, with at least :data:`MIN_PER_STRATUM` per
stratum that holds accounts. The figure judged is the error of the weighted tier shares against the full-scale
ones, max over tiers of |estimated − true|, *if the study measured each of its accounts' full-scale attribution
exactly*: the smallest sample that meets ε under that assumption is a lower bound on what a small study needs
(measuring each account's attribution from a small study is the panel games' question, :mod:`kernels.panel`).

Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.tiers import TIER_NAMES

MIN_PER_STRATUM = 2
DEFAULT_EPSILON = 0.05
DEFAULT_QUANTILE = 0.95
DEFAULT_DRAWS = 200
RESOLUTION = 0.05  # the size found is bisected to within this fraction of itself
SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)  # the sample sizes tried


def neyman_allocation(phi: np.ndarray, strata: np.ndarray, size: int, n_strata: int = 3) -> np.ndarray:
    """Accounts to draw per stratum for a sample of about ``size`` (each stratum with accounts gets at least
    :data:`MIN_PER_STRATUM`, none more than it holds). A stratum whose share would exceed its accounts is taken
    whole and what it could not use goes to the others (Cochran 5.10), so the sample is ``size`` where it can be."""
    phi = np.asarray(phi, np.float64)
    counts = np.bincount(strata, minlength=n_strata)
    spread = np.array([phi[strata == h].std() if counts[h] else 0.0 for h in range(n_strata)])
    score = counts * spread
    if score.sum() == 0:
        score = counts.astype(np.float64)
    alloc = np.zeros(n_strata, np.float64)
    free = (counts > 0) & (score > 0)
    left = float(size)
    while free.any():
        want = np.where(free, left * score / score[free].sum(), 0.0)
        whole = free & (want >= counts)
        if not whole.any():
            alloc[free] = want[free]
            break
        alloc[whole] = counts[whole]
        left -= float(counts[whole].sum())
        free &= ~whole
    floor = np.where(counts > 0, MIN_PER_STRATUM, 0)
    return np.minimum(counts, np.maximum(floor, np.round(alloc))).astype(np.int64)


def weighted_shares(
    phi: np.ndarray,
    strata: np.ndarray,
    sample: np.ndarray,
    alloc: np.ndarray,
    n_strata: int = 3,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Tier shares estimated from ``sample`` (indices) with weights N_h / n_h (NaN when the estimate of the total is
    0); ``counts`` (N_h) when the caller has them, which saves a pass over every account per sample."""
    counts = np.bincount(strata, minlength=n_strata) if counts is None else counts
    weights = np.where(alloc > 0, counts / np.maximum(alloc, 1), 0.0)
    totals = np.bincount(strata[sample], weights=phi[sample] * weights[strata[sample]], minlength=n_strata)
    total = totals.sum()
    return totals / total if total > 0 else np.full(n_strata, np.nan)


def pools(strata: np.ndarray, n_strata: int = 3) -> list[np.ndarray]:
    """The accounts of each stratum (indices), found once for all the samples drawn from them."""
    order = np.argsort(strata, kind="stable")
    return np.split(order, np.cumsum(np.bincount(strata, minlength=n_strata))[:-1])


def draw(by_stratum: list[np.ndarray], alloc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stratified sample: ``alloc[h]`` accounts of stratum h (``by_stratum[h]``, from :func:`pools`), at random
    without replacement (numpy's choice draws a few of many in O(few), so a sample of 100 out of 10^6 is cheap)."""
    picks = [
        pool[rng.choice(len(pool), int(n), replace=False)] for pool, n in zip(by_stratum, alloc, strict=True) if n > 0
    ]
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


@dataclass(frozen=True)
class SampleSize:
    """The smallest stratified sample meeting ε: its ``size`` (None when none of the sizes tried does), its
    allocation and weights per tier, and the error curve it was chosen on (the size asked for, ``target``, the size
    the allocation gives, and the ``quantile`` and mean of the error over ``draws`` samples), with the share of
    held-out samples of that size within ε (the in-sample choice is optimistic by construction: that share says by
    how much) and the error quantile at the size chosen (or at the largest tried, when none meets ε)."""

    size: int | None
    allocation: dict[str, int]
    weights: dict[str, float]
    epsilon: float
    quantile: float
    draws: int
    curve: list[dict[str, float]]
    held_out_within: float | None
    error_quantile: float | None = None


def smallest_stratified_panel(
    phi: np.ndarray,
    tiers: np.ndarray,
    active: np.ndarray,
    sizes: list[int],
    *,
    epsilon: float = DEFAULT_EPSILON,
    quantile: float = DEFAULT_QUANTILE,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    whole_curve: bool = True,
) -> SampleSize:
    """The smallest of ``sizes`` whose stratified samples of the ``active`` accounts (strata: ``tiers``) have their
    weighted tier shares within ``epsilon`` of the full-scale ones in a ``quantile`` of ``draws`` samples; then the
    same checked on ``draws`` held-out samples (another seed). Between the first of ``sizes`` that meets ε and the
    one before it the size is bisected to within :data:`RESOLUTION` of itself, so the size found is not just a
    point of the grid. ``whole_curve=False`` stops at the size found (what a daemon's run needs; a study draws the
    whole curve)."""
    phi = np.asarray(phi, np.float64)
    idx = np.flatnonzero(np.asarray(active))
    sub_phi, strata = phi[idx], np.asarray(tiers)[idx].astype(np.int64)
    total = sub_phi.sum()
    if total <= 0:
        raise ValueError("the active accounts hold no attribution: there are no tier shares to estimate")
    truth = np.bincount(strata, weights=sub_phi, minlength=3) / total
    rng = np.random.default_rng([seed, 0])
    by_stratum = pools(strata)
    sizes_h = np.array([len(p) for p in by_stratum])

    def errors(alloc: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        out = np.empty(draws)
        for d in range(draws):
            est = weighted_shares(sub_phi, strata, draw(by_stratum, alloc, generator), alloc, counts=sizes_h)
            out[d] = np.nanmax(np.abs(est - truth)) if np.isfinite(est).any() else 1.0
        return out

    curve: list[dict[str, float]] = []

    def point(size: int) -> tuple[np.ndarray, float]:
        alloc = neyman_allocation(sub_phi, strata, size)
        err = errors(alloc, rng)
        q = float(np.quantile(err, quantile))
        curve.append({"target": size, "size": int(alloc.sum()), "error_quantile": q, "error_mean": float(err.mean())})
        return alloc, q

    chosen, chosen_error, below = None, None, 0
    for size in sorted(set(sizes)):
        if size > len(idx) or (chosen is not None and not whole_curve):
            break
        alloc, q = point(size)
        if chosen is None and q <= epsilon:
            chosen, chosen_error, hi = alloc, q, size
            while hi - below > max(1, RESOLUTION * hi):  # bisect (below fails, hi meets ε)
                mid = (below + hi) // 2
                alloc, q = point(mid)
                if q <= epsilon:
                    chosen, chosen_error, hi = alloc, q, mid
                else:
                    below = mid
        elif chosen is None:
            below = size
    curve.sort(key=lambda c: c["target"])
    if chosen is None:
        last = curve[-1]["error_quantile"] if curve else None
        return SampleSize(None, {}, {}, epsilon, quantile, draws, curve, None, last)
    held = errors(chosen, np.random.default_rng([seed, 1]))
    counts = np.bincount(strata, minlength=3)
    return SampleSize(
        size=int(chosen.sum()),
        allocation={t: int(chosen[h]) for h, t in enumerate(TIER_NAMES)},
        weights={t: float(counts[h] / chosen[h]) if chosen[h] else 0.0 for h, t in enumerate(TIER_NAMES)},
        epsilon=epsilon,
        quantile=quantile,
        draws=draws,
        curve=curve,
        held_out_within=float(np.mean(held <= epsilon)),
        error_quantile=chosen_error,
    )


__all__ = ["SIZES", "SampleSize", "draw", "neyman_allocation", "pools", "smallest_stratified_panel", "weighted_shares"]
