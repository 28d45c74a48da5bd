"""The distributed roles' settings: the ``topics``, ``ingest``, ``worker`` and ``attributor`` sections of
:class:`~streamer.app.settings.Settings`.

Each is a nested model, so a role is configured like the single process: in the ``--config`` YAML file under its
section (``worker: {store: memory://, data_dir: /data}``), in the environment with a double underscore
(``SKYATTR_WORKER__STORE=memory://``; a Kubernetes pod sets them from a ConfigMap), or with the role's flags
(``skyattr worker --store memory://``), in that order of priority from last to first. The defaults are those of
:mod:`streamer.distributed.defaults`, where the roles' library classes take theirs too.

The topics are one section because two roles must agree on each (the ingest writes the events a worker reads; the
workers write the shards the attributor reads).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from streamer.distributed import defaults as dd

TEN_YEARS_S = 10 * 365.25 * 86_400  # a sanity bound of durations: beyond it a value is a typo or hostile


def numeric(annotation: Any) -> bool:
    """Whether a field takes a number (``int``, ``float``, or one of them or None)."""
    return annotation in (int, float) or any(a in (int, float) for a in typing.get_args(annotation))


def no_bool_for_number(value: Any, annotation: Any) -> Any:
    """YAML reads ``yes``/``true`` as booleans, which pydantic would quietly take as 1 for a number: refused, for
    every option and every section's field alike."""
    if isinstance(value, bool) and numeric(annotation):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return no_bool_for_number(value, cls.model_fields[info.field_name].annotation if info.field_name else None)


class TopicSettings(_Section):
    """The Kafka topics between the distributed roles (the results' topics are ``kafka_topic_tiers``/``_alerts``)."""

    events: str = Field(dd.EVENTS_TOPIC, min_length=1, description="Topic of the sequenced events, keyed by actor DID.")
    cursors: str = Field(dd.CURSOR_TOPIC, min_length=1, description="Compacted topic of each ingest source's cursor.")
    shards: str = Field(dd.SHARDS_TOPIC, min_length=1, description="Topic of the workers' shards at each due time.")
    state: str = Field(
        dd.STATE_TOPIC,
        min_length=1,
        description="Compacted topic of where the exactly-once writers stand: the attributor, the results publisher.",
    )


class IngestSettings(_Section):
    """``skyattr ingest --to-kafka``."""

    partitions: int = Field(
        dd.PARTITIONS, ge=1, le=100_000, description="Partitions of the events topic when the ingest creates it."
    )
    batch_items: int = Field(
        dd.BATCH_ITEMS, ge=1, le=10_000_000, description="Source items per Kafka transaction (at most)."
    )
    batch_seconds: float = Field(
        dd.BATCH_SECONDS,
        ge=0.001,
        le=3600,
        allow_inf_nan=False,
        description="Seconds a transaction stays open (at most).",
    )
    decoders: int = Field(
        dd.DECODERS,
        ge=1,
        le=256,
        description="Processes decoding an archive's frames ahead of the one in-order sequencer (1: the ingest "
        "decodes in its own process; a live relay is always decoded there).",
    )
    transactional_id: str | None = Field(
        None,
        description="The producer's transactional id (default: skyattr-ingest:SOURCE@EVENTS_TOPIC): one per "
        "ingest; a second ingest with the same id fences the first.",
    )


class WorkerSettings(_Section):
    """``skyattr worker``."""

    app_id: str = Field(
        dd.WORKER_APP_ID, min_length=1, description="Consumer group, and prefix of the changelog topic."
    )
    instance: str = Field("", description="Static group membership id (a pod's name): a restart keeps its partitions.")
    session_timeout: float = Field(
        dd.SESSION_TIMEOUT_S,
        ge=6,
        le=3600,
        allow_inf_nan=False,
        description="Seconds without a heartbeat before a worker's partitions move.",
    )
    stuck_timeout: float = Field(
        dd.STUCK_TIMEOUT_S,
        ge=0,
        le=TEN_YEARS_S,
        allow_inf_nan=False,
        description="Seconds holding no partition and recovering none before the worker exits 3 to be started "
        "again (0: never; for more workers than partitions).",
    )


class AttributorSettings(_Section):
    """``skyattr attributor``."""

    name: str = Field(
        dd.ATTRIBUTOR_NAME,
        min_length=1,
        description="Names the attributor's consumer group, transactional id and state record.",
    )
    gather_timeout: float = Field(
        dd.GATHER_TIMEOUT_S,
        ge=0.1,
        le=TEN_YEARS_S,
        allow_inf_nan=False,
        description="Seconds a run may wait for its last shard before it is given up.",
    )
    pipeline: int = Field(
        dd.PIPELINE,
        ge=1,
        le=64,
        description="Runs merged and measured at once, in threads (published one by one, in order): an attributor "
        "catching up uses that many cores.",
    )


TOPIC_FLAGS = {
    "events": "--events-topic",
    "cursors": "--cursor-topic",
    "shards": "--shards-topic",
    "state": "--state-topic",
}


def section_flag(section: str, name: str) -> str:
    """The command-line flag of a section's field: ``--store`` for worker.store, ``--events-topic`` for
    topics.events (each role's command takes the flags of its own section and of the topics it uses)."""
    return TOPIC_FLAGS[name] if section == "topics" else "--" + name.replace("_", "-")


SECTIONS: dict[str, type[_Section]] = {
    "topics": TopicSettings,
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "attributor": AttributorSettings,
}
