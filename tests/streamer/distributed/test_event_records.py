"""The ``skyattr.events`` record layout: every event of the real sample and of a synth archive round-trips,
validates against ``streamer/schemas/event.schema.json``, and anything else is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from streamer.core.frames import decode_frame
from streamer.distributed import event_records
from streamer.sources.archive import read_archive
from streamer.testing.synth import default_archive

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "streamer/schemas/event.schema.json").read_text())


@pytest.mark.parametrize("which", ["sample", "synth"])
def test_every_event_round_trips_and_matches_the_schema(which: str, sample_dir: Path) -> None:
    archive = sample_dir / "frames.bin.zst" if which == "sample" else default_archive()
    validator = jsonschema.Draft202012Validator(SCHEMA)
    count = 0
    for position, item in enumerate(read_archive(archive), start=1):
        assert item.frame is not None
        for index, event in enumerate(decode_frame(item.frame).events):
            key, value = event_records.encode(position, index, event)
            validator.validate(json.loads(value))
            back = event_records.decode(value)
            assert key == event.actor.encode() and (back.position, back.index) == (position, index)
            assert back.event == event  # every compared field (not the record body, which stays in the archive)
            count += 1
        if count > 3000:
            break
    assert count > 100


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{", "not a skyattr.event/1 record"), (b"[1]", "a JSON list"), (b'{"p": 1}', "no 'i'")],
)
def test_anything_else_is_refused_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        event_records.decode(value)


def test_the_sequencer_keeps_deactivated_accounts_across_a_restart() -> None:
    """The ingest's cursor carries the sequencer: a restarted ingest still refuses an inactive account's events,
    strips it as a subject, and a ``deactivate`` control record reads back as written."""
    from streamer.core.decisions import DEACTIVATED
    from streamer.core.events import ACCOUNT, Event
    from streamer.distributed.sequencer import Deactivate, Sequencer

    a, b = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24
    t0 = 1_783_123_200_000_000
    seq = Sequencer()
    for i in range(40):  # the watermark's warm-up
        assert seq.decide(Event(t0 + i * 1_000_000, i, "post", b)).reason is None
    verdict = seq.decide(Event(t0 + 41_000_000, 41, ACCOUNT, a, extra={"active": False, "status": "takendown"}))
    assert verdict.reason is None and verdict.after == [Deactivate(a)]
    assert event_records.decode_control(event_records.encode_control(Deactivate(a))) == Deactivate(a)
    restarted = Sequencer.from_text(seq.to_text())
    assert restarted.decider.deactivated == {a: t0 + 41_000_000}
    assert restarted.decide(Event(t0 + 42_000_000, 42, "post", a)).reason == DEACTIVATED
    like = Event(t0 + 43_000_000, 43, "like", b, a)
    towards = restarted.decide(like)
    assert towards.reason is None and towards.recorded(like).subject == "" and towards.recorded(like).actor == b
    back = restarted.decide(Event(t0 + 44_000_000, 44, ACCOUNT, a, extra={"active": True}))
    assert back.reason is None and not back.after and a not in restarted.decider.deactivated
    assert restarted.decide(Event(t0 + 45_000_000, 45, "post", a)).reason is None


def test_the_worker_checks_the_internals_it_patches(monkeypatch) -> None:
    """Every faust-streaming and aiokafka internal the worker patches is there in the installed versions; one
    renamed makes the worker refuse to start, in one line naming it and the versions."""
    from faust.transport.drivers import aiokafka as driver

    from streamer.distributed import worker

    assert worker.check_internals() == [] and worker.internals_error() is None
    monkeypatch.delattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer")
    line = worker.internals_error()
    assert line is not None and "AIOKafkaConsumerThread._create_worker_consumer" in line
    assert "faust-streaming 0." in line and "aiokafka 0." in line and "\n" not in line


def test_a_consumer_that_does_not_read_committed_is_caught() -> None:
    from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED

    from streamer.distributed.worker import reads_committed

    class Fetcher:
        def __init__(self, level: int) -> None:
            self._isolation_level = level

    class Consumer:
        def __init__(self, level: int | None) -> None:
            if level is not None:
                self._fetcher = Fetcher(level)

    assert reads_committed(Consumer(READ_COMMITTED))
    assert not reads_committed(Consumer(READ_UNCOMMITTED)) and not reads_committed(Consumer(None))


def test_a_worker_with_no_partition_and_no_recovery_exits_to_be_restarted() -> None:
    """``--stuck-timeout``: idle (nothing assigned, nothing recovering) that long in a row, it exits 3; an
    assignment or a recovery in between starts the count again; 0 never exits."""
    from types import SimpleNamespace

    from faust.types import TP

    from streamer.distributed.worker import StuckWatch

    now = [0.0]
    exits: list[int] = []

    def app(held: list[TP], recovering: bool = False) -> SimpleNamespace:
        return SimpleNamespace(
            assignor=SimpleNamespace(assigned_actives=lambda: set(held)),
            tables=SimpleNamespace(recovery=SimpleNamespace(in_recovery=recovering)),
        )

    watch = StuckWatch(60.0, "ev", clock=lambda: now[0])
    for t, state in [(0, app([])), (30, app([], recovering=True)), (40, app([])), (90, app([TP("ev", 0)]))]:
        now[0] = t
        watch.check(state, exit=exits.append)
    assert exits == [], "recovering, then holding a partition: never idle for 60 s in a row"
    for t in (100, 130, 159):
        now[0] = t
        watch.check(app([TP("other", 0)]), exit=exits.append)  # a partition of another topic is not held work
    assert exits == []
    now[0] = 160
    watch.check(app([]), exit=exits.append)
    assert exits == [3]
    off = StuckWatch(0.0, "ev", clock=lambda: now[0])
    for t in (0, 1e6):
        now[0] = t
        off.check(app([]), exit=exits.append)
    assert exits == [3]


def test_the_workers_broker_probe_reaches_a_listening_server_and_names_a_closed_port() -> None:
    import asyncio
    import socket

    import pytest

    from streamer.distributed.ride_out import reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        asyncio.run(reachable(f"127.0.0.1:1,127.0.0.1:{port}"))  # the second server answers
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        asyncio.run(reachable("127.0.0.1:1", timeout_s=2))
