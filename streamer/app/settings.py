"""Configuration of every command: defaults, then a YAML file, then ``SKYATTR_*`` environment variables, then flags.

Every option is a field of :class:`Settings`, a pydantic-settings ``BaseSettings``, with its description (the
README's configuration table and the commands' generated flags, :mod:`streamer.app.flags`, come from these). The
layering is pydantic-settings' own: three sources, highest priority first, flags (the init kwargs; a flag left
unset is None and ignored), the environment (``SKYATTR_<FIELD>``; JSON or YAML flow style for a mapping) and the
``--config`` YAML file, then the field defaults, which come from :mod:`kernels.defaults` where the kernels share
them. An invalid value anywhere gives one :class:`ConfigError` line naming the option and where it came from; the
commands turn that into exit status 2.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

import kernels
from kernels import defaults
from streamer.app.role_settings import (
    SECTIONS,
    TEN_YEARS_S,
    AttributorSettings,
    IngestSettings,
    TopicSettings,
    WorkerSettings,
    no_bool_for_number,
    section_flag,
)
from streamer.core.attribution import AttributionConfig
from streamer.core.followers import Followers, load_followers
from streamer.core.state import StateConfig
from streamer.sources.endpoints import DEFAULT_JETSTREAM, DEFAULT_JETSTREAM2, DEFAULT_RELAY, JETSTREAM_PATH
from streamer.sources.firehose import subscribe_url

ENV_PREFIX = "SKYATTR_"
DEFAULT_METRICS_PORT = 9464
DEFAULT_METRICS_HOST = "127.0.0.1"
# Sanity bounds: beyond them a value is a typo or hostile, and would overflow the microsecond clocks downstream.
TEN_YEARS_H = TEN_YEARS_S / 3600
ONE_SECOND_H = 1 / 3600
MAX_BUCKETS = 10_000
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the configuration."""


_UNITS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def duration_s(text: str) -> float:
    """Seconds of a duration written ``14d``, ``36h``, ``90m`` or ``30s``; ``ValueError`` for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (a positive number and d, h, m or s, e.g. 14d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Settings(BaseSettings):
    """All options. Field names are the YAML keys; flags are --field-name; env vars SKYATTR_FIELD_NAME.

    Build it with :func:`load_settings`, which names the YAML file and the environment and turns a validation
    error into one :class:`ConfigError` line; ``Settings(**flags)`` alone reads ``os.environ`` and no file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True, env_nested_delimiter="__"
    )

    relay: str = Field(
        DEFAULT_RELAY, description="Relay for `run` and `record` (subscribeRepos websocket base URL, or the full URL)."
    )
    source: Literal["relay", "jetstream", "jetstream2"] = Field(
        "relay",
        description="Live source of `run`: the relay's firehose, a Jetstream v1 server (--jetstream-url) or a "
        "Jetstream v2 one (--jetstream2-url).",
    )
    jetstream_url: str = Field(
        DEFAULT_JETSTREAM + JETSTREAM_PATH,
        description="Jetstream subscribe URL for `run --source jetstream`.",
    )
    jetstream_collections: list[str] = Field(
        default_factory=list,
        description="Jetstream wantedCollections (NSIDs or `prefix.*`; empty: all). JSON list in the env var.",
    )
    jetstream_compress: bool = Field(False, description="Ask Jetstream for zstd-compressed messages.")
    jetstream2_url: str = Field(
        DEFAULT_JETSTREAM2,
        description="Jetstream v2 server for `run --source jetstream2` (its `jetstream_collections` and "
        "`jetstream_compress` apply too: v2's `collections` and dict-zstd frames).",
    )
    backfill: str | None = Field(
        None,
        description="`run --source jetstream2`: fill this much of the past from the Jetstream v2 archive first "
        "(14d, 36h, 90m; its runs in event time), then go live with no gap (needs an archive API key).",
    )
    backfill_only: bool = Field(
        False,
        description="With --backfill: end at the archive's sealed tip instead of going live (the window replayed: "
        "its runs in event time and a last one at the tip, then exit).",
    )
    jetstream2_api_key: SecretStr | None = Field(
        None, description="Jetstream v2 archive API key (for --backfill and resuming past the live lookback)."
    )
    jetstream2_api_key_file: Path | None = Field(
        None, description="File holding the Jetstream v2 archive API key (a mounted Secret; never logged)."
    )
    jetstream2_archive_url: str | None = Field(
        None, description="HTTP origin of the Jetstream v2 archive when it is not the server's own."
    )
    jetstream2_kinds: list[str] = Field(
        default_factory=list,
        description="Jetstream v2 `kinds` filter: commit, identity, account, sync (empty: all). JSON list in env.",
    )
    interval: float = Field(
        defaults.INTERVAL_S,
        ge=0.001,
        le=TEN_YEARS_S,
        allow_inf_nan=False,
        description="Seconds between attribution runs (event time in replay; 0.001 s to 10 years).",
    )
    indicator: str = Field(defaults.DEFAULT_INDICATOR, description="Macro indicator (see `skyattr indicators`).")
    indicator_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Indicator parameters, e.g. {kappa: 2, theta: 3} (in a flag or env var: JSON or that YAML form).",
    )
    nodes: int = Field(
        defaults.NODES,
        ge=1,
        le=1024,
        description="Gauss–Legendre quadrature nodes (with `tolerance`: the first count).",
    )
    tolerance: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Error-driven node count: from `nodes`, double (up to 256) until each account's estimated error is "
        "within this share of the whole attribution, e.g. 1e-4 from 8 nodes (0: always `nodes`).",
    )
    dtype: Literal["float32", "float64"] = Field(defaults.DTYPE, description="Floating point precision of the kernels.")
    compilation_cache: str = Field(
        "auto",
        description="Directory that keeps compiled kernels between runs, so a restart or the next replay does not "
        "recompile: `auto` is $XDG_CACHE_HOME/skyattr/jax (~/.cache/skyattr/jax), `off` compiles in every process.",
    )
    head: float = Field(
        defaults.HEAD, gt=0, le=1, allow_inf_nan=False, description="Head tier: top fraction of accounts by visibility."
    )
    middle: float = Field(
        defaults.MIDDLE, ge=0, le=1, allow_inf_nan=False, description="Middle tier: the next fraction by visibility."
    )
    panel_size: int = Field(
        defaults.PANEL_SIZE, ge=1, le=10_000_000, description="Accounts in the visibility-biased panel study."
    )
    top_k: int = Field(defaults.TOP_K, ge=0, le=1000, description="Top accounts listed in each result.")
    tau_res: float = Field(
        defaults.TAU_RES,
        ge=0,
        allow_inf_nan=False,
        description="Alert when the same-game rescaling residual r* exceeds this.",
    )
    tau_coverage: float = Field(
        defaults.TAU_COVERAGE,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Alert when the panel holds less than this share of the full-scale attribution.",
    )
    alert_clear: float = Field(
        defaults.ALERT_CLEAR,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="An alert resolves once each figure is within this fraction of its threshold's allowance.",
    )
    error_estimate: bool = Field(
        True,
        description="Estimate each run's quadrature error (phi again at twice the nodes: about 3x the kernel time; "
        "always with the `auto` rule).",
    )
    stratified_epsilon: float = Field(
        defaults.STRATIFIED_EPSILON,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Each run reports the smallest stratified panel whose weighted tier shares are within this of the "
        "full scale (0: none).",
    )
    quadrature: Literal["auto", "log-graded", "uniform"] = Field(
        "auto",
        description="Quadrature rule: `auto` takes log-graded only where its error estimate is under a quarter of "
        "plain Gauss–Legendre's (`uniform`), so never a worse one (about 6x the kernel time of one fixed rule).",
    )
    bucket_hours: float = Field(
        StateConfig.bucket_hours,  # the window's defaults are the state's own
        ge=ONE_SECOND_H,
        le=TEN_YEARS_H,
        allow_inf_nan=False,
        description="Width of one window bucket, hours of event time (at least 1 s; the window at most 10 years).",
    )
    buckets: int = Field(StateConfig.buckets, ge=1, le=MAX_BUCKETS, description="Buckets in the rolling window.")
    edge_budget: int = Field(
        StateConfig.edge_budget, ge=1, le=10**12, description="Most attention edges held in the window."
    )
    record_budget: int = Field(
        StateConfig.record_budget,
        ge=0,
        le=10**12,
        description="Most records held for deletes to take back (17 bytes each; the oldest go first; 0: none).",
    )
    max_future_skew: float = Field(
        StateConfig.max_future_skew_s,
        ge=0,
        le=TEN_YEARS_H * 3600,
        allow_inf_nan=False,
        description="Seconds an event may run ahead of the stream's own front (and, live, of the receive clock) "
        "before it is refused as future_time (at most one bucket).",
    )
    followers: Path | None = Field(
        None, description="CSV or Parquet `did,followers` for visibility (else distinct attenders)."
    )
    appview: str | None = Field(
        None,
        description="AppView base URL (e.g. https://public.api.bsky.app): visibility from its follower counts "
        "(getProfiles) for the accounts within reach of the head and middle tiers or the panel, 0 for the others; "
        "instead of --followers.",
    )
    appview_cache: Path = Field(
        Path("~/.cache/skyattr/appview"),
        description="Directory where AppView follower counts are kept (asked again after a week; resumable).",
    )
    checkpoint_dir: Path | None = Field(None, description="Directory for checkpoints; resume from it on start.")
    checkpoint_every: float = Field(
        60.0, ge=0.001, le=TEN_YEARS_S, allow_inf_nan=False, description="Seconds (wall clock) between checkpoints."
    )
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; enables the Kafka publisher.")
    kafka_topic_tiers: str = Field("skyattr.tiers", description="Topic for attribution results.")
    kafka_topic_alerts: str = Field("skyattr.alerts", description="Topic for scale-bias alert transitions.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (SASL_SSL with the SASL options below)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Kafka SASL mechanism."
    )
    kafka_sasl_username: str | None = Field(None, description="Kafka SASL user (from a Secret in Kubernetes).")
    kafka_sasl_password: SecretStr | None = Field(None, description="Kafka SASL password (never logged).")
    kafka_connect_timeout: float = Field(
        120.0,
        ge=0,
        le=TEN_YEARS_S,
        allow_inf_nan=False,
        description="Seconds the distributed roles try to reach a Kafka broker never reached yet before they exit 2 "
        "(a wrong address); once reached, they wait out any outage, unready (0: wait for ever).",
    )
    kafka_shutdown_timeout: float = Field(
        20.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds to flush Kafka at shutdown; what is left waits in the checkpoint's results journal.",
    )
    kafka_buffer: int = Field(
        10_000, ge=1, le=100_000_000, description="Results buffered while the broker is away (oldest dropped)."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description=f"Port of /metrics, /healthz, /readyz (run: {DEFAULT_METRICS_PORT}; replay: off).",
    )
    metrics_host: str = Field(
        DEFAULT_METRICS_HOST,
        description="Address /metrics binds to: loopback by default; `0.0.0.0` (the container image) for all.",
    )
    out: Path | None = Field(None, description="Append results as JSON Lines to this file (`-` for stdout).")
    speed: float | None = Field(
        None,
        ge=1e-3,
        le=1e9,
        allow_inf_nan=False,
        description=(
            "Replay (and `relay` serves, `ingest --to-kafka` writes an archive) at this multiple of event time, "
            "0.001 to 1e9 (default: full speed)."
        ),
    )
    queue_size: int = Field(
        10_000, ge=1, le=10_000_000, description="Frames buffered between the websocket and ingest (run)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    # the distributed roles' sections (streamer.app.role_settings): YAML mappings, SKYATTR_<SECTION>__<FIELD>
    topics: TopicSettings = Field(default_factory=TopicSettings, description="Kafka topics between the roles.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="`skyattr ingest --to-kafka`.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="`skyattr worker`.")
    attributor: AttributorSettings = Field(default_factory=AttributorSettings, description="`skyattr attributor`.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(**flags)`` alone: flags > ``os.environ``; no .env file, no secrets directory, no YAML file
        (:func:`load_settings` hands its own sources, the file among them, to the one instance it builds)."""
        return init_settings, _Environment(settings_cls, None)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads ``yes``/``true`` as booleans, which pydantic would quietly take as 1 for a number."""
        return no_bool_for_number(value, cls.model_fields[info.field_name].annotation if info.field_name else None)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        """``debug`` is ``DEBUG``: log levels are case-insensitive wherever operators meet them."""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("indicator")
    @classmethod
    def _known_indicator(cls, value: str) -> str:
        if value not in kernels.available_indicators():
            known = ", ".join(kernels.available_indicators())
            raise ValueError(f"unknown indicator {_shown(value)}; known: {known}")
        return value

    @field_validator("relay")
    @classmethod
    def _websocket(cls, value: str) -> str:
        """A ws(s):// (or http(s)://) URL with a host, refused here rather than at the first connection."""
        try:
            subscribe_url(value)
        except ValueError:
            raise ValueError(f"must be a websocket URL (wss://host), got {_shown(value)}") from None
        return value

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, value: str) -> str:
        """An IP address or a host name, so a typo fails here rather than as a bind error deep in start-up."""
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if len(value) > 253 or not HOSTNAME.fullmatch(value):
                raise ValueError(f"must be an IP address or a host name, got {_shown(value)}") from None
        return value

    @model_validator(mode="after")
    def _window_bounded(self) -> Settings:
        window_h = self.bucket_hours * self.buckets
        if window_h > TEN_YEARS_H:
            raise ValueError(
                f"the window bucket_hours x buckets = {self.bucket_hours:g} x {self.buckets} = {window_h:g} h is "
                f"longer than 10 years ({TEN_YEARS_H:g} h)"
            )
        return self

    @field_validator("backfill")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_s(value)
        return value

    @model_validator(mode="after")
    def _backfill_needs(self) -> Settings:
        if self.backfill is not None and self.source != "jetstream2":
            raise ValueError("--backfill reads the Jetstream v2 archive: give --source jetstream2")
        if self.backfill_only and self.backfill is None:
            raise ValueError("--backfill-only ends a backfill at the archive's tip: give --backfill too")
        if self.jetstream2_api_key is not None and self.jetstream2_api_key_file is not None:
            raise ValueError("give jetstream2_api_key or jetstream2_api_key_file, not both")
        return self

    def archive_key(self) -> str | None:
        """The Jetstream v2 archive API key, from the setting or its file (``ValueError`` naming an unreadable
        or empty file); None when neither is given."""
        if self.jetstream2_api_key is not None:
            return self.jetstream2_api_key.get_secret_value() or None
        if self.jetstream2_api_key_file is None:
            return None
        try:
            key = self.jetstream2_api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read jetstream2_api_key_file {self.jetstream2_api_key_file}: {exc}") from None
        if not key:
            raise ValueError(f"jetstream2_api_key_file {self.jetstream2_api_key_file} is empty")
        return key

    @field_validator("jetstream2_kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if k not in ("commit", "identity", "account", "sync")]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a Jetstream v2 kind (commit, identity, account, sync)")
        return value

    @model_validator(mode="after")
    def _one_visibility(self) -> Settings:
        if self.followers is not None and self.appview is not None:
            raise ValueError("give --followers or --appview, not both: each sets every account's visibility")
        return self

    def follower_source(self) -> Followers | None:
        """Where visibility comes from: the ``--followers`` table (read now: ``ValueError`` naming a bad row), the
        AppView asked at each snapshot, or None (distinct attenders)."""
        if self.followers is not None:
            return load_followers(self.followers)
        if self.appview is not None:
            from streamer.sources.appview import AppViewFollowers, AppViewVisibility

            fetch = AppViewFollowers(self.appview_cache.expanduser(), self.appview.rstrip("/"))
            return AppViewVisibility(fetch, head=self.head, middle=self.middle, panel_size=self.panel_size)
        return None

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_mechanism, "
                "kafka_sasl_username and kafka_sasl_password"
            )
        return self

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka connection options for the configured protocol."""
        out: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            out["ssl_context"] = ssl.create_default_context()
        if self.kafka_security_protocol.startswith("SASL"):
            out["sasl_mechanism"] = self.kafka_sasl_mechanism
            out["sasl_plain_username"] = self.kafka_sasl_username
            password = self.kafka_sasl_password
            out["sasl_plain_password"] = password.get_secret_value() if password is not None else None
        return out

    def attribution(self) -> AttributionConfig:
        return AttributionConfig(
            indicator=self.indicator,
            params=dict(self.indicator_params),
            nodes=self.nodes,
            dtype=self.dtype,
            head=self.head,
            middle=self.middle,
            panel_size=self.panel_size,
            top_k=self.top_k,
            thresholds=kernels.AlertThresholds(
                residual=self.tau_res, coverage=self.tau_coverage, clear=self.alert_clear
            ),
            estimate_error=self.error_estimate,
            rule=self.quadrature,
            stratified_epsilon=self.stratified_epsilon,
            tolerance=self.tolerance,
        )

    @property
    def compilation_cache_dir(self) -> Path | None:
        """The compilation cache directory: None when it is `off`."""
        value = self.compilation_cache.strip()
        if value.lower() == "auto":
            return kernels.default_cache_dir()
        return None if value.lower() in ("off", "none", "") else Path(value).expanduser()

    def state(self) -> StateConfig:
        return StateConfig(
            bucket_hours=self.bucket_hours,
            buckets=self.buckets,
            edge_budget=self.edge_budget,
            max_future_skew_s=self.max_future_skew,
            record_budget=self.record_budget,
        )


DICT_FIELDS = {name for name, f in Settings.model_fields.items() if f.annotation == dict[str, Any]}
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
# The rule an option's bounds belong to, added to a bounds error: the same words the kernels use for it.
_TIERS_RULE = "tier fractions must satisfy 0 < head, 0 <= middle, head + middle <= 1"
RULES = {
    "head": _TIERS_RULE,
    "middle": _TIERS_RULE,
    "tau_res": "the residual threshold must be a finite number >= 0",
    "tau_coverage": "the coverage threshold is a share of the attribution, in [0, 1]",
    "alert_clear": "the alert clear ratio must be in (0, 1]",
}


def _shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a value, shortened: an error line must stay one readable line whatever was typed or sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


# Options that existed once, with what replaced them: named in the error instead of "unknown option".
RETIRED = {
    "tau_tvd": "retired: the tier-share TVD no longer decides the alert (it is 1 - the full head share once the "
    "panel lies in the head tier); the alert reads tau_res (same-game r*) and tau_coverage (the panel's share)",
}


def _message(err: Any) -> str:
    """pydantic's message for one error, with bounds and the offending value spelled out."""
    kind, given = err["type"], err.get("input")
    if kind in BOUNDS:
        (limit,) = err["ctx"].values()
        return f"must be {BOUNDS[kind]} {_number(limit)}, got {_shown(given)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_shown(given)}"
    if kind == "extra_forbidden" and err["loc"] and err["loc"][0] in RETIRED:
        return RETIRED[err["loc"][0]]
    if kind == "extra_forbidden":
        return "unknown option (the options are the README's configuration table, or --help)"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind in ("float_parsing", "int_parsing", "int_from_float", "literal_error", "bool_parsing"):
        message += f", got {_shown(given)}"
    return message


# ------------------------------------------------------------------------------------------------ sources


class _Traced(PydanticBaseSettingsSource):
    """A source that records which options it supplied (sources are called highest priority first, so the first
    to name an option is where its value came from). A mapping value is handed on read-only: pydantic-settings
    deep-merges dicts across sources, but an option's value is the one layer's, whole (YAML ``{kappa: 2}`` under
    a flag ``{theta: 3}`` is ``{theta: 3}``, not both)."""

    def __init__(
        self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource, where: str, origin: dict[str, str]
    ) -> None:
        super().__init__(settings_cls)
        self.source, self.where, self.origin = source, where, origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ asks the wrapped source

    def __call__(self) -> dict[str, Any]:
        try:
            data = self.source()
        except SettingsError as exc:  # pydantic-settings wraps a source's ValueError; ours is already the line
            if isinstance(exc.__cause__, ConfigError):
                raise exc.__cause__ from None
            raise
        for key in data:
            self.origin.setdefault(key, self.where)
        return {k: MappingProxyType(v) if k in DICT_FIELDS and isinstance(v, dict) else v for k, v in data.items()}


class _Environment(EnvSettingsSource):
    """``SKYATTR_*`` variables of the given mapping (``os.environ`` when None); a mapping option is parsed by
    :func:`parse_json_object`, naming the variable in its error; another complex one (a list) as JSON."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        super().__init__(settings_cls)  # reads os.environ
        if environ is not None:  # a given mapping instead, keyed as the stock source keys os.environ
            self.env_vars = {
                (k if self.case_sensitive else k.lower()): v
                for k, v in environ.items()
                if not (self.env_ignore_empty and v == "")
            }

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name in DICT_FIELDS:
            return parse_json_object(value, ENV_PREFIX + field_name.upper())
        where = ENV_PREFIX + field_name.upper()
        try:
            return super().decode_complex_value(field_name, field, value)
        except RecursionError:
            raise ConfigError(f"invalid config: {where} must be JSON (nested too deeply)") from None
        except ValueError as exc:
            raise ConfigError(f"invalid config: {where} must be JSON ({exc})") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    """The ``--config`` file as a mapping (keys may use ``-`` for ``_``); it must exist, be YAML and hold a
    mapping, else one ConfigError naming it. Handed to pydantic-settings as any other mapping source."""
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e3`` and ``2.5e-3`` as numbers the way JSON and YAML 1.2 do (YAML 1.1 wants
    a dot and a signed exponent, and would hand ``{kappa: 1e3}`` on as the string ``'1e3'``), and refusing a key
    given twice in one mapping (PyYAML keeps the last in silence; YAML 1.2 says keys are unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """A mapping option given as text (env var or flag): strict JSON, or YAML flow style as the config file takes
    it (``{kappa: 2, theta: 3}``). Anything else, a parse error, a list or a scalar, deep nesting included, is one
    ConfigError naming ``where``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _not_a_mapping(where, "nested too deeply") from None
    except ValueError as exc:
        not_json = str(exc)
        try:
            value = yaml.load(text, Loader=_Loader)
        except RecursionError:
            raise _not_a_mapping(where, "nested too deeply") from None
        except yaml.YAMLError as yexc:
            problem = getattr(yexc, "problem", None) or " ".join(str(yexc).split())
            raise _not_a_mapping(where, f"not JSON: {not_json}; not YAML: {problem}") from None
    if not isinstance(value, dict):
        raise _not_a_mapping(where, "empty" if not text.strip() else f"got {_shown(value)}")
    return value


def _not_a_mapping(where: str, detail: str) -> ConfigError:
    return ConfigError(
        f"invalid config: {where} must be a JSON object ({detail}) or a YAML flow mapping like {{kappa: 2}}"
    )


def flag_name(name: str) -> str:
    """``--bucket-hours`` for ``bucket_hours``: the flag of a top-level option."""
    return "--" + name.replace("_", "-")


def _check_indicator_params(params: Mapping[str, Any], source: str) -> None:
    """A parameter given as text that is no number, named before the indicator sees it (an indicator's own check
    may not catch it, and the kernels then fail deep inside numpy). Numeric text, booleans, null and lists are left
    to the indicator's check, which names the indicator and what the parameter must be."""
    for key, value in params.items():
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                raise ConfigError(
                    f"invalid config: indicator_params: {str(key)[:40]} must be a number, got {_shown(value)} "
                    f"(from {source})"
                ) from None


def load_settings(
    config_file: Path | None = None, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Merge defaults < YAML file < environment (``os.environ`` when None) < flags (flags whose value is None are
    ignored; a mapping flag may be given as its JSON or YAML text)."""
    given: dict[str, Any] = {}
    for k, v in (flags or {}).items():
        if v is None:
            continue
        section, _, name = k.partition("__")  # a role's flag: ``worker__store`` is worker.store
        if name:
            given.setdefault(section, {})[name] = v
        else:
            given[k] = parse_json_object(v, flag_name(k)) if k in DICT_FIELDS and isinstance(v, str) else v
    origin: dict[str, str] = {}  # option -> where its value came from (for the error line)
    layers: list[tuple[PydanticBaseSettingsSource, str]] = [
        (InitSettingsSource(Settings, init_kwargs=given), "flags"),
        (_Environment(Settings, env), "environment"),
    ]
    if config_file is not None:
        layers.append((InitSettingsSource(Settings, init_kwargs=_read_config_file(config_file)), "config file"))
    sources = tuple(_Traced(Settings, source, where, origin) for source, where in layers)
    try:
        settings = Settings(_build_sources=(sources, given))
    except ValidationError as exc:
        err = exc.errors()[0]
        message = _message(err)
        if not err["loc"]:  # a rule across several options
            raise ConfigError(f"invalid config: {message}") from None
        name = ".".join(str(p) for p in err["loc"])[:80]  # a key from a file can be any length
        field_name = str(err["loc"][0])
        if err["type"] in BOUNDS and field_name in RULES:
            message += f"; {RULES[field_name]}"
        source = origin.get(field_name, "defaults")
        raise ConfigError(f"invalid config: {name}: {message} (from {source})") from None
    params_from = origin.get("indicator_params", origin.get("indicator", "defaults"))
    _check_indicator_params(settings.indicator_params, params_from)
    try:  # the indicator's own parameter checks (kernels.indicators), before anything starts
        kernels.get_indicator(settings.indicator, **settings.indicator_params)
    except ValueError as exc:
        raise ConfigError(f"invalid config: indicator_params: {exc} (from {params_from})") from None
    try:
        settings.attribution().validate()
        settings.state()
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return settings


def markdown_table() -> str:
    """The README's configuration table, generated from :class:`Settings`."""
    rows = ["| option (YAML key) | flag | environment | default | meaning |", "|---|---|---|---|---|"]

    def row(key: str, flag: str, env: str, f: FieldInfo) -> str:
        default = f.get_default(call_default_factory=True)
        shown = "–" if default is None or default in ({}, [], "") else f"`{default}`"
        return f"| `{key}` | `{flag}` | `{env}` | {shown} | {f.description} |"

    for name, f in Settings.model_fields.items():
        if name not in SECTIONS:
            rows.append(row(name, flag_name(name), f"{ENV_PREFIX}{name.upper()}", f))
    for section, model in SECTIONS.items():
        for name, f in model.model_fields.items():
            env = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
            rows.append(row(f"{section}.{name}", section_flag(section, name), env, f))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
