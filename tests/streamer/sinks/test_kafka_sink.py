"""KafkaSink against a real broker (ops/kafka/start.sh) and against no broker at all.

Tests that need the broker run only when SKYATTR_KAFKA_BOOTSTRAP is set; otherwise they skip, unless
SKYATTR_REQUIRE_KAFKA=1 (CI), which turns a missing broker into a failure. The no-broker tests always run: a missing
broker is exactly what they are about. The restart test stops and starts the broker with the ops scripts, so it runs
only against the scripts' own broker (127.0.0.1:9092) and always leaves it running.

Faults a healthy broker never shows (a commit whose answer is lost, a transaction left open by a killed process)
are made with the real producer: the real commit followed by a lost answer, a real transaction never committed.

Results are real typed objects: the golden replay's first tiers result and alert, varied with
``but`` (which builds, and validates, a new result).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.core.results import AlertTransition, Result, RunResult, result_from_message
from streamer.distributed.defaults import STATE_TOPIC
from streamer.sinks.base import Sink
from streamer.sinks.kafka import ID_HEADER, MAX_REQUEST_BYTES, KafkaSink
from streamer.sinks.kafka_sender import read_mark
from streamer.sinks.kafka_topics import load_latest
from tests.broker import KAFKA_OPS, SCRIPTS_BOOTSTRAP, ScriptBroker, kafka_bootstrap
from tests.streamer.sinks.test_sinks import coverage_alert

NO_BROKER = "127.0.0.1:1"  # nothing listens there: connections are refused at once
TIMEOUT_S = 60.0
FAST_BACKOFF = (0.05, 0.5)
GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"
STEP_US = 300_000_000


def _bootstrap() -> str:
    return kafka_bootstrap()


# ---------------------------------------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def golden() -> tuple[RunResult, AlertTransition]:
    """The first tiers result of the golden replay, as a typed result, and an alert on it (the bundled defaults
    raise none: this one fires on coverage)."""
    m = json.loads(GOLDEN.read_text().splitlines()[0])
    tiers = result_from_message(m["topic"], m)
    assert isinstance(tiers, RunResult)
    return tiers, coverage_alert(tiers, 0.4)


def _tiers(base: RunResult, run: int) -> RunResult:
    return base.but(run=run, as_of_us=base.as_of_us + run * STEP_US)


def _alert(base: AlertTransition, run: int, state: str) -> AlertTransition:
    severity, criteria = ("warning", base.criteria) if state == "firing" else ("info", ())
    return base.but(run=run, state=state, severity=severity, criteria=criteria, as_of_us=base.as_of_us + run * STEP_US)


def _wire(result: Result) -> bytes:
    """The exact bytes a result is published as: compact JSON, sorted keys."""
    return json.dumps(result.to_message(), sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------------- helpers
async def _create_topics(bootstrap: str, *topics: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def _fresh_topics(bootstrap: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    topics = {"tiers": f"skyattr-test-{tag}-tiers", "alerts": f"skyattr-test-{tag}-alerts"}
    await asyncio.wait_for(_create_topics(bootstrap, *topics.values()), TIMEOUT_S)
    return topics


async def _consume_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    """Every committed record of the topic's only partition (read_committed, as the results' consumers read),
    after checking that there are exactly ``n``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[Any] = []
        # The broker writes a committed transaction's markers after answering the commit, so the last stable
        # offset can trail the sink's flush for a moment (long after a broker restart): read until the n records
        # are there or 30 s pass, then once more after a second, so a duplicate written late shows too.
        deadline, settled = time.monotonic() + 30.0, False
        while True:
            end = (await consumer.end_offsets([tp]))[tp]  # the last stable offset: commit markers count
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                got.extend(batch.get(tp, []))
            if (len(got) >= n and settled) or time.monotonic() > deadline:
                break
            settled = len(got) >= n
            await asyncio.sleep(1.0 if settled else 0.2)
        assert len(got) == n, f"{topic} holds {len(got)} committed records, expected exactly {n}"
        return got
    finally:
        await consumer.stop()


async def _wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class LoopLag:
    """Largest delay of a 10 ms ticker: proof that nothing blocks the event loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t0 - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# ---------------------------------------------------------------------------------------------------- real broker
async def test_round_trip_in_order(golden: tuple[RunResult, AlertTransition]) -> None:
    """20 tiers + 2 alerts come back from the broker unchanged, in publish order, keyed by indicator, with their
    identity header, committed; the mark says how far."""
    bootstrap = _bootstrap()
    tiers_base, alert_base = golden
    topics = await _fresh_topics(bootstrap)
    tiers = [_tiers(tiers_base, run) for run in range(1, 21)]
    alerts = [_alert(alert_base, 8, "firing"), _alert(alert_base, 15, "resolved")]
    sink = KafkaSink(bootstrap, topics, retry_backoff_s=FAST_BACKOFF)
    assert isinstance(sink, Sink) and sink.name == "kafka"

    with LoopLag() as lag:
        for result in tiers[:5]:  # published before start: they wait in the buffer
            sink.publish(result)
        await sink.start()
        for result in tiers[5:]:
            sink.publish(result)
            for alert in alerts:
                if alert.run == result.run:  # an alert goes out right after the tiers of its run
                    sink.publish(alert)
        assert await sink.flush(TIMEOUT_S)
    assert sink.sent == 22 and sink.buffered == 0 and sink.dropped == 0 and sink.failed == 0
    assert sink.connected and sink.errors == 0 and sink.committed_through == 22
    assert sink.stats.messages[(topics["tiers"], "sent")] == 20
    assert sink.stats.messages[(topics["alerts"], "sent")] == 2
    assert sink.stats.buffered == 0 and sink.stats.connected
    assert await sink.close(timeout=5) == 0
    assert not sink.connected
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"

    for kind, sent in (("tiers", tiers), ("alerts", alerts)):
        got = await asyncio.wait_for(_consume_all(bootstrap, topics[kind], len(sent)), TIMEOUT_S)
        assert [rec.key for rec in got] == [r.indicator.encode() for r in sent]
        assert [json.loads(rec.value) for rec in got] == [r.to_message() for r in sent]  # same order
        assert [rec.value for rec in got] == [_wire(r) for r in sent]  # the exact bytes
        assert [dict(rec.headers)[ID_HEADER] for rec in got] == [r.id.encode() for r in sent]
    mark = await load_latest(bootstrap, STATE_TOPIC, sink.transactional_id)
    assert read_mark(mark) == 22


def _journal(tiers_base: RunResult, alert_base: AlertTransition) -> list[Result]:
    alert = _alert(alert_base, 3, "firing")
    return [
        _tiers(tiers_base, 1),
        _tiers(tiers_base, 2),
        _tiers(tiers_base, 3),
        alert,
        *(_tiers(tiers_base, r) for r in (4, 5)),
    ]


async def test_a_restart_publishes_only_what_the_mark_lacks(golden: tuple[RunResult, AlertTransition]) -> None:
    """A writer restarted with the same transactional id gets its whole journal again: what its mark holds is
    dropped, the rest written once, in journal order. Another writer id (a new journal) is judged by its own mark,
    and an initial mark (an older skyattr's acknowledgement file) stands in until a mark exists."""
    bootstrap = _bootstrap()
    tiers_base, alert_base = golden
    topics = await _fresh_topics(bootstrap)
    journal = _journal(tiers_base, alert_base)
    writer = f"skyattr-test-{uuid.uuid4().hex[:12]}"

    before = KafkaSink(bootstrap, topics, transactional_id=writer, retry_backoff_s=FAST_BACKOFF)
    await before.start()
    for seq, result in enumerate(journal[:4], start=1):
        before.publish(result, seq)
    assert await before.flush(TIMEOUT_S) and before.committed_through == 4
    assert await before.close(timeout=5) == 0

    after = KafkaSink(bootstrap, topics, transactional_id=writer, retry_backoff_s=FAST_BACKOFF)
    for seq, result in enumerate(journal, start=1):
        after.publish(result, seq)
    await after.start()
    assert await after.flush(TIMEOUT_S)
    assert after.already_written == 4 and after.sent == 2 and after.buffered == 0 and after.committed_through == 6
    assert after.stats.messages[(topics["tiers"], "already_written")] == 3
    assert after.stats.messages[(topics["alerts"], "already_written")] == 1
    assert after.stats.messages[(topics["tiers"], "sent")] == 2
    assert await after.close(timeout=5) == 0

    got = await asyncio.wait_for(_consume_all(bootstrap, topics["tiers"], 5), TIMEOUT_S)  # exactly 5: no duplicate
    assert [rec.value for rec in got] == [_wire(r) for r in journal if r.topic == "tiers"]
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["alerts"], 1), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(journal[3])]

    other = await _fresh_topics(bootstrap)
    legacy = KafkaSink(bootstrap, other, transactional_id=f"{writer}-b", initial_mark=2, retry_backoff_s=FAST_BACKOFF)
    for seq, result in enumerate(journal, start=1):
        legacy.publish(result, seq)
    await legacy.start()
    assert await legacy.flush(TIMEOUT_S)
    assert legacy.already_written == 2 and legacy.sent == 4
    assert await legacy.close(timeout=5) == 0
    got = await asyncio.wait_for(_consume_all(bootstrap, other["tiers"], 3), TIMEOUT_S)
    assert [json.loads(rec.value)["run"] for rec in got] == [3, 4, 5]


async def test_a_transaction_left_open_by_a_killed_writer_is_aborted_not_doubled(
    golden: tuple[RunResult, AlertTransition],
) -> None:
    """A process killed inside a transaction leaves it open (its messages and its mark in the log, uncommitted).
    The next writer of the same id fences it, which aborts it: its messages never reach a read_committed consumer,
    and the mark read back is the last committed one, so they are written once, by the new writer."""
    from streamer.sinks.kafka import encode
    from streamer.sinks.kafka_sender import mark_record, transactional_producer

    bootstrap = _bootstrap()
    tiers_base, alert_base = golden
    topics = await _fresh_topics(bootstrap)
    journal = _journal(tiers_base, alert_base)
    writer = f"skyattr-test-{uuid.uuid4().hex[:12]}"
    first = KafkaSink(bootstrap, topics, transactional_id=writer, retry_backoff_s=FAST_BACKOFF)
    await first.start()
    for seq, result in enumerate(journal[:3], start=1):
        first.publish(result, seq)
    assert await first.flush(TIMEOUT_S)
    assert await first.close(timeout=5) == 0

    killed = transactional_producer(bootstrap, writer)
    await killed.start()
    await killed.begin_transaction()
    for seq, result in enumerate(journal[3:], start=4):
        msg = encode(result.topic, topics[result.topic], result.to_message(), seq=seq)
        await (await killed.send(msg.topic, msg.value, key=msg.key))
    await (await killed.send(STATE_TOPIC, mark_record(6), key=writer.encode()))
    # no commit, no abort: what SIGKILL leaves (the connections closed without a word)
    await killed.client.close()

    again = KafkaSink(bootstrap, topics, transactional_id=writer, retry_backoff_s=FAST_BACKOFF)
    for seq, result in enumerate(journal, start=1):
        again.publish(result, seq)
    await again.start()
    assert await again.flush(TIMEOUT_S)
    assert again.already_written == 3 and again.sent == 3
    assert await again.close(timeout=5) == 0
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["tiers"], 5), TIMEOUT_S)
    assert [json.loads(rec.value)["run"] for rec in got] == [1, 2, 3, 4, 5]
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["alerts"], 1), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(journal[3])]


async def test_a_commit_whose_answer_is_lost_is_not_written_again(
    golden: tuple[RunResult, AlertTransition], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker commits, the answer never arrives (the connection drops): the sender retires its producer, the
    next one reads the mark back, finds the messages committed and drops them (already written), no duplicate."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    bootstrap = _bootstrap()
    tiers_base, _ = golden
    topics = await _fresh_topics(bootstrap)
    real_commit = AIOKafkaProducer.commit_transaction
    lost: list[int] = []

    async def commit_then_lose_the_answer(self: Any) -> None:
        await real_commit(self)
        if not lost:
            lost.append(1)
            raise KafkaConnectionError("connection lost before the commit's answer")

    monkeypatch.setattr(AIOKafkaProducer, "commit_transaction", commit_then_lose_the_answer)
    sink = KafkaSink(bootstrap, topics, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    results = [_tiers(tiers_base, run) for run in (1, 2, 3)]
    for result in results:
        sink.publish(result)
    assert await sink.flush(TIMEOUT_S)
    assert lost and sink.failed >= 1 and sink.sent + sink.already_written == 3 and sink.already_written >= 1
    more = [_tiers(tiers_base, run) for run in (4, 5)]
    for result in more:
        sink.publish(result)
    assert await sink.flush(TIMEOUT_S)
    assert await sink.close(timeout=5) == 0
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["tiers"], 5), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(r) for r in results + more]


async def test_a_message_the_topic_refuses_is_given_up_not_retried_forever(
    golden: tuple[RunResult, AlertTransition],
) -> None:
    """A message larger than its topic allows (max.message.bytes) is refused by the broker for what it is: after
    one retry with a fresh producer it is given up (rejected), and the messages behind it go out."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap = _bootstrap()
    tiers_base, _ = golden
    topic = f"skyattr-test-{uuid.uuid4().hex[:12]}-small"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "20000"})])
    finally:
        await admin.close()
    sink = KafkaSink(bootstrap, {"tiers": topic}, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    big = _tiers(tiers_base, 1).but(params={"blob": os.urandom(40_000).hex()})  # gzip cannot shrink it enough
    small = _tiers(tiers_base, 2)
    sink.publish(big)
    sink.publish(small)
    assert await sink.flush(TIMEOUT_S)
    assert sink.rejected == 1 and sink.sent == 1 and sink.failed >= 2 and sink.dropped == 0, sink.stats
    assert sink.stats.messages[(topic, "rejected")] == 1
    assert await sink.close(timeout=5) == 0
    got = await asyncio.wait_for(_consume_all(bootstrap, topic, 1), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(small)]


async def test_broker_restart_loses_and_duplicates_nothing(
    golden: tuple[RunResult, AlertTransition], caplog: pytest.LogCaptureFixture
) -> None:
    """Broker stopped mid-run and restarted: the buffered results go out once each, in order. Meanwhile a second
    sink closes during the outage with a message in flight: bounded, and aiokafka is left in order."""
    bootstrap = _bootstrap()
    if bootstrap != SCRIPTS_BOOTSTRAP or os.environ.get("SKYATTR_KAFKA_PORT", "9092") != "9092":
        pytest.skip(f"restart test needs the ops/kafka scripts' own broker on {SCRIPTS_BOOTSTRAP}")
    if not (KAFKA_OPS / "start.sh").exists() or not (KAFKA_OPS / "stop.sh").exists():
        pytest.skip("ops/kafka/start.sh and stop.sh not found")
    broker = ScriptBroker()
    if broker.pid is None:
        pytest.skip(f"the broker on {SCRIPTS_BOOTSTRAP} was not started by ops/kafka/start.sh")
    tiers_base, _ = golden
    topic = f"skyattr-test-{uuid.uuid4().hex[:12]}-restart"
    other_topic = f"{topic}-closed-while-down"
    await asyncio.wait_for(_create_topics(bootstrap, topic, other_topic), TIMEOUT_S)
    other = KafkaSink(bootstrap, {"tiers": other_topic}, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=3000)
    sink = KafkaSink(
        bootstrap, {"tiers": topic, "alerts": f"{topic}-alerts"}, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=3000
    )
    results = [_tiers(tiers_base, run) for run in range(1, 21)]
    caplog.set_level(logging.WARNING, logger="asyncio")
    await sink.start()
    await other.start()
    try:
        try:
            for result in results[:10]:
                sink.publish(result)
            other.publish(results[0])
            assert await sink.flush(TIMEOUT_S) and await other.flush(TIMEOUT_S)
            assert sink.sent == 10 and sink.connected

            await asyncio.to_thread(broker.stop)
            for result in results[10:]:
                sink.publish(result)
            for result in results[1:4]:
                other.publish(result)
            await asyncio.sleep(0.5)  # a transaction is with aiokafka now, retried against a dead broker
            t0 = time.perf_counter()
            assert await other.close(timeout=2) == 3
            assert time.perf_counter() - t0 < 3.5, "close must not wait for the broker"
            await _wait_until(lambda: sink.failed > 0, 30.0, "the outage to be noticed")
            assert sink.sent == 10 and sink.buffered == 10 and not sink.connected
        finally:
            await asyncio.to_thread(broker.ensure_running)  # leave the shared broker up, whatever happened
        assert await sink.flush(TIMEOUT_S), f"{sink.buffered} message(s) still buffered after the restart"
        assert sink.sent + sink.already_written == 20 and sink.connected and sink.dropped == 0
        assert sink.stats.messages[(topic, "failed")] == sink.failed > 0
    finally:
        await sink.close(timeout=5)

    got = await asyncio.wait_for(_consume_all(bootstrap, topic, 20), TIMEOUT_S)  # exactly 20: no duplicate
    assert [json.loads(rec.value)["run"] for rec in got] == list(range(1, 21))
    assert [rec.value for rec in got] == [_wire(r) for r in results]
    gc.collect()  # unretrieved future exceptions are reported when collected
    await asyncio.sleep(0)
    asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not asyncio_errors, asyncio_errors


# ---------------------------------------------------------------------------------------------------- no broker
async def test_broker_down_at_start_never_blocks(golden: tuple[RunResult, AlertTransition]) -> None:
    """No broker: start returns at once, publish stays instant, failures are counted, close is bounded and
    returns the number of messages left unsent."""
    tiers_base, _ = golden
    topics = {"tiers": "skyattr-test-nobroker-tiers", "alerts": "skyattr-test-nobroker-alerts"}
    sink = KafkaSink(NO_BROKER, topics, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=2000)
    results = [_tiers(tiers_base, run) for run in range(1, 31)]

    with LoopLag() as lag:
        t0 = time.perf_counter()
        await sink.start()
        assert time.perf_counter() - t0 < 0.1, "start() must not wait for the broker"
        worst_publish = 0.0
        for result in results:
            t = time.perf_counter()
            sink.publish(result)
            worst_publish = max(worst_publish, time.perf_counter() - t)
            await asyncio.sleep(0.01)  # let the sender try meanwhile
        assert worst_publish < 0.05, f"publish took {worst_publish:.3f} s"
        await _wait_until(lambda: sink.failed >= 2, 5.0, "failed attempts to be counted")
        assert not sink.connected and not sink.stats.connected
        assert sink.buffered == 30 and sink.sent == 0 and sink.committed_through == 0
        assert sink.stats.messages[(topics["tiers"], "failed")] == sink.failed
        assert sink.stats.buffered == 30

        t0 = time.perf_counter()
        left = await sink.close(timeout=2)
        elapsed = time.perf_counter() - t0
    assert left == 30, "close reports the messages left unsent"
    assert elapsed < 3.0, f"close(timeout=2) took {elapsed:.2f} s"
    assert [m.run for m in sink.pending()] == list(range(1, 31))
    assert [m.id for m in sink.pending()] == [r.id for r in results]
    assert [m.seq for m in sink.pending()] == list(range(1, 31))
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"
    assert await sink.close(timeout=2) == 30, "close is idempotent"
    with pytest.raises(RuntimeError):
        sink.publish(results[0])


async def test_buffer_bound_drops_oldest_unless_a_journal_keeps_them(golden: tuple[RunResult, AlertTransition]) -> None:
    """A full buffer drops its oldest message: the newest results survive an outage, in order. A writer with a
    journal behind it (a transactional id of its own) drops nothing: a gap would be skipped by its mark."""
    tiers_base, alert_base = golden
    topics = {"tiers": "skyattr-test-bound-tiers", "alerts": "skyattr-test-bound-alerts"}
    sink = KafkaSink(NO_BROKER, topics, buffer_limit=5, retry_backoff_s=FAST_BACKOFF)
    journaled = KafkaSink(NO_BROKER, topics, transactional_id="skyattr-test-j", buffer_limit=5)
    await sink.start()
    for run in range(1, 8):
        sink.publish(_tiers(tiers_base, run))
        journaled.publish(_tiers(tiers_base, run), run)
    sink.publish(_alert(alert_base, 8, "firing"))
    assert sink.dropped == 3 and sink.buffered == 5
    assert [(m.kind, m.run) for m in sink.pending()] == [("tiers", r) for r in (4, 5, 6, 7)] + [("alerts", 8)]
    assert [json.loads(m.value)["run"] for m in sink.pending()] == [4, 5, 6, 7, 8]
    assert sink.stats.messages[(topics["tiers"], "dropped")] == 3
    assert sink.stats.buffered == 5
    assert await sink.close(timeout=0.4) == 5
    assert journaled.dropped == 0 and journaled.buffered == 7
    assert await journaled.close(timeout=0.4) == 7


async def test_refused_results_raise_at_the_call_site(golden: tuple[RunResult, AlertTransition]) -> None:
    """What can never be sent is refused where the stack trace helps: an unmapped topic, a message bigger than a
    Kafka request; and a sink that is closed (a value JSON cannot carry never makes a result: refused when it is
    made, tests/streamer/sinks/test_kafka_outbox.py)."""
    tiers_base, alert_base = golden
    sink = KafkaSink(NO_BROKER, {"tiers": "skyattr-test-refused"})  # never started: no broker needed
    with pytest.raises(ValueError, match="no Kafka topic for 'alerts'"):
        sink.publish(_alert(alert_base, 1, "firing"))
    with pytest.raises(ValueError, match="limited to"):
        sink.publish(tiers_base.but(params={"blob": "x" * MAX_REQUEST_BYTES}))
    assert sink.buffered == 0  # nothing refused was buffered
    sink.publish(_tiers(tiers_base, 1))
    assert sink.buffered == 1
    with pytest.raises(ValueError, match="not after"):
        sink.publish(_tiers(tiers_base, 2), seq=1)
    assert await sink.close(timeout=0.5) == 1

    with pytest.raises(ValueError, match="unknown result topic"):
        KafkaSink(NO_BROKER, {"tiers": "t", "other": "o"})
    with pytest.raises(ValueError, match="at least one"):
        KafkaSink(NO_BROKER, {})
    with pytest.raises(ValueError, match="buffer_limit"):
        KafkaSink(NO_BROKER, buffer_limit=0)
    with pytest.raises(ValueError, match="retry_backoff_s"):
        KafkaSink(NO_BROKER, retry_backoff_s=(0.0, 1.0))
    with pytest.raises(ValueError, match="request_timeout_ms"):
        KafkaSink(NO_BROKER, request_timeout_ms=0)


# ---------------------------------------------------------------------------------------------------- threads
async def test_publish_from_a_worker_thread(
    golden: tuple[RunResult, AlertTransition], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker thread (the replay's ingest and attribution) publishes through the loop; when the loop's half
    fails, the error is counted and logged once, and asyncio's exception handler never sees it."""
    bootstrap = _bootstrap()
    tiers_base, _ = golden
    topics = await _fresh_topics(bootstrap)
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        sink = KafkaSink(bootstrap, topics, retry_backoff_s=FAST_BACKOFF)
        await sink.start()
        outbox_put = sink._outbox.put
        put_threads: set[int] = set()

        def recording_put(msg: Any) -> Any:
            put_threads.add(threading.get_ident())
            return outbox_put(msg)

        monkeypatch.setattr(sink._outbox, "put", recording_put)
        good = [_tiers(tiers_base, run) for run in (1, 2, 3)]
        await asyncio.to_thread(lambda: [sink.publish(r) for r in good])
        assert await sink.flush(TIMEOUT_S)
        assert sink.sent == 3 and sink.errors == 0
        assert put_threads == {threading.get_ident()}, "the outbox is touched on the loop's thread only"

        def broken_put(msg: Any) -> Any:
            raise RuntimeError("outbox broke")

        monkeypatch.setattr(sink._outbox, "put", broken_put)
        caplog.set_level(logging.ERROR, logger="skyattr.kafka")
        await asyncio.to_thread(sink.publish, _tiers(tiers_base, 5))
        await asyncio.to_thread(sink.publish, _tiers(tiers_base, 6), 6)
        await _wait_until(lambda: sink.errors >= 2, 2.0, "the loop's half to run")
        await asyncio.sleep(0.05)
        assert sink.errors == sink.stats.errors == 2
        logged = [r for r in caplog.records if "could not be buffered" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None, "logged once, with its traceback"
        assert not seen, f"asyncio's exception handler saw {seen}"
        assert await sink.close(timeout=5) == 0
    finally:
        loop.set_exception_handler(None)
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["tiers"], 3), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(r) for r in good]
