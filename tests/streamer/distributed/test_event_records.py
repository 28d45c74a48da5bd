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


def test_a_worker_with_no_partition_and_no_recovery_exits_to_be_restarted() -> None:
    """``--stuck-timeout``: idle (nothing held, nothing being read back) that long in a row, it exits 3; a
    partition or a recovery in between starts the count again; 0 never exits."""
    from streamer.distributed.worker import StuckWatch

    now = [0.0]
    exits: list[int] = []
    watch = StuckWatch(60.0, clock=lambda: now[0])
    for t, idle in [(0, True), (30, False), (40, True), (90, False)]:
        now[0] = t
        watch.check(idle, exit=exits.append)
    assert exits == [], "recovering, then holding a partition: never idle for 60 s in a row"
    for t in (100, 130, 159):
        now[0] = t
        watch.check(True, exit=exits.append)
    assert exits == []
    now[0] = 160
    watch.check(True, exit=exits.append)
    assert exits == [3]
    off = StuckWatch(0.0, clock=lambda: now[0])
    for t in (0, 1e6):
        now[0] = t
        off.check(True, exit=exits.append)
    assert exits == [3]
