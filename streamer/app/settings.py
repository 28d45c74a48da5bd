"""Daemon configuration: defaults, then a YAML file, then ``SKYATTR_*`` environment variables, then flags.

Every option is a field of :class:`Settings` with its description (the README's configuration table is generated
from these). An invalid value anywhere gives one :class:`ConfigError` line naming the option and where it came
from; the commands turn that into exit status 2.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import kernels
from streamer.core.attribution import AttributionConfig
from streamer.core.state import StateConfig

ENV_PREFIX = "SKYATTR_"
DEFAULT_METRICS_PORT = 9464
DEFAULT_METRICS_HOST = "127.0.0.1"
# Sanity bounds: beyond them a value is a typo or hostile, and would overflow the microsecond clocks downstream.
TEN_YEARS_S = 10 * 365.25 * 86_400
TEN_YEARS_H = TEN_YEARS_S / 3600
ONE_SECOND_H = 1 / 3600
MAX_BUCKETS = 10_000
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the configuration."""


class Settings(BaseModel):
    """All daemon options. Field names are the YAML keys; flags are --field-name; env vars SKYATTR_FIELD_NAME."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    relay: str = Field("wss://bsky.network", description="Relay for `run` (subscribeRepos websocket base URL).")
    interval: float = Field(
        300.0,
        ge=0.001,
        le=TEN_YEARS_S,
        allow_inf_nan=False,
        description="Seconds between attribution runs (event time in replay; 0.001 s to 10 years).",
    )
    indicator: str = Field("cascade", description="Macro indicator (see `skyattr indicators`).")
    indicator_params: dict[str, Any] = Field(
        default_factory=dict, description="Indicator parameters, e.g. {kappa: 2, theta: 3} (JSON in the env var)."
    )
    nodes: int = Field(32, ge=1, le=1024, description="Gauss–Legendre quadrature nodes.")
    dtype: Literal["float32", "float64"] = Field("float32", description="Floating point precision of the kernels.")
    head: float = Field(
        0.01, gt=0, le=1, allow_inf_nan=False, description="Head tier: top fraction of accounts by visibility."
    )
    middle: float = Field(
        0.10, ge=0, le=1, allow_inf_nan=False, description="Middle tier: the next fraction by visibility."
    )
    panel_size: int = Field(100, ge=1, le=10_000_000, description="Accounts in the visibility-biased panel study.")
    top_k: int = Field(10, ge=0, le=1000, description="Top accounts listed in each result.")
    tau_tvd: float = Field(0.3, ge=0, allow_inf_nan=False, description="Alert when the tier-share TVD exceeds this.")
    tau_res: float = Field(
        0.2, ge=0, allow_inf_nan=False, description="Alert when the rescaling residual r* exceeds this."
    )
    alert_clear: float = Field(
        0.8, gt=0, le=1, allow_inf_nan=False, description="An alert resolves below this fraction of both thresholds."
    )
    bucket_hours: float = Field(
        24.0,
        ge=ONE_SECOND_H,
        le=TEN_YEARS_H,
        allow_inf_nan=False,
        description="Width of one window bucket, hours of event time (at least 1 s; the window at most 10 years).",
    )
    buckets: int = Field(14, ge=1, le=MAX_BUCKETS, description="Buckets in the rolling window.")
    edge_budget: int = Field(20_000_000, ge=1, le=10**12, description="Most attention edges held in the window.")
    max_future_skew: float = Field(
        600.0,
        ge=0,
        le=TEN_YEARS_H * 3600,
        allow_inf_nan=False,
        description="Seconds an event may run ahead of the stream's own front (and, live, of the receive clock) "
        "before it is refused as future_time (at most one bucket).",
    )
    followers: Path | None = Field(
        None, description="CSV or Parquet `did,followers` for visibility (else distinct attenders)."
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
        description="Replay at this multiple of event time, 0.001 to 1e9 (default: full speed).",
    )
    queue_size: int = Field(
        10_000, ge=1, le=10_000_000, description="Frames buffered between the websocket and ingest (run)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads ``yes``/``true`` as booleans, which pydantic would quietly take as 1 for a number."""
        if isinstance(value, bool) and info.field_name in NUMERIC_FIELDS:
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    @field_validator("indicator")
    @classmethod
    def _known_indicator(cls, value: str) -> str:
        if value not in kernels.available_indicators():
            known = ", ".join(kernels.available_indicators())
            raise ValueError(f"unknown indicator {_shown(value)}; known: {known}")
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
            thresholds=kernels.AlertThresholds(tvd=self.tau_tvd, residual=self.tau_res, clear=self.alert_clear),
        )

    def state(self) -> StateConfig:
        return StateConfig(
            bucket_hours=self.bucket_hours,
            buckets=self.buckets,
            edge_budget=self.edge_budget,
            max_future_skew_s=self.max_future_skew,
        )


DICT_FIELDS = {name for name, f in Settings.model_fields.items() if f.annotation == dict[str, Any]}
NUMERIC_FIELDS = {
    name
    for name, f in Settings.model_fields.items()
    if f.annotation in (int, float) or any(a in (int, float) for a in typing.get_args(f.annotation))
}
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a value, shortened: an error line must stay one readable line whatever was typed or sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def _message(err: Any) -> str:
    """pydantic's message for one error, with bounds and the offending value spelled out."""
    kind, given = err["type"], err.get("input")
    if kind in BOUNDS:
        (limit,) = err["ctx"].values()
        return f"must be {BOUNDS[kind]} {_number(limit)}, got {_shown(given)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_shown(given)}"
    if kind == "extra_forbidden":
        return "unknown option (the options are the README's configuration table, or --help)"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind in ("float_parsing", "int_parsing", "int_from_float", "literal_error", "bool_parsing"):
        message += f", got {_shown(given)}"
    return message


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            value: Any = env[key]
            if name in DICT_FIELDS:
                value = parse_json_object(value, key)
            out[name] = value
    return out


def parse_json_object(text: str, where: str) -> Any:
    """JSON text of an option (env var or flag); a parse error, deep nesting included, is one ConfigError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"invalid config: {where} must be a JSON object (nested too deeply)") from None
    except ValueError as exc:
        raise ConfigError(f"invalid config: {where} must be a JSON object ({exc})") from None


def _from_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(
    config_file: Path | None = None, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Merge defaults < YAML file < environment < flags (flags whose value is None are ignored)."""
    layers = [
        ("config file", _from_yaml(config_file) if config_file else {}),
        ("environment", _from_env(os.environ if env is None else env)),
        ("flags", {k: v for k, v in (flags or {}).items() if v is not None}),
    ]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        for k, v in layer.items():
            merged[k] = v
            origin[k] = where
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = _message(err)
        if not err["loc"]:  # a rule across several options
            raise ConfigError(f"invalid config: {message}") from None
        name = ".".join(str(p) for p in err["loc"])[:80]  # a key from a file can be any length
        source = origin.get(str(err["loc"][0]), "defaults")
        raise ConfigError(f"invalid config: {name}: {message} (from {source})") from None
    try:  # the indicator's own parameter checks (kernels.indicators), before anything starts
        kernels.get_indicator(settings.indicator, **settings.indicator_params)
    except ValueError as exc:
        source = origin.get("indicator_params", origin.get("indicator", "defaults"))
        raise ConfigError(f"invalid config: indicator_params: {exc} (from {source})") from None
    try:
        settings.attribution().validate()
        settings.state()
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return settings


def markdown_table() -> str:
    """The README's configuration table, generated from :class:`Settings`."""
    rows = ["| option (YAML key) | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
        shown = "–" if default is None or default == {} else f"`{default}`"
        flag = f"`--{name.replace('_', '-')}`"
        rows.append(f"| `{name}` | {flag} | `{ENV_PREFIX}{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
