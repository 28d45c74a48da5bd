"""Each default of the distributed roles is written once: a command's flag, the role's configuration and the
library function it calls agree (a worker once defaulted to rocksdb:// on the command line and memory:// in code)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from pydantic import BaseModel

from kernels import defaults
from streamer.app.distributed_commands import attributor_command, worker_command
from streamer.app.ingest_kafka_command import ingest_command
from streamer.app.role_settings import AttributorSettings, IngestSettings, TopicSettings, WorkerSettings
from streamer.app.settings import Settings
from streamer.app.wiring import RunOptions
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


def _section(model: type[BaseModel]) -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()}


def _agree(settings: dict[str, Any], config: dict[str, Any], pairs: dict[str, str]) -> None:
    """Each settings field defaults to its field of the library's configuration (settings name → config name)."""
    assert {name: settings[name] for name in pairs} == {name: config[field] for name, field in pairs.items()}


def test_the_worker_settings_default_to_the_worker_configuration() -> None:
    worker = _section(WorkerSettings)
    pairs = {
        "app_id": "app_id",
        "instance": "instance",
        "session_timeout": "session_timeout_s",
        "stuck_timeout": "stuck_timeout_s",
    }
    _agree(worker, _config(WorkerConfig), pairs)
    _agree(_section(TopicSettings), _config(WorkerConfig), {"events": "events_topic", "shards": "shards_topic"})
    assert set(worker) == set(pairs), "every worker setting has its configuration field"


def test_the_attributor_settings_default_to_the_attributor_configuration() -> None:
    config = _config(AttributorConfig)
    _agree(_section(AttributorSettings), config, {"name": "name", "gather_timeout": "gather_timeout_s"})
    _agree(_section(TopicSettings), config, {"shards": "shards_topic", "state": "state_topic"})


def test_the_ingest_settings_default_to_the_ingest_function() -> None:
    library = _defaults(ingest_to_kafka)
    pairs = {n: n for n in ("partitions", "batch_items", "batch_seconds", "transactional_id")}
    _agree(_section(IngestSettings), library, pairs)
    _agree(_section(TopicSettings), library, {"events": "events_topic", "cursors": "cursor_topic"})


def test_the_role_commands_take_no_default_of_their_own() -> None:
    """Every option of a role's command is a settings flag (None: unset) or a mode of the command: a default
    written on the command line is a second one, and the YAML file and the environment could not reach it."""
    for command, modes in (
        (worker_command, set()),
        (attributor_command, {"until_final"}),
        (ingest_command, {"to_kafka", "archive"}),
    ):
        own = {name: d for name, d in _defaults(command).items() if getattr(d, "default", d) is not None}
        assert set(own) <= modes | {"config"}, (command.__name__, own)


def test_one_interval_for_the_daemon_the_replay_and_the_sequencer() -> None:
    interval = Settings.model_fields["interval"].default
    assert interval == defaults.INTERVAL_S
    assert RunOptions().interval_s == interval  # the live daemon and the replay
    assert _defaults(ingest_to_kafka)["interval_s"] == interval
    assert Sequencer().interval_s == interval
