"""The panel study's two games and the theorem on when it is a rescaled copy of the full-scale attribution.

Every expected value here comes from numpy written in this file (closed forms, hand-derived gradients), never from
``kernels`` run twice. r* is recomputed here from its definition: r* = ||a - c* b|| / ||a||, c* = <a, b> / <b, b>,
with a the full-scale attribution on the panel and b the panel study's.

The theorem (stated in :mod:`kernels.bias`): in the same game, v(x) = f(c . x) gives r* = 0 for any f (linear v
included); a nonlinear v whose panel members' marginals depend on the rest of the population unequally gives r* > 0.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import AttentionGraph, attribute, get_indicator, panel_attribution
from kernels.indicators import Indicator, attention_received, linear_closed_form
from tests.kernels.test_axioms import SETTINGS, graphs

SETTINGS = settings(SETTINGS, derandomize=True)  # the same examples on every run: a landing never rests on luck


def r_star(a: np.ndarray, b: np.ndarray) -> float:
    bb = float(b @ b)
    c = float(a @ b) / bb if bb > 0 else 0.0
    na = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - c * b)) / na if na > 0 else 0.0


def reach_oracle(x: np.ndarray, g: AttentionGraph) -> np.ndarray:
    """phi_i = x_i sum_j W_ji log1p(e_j) / e_j, e = W x (float64, by hand)."""
    e = np.zeros(g.n)
    np.add.at(e, g.attender, g.weight * x[g.source])
    ratio = np.where(e > 0, np.log1p(e) / np.where(e > 0, e, 1.0), 1.0)
    out = np.zeros(g.n)
    np.add.at(out, g.source, g.weight * ratio[g.attender])
    return x * out


@st.composite
def games(draw: st.DrawFn) -> tuple[np.ndarray, AttentionGraph, np.ndarray]:
    x, g = draw(graphs(min_n=4, max_n=12))
    members = draw(st.lists(st.integers(0, g.n - 1), min_size=1, max_size=g.n - 1, unique=True))
    return x, g, np.array(members, np.int64)


@SETTINGS
@given(data=games(), name=st.sampled_from(["exposure", "activity"]))
def test_a_linear_indicator_gives_the_full_attribution_itself_in_the_same_game(data, name) -> None:  # type: ignore[no-untyped-def]
    x, g, panel = data
    full = linear_closed_form(name, x, g)
    coefficients = attention_received(g) if name == "exposure" else np.ones(g.n)
    np.testing.assert_allclose(full, x * coefficients, rtol=1e-12)
    same = panel_attribution(name, x, g, panel, nodes=8, dtype="float64", game="same_game", rule="uniform")
    np.testing.assert_allclose(same.phi, full[panel], rtol=1e-12, atol=1e-9)
    assert r_star(full[panel], same.phi) <= 1e-12
    # the graded rule's weights need not sum to 1 at 8 nodes (its error on a constant), but that error is one factor
    # common to every agent: still proportional, r* = 0
    graded = panel_attribution(name, x, g, panel, nodes=8, dtype="float64", game="same_game", rule="log-graded")
    assert r_star(full[panel], graded.phi) <= 1e-12


@SETTINGS
@given(data=games(), k=st.sampled_from([0.5, 5.0, 300.0]))
def test_any_function_of_one_linear_aggregate_gives_r_star_zero_in_the_same_game(data, k: float) -> None:  # type: ignore[no-untyped-def]
    """v = K (1 - exp(-sum_j e_j / K)): saturation of the total exposure, nonlinear, yet phi(x) = c_i x_i times one
    factor common to every agent, so the same game's attribution is the full one rescaled."""
    x, g, panel = data
    v = _saturated_exposure(k)
    full = attribute(v, x, g, nodes=16, dtype="float64") if g.edges else None
    if full is None:
        return
    same = panel_attribution(v, x, g, panel, nodes=16, dtype="float64", game="same_game")
    # phi_i = c_i x_i (f(s) - f(0)) / s with s = c . x: proportional to c x, the common factor being all that the
    # quadrature can err on (so the proportionality is exact at any node count, and so is r* = 0)
    c = attention_received(g)
    assert r_star(full.phi, c * x) <= 1e-9 and r_star(same.phi, c[panel] * x[panel]) <= 1e-9
    s = float(c @ x)
    assert full.value - full.baseline == pytest.approx(k * -np.expm1(-s / k), rel=1e-9, abs=1e-12)
    assert r_star(full.phi[panel], same.phi) <= 1e-9


@SETTINGS
@given(data=games(), k=st.sampled_from([0.5, 300.0]))
def test_the_registered_saturated_exposure_is_that_function_of_one_linear_aggregate(data, k: float) -> None:  # type: ignore[no-untyped-def]
    """``saturated_exposure`` (what ``skyattr study`` shows the theorem's f(linear) row with): v = K (1 − exp(−s/K)),
    s = c . x, so the same game's r* is 0, and its sequential evaluator (sampled Shapley) adds up to v."""
    x, g, panel = data
    if not g.edges:
        return
    v = get_indicator("saturated_exposure", capacity=k)
    full = attribute(v, x, g, nodes=16, dtype="float64")
    s = float(attention_received(g) @ x)
    assert full.value - full.baseline == pytest.approx(k * -np.expm1(-s / k), rel=1e-9, abs=1e-12)
    same = panel_attribution(v, x, g, panel, nodes=16, dtype="float64", game="same_game")
    assert r_star(full.phi[panel], same.phi) <= 1e-9
    walk = v.incremental(x, g)
    walk.reset()
    assert sum(walk.add(i) for i in range(g.n)) == pytest.approx(k * -np.expm1(-s / k), rel=1e-9, abs=1e-12)


@functools.cache
def _saturated_exposure(k: float) -> Indicator:
    """One instance per K, so each compiles once."""
    import jax.numpy as jnp

    return Indicator(f"saturated_exposure_{k}", lambda xs, gr: k * -jnp.expm1(-gr.total(gr.exposure(xs)) / k))


def _interacting() -> tuple[np.ndarray, AttentionGraph, np.ndarray]:
    """Panel {0, 1}; agent 2 outside it. Agent 3 attends 0 and 2, agent 4 attends 1 only: switching agent 2 off
    changes the marginal of 0 (its attender's exposure falls) but not that of 1."""
    att = np.array([3, 3, 4])
    src = np.array([0, 2, 1])
    return np.array([4.0, 4.0, 50.0, 0.0, 0.0]), AttentionGraph(att, src, np.ones(3), 5), np.array([0, 1])


def test_reach_with_interaction_between_panel_and_rest_gives_r_star_above_zero() -> None:
    x, g, panel = _interacting()
    full = attribute("reach", x, g, nodes=64, dtype="float64")
    same = panel_attribution("reach", x, g, panel, nodes=64, dtype="float64", game="same_game")
    only_panel = np.where(np.isin(np.arange(g.n), panel), x, 0.0)
    want_full, want_same = reach_oracle(x, g), reach_oracle(only_panel, g)[panel]
    np.testing.assert_allclose(full.phi, want_full, rtol=1e-6)
    np.testing.assert_allclose(same.phi, want_same, rtol=1e-6)
    # by hand: agent 0 is credited log1p(54)/54 per unit at full scale, log1p(4)/4 alone; agent 1 log1p(4)/4 in both
    assert want_full[0] == pytest.approx(4 * np.log1p(54) / 54)
    assert r_star(full.phi[panel], same.phi) == pytest.approx(r_star(want_full[panel], want_same), rel=1e-6)
    assert r_star(full.phi[panel], same.phi) > 0.3


@SETTINGS
@given(data=games(), name=st.sampled_from(["reach", "cascade"]))
def test_the_same_game_is_the_full_game_with_everyone_else_switched_off(data, name: str) -> None:  # type: ignore[no-untyped-def]
    """Its phi is the full-scale attribution of the population whose activity outside the panel is zero: for reach
    against the closed form by hand, for cascade against a full attribution of that population."""
    x, g, panel = data
    if not g.edges:
        return
    only_panel = np.zeros_like(x)
    only_panel[panel] = x[panel]
    same = panel_attribution(name, x, g, panel, nodes=48, dtype="float64", game="same_game")
    if name == "reach":
        np.testing.assert_allclose(same.phi, reach_oracle(only_panel, g)[panel], rtol=1e-5, atol=1e-9)
    else:
        whole = attribute(name, only_panel, g, nodes=48, dtype="float64")
        np.testing.assert_allclose(same.phi, whole.phi[panel], rtol=1e-12, atol=1e-12)


def test_the_restricted_game_loses_the_attention_from_outside_the_panel() -> None:
    """exposure restricted to the panel: phi_i = x_i (W_PP^T 1)_i. Inside the panel 1 attends 0 with weight 2 and 0
    attends 1 with weight 1; 0 also gets 5 units from agent 2, outside the panel: r* > 0 where the same game gives
    0. A panel whose phi were its activity (2, 3) would fail the first assertion."""
    att = np.array([1, 0, 2, 2, 2, 2, 2])
    src = np.array([0, 1, 0, 0, 0, 0, 0])
    g = AttentionGraph(att, src, np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 3)
    x, panel = np.array([2.0, 3.0, 1.0]), np.array([0, 1])
    restricted = panel_attribution("exposure", x, g, panel, nodes=4, dtype="float64", rule="uniform")  # exact: linear
    np.testing.assert_allclose(restricted.phi, [2.0 * 2, 3.0 * 1], rtol=1e-12)
    full = linear_closed_form("exposure", x, g)
    np.testing.assert_allclose(full[panel], [2.0 * 7, 3.0 * 1])
    same = panel_attribution("exposure", x, g, panel, nodes=4, dtype="float64", game="same_game", rule="uniform")
    assert r_star(full[panel], same.phi) <= 1e-15
    assert r_star(full[panel], restricted.phi) == pytest.approx(r_star(np.array([14.0, 3.0]), np.array([4.0, 3.0])))
    assert r_star(full[panel], restricted.phi) > 0.2


def test_a_restricted_saturation_keeps_the_full_populations_capacity() -> None:
    """K = capacity_per_agent * n: n is the full population's (6), not the panel's (2)."""
    att, src = np.array([1, 0, 3]), np.array([0, 1, 2])
    g = AttentionGraph(att, src, np.ones(3), 6)
    x, panel = np.array([3.0, 1.0, 2.0, 0.0, 0.0, 0.0]), np.array([0, 1])
    a = panel_attribution("saturation", x, g, panel, nodes=16, dtype="float64")
    s = np.log1p(3.0) + np.log1p(1.0)  # the panel's own exposures: 1 attends 0 (3), 0 attends 1 (1)
    assert a.value == pytest.approx(6 * -np.expm1(-s / 6), rel=1e-12)
    assert get_indicator("saturation").at_scale(6).params["capacity"] == 6.0
    assert get_indicator("saturation", capacity=4.0).at_scale(6).params["capacity"] == 4.0


def test_an_unknown_game_is_refused() -> None:
    x, g, panel = _interacting()
    with pytest.raises(ValueError, match="game must be one of restricted, same_game, got 'both'"):
        panel_attribution("reach", x, g, panel, game="both")
