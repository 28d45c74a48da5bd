"""``attribute(..., estimate_error=True)``: phi at m nodes against phi at 2m, an error bar that means what it says.

The true error is measured against the independent float64 oracle of tests/kernels/test_oracle.py (hand-derived
gradients, 2,048-node composite Gauss–Legendre); the estimate must bound it within a factor of 2, in relative L2 and
agent by agent, over node counts where the rule is far from converged and for thresholds as steep as κ = 32, where
the completeness residual understates the error by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import attribute, get_indicator
from kernels.attribution import passes, share_error
from tests.kernels.test_oracle import ORACLES, _population, cascade, path_integral

FLOOR = 1e-12  # float64: below this the two are the same number


@pytest.mark.parametrize("kappa", [2.0, 8.0, 32.0])
@pytest.mark.parametrize("seed", [2, 3])
def test_the_estimate_bounds_the_true_error_within_a_factor_of_two(kappa: float, seed: int) -> None:
    x, g = _population(seed, n=200)
    want = path_integral(cascade(g, kappa=kappa)[1], x, panels=256)
    ind = get_indicator("cascade", kappa=kappa)
    for nodes in (8, 16, 32, 64, 128):
        a = attribute(ind, x, g, nodes=nodes, dtype="float64", estimate_error=True)
        assert a.error_estimate is not None and a.error_max is not None
        true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
        assert true <= 2 * a.error_estimate + FLOOR, (nodes, true, a.error_estimate)
        assert a.error_estimate <= 2 * true + FLOOR, "and does not cry wolf"
        assert np.max(np.abs(a.phi - want)) <= 2 * a.error_max + FLOOR * np.max(np.abs(want)), nodes


def test_the_residual_is_no_error_bar_but_the_estimate_is() -> None:
    """At κ = 32 and 32 nodes the completeness residual is several times below the true error; the estimate is not."""
    x, g = _population(3, n=200)
    want = path_integral(cascade(g, kappa=32.0)[1], x, panels=256)
    a = attribute(get_indicator("cascade", kappa=32.0), x, g, nodes=32, dtype="float64", estimate_error=True)
    true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
    assert a.residual < true / 3 and true <= 2 * a.error_estimate


@pytest.mark.parametrize("name", ["reach", "saturation", "exposure"])
def test_every_indicator_gets_an_estimate_and_converged_ones_a_small_one(name: str) -> None:
    x, g = _population(5, n=100)
    want = path_integral(ORACLES[name](g)[1], x)
    a = attribute(name, x, g, nodes=64, dtype="float64", estimate_error=True)
    true = np.linalg.norm(a.phi - want) / np.linalg.norm(want)
    assert a.error_estimate is not None and true <= 2 * a.error_estimate + FLOOR and a.error_estimate < 1e-6
    assert attribute(name, x, g, nodes=64, dtype="float64").error_estimate is None, "only when asked for"


CASES = [("cascade", {"kappa": k}) for k in (2.0, 8.0, 32.0)] + [(n, {}) for n in ("reach", "saturation", "exposure")]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_auto_is_never_worse_than_plain_gauss_legendre(name: str, params: dict) -> None:
    """At every node count, for thresholds as steep as κ = 32 and where neither rule has converged: the rule
    ``auto`` keeps is at least as close to the oracle as plain Gauss–Legendre, and where the graded rule is far
    better (reach, saturation: 10^-15 against 10^-5 at 32 nodes) it is that one."""
    for seed in (3, 4):
        x, g = _population(seed, n=200)
        grad = cascade(g, **params)[1] if name == "cascade" else ORACLES[name](g)[1]
        want = path_integral(grad, x, panels=256)
        ind = get_indicator(name, **params)
        for nodes in (4, 8, 16, 32, 64):
            auto = attribute(ind, x, g, nodes=nodes, dtype="float64", rule="auto")
            plain = attribute(ind, x, g, nodes=nodes, dtype="float64", rule="uniform")
            err = {k: np.linalg.norm(a.phi - want) / np.linalg.norm(want) for k, a in (("auto", auto), ("u", plain))}
            assert err["auto"] <= err["u"] + 1e-13, (seed, nodes, auto.rule, err)
            assert auto.error_estimate is not None, "auto chose by the estimate, and carries it"
            if name in ("reach", "saturation") and nodes >= 16:
                assert auto.rule == "log-graded" and err["auto"] < err["u"] / 100


def test_the_graded_weights_are_not_renormalised_so_a_linear_indicator_shows_the_rules_error() -> None:
    """exposure is linear: phi = x * c * (sum of weights). With 8 graded nodes the weights do not sum to 1, and the
    completeness residual says so (it was hidden by renormalising); plain Gauss-Legendre is exact, and auto takes it."""
    x, g = _population(4, n=200)
    want = path_integral(ORACLES["exposure"](g)[1], x)
    graded = attribute("exposure", x, g, nodes=8, dtype="float64", rule="log-graded")
    error = np.linalg.norm(graded.phi - want) / np.linalg.norm(want)
    assert error > 1e-7 and graded.residual == pytest.approx(error, rel=1e-6)
    auto = attribute("exposure", x, g, nodes=8, dtype="float64", rule="auto")
    assert auto.rule == "uniform" and np.linalg.norm(auto.phi - want) <= 1e-12 * np.linalg.norm(want)


TOLERANCE_CASES = [("cascade", {"kappa": 8.0}, "uniform"), ("cascade", {}, "log-graded"), ("reach", {}, "log-graded")]


@pytest.mark.parametrize(("name", "params", "rule"), TOLERANCE_CASES)
def test_a_tolerance_doubles_the_nodes_until_each_agents_share_is_within_it(name: str, params: dict, rule: str) -> None:
    """The error-driven node count stops at the first count whose estimate is within the tolerance (the count
    before it was not), and what it returns is within the tolerance against the oracle too, agent by agent, as a
    share of the whole attribution."""
    x, g = _population(3, n=200)
    grad = cascade(g, **params)[1] if name == "cascade" else ORACLES[name](g)[1]
    want = path_integral(grad, x, panels=256)
    ind = get_indicator(name, **params)
    heard: list[int] = []
    for tolerance in (1e-3, 1e-5):
        heard.clear()
        a = attribute(ind, x, g, nodes=2, dtype="float64", rule=rule, tolerance=tolerance, on_pass=heard.append)
        share = np.max(np.abs(a.phi - want)) / np.sum(np.abs(want))
        assert share_error(a) <= tolerance and share <= tolerance, (tolerance, a.nodes, share)
        assert heard == [2 * 2**k for k in range(len(heard))] and heard[-1] == 2 * a.nodes, heard
        if a.nodes > 2:
            before = attribute(ind, x, g, nodes=a.nodes // 2, dtype="float64", rule=rule, estimate_error=True)
            assert share_error(before) > tolerance, "it stopped at the first count that met the tolerance"
    assert a.nodes > 2, "10^-5 is not met at 2 nodes: the case tests the doubling"


def test_a_tolerance_never_met_stops_at_max_nodes_and_passes_counts_what_it_ran() -> None:
    x, g = _population(3, n=100)
    heard: list[int] = []
    a = attribute("cascade", x, g, nodes=4, rule="auto", tolerance=1e-12, max_nodes=32, on_pass=heard.append)
    assert a.nodes == 16 and share_error(a) > 1e-12, "float32 cannot meet 10^-12; the count stops at the cap"
    assert sum(heard) == passes(4, "auto", tolerance=1e-12, max_nodes=32) == 2 * (4 + 8 + 16 + 32)


def test_with_a_tolerance_auto_takes_the_rule_that_meets_it_at_fewer_nodes() -> None:
    """reach's features sit at small a: the graded rule meets 10^-6 at a few times fewer nodes than plain
    Gauss–Legendre, and auto returns that cheaper answer."""
    x, g = _population(4, n=200)
    want = path_integral(ORACLES["reach"](g)[1], x, panels=256)
    kw = {"nodes": 4, "dtype": "float64", "tolerance": 1e-6}
    auto, graded = attribute("reach", x, g, rule="auto", **kw), attribute("reach", x, g, rule="log-graded", **kw)
    plain = attribute("reach", x, g, rule="uniform", **kw)
    assert graded.nodes < plain.nodes and auto.rule == "log-graded" and auto.nodes == graded.nodes
    assert np.max(np.abs(auto.phi - want)) / np.sum(np.abs(want)) <= 1e-6


@pytest.mark.parametrize("tolerance", [0.0, -1e-4, 1.0, float("nan"), float("inf")])
def test_a_tolerance_outside_0_1_is_refused(tolerance: float) -> None:
    x, g = _population(3, n=50)
    with pytest.raises(ValueError, match="tolerance"):
        attribute("reach", x, g, tolerance=tolerance)


def test_a_studys_panel_games_run_at_the_count_the_full_attribution_settled_on() -> None:
    from kernels.study import scale_study

    x, g = _population(3, n=300)
    visibility = np.arange(300, dtype=float)
    st = scale_study("cascade", x, g, visibility, nodes=2, panel_size=20, rule="log-graded", tolerance=1e-4)
    assert st.full.nodes > 2 and share_error(st.full) <= 1e-4
    assert {game.attribution.nodes for game in st.games.values()} == {st.full.nodes}
