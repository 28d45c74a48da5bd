"""The stratified panel: Horvitz–Thompson weights, Neyman's allocation, and the smallest sample meeting ε on
held-out draws. Expected values by hand or from numpy here."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels.indicators import attention_received
from kernels.stratified import (
    StratumSums,
    neyman_allocation,
    pools,
    random_prefixes,
    smallest_stratified_panel,
    weighted_shares,
)


def test_a_census_is_exact_and_weights_are_the_accounts_each_draw_stands_for() -> None:
    phi = np.array([5.0, 3.0, 1.0, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5])
    strata = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    census = np.bincount(strata)
    np.testing.assert_allclose(weighted_shares(phi, strata, np.arange(9), census), [8 / 14, 4 / 14, 2 / 14])
    # one account of each: stratum totals 2·5, 3·1, 4·0.5 (each draw stands for its stratum's accounts)
    one = np.array([1, 1, 1])
    np.testing.assert_allclose(weighted_shares(phi, strata, np.array([0, 2, 5]), one), np.array([10, 3, 2]) / 15)


def test_neyman_gives_more_to_the_spread_out_stratum_and_two_to_a_flat_one() -> None:
    rng = np.random.default_rng(3)
    phi = np.concatenate([rng.pareto(1.0, 100) * 10, np.full(900, 1.0)])
    strata = np.concatenate([np.zeros(100, np.int64), np.full(900, 2)])
    alloc = neyman_allocation(phi, strata, 50)
    assert alloc[1] == 0 and alloc[2] == 2 and alloc[0] >= 40
    # the sums a sample of that allocation gives are those of alloc[h] distinct accounts of stratum h
    by_stratum = pools(strata)
    sums = StratumSums(phi, by_stratum, rng, 5).sums(alloc)
    assert sums.shape == (5, 3) and (sums[:, 1] == 0).all() and (sums[:, 2] == 2.0).all()
    assert (sums[:, 0] >= np.sort(phi[:100])[: alloc[0]].sum() - 1e-9).all()


@pytest.mark.parametrize("size", [50, 100_000])  # a stratum ordered whole, and one sampled by numpy's choice
def test_every_prefix_of_a_random_order_is_a_uniform_sample_without_replacement(size: int) -> None:
    count, k = (4000, 20) if size == 50 else (2000, 20)
    rows = random_prefixes(size, k, np.random.default_rng(7), count)
    assert rows.shape == (count, k) and all(len(set(r.tolist())) == k for r in rows[:200])
    # the first n of each row: every index of a fixed set of 10 taken n/size of the time (binomial bounds)
    for n in (1, 5, 20):
        hits = (rows[:, :n, None] == np.arange(10)).any(axis=1).sum(axis=0)
        p = n / size
        assert (np.abs(hits - count * p) <= 5 * np.sqrt(count * p * (1 - p)) + 1).all(), (n, hits)


def test_the_smallest_panel_meets_epsilon_on_held_out_draws_where_the_visibility_panel_does_not() -> None:
    pop = kernels.heavy_tailed_population(5000, 8.0, 11)
    phi = pop.x * attention_received(pop.graph)  # exposure's attribution, in closed form
    tiers = kernels.assign_tiers(pop.visibility)
    found = smallest_stratified_panel(phi, tiers, pop.x > 0, [20, 50, 100, 200, 500, 1000, 2000], draws=300)
    assert found.size is not None and found.held_out_within is not None
    assert found.held_out_within >= 0.9, found
    truth = kernels.tier_shares(phi, tiers)
    panel = kernels.select_panel(pop.visibility, pop.x, size=found.size)
    assert np.max(np.abs(kernels.tier_shares(phi[panel], tiers[panel]) - truth)) > found.epsilon
    assert sum(found.allocation.values()) == found.size
    errors = [c["error_quantile"] for c in found.curve]
    assert errors[-1] < errors[0]
    with pytest.raises(ValueError, match="no attribution"):
        smallest_stratified_panel(np.zeros(10), np.zeros(10, np.int64), np.ones(10, bool), [5])


def test_a_stratum_too_small_for_its_share_is_taken_whole_and_the_rest_goes_to_the_others() -> None:
    rng = np.random.default_rng(5)
    # 6 head accounts spread far apart want most of any sample; they can give only 6, the other 94 go elsewhere
    phi = np.concatenate([rng.pareto(0.8, 6) * 1e4, rng.pareto(1.5, 60), rng.pareto(2.5, 900)])
    strata = np.repeat([0, 1, 2], [6, 60, 900])
    alloc = neyman_allocation(phi, strata, 100)
    assert alloc[0] == 6 and alloc.sum() == 100
    spread = np.array([phi[strata == h].std() for h in (1, 2)])  # the others in Neyman's ratio N_h S_h
    assert abs(alloc[1] / alloc[2] - (60 * spread[0]) / (900 * spread[1])) < 0.1 * alloc[1] / alloc[2] + 0.05
    assert neyman_allocation(phi, strata, 5000).tolist() == [6, 60, 900]  # more than all of them: a census


def test_the_size_is_bisected_between_the_grid_points_and_a_daemon_run_stops_there() -> None:
    pop = kernels.heavy_tailed_population(5000, 8.0, 11)
    phi = pop.x * attention_received(pop.graph)
    tiers = kernels.assign_tiers(pop.visibility)
    grid = [20, 50, 100, 200, 500, 1000, 2000, 3000]
    whole = smallest_stratified_panel(phi, tiers, pop.x > 0, grid, draws=200)
    short = smallest_stratified_panel(phi, tiers, pop.x > 0, grid, draws=200, whole_curve=False)
    assert whole.size is not None and (whole.size, whole.allocation) == (short.size, short.allocation)
    assert {c["target"] for c in short.curve} - set(grid)  # sizes between the grid points were tried
    found = next(c for c in short.curve if c["size"] == short.size)
    assert short.error_quantile == found["error_quantile"] <= short.epsilon
    failing = [c["target"] for c in short.curve if c["error_quantile"] > short.epsilon]
    assert failing and found["target"] - max(failing) <= max(1, 0.05 * found["target"])
    bracket = min(g for g in grid if g >= short.size)  # the grid point that met ε first: the run looks no further
    assert max(c["target"] for c in short.curve) == bracket
    assert {c["target"] for c in whole.curve} >= set(grid)
    # the weights are the accounts of each tier each sampled account stands for
    counts = np.bincount(tiers[pop.x > 0], minlength=3)
    for h, name in enumerate(kernels.TIER_NAMES):
        assert short.weights[name] == pytest.approx(counts[h] / short.allocation[name])
