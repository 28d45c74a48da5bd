"""Tiers, the small-study panel and the scale-bias figures, on hand-built cases with known answers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

import kernels
from kernels import (
    AlertThresholds,
    AttentionGraph,
    Attribution,
    assign_tiers,
    decide_alert,
    scale_bias,
    select_panel,
    tier_shares,
)


def _attr(phi: list[float] | np.ndarray) -> Attribution:
    phi = np.asarray(phi, np.float64)
    return Attribution(phi=phi, value=float(phi.sum()), baseline=0.0, residual=0.0, nodes=1)


def test_tiers_by_visibility_rank_with_ceil_counts_and_index_ties() -> None:
    vis = np.array([5, 100, 5, 7, 0, 5, 9, 1, 2, 3], float)
    tiers = assign_tiers(vis, head=0.1, middle=0.2)
    # head: 1 agent (the 100); middle: 2 agents (9 and 7); ties among the 5s do not matter here
    assert tiers.dtype == np.int8
    np.testing.assert_array_equal(tiers, [2, 0, 2, 1, 2, 2, 1, 2, 2, 2])
    # ties: four agents with equal visibility, two head places -> the two lowest indices
    np.testing.assert_array_equal(assign_tiers(np.ones(4), head=0.5, middle=0.25), [0, 0, 1, 2])
    # a population of 7 still has a head (ceil)
    assert (assign_tiers(np.arange(7.0)) == 0).sum() == 1


def test_tiers_are_deterministic_under_permutation_of_equal_entries() -> None:
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 5, size=1000).astype(float)
    a, b = assign_tiers(vis), assign_tiers(vis.copy())
    np.testing.assert_array_equal(a, b)
    assert (a == 0).sum() == 10 and (a == 1).sum() == 100


@pytest.mark.parametrize(
    ("vis", "head", "middle", "match"),
    [
        (np.ones(3), 0.0, 0.1, "tier fractions"),
        (np.ones(3), 0.6, 0.6, "tier fractions"),
        (np.array([1.0, np.nan]), 0.1, 0.1, "non-finite"),
        (np.ones((2, 2)), 0.1, 0.1, "1-D"),
    ],
)
def test_tiers_reject_bad_input(vis: np.ndarray, head: float, middle: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign_tiers(vis, head=head, middle=middle)


def test_tier_shares_signed_cancelled_and_zero() -> None:
    tiers = np.array([0, 1, 2, 2])
    np.testing.assert_allclose(tier_shares([2.0, 1.0, 0.5, 0.5], tiers), [0.5, 0.25, 0.25])
    # a tier that lowers the indicator gets a negative share; the shares still sum to 1
    np.testing.assert_allclose(tier_shares([3.0, -1.0, 0.0, 0.0], tiers), [1.5, -0.5, 0.0])
    # total cancels: fall back to shares of |phi|
    np.testing.assert_allclose(tier_shares([1.0, -1.0, 0.0, 0.0], tiers), [0.5, 0.5, 0.0])
    # nothing to attribute: no shares at all (not the tiers' population fractions, a figure about nothing)
    assert np.isnan(tier_shares(np.zeros(4), tiers)).all()
    with pytest.raises(ValueError, match="equal length"):
        tier_shares([1.0, 2.0], tiers)
    with pytest.raises(ValueError, match="non-finite"):
        tier_shares([1.0, np.inf, 0, 0], tiers)
    with pytest.raises(ValueError, match="tiers must be"):
        tier_shares([1.0, 1.0, 1.0, 1.0], [0, 1, 2, 3])


def test_panel_is_the_most_visible_active_agents() -> None:
    vis = np.array([10.0, 50.0, 30.0, 30.0, 5.0, 40.0])
    x = np.array([1.0, 0.0, 2.0, 2.0, 1.0, 3.0])
    np.testing.assert_array_equal(select_panel(vis, x, size=3), [5, 2, 3])  # agent 1 is inactive
    np.testing.assert_array_equal(select_panel(vis, x, size=100), [5, 2, 3, 0, 4])
    with pytest.raises(ValueError, match="size"):
        select_panel(vis, x, size=0)
    with pytest.raises(ValueError, match="negative"):
        select_panel(vis, -x, size=2)


def test_panel_attribution_uses_only_the_induced_subgraph() -> None:
    # panel {0, 1}: edge 1 -> 0 is internal; edges from agent 2 (outside) must be ignored
    g = AttentionGraph(np.array([1, 2, 2, 0]), np.array([0, 0, 1, 2]), np.array([1.0, 5.0, 5.0, 1.0]), 4)
    x = np.array([4.0, 2.0, 9.0, 1.0])
    attr = kernels.panel_attribution("reach", x, g, np.array([0, 1]), nodes=32, dtype="float64")
    sub = AttentionGraph(np.array([1]), np.array([0]), np.array([1.0]), 2)
    np.testing.assert_allclose(attr.phi, kernels.reach_closed_form(x[[0, 1]], sub), rtol=1e-9)
    np.testing.assert_allclose(attr.phi, [np.log1p(4.0), 0.0], rtol=1e-9)
    # no attention among panel members: the panel study sees a constant indicator
    lonely = kernels.panel_attribution("cascade", x, g, np.array([1, 3]), nodes=8)
    np.testing.assert_array_equal(lonely.phi, [0.0, 0.0])
    with pytest.raises(ValueError, match="duplicate"):
        kernels.panel_attribution("reach", x, g, np.array([0, 0]))
    with pytest.raises(ValueError, match="out of range"):
        kernels.panel_attribution("reach", x, g, np.array([0, 4]))


def test_scale_bias_of_an_exactly_proportional_panel() -> None:
    """Panel {0, 1, 2} reports exactly half of each agent's full attribution: c* = 2, r* = 0. Full tier shares
    (0.5, 0.3, 0.2); the panel holds a head and two middle agents, so its shares are (0.625, 0.375, 0), TVD 0.2."""
    full = _attr([50.0, 20.0, 10.0, 10.0, 5.0, 5.0])
    tiers = np.array([0, 1, 1, 2, 2, 2])
    panel = np.array([0, 1, 2])
    bias = scale_bias(full, panel, _attr([25.0, 10.0, 5.0]), tiers)
    assert bias.rescale == pytest.approx(2.0)
    assert bias.residual == pytest.approx(0.0, abs=1e-12)
    assert bias.tiers_full == pytest.approx((0.5, 0.3, 0.2))
    assert bias.tiers_panel == pytest.approx((0.625, 0.375, 0.0))
    assert bias.tvd == pytest.approx(0.2)
    assert bias.panel_share == pytest.approx(0.8)
    assert bias.spearman == pytest.approx(1.0)
    assert bias.top10_full == pytest.approx(1.0)
    assert bias.panel_size == 3
    assert decide_alert(bias) == kernels.AlertDecision(False, (), "info")  # proportional, 80 % covered


def test_scale_bias_residual_no_rescaling_removes() -> None:
    """Full (1, 1) on the panel vs panel study (1, 0): c* = <a,b>/<b,b> = 1 and r* = ||(0, 1)|| / ||(1, 1)||."""
    bias = scale_bias(_attr([1.0, 1.0, 2.0]), np.array([0, 1]), _attr([1.0, 0.0]), np.array([0, 1, 2]))
    assert bias.rescale == pytest.approx(1.0)
    assert bias.residual == pytest.approx(1 / math.sqrt(2))
    assert bias.tvd == pytest.approx(0.75)  # full (.25, .25, .5) vs panel (1, 0, 0)
    assert bias.panel_share == pytest.approx(0.5)
    decision = decide_alert(bias)  # r* 0.71 > 2 * 0.2: critical, on the residual alone (a share of 0.5 is covered)
    assert decision == kernels.AlertDecision(True, ("residual",), "critical")


def test_alert_criteria_hysteresis_and_severity() -> None:
    """Fires on the residual above tau_res or the panel's share below tau_cov; stays firing until r* <= clear*tau_res
    and 1 - share <= clear * (1 - tau_cov) (here 0.16 and share >= 0.6); the TVD decides nothing."""
    t = AlertThresholds(residual=0.2, coverage=0.5, clear=0.8)
    base = scale_bias(_attr([1.0, 1.0]), np.array([0]), _attr([1.0]), np.array([0, 1]))

    def decide(residual: float, share: float, active: bool = False, tvd: float = 0.0) -> kernels.AlertDecision:
        return decide_alert(replace(base, residual=residual, panel_share=share, tvd=tvd), t, active=active)

    assert decide(0.1, 0.7, tvd=1.0) == kernels.AlertDecision(False, (), "info")  # a TVD of 1 fires nothing
    assert decide(0.25, 0.7) == kernels.AlertDecision(True, ("residual",), "warning")
    assert decide(0.41, 0.7).severity == "critical"  # r* > 2 tau_res
    assert decide(0.1, 0.45) == kernels.AlertDecision(True, ("coverage",), "warning")
    assert decide(0.1, 0.2).severity == "critical"  # share < tau_cov / 2
    assert decide(0.3, 0.3).criteria == ("residual", "coverage")
    assert decide(0.1, math.nan) == kernels.AlertDecision(False, (), "info")  # no share: coverage undecided
    assert decide(0.17, 0.7, active=True) == kernels.AlertDecision(True, (), "warning")  # r* inside the band
    assert decide(0.1, 0.55, active=True).firing  # share inside the band (0.5 to 0.6)
    assert not decide(0.15, 0.61, active=True).firing  # both within their allowances: resolves
    assert not decide(0.15, math.nan, active=True).firing
    with pytest.raises(ValueError, match="clear"):
        AlertThresholds(clear=0.0)
    with pytest.raises(ValueError, match="residual"):
        AlertThresholds(residual=-1.0)
    with pytest.raises(ValueError, match="coverage"):
        AlertThresholds(coverage=1.5)


def test_scale_bias_rejects_mismatched_inputs() -> None:
    full = _attr([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="tiers"):
        scale_bias(full, np.array([0]), _attr([1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="panel attribution"):
        scale_bias(full, np.array([0, 1]), _attr([1.0]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="out of range"):
        scale_bias(full, np.array([5]), _attr([1.0]), np.array([0, 1, 2]))


def test_visibility_biased_panel_overstates_the_head(population: kernels.Population) -> None:
    """The science in one test: on a heavy-tailed population the panel study gives almost everything to the head,
    the full-scale attribution gives most to the middle and tail."""
    pop = population
    full = kernels.attribute("cascade", pop.x, pop.graph, nodes=32)
    tiers = assign_tiers(pop.visibility)
    panel = select_panel(pop.visibility, pop.x, size=50)
    panel_attr = kernels.panel_attribution("cascade", pop.x, pop.graph, panel)
    bias = scale_bias(full, panel, panel_attr, tiers)
    assert bias.tiers_full[1] + bias.tiers_full[2] > 0.5
    assert bias.tiers_panel[0] > 0.5
    assert bias.tvd > 0.3
    assert decide_alert(bias).firing
    # what the panel computes is the cascade on its induced subgraph, by the independent oracle (a panel whose phi
    # were its activity, or anything but that game, fails here), and r* is the figure of those numbers
    from tests.kernels.test_oracle import cascade, path_integral

    sub = pop.graph.subgraph(panel)
    want = path_integral(cascade(sub)[1], pop.x[panel].astype(np.float64))
    assert np.linalg.norm(panel_attr.phi - want) < 1e-3 * np.linalg.norm(want)
    a = full.phi[panel]
    c = float(a @ want) / float(want @ want)
    assert bias.residual == pytest.approx(np.linalg.norm(a - c * want) / np.linalg.norm(a), abs=1e-3)


def test_the_rank_correlation_is_scipys() -> None:
    from scipy.stats import rankdata, spearmanr

    from kernels.bias import _spearman, average_ranks

    rng = np.random.default_rng(11)
    for _ in range(2000):
        n = int(rng.integers(2, 150))
        a = rng.integers(0, 5, n).astype(float) if rng.random() < 0.5 else rng.random(n)  # with ties, and without
        b = a * rng.random(n) + rng.integers(0, 3, n)
        assert np.array_equal(average_ranks(a), rankdata(a))
        if np.ptp(a) and np.ptp(b):
            assert abs(_spearman(a, b) - spearmanr(a, b).statistic) < 1e-12
    assert np.isnan(_spearman(np.ones(5), np.arange(5.0))), "constant input: undefined"
    assert np.isnan(_spearman(np.array([1.0, np.nan, 2.0]), np.arange(3.0)))


def test_a_run_does_not_import_scipy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kernels; p = kernels.heavy_tailed_population(300, seed=1);"
        "full = kernels.attribute('cascade', p.x, p.graph); tiers = kernels.assign_tiers(p.visibility);"
        "panel = kernels.select_panel(p.visibility, p.x, size=20);"
        "b = kernels.scale_bias(full, panel, kernels.panel_attribution('cascade', p.x, p.graph, panel), tiers);"
        "print(b.spearman == b.spearman, 'scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"], "scipy.stats costs ~0.7 s to import: a run needs none of it"


@pytest.mark.parametrize("seed", range(4))
def test_orders_and_top_shares_equal_their_definitions(seed: int) -> None:
    """Visibility order (descending, ties by index), tiers and the top-10 share equal what a full lexsort and a
    full sort give, bit for bit, with many ties."""
    from kernels.bias import top_share
    from kernels.tiers import visibility_order

    rng = np.random.default_rng(seed)
    vis = rng.integers(0, 20, 5000).astype(np.float64)
    np.testing.assert_array_equal(visibility_order(vis), np.lexsort((np.arange(len(vis)), -vis)))
    phi = rng.standard_normal(5000) ** 2
    phi[:100] = phi[0]  # ties at the top
    assert top_share(phi) == float(np.sort(phi)[::-1][:10].sum() / phi.sum())
    assert top_share(phi[:7]) == float(np.sort(phi[:7])[::-1][:10].sum() / phi[:7].sum())


def test_tvd_is_mechanical_once_the_panel_lies_inside_the_head_tier() -> None:
    """At 2*10^4 agents the 100 most visible active accounts are all in the head tier (the top 1 %: 200 accounts),
    so the panel's shares are (1, 0, 0) whatever it computes and TVD = 1 - the full head share: a figure about the
    tiers' sizes, which is why it is published but documented as no measure of the panel study's error."""
    import kernels

    pop = kernels.heavy_tailed_population(20_000, seed=5)
    tiers = kernels.assign_tiers(pop.visibility)
    panel = kernels.select_panel(pop.visibility, pop.x)
    assert len(panel) == 100 and np.all(tiers[panel] == 0)
    full = kernels.attribute("cascade", pop.x, pop.graph)
    bias = kernels.scale_bias(full, panel, kernels.panel_attribution("cascade", pop.x, pop.graph, panel), tiers)
    assert bias.tiers_panel == (1.0, 0.0, 0.0)
    assert bias.tvd == pytest.approx(1.0 - bias.tiers_full[0], abs=1e-12)
    fake = kernels.panel_attribution("activity", pop.x, pop.graph, panel)  # any positive phi at all: the same TVD
    assert kernels.scale_bias(full, panel, fake, tiers).tvd == pytest.approx(bias.tvd, abs=1e-12)
