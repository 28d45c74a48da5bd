"""Typed results: what one attribution run produces, made once and validated once.

A :class:`RunResult` (the ``skyattr.tiers`` message) and, when the alert changes state, an
:class:`AlertTransition` (``skyattr.alerts``) are frozen dataclasses built by :func:`streamer.core.attribution.
attribute_snapshot`. Their wire form, :meth:`to_message`, is checked against the JSON Schema in
``streamer/schemas/`` when the object is created, so every sink (Kafka, the JSONL file, Prometheus, the terminal,
the report) receives the same already-valid object and reads fields, never string keys. A message read back (the
results journal after a restart, a results file) becomes the same type through :func:`result_from_message`, which
validates it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from streamer.core.events import rfc3339

TIERS_SCHEMA = "skyattr.tiers/2"
ALERTS_SCHEMA = "skyattr.alerts/2"
GAME_NAMES = ("restricted", "same_game")  # the panel games every result publishes (kernels.panel.GAMES)
TIER_NAMES = ("head", "middle", "tail")
Topic = Literal["tiers", "alerts"]
Outcome = Literal["attributed", "nothing_to_attribute"]


def _schema(topic: str) -> dict[str, Any]:
    resource = resources.files("streamer") / "schemas" / f"{topic}.schema.json"
    try:
        schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
        return schema
    except FileNotFoundError:
        raise ValueError(
            f"no JSON Schema for topic {topic!r} (expected streamer/schemas/{topic}.schema.json)"
        ) from None


@cache
def validator(topic: str) -> Draft202012Validator:
    """The validator for ``streamer/schemas/<topic>.schema.json``, loaded once per process: it words the errors."""
    schema = _schema(topic)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _fast_validator(topic: str) -> Any:
    """The same schema compiled by jsonschema-rs: the check every result passes (microseconds instead of the ~1 ms
    of the pure-Python validator, which a replay would pay hundreds of times)."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(_schema(topic), validate_formats=True)


def validate(topic: str, message: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field of ``message`` that breaks its topic's schema."""
    try:
        json.dumps(message, allow_nan=False)
    except ValueError:
        raise ValueError(f"{topic} message carries a non-finite number (NaN or infinity)") from None
    if _fast_validator(topic).is_valid(message):
        return
    current = {"tiers": TIERS_SCHEMA, "alerts": ALERTS_SCHEMA}.get(topic)
    written = message.get("schema")
    if isinstance(written, str) and current and written != current and written.split("/")[0] == current.split("/")[0]:
        raise ValueError(
            f"{topic} message is {written}, written by an older skyattr; this one reads {current} (scale-bias "
            "figures per panel game, the alert on the same-game r* and the panel's coverage): attribute again"
        )
    error = best_match(validator(topic).iter_errors(message))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{topic} message does not match its schema at {where}: {error.message}")
    fast = next(iter(_fast_validator(topic).iter_errors(message)))
    where = "/".join(str(p) for p in fast.instance_path) or "(top level)"
    raise ValueError(f"{topic} message does not match its schema at {where}: {fast.message}")


@dataclass(frozen=True, slots=True)
class Window:
    """The rolling window a run saw, in event time (µs)."""

    start_us: int
    end_us: int

    def to_message(self) -> dict[str, Any]:
        return {
            "start": rfc3339(self.start_us),
            "end": rfc3339(self.end_us),
            "start_us": self.start_us,
            "end_us": self.end_us,
        }


@dataclass(frozen=True, slots=True)
class TierShares:
    head: float
    middle: float
    tail: float

    def as_dict(self) -> dict[str, float]:
        return {"head": self.head, "middle": self.middle, "tail": self.tail}

    def __iter__(self) -> Any:
        return iter((self.head, self.middle, self.tail))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Alert thresholds as published: fire when the same-game r* exceeds ``residual`` or the panel's share of the
    full-scale attribution falls below ``coverage``; resolve once each is within ``clear`` of its allowance."""

    residual: float
    coverage: float
    clear: float

    def as_dict(self) -> dict[str, float]:
        return {"residual": self.residual, "coverage": self.coverage, "clear": self.clear}


@dataclass(frozen=True, slots=True)
class GameFigures:
    """The panel study in one game against the full scale: the panel's tier shares (None when it sees nothing),
    their TVD from the full shares, best rescaling c* and what it leaves (r*), Spearman, the panel's top-10
    concentration. None where a figure is undefined; ``panel_sees_nothing`` when the panel's attribution in this
    game is all zero (no shares, so no TVD; r* = 1)."""

    tiers: TierShares | None
    tvd: float | None
    rescale: float
    residual: float
    spearman: float | None
    top10_panel: float | None
    panel_sees_nothing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "tvd": self.tvd,
            "rescale": self.rescale,
            "residual": self.residual,
            "spearman": self.spearman,
            "top10_panel": self.top10_panel,
            "panel_sees_nothing": self.panel_sees_nothing,
        }

    @classmethod
    def from_message(cls, figures: Mapping[str, Any], tiers: Mapping[str, Any] | None) -> GameFigures:
        return cls(tiers=None if tiers is None else TierShares(**tiers), **figures)


@dataclass(frozen=True, slots=True)
class ScaleBias:
    """Full scale against the panel: what does not depend on the game (the panel's size, its accounts' share of the
    full-scale attribution, the full top-10 concentration) and one :class:`GameFigures` per panel game."""

    panel_size: int
    panel_share: float | None
    top10_full: float | None
    restricted: GameFigures
    same_game: GameFigures

    def game(self, name: str) -> GameFigures:
        if name not in GAME_NAMES:
            raise ValueError(f"unknown panel game {name!r}; choose one of {', '.join(GAME_NAMES)}")
        return self.restricted if name == "restricted" else self.same_game

    def games(self) -> tuple[tuple[str, GameFigures], ...]:
        return tuple((name, self.game(name)) for name in GAME_NAMES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "panel_size": self.panel_size,
            "panel_share": self.panel_share,
            "top10_full": self.top10_full,
            **{name: g.as_dict() for name, g in self.games()},
        }


def tiers_message(full: TierShares | None, scale_bias: ScaleBias | None) -> dict[str, Any] | None:
    """The ``tiers`` field of a result: the full population's shares and the panel's in each game (None when there
    is nothing to attribute)."""
    if full is None or scale_bias is None:
        return None
    panels = {name: None if g.tiers is None else g.tiers.as_dict() for name, g in scale_bias.games()}
    return {"full": full.as_dict(), **panels}


@dataclass(frozen=True, slots=True)
class TopAccount:
    did: str
    phi: float
    share: float
    tier: str
    visibility: float
    activity: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "phi": self.phi,
            "share": self.share,
            "tier": self.tier,
            "visibility": self.visibility,
            "activity": self.activity,
        }


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


class _Sealed:
    """What both result types share: the identity ``<indicator>@<as_of_us>``, and the wire form built and
    validated once, when the object is made (``_seal``, from ``__post_init__``)."""

    topic: ClassVar[Topic]
    indicator: str
    as_of_us: int
    _message: Mapping[str, Any]

    @property
    def id(self) -> str:
        return f"{self.indicator}@{int(self.as_of_us)}"

    def _build(self) -> dict[str, Any]:
        raise NotImplementedError

    def _seal(self) -> None:
        message = self._build()
        validate(self.topic, message)
        object.__setattr__(self, "_message", message)

    def to_message(self) -> dict[str, Any]:
        """The JSON message (a fresh copy of what was validated at creation)."""
        message: dict[str, Any] = json.loads(json.dumps(self._message))
        return message


@dataclass(frozen=True)
class RunResult(_Sealed):
    """One attribution run (topic ``tiers``). Identity: ``id = "<indicator>@<as_of_us>"``.

    ``outcome`` is ``"attributed"``, or ``"nothing_to_attribute"`` when v(x) − v(0) is at rounding noise: then
    ``full`` and ``scale_bias`` are None, ``top`` is empty and the alert keeps its state. ``error_estimate`` and
    ``error_max`` are the full attribution's quadrature error estimate (None when not computed).
    ``alert_criteria`` are the criteria past their thresholds at this run (:data:`kernels.bias.CRITERIA`)."""

    topic: ClassVar[Topic] = "tiers"

    run: int
    indicator: str
    params: Mapping[str, Any]
    window: Window
    as_of_us: int
    agents: int
    active_agents: int
    edges: int
    events: int
    value: float
    baseline: float
    residual: float
    nodes: int
    dtype: str
    tier_sizes: Mapping[str, int]
    full: TierShares | None
    scale_bias: ScaleBias | None
    alert_active: bool
    alert_changed: bool
    thresholds: Thresholds
    top: tuple[TopAccount, ...]
    runtime_s: float
    device: str
    outcome: Outcome = "attributed"
    error_estimate: float | None = None
    error_max: float | None = None
    alert_criteria: tuple[str, ...] = ()
    rule: str = "log-graded"
    _message: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    @property
    def attributed(self) -> bool:
        return self.outcome == "attributed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(self.params))
        object.__setattr__(self, "tier_sizes", _frozen(self.tier_sizes))
        object.__setattr__(self, "top", tuple(self.top))
        object.__setattr__(self, "alert_criteria", tuple(self.alert_criteria))
        self._seal()

    def _build(self) -> dict[str, Any]:
        return {
            "schema": TIERS_SCHEMA,
            "id": self.id,
            "run": self.run,
            "indicator": self.indicator,
            "params": dict(self.params),
            "window": self.window.to_message(),
            "as_of_us": self.as_of_us,
            "agents": self.agents,
            "active_agents": self.active_agents,
            "edges": self.edges,
            "events": self.events,
            "value": self.value,
            "baseline": self.baseline,
            "residual": self.residual,
            "error_estimate": self.error_estimate,
            "error_max": self.error_max,
            "nodes": self.nodes,
            "rule": self.rule,
            "dtype": self.dtype,
            "tier_sizes": dict(self.tier_sizes),
            "outcome": self.outcome,
            "tiers": self._tiers(),
            "scale_bias": None if self.scale_bias is None else self.scale_bias.as_dict(),
            "alert": {
                "active": self.alert_active,
                "changed": self.alert_changed,
                "criteria": list(self.alert_criteria),
                "thresholds": self.thresholds.as_dict(),
            },
            "top": [a.as_dict() for a in self.top],
            "runtime_s": self.runtime_s,
            "device": self.device,
        }

    def _tiers(self) -> dict[str, Any] | None:
        return tiers_message(self.full, self.scale_bias)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> RunResult:
        validate(cls.topic, message)
        m, a = message, message["alert"]
        tiers, sb = m["tiers"], m["scale_bias"]
        return cls(
            run=m["run"],
            indicator=m["indicator"],
            params=m["params"],
            window=Window(m["window"]["start_us"], m["window"]["end_us"]),
            as_of_us=m["as_of_us"],
            agents=m["agents"],
            active_agents=m["active_agents"],
            edges=m["edges"],
            events=m["events"],
            value=m["value"],
            baseline=m["baseline"],
            residual=m["residual"],
            error_estimate=m["error_estimate"],
            error_max=m["error_max"],
            nodes=m["nodes"],
            rule=m["rule"],
            dtype=m["dtype"],
            tier_sizes=m["tier_sizes"],
            full=None if tiers is None else TierShares(**tiers["full"]),
            scale_bias=None if sb is None else _scale_bias(sb, tiers),
            alert_active=a["active"],
            alert_changed=a["changed"],
            alert_criteria=tuple(a["criteria"]),
            thresholds=Thresholds(**a["thresholds"]),
            top=tuple(TopAccount(**t) for t in m["top"]),
            runtime_s=m["runtime_s"],
            device=m["device"],
            outcome=m["outcome"],
        )


def _scale_bias(sb: Mapping[str, Any], tiers: Mapping[str, Any]) -> ScaleBias:
    games = {name: GameFigures.from_message(sb[name], tiers[name]) for name in GAME_NAMES}
    return ScaleBias(sb["panel_size"], sb["panel_share"], sb["top10_full"], **games)


@dataclass(frozen=True)
class AlertTransition(_Sealed):
    """The scale-bias alert changed state at this run (topic ``alerts``); same identity as the run's result.

    ``criteria`` name what is past its threshold (on firing, what fired it); ``residual`` is the same-game r* the
    alert reads, ``restricted_residual`` the restricted game's (published for comparison, it decides nothing);
    ``summary`` says it in one sentence."""

    topic: ClassVar[Topic] = "alerts"

    run: int
    indicator: str
    state: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    criteria: tuple[str, ...]
    residual: float
    restricted_residual: float
    panel_share: float | None
    thresholds: Thresholds
    window: Window
    as_of_us: int
    _message: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        self._seal()

    @property
    def summary(self) -> str:
        """What fired (or that everything is back within its allowance), with the figures and thresholds."""
        t = self.thresholds
        share = "undefined" if self.panel_share is None else f"{self.panel_share:.1%}"
        said = {
            "residual": f"same-game r* {self.residual:.3f} > {t.residual:g}",
            "coverage": f"the panel holds {share} of the full-scale attribution < {t.coverage:.0%}",
        }
        if self.state == "firing":
            return "scale bias: " + "; ".join(said[c] for c in self.criteria)
        return (
            f"resolved: same-game r* {self.residual:.3f} <= {t.residual * t.clear:.3g} and the panel holds {share} "
            f"of the full-scale attribution >= {1 - t.clear * (1 - t.coverage):.0%}"
        )

    def _build(self) -> dict[str, Any]:
        return {
            "schema": ALERTS_SCHEMA,
            "id": self.id,
            "run": self.run,
            "indicator": self.indicator,
            "state": self.state,
            "severity": self.severity,
            "criteria": list(self.criteria),
            "summary": self.summary,
            "figures": {
                "residual": self.residual,
                "restricted_residual": self.restricted_residual,
                "panel_share": self.panel_share,
            },
            "thresholds": self.thresholds.as_dict(),
            "window": self.window.to_message(),
            "as_of_us": self.as_of_us,
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> AlertTransition:
        validate(cls.topic, message)
        m, f = message, message["figures"]
        return cls(
            run=m["run"],
            indicator=m["indicator"],
            state=m["state"],
            severity=m["severity"],
            criteria=tuple(m["criteria"]),
            residual=f["residual"],
            restricted_residual=f["restricted_residual"],
            panel_share=f["panel_share"],
            thresholds=Thresholds(**m["thresholds"]),
            window=Window(m["window"]["start_us"], m["window"]["end_us"]),
            as_of_us=m["as_of_us"],
        )


Result = RunResult | AlertTransition
_TYPES: dict[str, type[RunResult] | type[AlertTransition]] = {"tiers": RunResult, "alerts": AlertTransition}


def result_from_message(topic: str, message: Mapping[str, Any]) -> Result:
    """A message read back (journal, results file) as its typed result; ``ValueError`` if it is not one."""
    try:
        kind = _TYPES[topic]
    except KeyError:
        raise ValueError(f"unknown result topic {topic!r} (tiers or alerts)") from None
    return kind.from_message({k: v for k, v in message.items() if k != "topic"})
