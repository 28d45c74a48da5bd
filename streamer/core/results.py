"""Typed results: what one attribution run produces, nested as its wire message is, validated once.

A :class:`RunResult` (the ``skyattr.tiers`` message) and, when the alert changes state, an
:class:`AlertTransition` (``skyattr.alerts``) are frozen pydantic models built by :func:`streamer.core.attribution.
finish`. The model *is* the message: :meth:`~_Result.to_message` dumps it as JSON, :func:`result_from_message`
reads one back (the results journal after a restart, a results file, a consumer's topic) into the same type, and
the JSON Schemas in ``streamer/schemas/`` are generated from these models (``python -m streamer.core.results``
writes them; a test checks the files are what the models say), so the published schema and the code cannot drift.
Validation is the model's, strict (a number given as text, a float where an integer belongs, NaN or infinity, an
unknown key: each refused, naming the field), and happens when a result is made, so every sink (Kafka, the JSONL
file, Prometheus, the terminal, the report) receives the same already-valid object and reads fields, never keys.

The fields derived from others (``schema``, ``id``, a window's RFC 3339 times, an alert's ``summary``) are filled
when a result is made and checked when one is read: a message whose id is not its indicator and time is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from streamer.core.events import rfc3339

TIERS_SCHEMA = "skyattr.tiers/3"
ALERTS_SCHEMA = "skyattr.alerts/2"
GAME_NAMES = ("restricted", "same_game")  # the panel games every result publishes (kernels.panel.GAMES)
TIER_NAMES = ("head", "middle", "tail")
Topic = Literal["tiers", "alerts"]
Outcome = Literal["attributed", "nothing_to_attribute"]
Criterion = Literal["residual", "coverage"]
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _tuple(value: Any) -> Any:
    """A JSON array read back is a list; the model keeps a tuple (frozen all the way down)."""
    return tuple(value) if isinstance(value, list) else value


Criteria = Annotated[tuple[Criterion, ...], BeforeValidator(_tuple)]
NonNegative = Annotated[float, Field(ge=0)]


class _Part(BaseModel):
    """A part of a message: frozen, strict JSON types, no unknown key, no NaN or infinity."""

    model_config = ConfigDict(
        frozen=True,
        strict=True,
        extra="forbid",
        allow_inf_nan=False,
        json_schema_serialization_defaults_required=True,  # every field is in every message
    )


class Window(_Part):
    """The rolling window a run saw, in event time (µs), with its ends in RFC 3339 (filled from the µs)."""

    start: str = Field(default="", json_schema_extra={"format": "date-time"})
    end: str = Field(default="", json_schema_extra={"format": "date-time"})
    start_us: int
    end_us: int

    @model_validator(mode="after")
    def _times(self) -> Window:
        for name, us in (("start", self.start_us), ("end", self.end_us)):
            _derived(self, name, rfc3339(us))
        return self


class TierShares(_Part):
    head: float
    middle: float
    tail: float

    @classmethod
    def of(cls, shares: Iterable[float]) -> TierShares:
        """From the three shares, head first (as the kernels give them)."""
        head, middle, tail = (float(v) for v in shares)
        return cls(head=head, middle=middle, tail=tail)


class TierSizes(_Part):
    head: int
    middle: int
    tail: int


class Thresholds(_Part):
    """Alert thresholds as published: fire when the same-game r* exceeds ``residual`` or the panel's share of the
    full-scale attribution falls below ``coverage``; resolve once each is within ``clear`` of its allowance."""

    residual: float = Field(ge=0, description="fire when the same-game r* exceeds this")
    coverage: float = Field(
        ge=0, le=1, description="fire when the panel's share of the full-scale attribution is below this"
    )
    clear: float = Field(
        gt=0, le=1, description="resolve once r* <= clear * residual and 1 - panel_share <= clear * (1 - coverage)"
    )


class GameFigures(_Part):
    """The panel study in one game against the full scale; null where a figure is undefined."""

    tvd: NonNegative | None = Field(
        description="total variation distance of the tier shares, full vs this game's panel; null when the panel "
        "sees nothing. Mechanical once the whole panel lies in the head tier (it is then 1 - the full head share): "
        "a figure, never an alert criterion"
    )
    rescale: float = Field(
        description="c* = <a, b> / <b, b>, a = full-scale phi of the panel's accounts, b = this game's panel phi"
    )
    residual: float = Field(ge=0, description="r* = ||a - c* b|| / ||a||: what no rescaling of the panel study removes")
    spearman: float | None
    top10_panel: float | None
    panel_sees_nothing: bool = Field(
        default=False,
        description="the panel's attribution in this game is all zero while the full population's is not: a "
        "finding (r* = 1, no panel shares), not a gap",
    )


class ScaleBias(_Part):
    """Full scale against the panel: what does not depend on the game (the panel's size, its accounts' share of the
    full-scale attribution, the full top-10 concentration) and one :class:`GameFigures` per panel game."""

    panel_size: int = Field(ge=0)
    panel_share: float | None = Field(
        description="the panel's accounts' share of the full-scale attribution (the same in both games): the "
        "alert's coverage figure"
    )
    top10_full: float | None
    restricted: GameFigures
    same_game: GameFigures

    def game(self, name: str) -> GameFigures:
        if name not in GAME_NAMES:
            raise ValueError(f"unknown panel game {name!r}; choose one of {', '.join(GAME_NAMES)}")
        return self.restricted if name == "restricted" else self.same_game

    def games(self) -> tuple[tuple[str, GameFigures], ...]:
        return tuple((name, self.game(name)) for name in GAME_NAMES)


class Tiers(_Part):
    """Tier shares of the full population and of the panel study in each game (null when the panel sees nothing)."""

    full: TierShares
    restricted: TierShares | None = Field(
        description="the panel's tier shares in the restricted game; null when it sees nothing"
    )
    same_game: TierShares | None = Field(
        description="the panel's tier shares in the same game; null when it sees nothing"
    )

    def panel(self, game: str) -> TierShares | None:
        if game not in GAME_NAMES:
            raise ValueError(f"unknown panel game {game!r}; choose one of {', '.join(GAME_NAMES)}")
        return self.restricted if game == "restricted" else self.same_game


class TierWeights(_Part):
    head: NonNegative
    middle: NonNegative
    tail: NonNegative


class StratifiedPanel(_Part):
    """The panel a small study of this window should have used: the smallest stratified random sample of the active
    accounts (strata: the tiers, Neyman allocation) whose weighted tier shares are within ``epsilon`` of the
    full-scale ones in a ``quantile`` of ``draws`` samples (:mod:`kernels.stratified`)."""

    epsilon: float = Field(gt=0, lt=1, description="target: max over tiers of |estimated - full-scale share|")
    quantile: float = Field(gt=0, le=1, description="share of the samples that must meet epsilon")
    draws: int = Field(ge=1, description="samples drawn at each size tried (and again, held out, at the one found)")
    size: int | None = Field(
        ge=1,
        description="accounts in the smallest sample found; null when none of the sizes tried (up to the active "
        "accounts) meets epsilon",
    )
    allocation: TierSizes | None = Field(description="accounts to draw per tier; null when none was found")
    weights: TierWeights | None = Field(
        description="sampling weight per tier (the accounts of its tier each sampled account stands for, N_h / n_h); "
        "null when none was found"
    )
    error_quantile: float | None = Field(
        ge=0,
        description="the quantile of the tier-share error at the size found (at the largest size tried when none "
        "was); null when no size could be tried",
    )
    held_out_within: float | None = Field(
        ge=0,
        le=1,
        description="share of held-out samples of the size found that meet epsilon (the choice is made in-sample); "
        "null when none was found",
    )
    assumes: Literal["exact_phi"] = Field(
        default="exact_phi",
        description="the figures assume each sampled account's full-scale phi is measured exactly: the size is a "
        "lower bound on what a small study needs",
    )


class AlertState(_Part):
    """The scale-bias alert after this run."""

    active: bool
    changed: bool
    criteria: Criteria = Field(
        default=(),
        description="the criteria past their thresholds at this run: residual (same-game r*), coverage (panel share)",
        json_schema_extra={"uniqueItems": True},
    )
    thresholds: Thresholds


class TopAccount(_Part):
    did: str = Field(pattern="^did:")
    phi: float
    share: float
    tier: Literal["head", "middle", "tail"]
    visibility: float
    activity: float


def _derived(model: BaseModel, name: str, want: Any) -> None:
    """Fill a derived field (left at its default when the model was made in code) or check the one a message
    carried."""
    got = getattr(model, name)
    if got in ("", None):
        object.__setattr__(model, name, want)
    elif got != want:
        raise ValueError(f"{name} is {got!r}, but the fields it is derived from give {want!r}")


class _Result(_Part):
    """What both result types share: the identity ``<indicator>@<as_of_us>`` and the wire form."""

    topic: ClassVar[Topic]
    schema_name: ClassVar[str]
    id: str = Field(
        default="",
        pattern="^[^@]+@-?[0-9]+$",
        description="The run's identity: <indicator>@<as_of_us> (its due time in the stream's clock). Unique per "
        "topic: consumers deduplicate on it; it is also the Kafka header skyattr-id.",
    )
    if TYPE_CHECKING:  # fields of both result types, declared by each
        indicator: str
        as_of_us: int

    @model_validator(mode="after")
    def _identity(self) -> _Result:
        _derived(self, "id", f"{self.indicator}@{self.as_of_us}")
        return self

    def to_message(self) -> dict[str, Any]:
        """The JSON message (a fresh dict)."""
        return self.model_dump(mode="json", by_alias=True)

    def but(self, **changes: Any) -> Any:
        """This result with ``changes``, made (and checked) again, its derived fields derived again."""
        fields = {k: v for k, v in self.model_dump().items() if k not in ("schema_", "id", "summary")}
        fields.update(changes)
        return type(self).model_validate(fields)


class RunResult(_Result):
    """One attribution run (topic ``tiers``). Identity: ``id = "<indicator>@<as_of_us>"``.

    ``outcome`` is ``"attributed"``, or ``"nothing_to_attribute"`` when v(x) − v(0) is at rounding noise: then
    ``tiers`` and ``scale_bias`` are None, ``top`` is empty and the alert keeps its state."""

    model_config = ConfigDict(
        title="skyattr.tiers: one attribution run",
        json_schema_extra={
            "description": "Full-scale Aumann–Shapley attribution of a macro indicator over the rolling window, "
            "its tier shares, the visibility-biased panel study of the same window in two games (restricted: the "
            "panel alone on its induced subgraph, as a small study computes it; same_game: the full game with only "
            "the panel active) and the scale-bias figures that compare each with the full scale. Keyed by "
            "indicator."
        },
    )
    topic: ClassVar[Topic] = "tiers"
    schema_name: ClassVar[str] = TIERS_SCHEMA

    schema_: Literal["skyattr.tiers/3"] = Field(default="skyattr.tiers/3", alias="schema")
    run: int = Field(ge=1, description="Run number since the daemon started (or resumed).")
    indicator: str
    params: dict[str, Any]
    window: Window
    as_of_us: int = Field(description="Event time of the snapshot, microseconds since the epoch.")
    agents: int = Field(ge=0)
    active_agents: int = Field(ge=0)
    edges: int = Field(ge=0)
    events: int = Field(ge=0)
    value: float = Field(description="v(x)")
    baseline: float = Field(description="v(0)")
    residual: float = Field(
        ge=0,
        description="completeness gap |sum phi - (v(x) - v(0))| / |v(x) - v(0)|: no error bar (quadrature errors "
        "cancel in the sum); see error_estimate",
    )
    error_estimate: float | None = Field(
        default=None,
        description="relative L2 distance between phi at nodes and at twice the nodes: an estimate of phi's "
        "quadrature error (kernels.attribution.Attribution); null when not computed",
    )
    error_max: float | None = Field(
        default=None, description="the largest per-account |phi_m - phi_2m|, in phi's units; null when not computed"
    )
    nodes: int = Field(ge=1)
    rule: Literal["log-graded", "uniform"] = Field(
        description="the quadrature rule phi was integrated with (the auto setting's choice: kernels.attribution)"
    )
    dtype: Literal["float32", "float64"]
    outcome: Outcome = Field(
        default="attributed",
        description="attributed: the figures describe a phenomenon; nothing_to_attribute: |v(x) - v(0)| is at the "
        "floating-point noise of v (kernels/study.py), so there are no tier shares, no scale-bias figures, no error "
        "estimate and no alert change (tiers and scale_bias are null, top is empty).",
    )
    tier_sizes: TierSizes
    tiers: Tiers | None = Field(
        description="Tier shares of the full population and of the panel study in each game; null when there is "
        "nothing to attribute."
    )
    scale_bias: ScaleBias | None = Field(
        description="Full scale against the panel study, per game; null when there is nothing to attribute."
    )
    stratified_panel: StratifiedPanel | None = Field(
        default=None,
        description="The smallest stratified panel whose weighted tier shares match the full scale within epsilon; "
        "null when there is nothing to attribute or the daemon was told not to look for one (stratified_epsilon 0).",
    )
    alert: AlertState
    top: Annotated[tuple[TopAccount, ...], BeforeValidator(_tuple)]
    runtime_s: float = Field(ge=0)
    device: str

    @property
    def attributed(self) -> bool:
        return self.outcome == "attributed"


class AlertFigures(_Part):
    residual: float = Field(ge=0, description="same-game r*: the figure the alert reads")
    restricted_residual: float = Field(
        ge=0, description="restricted-game r*: published for comparison, decides nothing"
    )
    panel_share: float | None = Field(description="the panel's share of the full-scale attribution (coverage)")


class AlertTransition(_Result):
    """The scale-bias alert changed state at this run (topic ``alerts``); same identity as the run's result.

    ``criteria`` name what is past its threshold (on firing, what fired it); ``figures.residual`` is the same-game
    r* the alert reads, ``figures.restricted_residual`` the restricted game's (published for comparison, it decides
    nothing); ``summary`` says it in one sentence (made from the others)."""

    model_config = ConfigDict(
        title="skyattr.alerts: scale-bias alert transitions",
        json_schema_extra={
            "description": "Sent once when the scale-bias alert starts firing and once when it resolves "
            "(hysteresis), naming the criteria past their thresholds. Keyed by indicator."
        },
    )
    topic: ClassVar[Topic] = "alerts"
    schema_name: ClassVar[str] = ALERTS_SCHEMA

    schema_: Literal["skyattr.alerts/2"] = Field(default="skyattr.alerts/2", alias="schema")
    run: int = Field(ge=1)
    indicator: str
    state: Literal["firing", "resolved"]
    severity: Literal["warning", "critical", "info"]
    criteria: Criteria = Field(
        description="on firing, what fired it: residual (same-game r* above its threshold), coverage (the panel's "
        "share below its threshold); empty on resolving",
        json_schema_extra={"uniqueItems": True},
    )
    summary: str = Field(default="", description="the transition in one sentence, with figures and thresholds")
    figures: AlertFigures
    thresholds: Thresholds
    window: Window
    as_of_us: int

    @model_validator(mode="after")
    def _summary(self) -> AlertTransition:
        _derived(self, "summary", self._say())
        return self

    def _say(self) -> str:
        """What fired (or that everything is back within its allowance), with the figures and thresholds."""
        t, f = self.thresholds, self.figures
        share = "undefined" if f.panel_share is None else f"{f.panel_share:.1%}"
        said = {
            "residual": f"same-game r* {f.residual:.3f} > {t.residual:g}",
            "coverage": f"the panel holds {share} of the full-scale attribution < {t.coverage:.0%}",
        }
        if self.state == "firing":
            return "scale bias: " + "; ".join(said[c] for c in self.criteria)
        return (
            f"resolved: same-game r* {f.residual:.3f} <= {t.residual * t.clear:.3g} and the panel holds {share} "
            f"of the full-scale attribution >= {1 - t.clear * (1 - t.coverage):.0%}"
        )


Result = RunResult | AlertTransition
_TYPES: dict[str, type[RunResult] | type[AlertTransition]] = {"tiers": RunResult, "alerts": AlertTransition}


def result_from_message(topic: str, message: Mapping[str, Any]) -> Result:
    """A message read back (journal, results file, topic) as its typed result; ``ValueError`` naming the first
    field that is wrong, or the version, when it is not one (a results line's own ``topic`` key is ignored)."""
    try:
        kind = _TYPES[topic]
    except KeyError:
        raise ValueError(f"unknown result topic {topic!r} (tiers or alerts)") from None
    message = {k: v for k, v in message.items() if k != "topic"}
    written, current = message.get("schema"), kind.schema_name
    if isinstance(written, str) and written != current and written.split("/")[0] == current.split("/")[0]:
        raise ValueError(
            f"{topic} message is {written}, written by an older skyattr; this one reads {current}: attribute again"
        )
    try:
        return kind.model_validate(message)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "/".join(str(p) for p in err["loc"]) or "(top level)"
        what = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{topic} message does not match its schema at {where}: {what}") from None


def json_schema(kind: type[RunResult] | type[AlertTransition]) -> dict[str, Any]:
    """The published JSON Schema (2020-12) of a result type, generated from the model."""
    schema = kind.model_json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://skyattr.dev/schemas/{kind.schema_name}",
        **schema,
    }


def schema_text(kind: type[RunResult] | type[AlertTransition]) -> str:
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``tiers.schema.json`` and ``alerts.schema.json`` from the models."""
    written = []
    for topic, kind in _TYPES.items():
        path = directory / f"{topic}.schema.json"
        path.write_text(schema_text(kind), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(path)
