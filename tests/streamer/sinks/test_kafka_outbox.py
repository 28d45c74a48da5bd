"""KafkaOutbox and the sink's serialisation: pure Python, no broker, no event loop."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from streamer.core.results import Result, result_from_message
from streamer.sinks.kafka import DEFAULT_TOPICS, MAX_REQUEST_BYTES, encode
from streamer.sinks.kafka_outbox import KafkaOutbox, KafkaStats, PendingMessage, describe_runs

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"


@pytest.fixture(scope="module")
def golden() -> list[Result]:
    out = []
    for line in GOLDEN.read_text().splitlines():
        m = json.loads(line)
        out.append(result_from_message(m["topic"], m))
    return out


def _msg(run: int, topic: str = "skyattr.tiers", seq: int | None = None) -> PendingMessage:
    body = f'{{"run":{run}}}'.encode()
    return PendingMessage("tiers", topic, b"cascade", body, f"cascade@{run}", run, 0, run if seq is None else seq)


def _runs(outbox: KafkaOutbox) -> list[int | None]:
    return [m.run for m in outbox.pending()]


def test_fifo_claim_complete_and_counts() -> None:
    stats = KafkaStats()
    box = KafkaOutbox(10, stats)
    assert not box and len(box) == 0 and stats.buffered == 0 and box.last_seq == 0
    msgs = [_msg(r) for r in (1, 2, 3)] + [_msg(4, "skyattr.alerts")]
    for m in msgs:
        assert box.put(m) == []
    assert len(box) == 4 and stats.buffered == 4 and _runs(box) == [1, 2, 3, 4] and box.last_seq == 4
    batch = box.claim(2)
    assert batch == msgs[:2] and box.claimed == 2
    box.fail(batch)
    box.release()
    assert box.claimed == 0 and _runs(box) == [1, 2, 3, 4], "a failure leaves the messages where they are"
    assert box.claim(3) == msgs[:3]
    assert box.complete("sent") == msgs[:3] and box.claimed == 0
    assert box.claim(10) == msgs[3:]
    assert box.complete("sent") == msgs[3:]
    assert not box and stats.buffered == 0
    assert (box.sent, box.failed, box.already_written, box.rejected, box.dropped) == (4, 2, 0, 0, 0)
    assert stats.messages == {
        ("skyattr.tiers", "sent"): 3,
        ("skyattr.tiers", "failed"): 2,
        ("skyattr.alerts", "sent"): 1,
    }


def test_messages_go_in_seq_order_and_a_mark_drops_what_it_holds() -> None:
    """A message below the last buffered one would break the mark (it says 'everything through n'); messages at or
    below a mark read back are dropped as already written, claimed ones never."""
    box = KafkaOutbox(None)
    for seq in (3, 5, 8, 9):
        box.put(_msg(seq))
    with pytest.raises(ValueError, match="not after"):
        box.put(_msg(8))
    assert [m.run for m in box.drop_through(5)] == [3, 5]
    assert _runs(box) == [8, 9] and box.already_written == 2
    box.claim(1)
    assert box.drop_through(9) == [], "a claimed message may be committed any moment: not judged by an old mark"
    box.release()
    assert [m.run for m in box.drop_through(8)] == [8] and _runs(box) == [9]


def test_a_rejected_message_leaves_only_when_unclaimed() -> None:
    box = KafkaOutbox(5)
    a, b = _msg(1), _msg(2)
    box.put(a)
    box.put(b)
    box.claim(2)
    assert not box.reject(b), "in a transaction now"
    box.release()
    assert box.reject(b) and not box.reject(b)
    assert box.pending() == [a] and box.rejected == 1


def test_overflow_drops_oldest_unclaimed(caplog: pytest.LogCaptureFixture) -> None:
    box = KafkaOutbox(3)
    caplog.set_level(logging.WARNING, logger="skyattr.kafka")
    dropped = []
    for r in range(1, 7):
        dropped += box.put(_msg(r))
    assert [m.run for m in dropped] == [1, 2, 3]
    assert _runs(box) == [4, 5, 6] and box.dropped == 3 and box.stats.buffered == 3
    warnings = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(warnings) == 1, "repeated drops are logged once per interval"

    box.claim(1)  # run 4 is in a transaction: it may be committed any moment
    for r in (7, 8):
        box.put(_msg(r))
    assert _runs(box) == [4, 7, 8] and box.dropped == 5
    box.release()  # transaction abandoned: run 4 is an ordinary unsent message again
    box.put(_msg(9))
    assert _runs(box) == [7, 8, 9] and box.dropped == 6


def test_limit_one_keeps_the_claimed_messages_and_none_is_unbounded() -> None:
    box = KafkaOutbox(1)
    head = _msg(1)
    box.put(head)
    box.claim(1)
    assert [m.run for m in box.put(_msg(2))] == [2]
    assert box.pending() == [head]
    with pytest.raises(ValueError, match="buffer_limit"):
        KafkaOutbox(0)
    journaled = KafkaOutbox(None)
    for r in range(1, 20_001):
        assert journaled.put(_msg(r)) == []
    assert len(journaled) == 20_000 and journaled.dropped == 0


def test_pending_is_a_copy_and_identity_matters() -> None:
    box = KafkaOutbox(5)
    a, b = _msg(1, seq=1), _msg(1, seq=2)  # equal bytes, two publications
    box.put(a)
    box.put(b)
    snapshot = box.pending()
    snapshot.clear()
    assert len(box) == 2
    box.claim(1)
    assert box.complete() == [a] and box.pending() == [b] and box.pending()[0] is b


def test_stats_snapshot_and_totals() -> None:
    stats = KafkaStats()
    box = KafkaOutbox(5, stats)
    box.put(_msg(1))
    box.put(_msg(2, "skyattr.alerts"))
    box.claim(2)
    box.complete()
    snap = stats.snapshot()
    box.put(_msg(3))
    assert snap.buffered == 0 and stats.buffered == 1
    assert snap.messages is not stats.messages and snap.total("sent") == 2
    # taking snapshots from another thread while the counters move never fails
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                stats.snapshot().total("sent")
            except BaseException as exc:
                errors.append(exc)
                return

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            stats.messages[(f"topic-{i % 500}", "sent")] += 1
    finally:
        stop.set()
        t.join()
    assert not errors


def test_describe_runs() -> None:
    msgs = [_msg(3), _msg(1), _msg(2, "skyattr.alerts"), dataclasses.replace(_msg(0), run=None)]
    assert describe_runs(msgs) == "skyattr.tiers: 3 (runs 1-3); skyattr.alerts: 1 (run 2)"
    assert describe_runs([dataclasses.replace(_msg(0), run=None)]) == "skyattr.tiers: 1 (no run numbers)"


# ---------------------------------------------------------------------------------------------------- encode
def test_encode_is_compact_sorted_json_with_identity(golden: list[Result]) -> None:
    for result in golden:
        msg = encode(result.topic, DEFAULT_TOPICS[result.topic], result.to_message())
        assert msg.kind == result.topic and msg.topic == DEFAULT_TOPICS[result.topic]
        assert msg.key == result.indicator.encode() and msg.id == result.id and msg.run == result.run
        assert msg.value == json.dumps(result.to_message(), sort_keys=True, separators=(",", ":")).encode()
        assert json.loads(msg.value) == result.to_message() and msg.seq == 0
    assert encode("tiers", "t", golden[0].to_message(), seq=7).seq == 7


def test_encode_refuses_what_can_never_be_sent(golden: list[Result]) -> None:
    tiers = golden[0]
    with pytest.raises(ValueError, match="finite number"):  # a typed result cannot even hold one
        tiers.but(value=float("nan"))
    with pytest.raises(ValueError, match="JSON"):  # a message read back (a tampered journal) is refused here
        encode("tiers", "t", {**tiers.to_message(), "value": float("nan")})
    big = tiers.but(params={"blob": "x" * MAX_REQUEST_BYTES})
    with pytest.raises(ValueError, match="limited to"):
        encode("tiers", "t", big.to_message())
    no_id = {k: v for k, v in tiers.to_message().items() if k not in ("id", "indicator")}
    with pytest.raises(ValueError, match="identity"):
        encode("tiers", "t", no_id)
    derived = {k: v for k, v in tiers.to_message().items() if k != "id"}
    assert encode("tiers", "t", derived).id == tiers.id
