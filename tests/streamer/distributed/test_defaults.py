"""Each default of the distributed roles is written once: a command's flag, the role's configuration and the
library function it calls agree (a worker once defaulted to rocksdb:// on the command line and memory:// in code)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from kernels import defaults
from streamer.app.distributed_commands import attributor_command, worker_command
from streamer.app.ingest_kafka_command import ingest_command
from streamer.app.replay import replay_archive
from streamer.app.settings import Settings
from streamer.distributed.attributor import AttributorConfig
from streamer.distributed.kafka_ingest import ingest_to_kafka
from streamer.distributed.sequencer import Sequencer
from streamer.distributed.worker import WorkerConfig


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _config(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


def _agree(command: Callable[..., Any], config: type, pairs: dict[str, str]) -> None:
    """Each flag of ``command`` defaults to its field of ``config`` (flag name → field name)."""
    flags, fields_ = _defaults(command), _config(config)
    assert {flag: flags[flag] for flag in pairs} == {flag: fields_[field] for flag, field in pairs.items()}


def test_the_worker_flags_default_to_the_worker_configuration() -> None:
    pairs = {
        "events_topic": "events_topic",
        "shards_topic": "shards_topic",
        "store": "store",
        "data_dir": "data_dir",
        "app_id": "app_id",
        "instance": "instance",
        "session_timeout": "session_timeout_s",
        "stuck_timeout": "stuck_timeout_s",
    }
    _agree(worker_command, WorkerConfig, pairs)
    assert _config(WorkerConfig)["store"] == "rocksdb://", "a worker keeps its table on disk unless told otherwise"


def test_the_attributor_flags_default_to_the_attributor_configuration() -> None:
    flags, config = _defaults(attributor_command), _config(AttributorConfig)
    pairs = {
        "shards_topic": "shards_topic",
        "state_topic": "state_topic",
        "name": "name",
        "gather_timeout": "gather_timeout_s",
    }
    assert {flag: flags[flag] for flag in pairs} == {flag: config[field] for flag, field in pairs.items()}


def test_the_ingest_flags_default_to_the_ingest_function() -> None:
    flags, library = _defaults(ingest_command), _defaults(ingest_to_kafka)
    names = ("events_topic", "cursor_topic", "partitions", "batch_items", "batch_seconds")
    assert {n: flags[n] for n in names} == {n: library[n] for n in names}
    assert _config(WorkerConfig)["events_topic"] == library["events_topic"]
    assert _config(WorkerConfig)["shards_topic"] == _config(AttributorConfig)["shards_topic"]


def test_one_interval_for_the_daemon_the_replay_and_the_sequencer() -> None:
    interval = Settings.model_fields["interval"].default
    assert interval == defaults.INTERVAL_S
    assert _defaults(replay_archive)["interval_s"] == interval
    assert _defaults(ingest_to_kafka)["interval_s"] == interval
    assert Sequencer().interval_s == interval
