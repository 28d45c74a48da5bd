"""One attribution run on a state snapshot: full-scale attribution, tiers, panel study, scale bias, alert.

:func:`attribute_snapshot` is what the scheduler calls every interval. It turns a :class:`~streamer.core.state.Snapshot`
into the ``skyattr.tiers`` message (and, when the alert state changes, a ``skyattr.alerts`` message). The message
layouts are the JSON Schemas in ``streamer/schemas/``; everything in them is deterministic for a given snapshot and
configuration except ``runtime_s`` and ``device``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import kernels
from kernels import defaults
from streamer.core.followers import VisibilityUnavailable
from streamer.core.results import (
    GAME_NAMES,
    AlertFigures,
    AlertState,
    AlertTransition,
    Criterion,
    GameFigures,
    RunResult,
    ScaleBias,
    StratifiedPanel,
    Thresholds,
    Tiers,
    TierShares,
    TierSizes,
    TierWeights,
    TopAccount,
    Window,
)
from streamer.core.state import Snapshot

if TYPE_CHECKING:  # the kernels load their modules (and JAX) at first use
    from kernels.stratified import SampleSize
    from kernels.study import Study


@dataclass(frozen=True)
class AttributionConfig:
    """What to attribute and how: indicator and its parameters, quadrature, tiers, panel, alert thresholds, and
    whether to estimate the quadrature error (``estimate_error``: phi again at twice the nodes). A ``tolerance``
    (a share, 0 < t < 1) makes the node count error-driven from ``nodes`` (:func:`kernels.attribution.attribute`);
    0 keeps ``nodes``."""

    indicator: str = defaults.DEFAULT_INDICATOR
    params: dict[str, Any] = field(default_factory=dict)
    nodes: int = defaults.NODES
    dtype: str = defaults.DTYPE
    head: float = defaults.HEAD
    middle: float = defaults.MIDDLE
    panel_size: int = defaults.PANEL_SIZE
    top_k: int = defaults.TOP_K
    thresholds: kernels.AlertThresholds = field(default_factory=lambda: kernels.AlertThresholds())
    estimate_error: bool = True
    rule: str = "auto"
    stratified_epsilon: float = defaults.STRATIFIED_EPSILON  # 0: no stratified panel
    tolerance: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every option as plain JSON values (what a checkpoint records to refuse resuming with other options)."""
        t = self.thresholds
        return {
            "indicator": self.indicator,
            "params": {k: self.params[k] for k in sorted(self.params)},
            "nodes": self.nodes,
            "dtype": self.dtype,
            "head": self.head,
            "middle": self.middle,
            "panel_size": self.panel_size,
            "top_k": self.top_k,
            "thresholds": {"residual": t.residual, "coverage": t.coverage, "clear": t.clear},
            "estimate_error": self.estimate_error,
            "rule": self.rule,
            "stratified_epsilon": self.stratified_epsilon,
            # only when set, so a checkpoint made before the option existed (a fixed count) still resumes
            **({"tolerance": self.tolerance} if self.tolerance else {}),
        }

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option (checked once, before a daemon starts)."""
        kernels.get_indicator(self.indicator, **self.params)
        kernels.assign_tiers(np.ones(1), head=self.head, middle=self.middle)
        if self.nodes < 1 or self.panel_size < 1 or self.top_k < 0:
            raise ValueError("nodes and panel size must be >= 1 and top-k >= 0")
        if self.rule not in ("auto", "log-graded", "uniform"):  # kernels.attribution.CHOICES, read without JAX
            raise ValueError(f"quadrature rule must be auto, log-graded or uniform, got {self.rule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"the node count's tolerance must be in [0, 1), got {self.tolerance!r}")
        if not 0 <= self.stratified_epsilon < 1:
            raise ValueError(f"the stratified panel's epsilon must be in [0, 1), got {self.stratified_epsilon!r}")


@dataclass
class Arrays:
    """The per-agent arrays behind a message (the message keeps only the top accounts): full-scale phi, tier per
    agent, panel indices and the panel study's phi in each game (by name). For reports and plots; not published."""

    phi: np.ndarray
    tiers: np.ndarray
    panel: np.ndarray
    panel_phi: dict[str, np.ndarray]


@dataclass
class RunOutput:
    """What one run produced: the typed result (None when the run was skipped, with the reason), the alert
    transition if the alert changed state, the new alert state, and the per-agent arrays behind the result."""

    result: RunResult | None
    alert: AlertTransition | None
    alert_active: bool
    skipped: str = ""
    arrays: Arrays | None = None


def top_indices(phi: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``phi``, largest first, ties by index: what a full lexsort gives, from an
    O(n) partition and a sort of the few candidates (the top list of a 10^5-account run in well under 1 ms)."""
    n = len(phi)
    if k <= 0 or n == 0:
        return np.zeros(0, np.int64)
    if k >= n:
        return np.lexsort((np.arange(n), -phi))
    kth = np.partition(phi, n - k)[n - k]  # the k-th largest value: every index at or above it is a candidate
    candidates = np.flatnonzero(phi >= kth)
    return candidates[np.lexsort((candidates, -phi[candidates]))][:k]


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class Studied:
    """The scale study of one snapshot (:class:`kernels.study.Study`: full-scale attribution, tiers, panel, both
    panel games; or, with ``study.nothing``, the full attribution alone, published as that outcome) and the
    smallest stratified panel that would have measured its tier shares (None when not asked for or nothing to
    attribute)."""

    snap: Snapshot
    study: Study
    seconds: float
    stratified: SampleSize | None = None


@dataclass(frozen=True)
class Skipped:
    """A run with nothing to publish, and why (no edges, no active agent, a non-finite figure, visibility that
    could not be had: then there is no snapshot)."""

    snap: Snapshot | None
    reason: str


# The heavy, order-free part of a run (:func:`measure`). What depends on the runs before it (the run number, the
# alert's hysteresis) is added by :func:`finish`, in order.
Measured = Studied | Skipped


def measure(snap: Snapshot, config: AttributionConfig) -> Measured:
    """The kernels on ``snap`` (:func:`kernels.study.scale_study`, as ``skyattr attribute`` runs them): pure, so a
    pipeline runs it in a worker thread while ingest goes on."""
    if snap.graph is None or snap.edges == 0:
        return Skipped(snap, "no attention edges in the window")
    if not np.any(snap.x > 0):
        return Skipped(snap, "no active agents in the window")
    start = time.perf_counter()
    ind = kernels.get_indicator(config.indicator, **config.params)
    st = kernels.scale_study(
        ind, snap.x, snap.graph, snap.visibility, nodes=config.nodes, dtype=config.dtype, head=config.head,
        middle=config.middle, panel_size=config.panel_size, estimate_error=config.estimate_error, rule=config.rule,
        tolerance=config.tolerance or None,
    )  # fmt: skip
    full = st.full
    needed = [full.value, full.baseline, full.residual]
    for game in st.games.values():
        needed += [game.bias.rescale, game.bias.residual]
    if not st.nothing and not all(np.isfinite(v) for v in needed):
        return Skipped(snap, f"non-finite result {tuple(needed)}")
    stratified = None
    if config.stratified_epsilon > 0 and not st.nothing:
        stratified = stratified_panel(full.phi, st.tiers, snap.x > 0, config.stratified_epsilon)
    return Studied(snap, st, time.perf_counter() - start, stratified)


def measure_snapshot(take: Callable[[], Snapshot], config: AttributionConfig) -> Measured:
    """:func:`measure` of the snapshot ``take()`` gives; a follower source that cannot answer for it (the AppView
    unreachable) skips the run with its line rather than run it on visibility it does not have. What both modes'
    runs call."""
    try:
        snap = take()
    except VisibilityUnavailable as exc:
        return Skipped(None, f"no visibility: {exc}")
    return measure(snap, config)


def stratified_panel(phi: np.ndarray, tiers: np.ndarray, active: np.ndarray, epsilon: float) -> SampleSize | None:
    """The smallest stratified random sample of the active accounts whose weighted tier shares are within
    ``epsilon`` of the full-scale ones (:func:`kernels.stratified.smallest_stratified_panel`: the sizes tried stop
    at the first that meets it; a fixed seed, so a run is reproducible and both modes publish the same), or None
    when the active accounts' attribution sums to zero or less (no shares to estimate)."""
    from kernels.stratified import SIZES, smallest_stratified_panel

    phi = np.asarray(phi, np.float64)
    if phi[active].sum() <= 0:
        return None
    return smallest_stratified_panel(phi, tiers, active, list(SIZES), epsilon=epsilon, whole_curve=False)


def published_figures(games: dict[str, kernels.ScaleBias]) -> tuple[ScaleBias, Tiers]:
    """The kernels' scale-bias figures of both panel games (by game name) as every result publishes them (a
    daemon's run and ``skyattr attribute --json`` alike), the undefined ones None; and the tier shares of the full
    population and of the panel in each game."""

    def game(bias: kernels.ScaleBias) -> GameFigures:
        return GameFigures(
            tvd=_finite(bias.tvd),
            rescale=float(bias.rescale),
            residual=float(bias.residual),
            spearman=_finite(bias.spearman),
            top10_panel=_finite(bias.top10_panel),
            panel_sees_nothing=bool(bias.panel_sees_nothing),
        )

    def panel(bias: kernels.ScaleBias) -> TierShares | None:
        return None if bias.panel_sees_nothing else TierShares.of(bias.tiers_panel)

    any_game = games[GAME_NAMES[0]]
    figures = ScaleBias(
        panel_size=int(any_game.panel_size),
        panel_share=_finite(any_game.panel_share),
        top10_full=_finite(any_game.top10_full),
        restricted=game(games["restricted"]),
        same_game=game(games["same_game"]),
    )
    tiers = Tiers(
        full=TierShares.of(any_game.tiers_full),
        restricted=panel(games["restricted"]),
        same_game=panel(games["same_game"]),
    )
    return figures, tiers


def published_stratified(found: SampleSize) -> StratifiedPanel:
    """The kernels' smallest stratified panel as a result publishes it."""
    none = found.size is None
    return StratifiedPanel(
        epsilon=found.epsilon,
        quantile=found.quantile,
        draws=found.draws,
        size=found.size,
        allocation=None if none else TierSizes(**found.allocation),
        weights=None if none else TierWeights(**found.weights),
        error_quantile=found.error_quantile,
        held_out_within=found.held_out_within,
    )


def _criteria(names: Iterable[str]) -> tuple[Criterion, ...]:
    """The kernels' criteria names as the results type them."""
    known: dict[str, Criterion] = {"residual": "residual", "coverage": "coverage"}
    return tuple(known[n] for n in names)


def attribute_snapshot(
    snap: Snapshot, config: AttributionConfig, *, run: int, as_of_us: int, alert_active: bool
) -> RunOutput:
    """Run the attribution on ``snap``. Returns the tiers message, an alert message if the alert state changed,
    and the new alert state. A snapshot with no attention edges or no active agent yields no message."""
    return finish(measure(snap, config), config, run=run, as_of_us=as_of_us, alert_active=alert_active)


def finish(m: Measured, config: AttributionConfig, *, run: int, as_of_us: int, alert_active: bool) -> RunOutput:
    """The run's messages from its measurement: numbered ``run``, the alert decided from the state after the
    previous run (``alert_active``) on the same game's figures (:func:`kernels.bias.decide_alert`). Cheap; called
    in run order."""
    if isinstance(m, Skipped):
        return RunOutput(None, None, alert_active, skipped=m.reason)
    snap, st = m.snap, m.study
    full, tiers = st.full, st.tiers
    ind = kernels.get_indicator(config.indicator, **config.params)
    t = config.thresholds
    thresholds = Thresholds(residual=t.residual, coverage=t.coverage, clear=t.clear)
    window = Window(start_us=snap.window_start_us, end_us=snap.window_end_us)
    common: dict[str, Any] = {  # the fields both outcomes share
        "run": run,
        "indicator": ind.name,
        "params": dict(ind.params.items()),
        "window": window,
        "as_of_us": int(as_of_us),
        "agents": snap.agents,
        "active_agents": int(np.count_nonzero(snap.x)),
        "edges": snap.edges,
        "events": snap.events,
        "value": float(full.value),
        "baseline": float(full.baseline),
        "residual": float(full.residual),
        "nodes": full.nodes,
        "rule": full.rule,
        "dtype": full.dtype,
        "tier_sizes": TierSizes(**{name: int(np.sum(tiers == k)) for k, name in enumerate(kernels.TIER_NAMES)}),
        "runtime_s": m.seconds,
        "device": full.device,
    }
    if st.nothing:  # published as such: no shares, no figures, no error estimate, the alert as it was
        kept = AlertState(active=alert_active, changed=False, thresholds=thresholds)
        result = RunResult(
            **common, tiers=None, scale_bias=None, alert=kept, top=(), outcome="nothing_to_attribute"
        )  # fmt: skip
        return RunOutput(result, None, alert_active)
    biases = {name: game.bias for name, game in st.games.items()}
    decision = kernels.decide_alert(biases["same_game"], t, active=alert_active)
    order = top_indices(full.phi, config.top_k)
    top = [
        {
            "did": snap.dids[i],
            "phi": float(full.phi[i]),
            "share": float(full.phi[i] / full.total) if full.total else 0.0,
            "tier": kernels.TIER_NAMES[int(tiers[i])],
            "visibility": float(snap.visibility[i]),
            "activity": float(snap.x[i]),
        }
        for i in order
    ]
    figures, shares = published_figures(biases)
    state = AlertState(
        active=decision.firing,
        changed=decision.firing != alert_active,
        criteria=_criteria(decision.criteria),
        thresholds=thresholds,
    )
    result = RunResult(
        **common,
        tiers=shares,
        scale_bias=figures,
        alert=state,
        top=tuple(TopAccount(**a) for a in top),
        error_estimate=None if full.error_estimate is None else float(full.error_estimate),
        error_max=None if full.error_max is None else float(full.error_max),
        stratified_panel=None if m.stratified is None else published_stratified(m.stratified),
    )
    alert = None
    if decision.firing != alert_active:
        alert = AlertTransition(
            run=run,
            indicator=ind.name,
            state="firing" if decision.firing else "resolved",
            severity=decision.severity,  # type: ignore[arg-type]
            criteria=_criteria(decision.criteria) if decision.firing else (),
            figures=AlertFigures(
                residual=figures.same_game.residual,
                restricted_residual=figures.restricted.residual,
                panel_share=figures.panel_share,
            ),
            thresholds=thresholds,
            window=window,
            as_of_us=int(as_of_us),
        )
    panel_phi = {name: np.asarray(game.attribution.phi, np.float64) for name, game in st.games.items()}
    arrays = Arrays(np.asarray(full.phi, np.float64), tiers, st.panel, panel_phi)
    return RunOutput(result, alert, decision.firing, arrays=arrays)
