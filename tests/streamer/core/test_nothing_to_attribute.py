"""No alert on nothing: a run whose v(x) − v(0) is rounding noise is published as ``nothing_to_attribute`` (no
shares, no figures, the alert as it was), and a panel that sees nothing of a phenomenon the population shows is a
finding (r* = 1, no TVD), through the daemon's own run path (``attribute_snapshot``), the CLI and a replay of the
real relay sample."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kernels import AttentionGraph
from kernels.study import FLOOR_ULPS, negligible
from streamer.app.cli import app
from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.results import result_from_message
from streamer.core.state import Snapshot


def _snapshot(x: np.ndarray, graph: AttentionGraph, visibility: np.ndarray) -> Snapshot:
    dids = [f"did:plc:{i:024d}" for i in range(len(x))]
    return Snapshot(x, visibility, graph, dids, 0, 3_600_000_000, int(x.sum()))


def _attending_only_the_inactive(n: int = 2000) -> Snapshot:
    """The issue's population: the first half active, and every edge an active account attending an inactive one,
    so W x = 0 everywhere and v(x) = v(0) for every indicator built on exposure."""
    rng = np.random.default_rng(7)
    half = n // 2
    att = rng.integers(0, half, 8 * n)
    src = rng.integers(half, n, 8 * n)
    x = np.r_[rng.integers(1, 30, half), np.zeros(n - half)].astype(np.float64)
    visibility = rng.pareto(1.5, n) + 1.0
    return _snapshot(x, AttentionGraph(att, src, np.ones(len(att)), n), visibility)


@pytest.mark.parametrize("active_before", [False, True])
def test_v_equal_to_v0_publishes_the_outcome_and_leaves_the_alert_as_it_was(active_before: bool) -> None:
    out = attribute_snapshot(
        _attending_only_the_inactive(), AttributionConfig(), run=4, as_of_us=3_600_000_000, alert_active=active_before
    )
    r = out.result
    assert r is not None and out.alert is None and out.alert_active is active_before
    assert r.outcome == "nothing_to_attribute" and not r.attributed
    assert r.tiers is None and r.scale_bias is None and r.top == ()
    assert r.error_estimate is None and r.alert.criteria == () and r.stratified_panel is None
    assert r.alert.active is active_before and r.alert.changed is False
    message = r.to_message()  # valid against the schema (checked when made) and read back as the same
    assert message["tiers"] is None and message["scale_bias"] is None and message["outcome"] == "nothing_to_attribute"
    assert result_from_message("tiers", message).to_message() == message


def test_the_floor_is_rounding_noise_of_v_in_the_runs_dtype() -> None:
    eps32 = float(np.finfo(np.float32).eps)
    assert negligible(0.0, 0.0, "float32")
    assert negligible(1000.0 + FLOOR_ULPS * eps32 * 1000.0, 1000.0, "float32")
    assert not negligible(1000.0 + 2 * FLOOR_ULPS * eps32 * 1000.0, 1000.0, "float32")
    assert not negligible(1e-30, 0.0, "float64"), "a tiny phenomenon is still one"
    assert not negligible(1000.0 + 2 * FLOOR_ULPS * eps32 * 1000.0, 1000.0, "float64")


def _panel_sees_nothing() -> Snapshot:
    """Agents 0-2, the most visible and active, are the panel (of 3). They are attended only by agent 5, outside
    it, and agent 4 attends agent 3 (active, outside it too). Restricted to the panel there is no attention, so its
    attribution is zero; at full scale agent 5's attention to 0 and 1 moves v, and so it does in the same game (5's
    exposure is x_0 + x_1 either way)."""
    att = np.array([5, 5, 4])
    src = np.array([0, 1, 3])
    x = np.array([3.0, 2.0, 1.0, 4.0, 0.0, 0.0])
    visibility = np.array([9.0, 8.0, 7.0, 1.0, 1.0, 1.0])
    return _snapshot(x, AttentionGraph(att, src, np.ones(3), 6), visibility)


def test_a_panel_that_sees_nothing_is_a_finding_not_nan() -> None:
    """The restricted study sees nothing (a finding: r* = 1, no shares, no TVD); the same game sees all of it
    (r* = 0); the alert reads the same game and the panel's share, ln 6 / (ln 6 + ln 5) = 0.527 > 0.5: no alert."""
    config = AttributionConfig(indicator="reach", panel_size=3, nodes=16, dtype="float64")
    out = attribute_snapshot(_panel_sees_nothing(), config, run=1, as_of_us=1, alert_active=False)
    r = out.result
    assert r is not None and r.attributed and r.scale_bias is not None and r.tiers is not None
    sb = r.scale_bias
    restricted, same = sb.restricted, sb.same_game
    assert restricted.panel_sees_nothing and r.tiers.restricted is None and restricted.tvd is None
    assert restricted.rescale == 0.0 and restricted.residual == pytest.approx(1.0), "no rescaling of nothing"
    assert not same.panel_sees_nothing and r.tiers.same_game is not None
    assert same.residual == pytest.approx(0.0, abs=1e-12) and same.rescale == pytest.approx(1.0)
    assert sb.panel_share == pytest.approx(math.log(6) / (math.log(6) + math.log(5)), rel=1e-9)
    assert not r.alert.active and out.alert is None and r.alert.criteria == ()
    message = r.to_message()
    assert message["tiers"]["restricted"] is None and message["tiers"]["same_game"] is not None
    assert message["scale_bias"]["restricted"]["tvd"] is None
    assert result_from_message("tiers", message).to_message() == message


def test_a_panel_nobody_attends_fires_on_coverage() -> None:
    """Panel {0, 1} (the most visible, active) is attended by nobody; agent 2 attends agent 3. In both games the
    panel's attribution is zero, and so is its accounts' full-scale attribution: the panel is right that it causes
    nothing (r* = 0), but it holds none of the phenomenon (share 0 < tau_cov / 2): critical, on coverage."""
    att, src = np.array([2]), np.array([3])
    x = np.array([3.0, 2.0, 0.0, 5.0])
    visibility = np.array([9.0, 8.0, 1.0, 1.0])
    snap = _snapshot(x, AttentionGraph(att, src, np.ones(1), 4), visibility)
    config = AttributionConfig(indicator="reach", panel_size=2, nodes=16)
    out = attribute_snapshot(snap, config, run=1, as_of_us=1, alert_active=False)
    r = out.result
    assert r is not None and r.scale_bias is not None
    assert r.tiers is not None
    for name, game in r.scale_bias.games():
        assert game.panel_sees_nothing and game.residual == 0.0 and r.tiers.panel(name) is None
    assert r.scale_bias.panel_share == 0.0
    assert r.alert.active and r.alert.criteria == ("coverage",)
    assert out.alert is not None and out.alert.criteria == ("coverage",) and out.alert.severity == "critical"
    assert "the panel holds 0.0% of the full-scale attribution < 50%" in out.alert.summary


def test_attribute_prints_the_outcome_in_words_and_as_json() -> None:
    runner = CliRunner()
    args = ["attribute", "--agents", "2000", "--no-progress", "--indicator-params", "{theta: 1e9}"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "nothing to attribute" in text and "FIRING" not in text and "r*" not in text
    out = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert out["outcome"] == "nothing_to_attribute" and out["tiers"] is None and out["scale_bias"] is None
    assert out["alert"]["active"] is False and out["value"] == out["baseline"] == 0.0
    assert out["alert"]["criteria"] == [] and out["error_estimate"] is None


def test_the_real_relay_sample_raises_no_alert(sample_dir: Path, tmp_path: Path) -> None:
    """Its window has attention edges but none to an active account (v = v(0) = 0): before, it published TVD 0.111
    from the tiers' population fractions."""
    out = tmp_path / "runs.jsonl"
    result = CliRunner().invoke(
        app, ["replay", str(sample_dir / "frames.bin.zst"), "--no-progress", "--quiet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and all(m["topic"] == "tiers" for m in lines), "no alert message"
    assert all(m["outcome"] == "nothing_to_attribute" and m["scale_bias"] is None for m in lines)
    assert not any(m["alert"]["active"] for m in lines)
    assert all(math.isfinite(m["value"]) and m["value"] == m["baseline"] for m in lines)
