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


def estimated_shares(sums: np.ndarray, alloc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Tier shares estimated from the sampled accounts' attribution summed per stratum (``sums``, strata last, any
    leading axes: one row per sample) with weights N_h / n_h; NaN where the estimate of the total is 0."""
    totals = np.asarray(sums, np.float64) * np.where(alloc > 0, counts / np.maximum(alloc, 1), 0.0)
    total = totals.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, totals / np.where(total > 0, total, 1.0), np.nan)


def weighted_shares(
    phi: np.ndarray,
    strata: np.ndarray,
    sample: np.ndarray,
    alloc: np.ndarray,
    n_strata: int = 3,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Tier shares estimated from one ``sample`` (indices) with weights N_h / n_h (NaN when the estimate of the total
    is 0); ``counts`` (N_h) when the caller has them."""
    counts = np.bincount(strata, minlength=n_strata) if counts is None else counts
    return estimated_shares(np.bincount(strata[sample], weights=phi[sample], minlength=n_strata), alloc, counts)


def pools(strata: np.ndarray, n_strata: int = 3) -> list[np.ndarray]:
    """The accounts of each stratum (indices), found once for all the samples drawn from them."""
    order = np.argsort(strata, kind="stable")
    return np.split(order, np.cumsum(np.bincount(strata, minlength=n_strata))[:-1])


WHOLE_ORDERS = 1 << 20  # a stratum with at most this many accounts × samples is ordered whole, once


def random_prefixes(size: int, k: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, k) indices below ``size``: each row the first k of a uniform random permutation, rows independent, so
    the first n of a row is a uniform sample of n without replacement for every n ≤ k. numpy's sampler without
    replacement (shuffled, so every prefix is uniform) draws k of many in O(k); a small stratum is permuted whole."""
    if count * size <= WHOLE_ORDERS:
        return rng.permuted(np.tile(np.arange(size), (count, 1)), axis=1)[:, :k]
    return np.stack([rng.choice(size, k, replace=False, shuffle=True) for _ in range(count)])


class StratumSums:
    """Per stratum, prefix sums of the attribution along ``count`` random orders of its accounts, so the stratum
    totals of ``count`` stratified samples of any allocation are a lookup (``sums(alloc)``: (count, strata)).

    Why: a run tries ~10 sizes of 200 samples each, and drawing a sample at a time cost ~50 µs of numpy calls,
    ~0.1 s a run. The sizes tried share the random orders (common random numbers: the error curve is smoother,
    not biased, since every size's samples are uniform); an order is drawn again, longer, when a size needs more of
    it than was drawn."""

    def __init__(self, phi: np.ndarray, by_stratum: list[np.ndarray], rng: np.random.Generator, count: int) -> None:
        self._phi = [phi[pool] for pool in by_stratum]
        self._rng, self._count = rng, count
        self._prefix = [np.zeros((count, 1)) for _ in by_stratum]

    def sums(self, alloc: np.ndarray) -> np.ndarray:
        out = np.empty((self._count, len(self._phi)))
        for h, (phi, n) in enumerate(zip(self._phi, alloc, strict=True)):
            n = min(int(n), len(phi))
            if self._prefix[h].shape[1] <= n:
                drawn = self._prefix[h].shape[1] - 1
                whole = self._count * len(phi) <= WHOLE_ORDERS
                k = len(phi) if whole else min(len(phi), max(n, 2 * drawn, 32))
                order = random_prefixes(len(phi), k, self._rng, self._count)
                self._prefix[h] = np.concatenate([np.zeros((self._count, 1)), np.cumsum(phi[order], axis=1)], axis=1)
            out[:, h] = self._prefix[h][:, n]
        return out


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
    by_stratum = pools(strata)
    samples = StratumSums(sub_phi, by_stratum, np.random.default_rng([seed, 0]), draws)
    sizes_h = np.array([len(p) for p in by_stratum])

    def errors(alloc: np.ndarray, samples: StratumSums) -> np.ndarray:
        est = estimated_shares(samples.sums(alloc), alloc, sizes_h)  # (draws, strata)
        return np.where(np.isfinite(est[:, 0]), np.abs(est - truth).max(axis=1), 1.0)

    curve: list[dict[str, float]] = []

    def point(size: int) -> tuple[np.ndarray, float]:
        alloc = neyman_allocation(sub_phi, strata, size)
        err = errors(alloc, samples)
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
    held = errors(chosen, StratumSums(sub_phi, by_stratum, np.random.default_rng([seed, 1]), draws))
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


__all__ = [
    "SIZES",
    "SampleSize",
    "estimated_shares",
    "neyman_allocation",
    "pools",
    "random_prefixes",
    "smallest_stratified_panel",
    "weighted_shares",
]
