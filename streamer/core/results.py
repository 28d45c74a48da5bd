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

TIERS_SCHEMA = "skyattr.tiers/1"
ALERTS_SCHEMA = "skyattr.alerts/1"
TIER_NAMES = ("head", "middle", "tail")
Topic = Literal["tiers", "alerts"]
Outcome = Literal["attributed", "nothing_to_attribute"]


def _schema(topic: str) -> dict[str, Any]:
    resource = resources.files("streamer") / "schemas" / f"{topic}.schema.json"
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
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
    """Alert thresholds as published: fire above ``tvd`` or ``residual``, resolve below ``clear`` of both."""

    tvd: float
    residual: float
    clear: float

    def as_dict(self) -> dict[str, float]:
        return {"tvd": self.tvd, "residual": self.residual, "clear": self.clear}


@dataclass(frozen=True, slots=True)
class ScaleBias:
    """Full scale against the panel: TVD of tier shares, the panel's share, best rescaling c* and what it leaves
    (r*), Spearman, top-10 concentration. None where a figure is undefined (not finite); ``panel_sees_nothing``
    when the panel's attribution is all zero (no panel shares, so no TVD; r* = 1)."""

    tvd: float | None
    panel_share: float | None
    rescale: float
    residual: float
    spearman: float | None
    top10_full: float | None
    top10_panel: float | None
    panel_size: int
    panel_sees_nothing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "tvd": self.tvd,
            "panel_share": self.panel_share,
            "rescale": self.rescale,
            "residual": self.residual,
            "spearman": self.spearman,
            "top10_full": self.top10_full,
            "top10_panel": self.top10_panel,
            "panel_size": self.panel_size,
            "panel_sees_nothing": self.panel_sees_nothing,
        }


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
        return json.loads(json.dumps(self._message))


@dataclass(frozen=True)
class RunResult(_Sealed):
    """One attribution run (topic ``tiers``). Identity: ``id = "<indicator>@<as_of_us>"``.

    ``outcome`` is ``"attributed"``, or ``"nothing_to_attribute"`` when v(x) − v(0) is at rounding noise: then
    ``full``, ``panel`` and ``scale_bias`` are None, ``top`` is empty and the alert keeps its state. ``panel`` alone
    is None when the panel sees nothing of what the population shows."""

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
    panel: TierShares | None
    scale_bias: ScaleBias | None
    alert_active: bool
    alert_changed: bool
    thresholds: Thresholds
    top: tuple[TopAccount, ...]
    runtime_s: float
    device: str
    outcome: Outcome = "attributed"
    _message: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    @property
    def attributed(self) -> bool:
        return self.outcome == "attributed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(self.params))
        object.__setattr__(self, "tier_sizes", _frozen(self.tier_sizes))
        object.__setattr__(self, "top", tuple(self.top))
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
            "nodes": self.nodes,
            "dtype": self.dtype,
            "tier_sizes": dict(self.tier_sizes),
            "outcome": self.outcome,
            "tiers": None
            if self.full is None
            else {"full": self.full.as_dict(), "panel": None if self.panel is None else self.panel.as_dict()},
            "scale_bias": None if self.scale_bias is None else self.scale_bias.as_dict(),
            "alert": {
                "active": self.alert_active,
                "changed": self.alert_changed,
                "thresholds": self.thresholds.as_dict(),
            },
            "top": [a.as_dict() for a in self.top],
            "runtime_s": self.runtime_s,
            "device": self.device,
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> RunResult:
        validate(cls.topic, message)
        m, a = message, message["alert"]
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
            nodes=m["nodes"],
            dtype=m["dtype"],
            tier_sizes=m["tier_sizes"],
            full=_shares(m["tiers"], "full"),
            panel=_shares(m["tiers"], "panel"),
            scale_bias=None if m["scale_bias"] is None else ScaleBias(**m["scale_bias"]),
            alert_active=a["active"],
            alert_changed=a["changed"],
            thresholds=Thresholds(**a["thresholds"]),
            top=tuple(TopAccount(**t) for t in m["top"]),
            runtime_s=m["runtime_s"],
            device=m["device"],
            outcome=m.get("outcome", "attributed"),
        )


def _shares(tiers: Mapping[str, Any] | None, scale: str) -> TierShares | None:
    shares = None if tiers is None else tiers[scale]
    return None if shares is None else TierShares(**shares)


@dataclass(frozen=True)
class AlertTransition(_Sealed):
    """The scale-bias alert changed state at this run (topic ``alerts``); same identity as the run's result."""

    topic: ClassVar[Topic] = "alerts"

    run: int
    indicator: str
    state: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    tvd: float | None
    residual: float
    panel_share: float | None
    thresholds: Thresholds
    window: Window
    as_of_us: int
    _message: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._seal()

    def _build(self) -> dict[str, Any]:
        return {
            "schema": ALERTS_SCHEMA,
            "id": self.id,
            "run": self.run,
            "indicator": self.indicator,
            "state": self.state,
            "severity": self.severity,
            "figures": {"tvd": self.tvd, "residual": self.residual, "panel_share": self.panel_share},
            "thresholds": self.thresholds.as_dict(),
            "window": self.window.to_message(),
            "as_of_us": self.as_of_us,
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> AlertTransition:
        validate(cls.topic, message)
        m = message
        return cls(
            run=m["run"],
            indicator=m["indicator"],
            state=m["state"],
            severity=m["severity"],
            tvd=m["figures"]["tvd"],
            residual=m["figures"]["residual"],
            panel_share=m["figures"]["panel_share"],
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
