"""KafkaSink against a real broker (ops/kafka/start.sh), against no broker at all, and against a fake producer.

Tests that need the broker run only when SKYATTR_KAFKA_BOOTSTRAP is set; otherwise they skip, unless
SKYATTR_REQUIRE_KAFKA=1 (CI), which turns a missing broker into a failure. The no-broker tests always run: a missing
broker is exactly what they are about. The restart test stops and starts the broker with the ops scripts, so it runs
only against the scripts' own broker (127.0.0.1:9092) and always leaves it running.

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
from typing import Any, ClassVar

import pytest

from streamer.core.results import AlertTransition, Result, RunResult, result_from_message
from streamer.sinks.base import Sink
from streamer.sinks.kafka import ID_HEADER, MAX_REQUEST_BYTES, KafkaSink
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
    """The first ``n`` records of the topic's only partition, after checking that it holds exactly ``n``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        end = (await consumer.end_offsets([tp]))[tp]
        assert end == n, f"{topic} holds {end} records, expected exactly {n}"
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[Any] = []
        while len(got) < n:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=n - len(got))
            got.extend(batch.get(tp, []))
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


class Acks:
    """Records ``on_ack(topic, result_id)`` calls and the thread they came on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.threads: set[int] = set()

    def __call__(self, topic: str, result_id: str) -> None:
        self.calls.append((topic, result_id))
        self.threads.add(threading.get_ident())


# ---------------------------------------------------------------------------------------------------- real broker
async def test_round_trip_in_order_with_acks(golden: tuple[RunResult, AlertTransition]) -> None:
    """20 tiers + 2 alerts come back from the broker unchanged, in publish order, keyed by indicator, with their
    identity header; every acknowledgement is reported, in order, on the loop."""
    bootstrap = _bootstrap()
    tiers_base, alert_base = golden
    topics = await _fresh_topics(bootstrap)
    tiers = [_tiers(tiers_base, run) for run in range(1, 21)]
    alerts = [_alert(alert_base, 8, "firing"), _alert(alert_base, 15, "resolved")]
    acks = Acks()
    sink = KafkaSink(bootstrap, topics, on_ack=acks, retry_backoff_s=FAST_BACKOFF)
    assert isinstance(sink, Sink) and sink.name == "kafka"

    published: list[Result] = []
    with LoopLag() as lag:
        for result in tiers[:5]:  # published before start: they wait in the buffer
            sink.publish(result)
            published.append(result)
        await sink.start()
        for result in tiers[5:]:
            sink.publish(result)
            published.append(result)
            for alert in alerts:
                if alert.run == result.run:  # an alert goes out right after the tiers of its run
                    sink.publish(alert)
                    published.append(alert)
        assert await sink.flush(TIMEOUT_S)
    assert sink.sent == 22 and sink.buffered == 0 and sink.dropped == 0 and sink.failed == 0
    assert sink.connected and sink.errors == 0
    assert sink.stats.messages[(topics["tiers"], "sent")] == 20
    assert sink.stats.messages[(topics["alerts"], "sent")] == 2
    assert sink.stats.buffered == 0 and sink.stats.connected
    assert acks.calls == [(r.topic, r.id) for r in published]
    assert acks.threads == {threading.get_ident()}, "on_ack runs on the event loop's thread"
    assert await sink.close(timeout=5) == 0
    assert not sink.connected
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"

    for kind, sent in (("tiers", tiers), ("alerts", alerts)):
        got = await asyncio.wait_for(_consume_all(bootstrap, topics[kind], len(sent)), TIMEOUT_S)
        assert [rec.key for rec in got] == [r.indicator.encode() for r in sent]
        assert [json.loads(rec.value) for rec in got] == [r.to_message() for r in sent]  # same order
        assert [rec.value for rec in got] == [_wire(r) for r in sent]  # the exact bytes
        assert [dict(rec.headers)[ID_HEADER] for rec in got] == [r.id.encode() for r in sent]


async def test_resend_skips_what_the_topic_already_holds(golden: tuple[RunResult, AlertTransition]) -> None:
    """After a restart, journaled results are resent with verify: those the topic's tail already holds are skipped
    (and acknowledged), the others are written once, in journal order."""
    bootstrap = _bootstrap()
    tiers_base, alert_base = golden
    topics = await _fresh_topics(bootstrap)
    alert = _alert(alert_base, 3, "firing")
    journal: list[Result] = [_tiers(tiers_base, 1), _tiers(tiers_base, 2), _tiers(tiers_base, 3), alert]
    journal += [_tiers(tiers_base, 4), _tiers(tiers_base, 5)]

    before = KafkaSink(bootstrap, topics, retry_backoff_s=FAST_BACKOFF)
    await before.start()
    for result in journal[:4]:  # written, but (say) the acknowledgements were never persisted
        before.publish(result)
    assert await before.flush(TIMEOUT_S)
    assert await before.close(timeout=5) == 0

    acks = Acks()
    after = KafkaSink(bootstrap, topics, on_ack=acks, retry_backoff_s=FAST_BACKOFF)
    for result in journal:
        after.resend(result)
    assert all(m.verify for m in after.pending())
    await after.start()
    assert await after.flush(TIMEOUT_S)
    assert after.already_written == 4 and after.sent == 2 and after.buffered == 0
    assert after.stats.messages[(topics["tiers"], "already_written")] == 3
    assert after.stats.messages[(topics["alerts"], "already_written")] == 1
    assert after.stats.messages[(topics["tiers"], "sent")] == 2
    assert acks.calls == [(r.topic, r.id) for r in journal], "acknowledged in journal order, skipped ones too"
    assert await after.close(timeout=5) == 0

    got = await asyncio.wait_for(_consume_all(bootstrap, topics["tiers"], 5), TIMEOUT_S)  # exactly 5: no duplicate
    assert [rec.value for rec in got] == [_wire(r) for r in journal if r.topic == "tiers"]
    got = await asyncio.wait_for(_consume_all(bootstrap, topics["alerts"], 1), TIMEOUT_S)
    assert [rec.value for rec in got] == [_wire(alert)]


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
    acks = Acks()
    sink = KafkaSink(
        bootstrap,
        {"tiers": topic, "alerts": f"{topic}-alerts"},
        on_ack=acks,
        retry_backoff_s=FAST_BACKOFF,
        request_timeout_ms=3000,
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
            await asyncio.sleep(0.5)  # the head is with aiokafka now, retried against a dead broker
            t0 = time.perf_counter()
            assert await other.close(timeout=2) == 3
            assert time.perf_counter() - t0 < 3.5, "close must not wait for the broker"
            await _wait_until(lambda: sink.failed > 0, 30.0, "the outage to be noticed")
            assert sink.sent == 10 and sink.buffered == 10 and not sink.connected
        finally:
            await asyncio.to_thread(broker.ensure_running)  # leave the shared broker up, whatever happened
        assert await sink.flush(TIMEOUT_S), f"{sink.buffered} message(s) still buffered after the restart"
        assert sink.sent == 20 and sink.connected and sink.dropped == 0
        assert sink.stats.messages[(topic, "sent")] == 20
        assert sink.stats.messages[(topic, "failed")] == sink.failed > 0
        assert acks.calls == [("tiers", r.id) for r in results]
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
    acks = Acks()
    sink = KafkaSink(NO_BROKER, topics, on_ack=acks, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=2000)
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
        assert sink.buffered == 30 and sink.sent == 0
        assert sink.stats.messages[(topics["tiers"], "failed")] == sink.failed
        assert sink.stats.buffered == 30

        t0 = time.perf_counter()
        left = await sink.close(timeout=2)
        elapsed = time.perf_counter() - t0
    assert left == 30, "close reports the messages left unsent"
    assert elapsed < 3.0, f"close(timeout=2) took {elapsed:.2f} s"
    assert [m.run for m in sink.pending()] == list(range(1, 31))
    assert [m.id for m in sink.pending()] == [r.id for r in results]
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"
    assert acks.calls == []
    assert await sink.close(timeout=2) == 30, "close is idempotent"
    with pytest.raises(RuntimeError):
        sink.publish(results[0])
    with pytest.raises(RuntimeError):
        sink.resend(results[0])


async def test_buffer_bound_drops_oldest(golden: tuple[RunResult, AlertTransition]) -> None:
    """A full buffer drops its oldest message: the newest results survive an outage, in order."""
    tiers_base, alert_base = golden
    topics = {"tiers": "skyattr-test-bound-tiers", "alerts": "skyattr-test-bound-alerts"}
    sink = KafkaSink(NO_BROKER, topics, buffer_limit=5, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    for run in range(1, 8):
        sink.publish(_tiers(tiers_base, run))
    sink.publish(_alert(alert_base, 8, "firing"))
    assert sink.dropped == 3 and sink.buffered == 5
    assert [(m.kind, m.run) for m in sink.pending()] == [("tiers", r) for r in (4, 5, 6, 7)] + [("alerts", 8)]
    assert [json.loads(m.value)["run"] for m in sink.pending()] == [4, 5, 6, 7, 8]
    assert sink.stats.messages[(topics["tiers"], "dropped")] == 3
    assert sink.stats.buffered == 5
    assert await sink.close(timeout=0.4) == 5


async def test_refused_results_raise_at_the_call_site(golden: tuple[RunResult, AlertTransition]) -> None:
    """What can never be sent is refused where the stack trace helps: an unmapped topic, a message bigger than a
    Kafka request; and a sink that is closed (a value JSON cannot carry never makes a result: refused when it is
    made, tests/streamer/sinks/test_kafka_outbox.py)."""
    tiers_base, alert_base = golden
    sink = KafkaSink(NO_BROKER, {"tiers": "skyattr-test-refused"})  # never started: no broker needed
    with pytest.raises(ValueError, match="no Kafka topic for 'alerts'"):
        sink.publish(_alert(alert_base, 1, "firing"))
    with pytest.raises(ValueError, match="no Kafka topic for 'alerts'"):
        sink.resend(_alert(alert_base, 1, "firing"))
    with pytest.raises(ValueError, match="limited to"):
        sink.publish(tiers_base.but(params={"blob": "x" * MAX_REQUEST_BYTES}))
    assert sink.buffered == 0  # nothing refused was buffered
    sink.publish(_tiers(tiers_base, 1))
    assert sink.buffered == 1
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


# ---------------------------------------------------------------------------------------------------- fault paths
class FakeProducer:
    """Stands in for AIOKafkaProducer to reach the failure paths a healthy local broker never takes.

    ``plan`` holds one outcome per ``send`` call, across producer instances: "ok", "hang" (never acknowledged),
    ``("late", seconds)`` or an exception instance the delivery future fails with."""

    plan: ClassVar[list[Any]] = []
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[bytes] = []
        self.headers: list[Any] = []
        self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    async def send(
        self, topic: str, value: bytes, key: bytes, timestamp_ms: int, headers: Any = None
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(value)
        self.headers.append(headers)
        outcome = FakeProducer.plan.pop(0) if FakeProducer.plan else "ok"
        if outcome == "ok":
            fut.set_result(None)
        elif isinstance(outcome, tuple):
            asyncio.get_running_loop().call_later(outcome[1], fut.set_result, None)
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        return fut


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    import aiokafka

    FakeProducer.plan = []
    FakeProducer.instances = []
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    return FakeProducer


def _runs_of(values: list[bytes]) -> list[int]:
    return [json.loads(v)["run"] for v in values]


async def test_late_ack_is_awaited_not_resent(
    golden: tuple[RunResult, AlertTransition], fake_producer: type[FakeProducer]
) -> None:
    """A slow acknowledgement counts as a failure, but the same producer keeps the message: no second send."""
    tiers_base, _ = golden
    fake_producer.plan = [("late", 0.35)]
    sink = KafkaSink("fake:9092", retry_backoff_s=FAST_BACKOFF, request_timeout_ms=100)
    await sink.start()
    first, second = _tiers(tiers_base, 1), _tiers(tiers_base, 2)
    sink.publish(first)
    sink.publish(second)
    assert await sink.flush(5)
    assert sink.failed >= 2 and sink.sent == 2
    assert len(fake_producer.instances) == 1
    producer = fake_producer.instances[0]
    assert _runs_of(producer.sent) == [1, 2]  # run 1 handed over once
    assert producer.headers == [[(ID_HEADER, first.id.encode())], [(ID_HEADER, second.id.encode())]]
    kwargs = producer.kwargs
    assert (kwargs["acks"], kwargs["enable_idempotence"], kwargs["compression_type"]) == ("all", True, "gzip")
    assert await sink.close(timeout=1) == 0


async def test_failed_future_replaces_producer_and_keeps_order(
    golden: tuple[RunResult, AlertTransition], fake_producer: type[FakeProducer]
) -> None:
    """A delivery future that fails (sequence gap) retires the producer; the same message goes out first on the
    next one."""
    from aiokafka.errors import OutOfOrderSequenceNumber

    tiers_base, _ = golden
    fake_producer.plan = ["ok", OutOfOrderSequenceNumber()]
    acks = Acks()
    sink = KafkaSink("fake:9092", on_ack=acks, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    results = [_tiers(tiers_base, run) for run in (1, 2, 3)]
    for result in results:
        sink.publish(result)
    assert await sink.flush(5)
    first, second = fake_producer.instances
    assert first.stopped and not second.stopped
    assert _runs_of(first.sent) == [1, 2] and _runs_of(second.sent) == [2, 3]
    assert sink.sent == 3 and sink.failed == 1 and sink.dropped == 0
    assert acks.calls == [("tiers", r.id) for r in results]
    assert await sink.close(timeout=1) == 0 and second.stopped


async def test_rejected_message_is_given_up_not_retried_forever(
    golden: tuple[RunResult, AlertTransition], fake_producer: type[FakeProducer]
) -> None:
    """A message the broker refuses for what it is (too large) must not hold back the ones behind it; it is never
    acknowledged, so a journal-backed restart still knows it was not delivered."""
    from aiokafka.errors import MessageSizeTooLargeError

    tiers_base, _ = golden
    fake_producer.plan = [MessageSizeTooLargeError(), MessageSizeTooLargeError()]
    acks = Acks()
    sink = KafkaSink("fake:9092", on_ack=acks, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    sink.publish(_tiers(tiers_base, 1))
    sink.publish(_tiers(tiers_base, 2))
    assert await sink.flush(5)
    assert sink.sent == 1 and sink.rejected == 1 and sink.dropped == 0 and sink.failed == 2
    assert _runs_of([v for p in fake_producer.instances for v in p.sent]) == [1, 1, 2]
    assert sink.stats.messages[("skyattr.tiers", "rejected")] == 1
    assert acks.calls == [("tiers", _tiers(tiers_base, 2).id)]
    await sink.close(timeout=1)


async def test_overflow_keeps_the_message_in_flight(
    golden: tuple[RunResult, AlertTransition], fake_producer: type[FakeProducer]
) -> None:
    """The message the producer already holds may be written any moment: overflow drops the next oldest."""
    tiers_base, _ = golden
    fake_producer.plan = ["hang"]
    sink = KafkaSink("fake:9092", buffer_limit=2, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=200)
    await sink.start()
    sink.publish(_tiers(tiers_base, 1))
    await _wait_until(lambda: bool(fake_producer.instances and fake_producer.instances[0].sent), 2, "the send")
    for run in (2, 3, 4):
        sink.publish(_tiers(tiers_base, run))
    assert [m.run for m in sink.pending()] == [1, 4] and sink.dropped == 2
    t0 = time.perf_counter()
    assert await sink.close(timeout=0.5) == 2
    assert time.perf_counter() - t0 < 1.5


async def test_failing_on_ack_is_logged_not_fatal(
    golden: tuple[RunResult, AlertTransition], fake_producer: type[FakeProducer], caplog: pytest.LogCaptureFixture
) -> None:
    """An acknowledgement the caller cannot record is logged; delivery goes on."""
    tiers_base, _ = golden

    def broken(topic: str, result_id: str) -> None:
        raise OSError("disk full")

    sink = KafkaSink("fake:9092", on_ack=broken, retry_backoff_s=FAST_BACKOFF)
    await sink.start()
    for run in (1, 2):
        sink.publish(_tiers(tiers_base, run))
    assert await sink.flush(5) and sink.sent == 2
    assert sum("recording the acknowledgement" in r.getMessage() for r in caplog.records) == 2
    assert await sink.close(timeout=1) == 0


# ---------------------------------------------------------------------------------------------------- threads
async def test_publish_from_a_worker_thread(
    golden: tuple[RunResult, AlertTransition],
    fake_producer: type[FakeProducer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker thread (the replay's ingest and attribution) publishes through the loop; when the loop's half
    fails, the error is counted and logged once, and asyncio's exception handler never sees it."""
    tiers_base, _ = golden
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        acks = Acks()
        sink = KafkaSink("fake:9092", on_ack=acks, retry_backoff_s=FAST_BACKOFF)
        await sink.start()
        outbox_put = sink._outbox.put
        put_threads: set[int] = set()

        def recording_put(msg: Any) -> Any:
            put_threads.add(threading.get_ident())
            return outbox_put(msg)

        monkeypatch.setattr(sink._outbox, "put", recording_put)
        good = [_tiers(tiers_base, run) for run in (1, 2, 3)]
        await asyncio.to_thread(lambda: [sink.publish(r) for r in good])
        assert await sink.flush(5)
        assert sink.sent == 3 and sink.errors == 0
        assert put_threads == {threading.get_ident()}, "the outbox is touched on the loop's thread only"
        assert acks.calls == [("tiers", r.id) for r in good]

        def broken_put(msg: Any) -> Any:
            raise RuntimeError("outbox broke")

        monkeypatch.setattr(sink._outbox, "put", broken_put)
        caplog.set_level(logging.ERROR, logger="skyattr.kafka")
        await asyncio.to_thread(sink.publish, _tiers(tiers_base, 5))
        await asyncio.to_thread(sink.resend, _tiers(tiers_base, 6))
        await _wait_until(lambda: sink.errors >= 2, 2.0, "the loop's half to run")
        await asyncio.sleep(0.05)
        assert sink.errors == sink.stats.errors == 2
        logged = [r for r in caplog.records if "could not be buffered" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None, "logged once, with its traceback"
        assert not seen, f"asyncio's exception handler saw {seen}"
        assert await sink.close(timeout=1) == 0
    finally:
        loop.set_exception_handler(None)
