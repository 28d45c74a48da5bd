"""Every run publishes the panel a small study of its window should have used: the smallest stratified sample whose
weighted tier shares are within ε of the full scale. Checked here by drawing samples of the published allocation with
plain numpy (not the kernels' sampler) and weighting them by hand, against the run's own published full-scale tier
shares; and through the Prometheus gauges and the terminal's caption."""

from __future__ import annotations

import io

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

import kernels
from kernels import AttentionGraph
from streamer.app.terminal import tier_table
from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.results import result_from_message
from streamer.core.state import Snapshot
from streamer.sinks.prometheus import Metrics


def _snapshot(n: int = 4000, seed: int = 3) -> Snapshot:
    pop = kernels.heavy_tailed_population(n, 8.0, seed)
    g = pop.graph
    graph = AttentionGraph(np.asarray(g.attender), np.asarray(g.source), np.asarray(g.weight), g.n)
    dids = [f"did:plc:{i:024d}" for i in range(n)]
    return Snapshot(pop.x, pop.visibility, graph, dids, 0, 3_600_000_000, int(pop.x.sum()))


@pytest.fixture(scope="module")
def run() -> tuple[Snapshot, object]:
    snap = _snapshot()
    config = AttributionConfig(indicator="exposure", estimate_error=False, rule="uniform")
    return snap, attribute_snapshot(snap, config, run=1, as_of_us=3_600_000_000, alert_active=False)


def test_the_published_panel_meets_epsilon_when_drawn_and_weighted_independently(run: tuple) -> None:
    snap, out = run
    r = out.result
    sp = r.stratified_panel
    assert sp is not None and sp.size is not None and sp.allocation is not None and sp.weights is not None
    assert sp.size == sp.allocation.head + sp.allocation.middle + sp.allocation.tail
    assert sp.held_out_within is not None and sp.held_out_within >= 0.9
    active = snap.x > 0
    # tiers by visibility, by hand: the top 1 % of accounts, the next 10 %, the rest (ties broken by index)
    order = np.lexsort((np.arange(len(snap.x)), -snap.visibility))
    tier = np.full(len(snap.x), 2)
    tier[order[: int(np.ceil(0.01 * len(tier)))]] = 0
    tier[order[int(np.ceil(0.01 * len(tier))) : int(np.ceil(0.11 * len(tier)))]] = 1
    phi = snap.x * np.bincount(snap.graph.source, weights=snap.graph.weight, minlength=len(snap.x))  # exposure
    want = np.array([r.tiers.full.head, r.tiers.full.middle, r.tiers.full.tail])
    np.testing.assert_allclose(np.bincount(tier, weights=phi, minlength=3) / phi.sum(), want, rtol=1e-4)
    alloc = [sp.allocation.head, sp.allocation.middle, sp.allocation.tail]
    weights = [sp.weights.head, sp.weights.middle, sp.weights.tail]
    members = [np.flatnonzero(active & (tier == h)) for h in range(3)]
    for h in range(3):
        assert weights[h] == pytest.approx(len(members[h]) / alloc[h])
    rng = np.random.default_rng(2024)
    errors = []
    for _ in range(400):
        totals = np.array([phi[rng.permutation(members[h])[: alloc[h]]].sum() * weights[h] for h in range(3)])
        errors.append(np.max(np.abs(totals / totals.sum() - want)))
    assert np.mean(np.array(errors) <= sp.epsilon) >= 0.88, np.quantile(errors, sp.quantile)
    # half the size misses ε far more often: the size found is not generous
    half = [max(2, a // 2) for a in alloc]
    worse = []
    for _ in range(400):
        totals = np.array(
            [phi[rng.permutation(members[h])[: half[h]]].sum() * len(members[h]) / half[h] for h in range(3)]
        )
        worse.append(np.max(np.abs(totals / totals.sum() - want)))
    assert np.quantile(worse, sp.quantile) > sp.epsilon
    assert result_from_message("tiers", r.to_message()) == r


def test_it_shows_in_the_gauges_and_the_terminal_and_can_be_turned_off(run: tuple) -> None:
    snap, out = run
    r, sp = out.result, out.result.stratified_panel
    metrics = Metrics()
    metrics.record_run(r)
    from prometheus_client import generate_latest

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert families["skyattr_stratified_panel_size"].samples[0].value == sp.size
    accounts = {s.labels["tier"]: s.value for s in families["skyattr_stratified_panel_accounts"].samples}
    assert accounts == {"head": sp.allocation.head, "middle": sp.allocation.middle, "tail": sp.allocation.tail}
    weights = {s.labels["tier"]: s.value for s in families["skyattr_stratified_panel_weight"].samples}
    assert weights["tail"] == pytest.approx(sp.weights.tail)
    console = Console(file=io.StringIO(), width=400)
    console.print(tier_table(r))
    assert f"stratified panel within 0.05: {sp.size:,} accounts" in console.file.getvalue()
    off = AttributionConfig(indicator="exposure", estimate_error=False, rule="uniform", stratified_epsilon=0)
    quiet = attribute_snapshot(snap, off, run=1, as_of_us=3_600_000_000, alert_active=False).result
    assert quiet.stratified_panel is None and quiet.tiers == r.tiers
    metrics.record_run(quiet)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert np.isnan(families["skyattr_stratified_panel_size"].samples[0].value)
