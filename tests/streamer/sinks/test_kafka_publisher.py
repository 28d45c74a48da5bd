"""KafkaPublisher against a real broker (ops/kafka/start.sh) and against no broker at all.

Tests that need the broker run only when SKYATTR_KAFKA_BOOTSTRAP is set; otherwise they skip, unless
SKYATTR_REQUIRE_KAFKA=1 (CI), which turns a missing broker into a failure. The no-broker tests always run: a missing
broker is exactly what they are about. The restart test stops and starts the broker with the ops scripts, so it runs
only against the scripts' own broker (127.0.0.1:9092) and always leaves it running.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import os
import time
import uuid
from typing import Any, ClassVar

import numpy as np
import pytest

import kernels
from streamer.core.attribution import AttributionConfig, attribute_snapshot
from streamer.core.state import Snapshot
from streamer.sinks.kafka import KafkaPublisher
from streamer.sinks.prometheus import Metrics
from tests.broker import KAFKA_OPS, SCRIPTS_BOOTSTRAP, ScriptBroker, kafka_bootstrap

NO_BROKER = "127.0.0.1:1"  # nothing listens there: connections are refused at once
TIMEOUT_S = 60.0
FAST_BACKOFF = (0.05, 0.5)


def _bootstrap() -> str:
    return kafka_bootstrap()


# ---------------------------------------------------------------------------------------------------- messages
@pytest.fixture(scope="module")
def real_output() -> tuple[dict[str, Any], dict[str, Any]]:
    """One tiers message and one alert built by the real attribution on a small synthetic snapshot."""
    pop = kernels.heavy_tailed_population(300, edges_per_agent=6.0, seed=11)
    start_us = 1_700_000_000_000_000
    snap = Snapshot(
        x=np.asarray(pop.x),
        visibility=np.asarray(pop.visibility),
        graph=pop.graph,
        dids=[f"did:plc:test{i:020d}" for i in range(len(pop.x))],
        window_start_us=start_us,
        window_end_us=start_us + 86_400_000_000,
        events=4321,
    )
    config = AttributionConfig(panel_size=20)
    out = attribute_snapshot(snap, config, run=1, as_of_us=snap.window_end_us, alert_active=False)
    if out.alert is None:  # not firing: claim it was, so that the run emits a "resolved" transition
        out = attribute_snapshot(snap, config, run=1, as_of_us=snap.window_end_us, alert_active=True)
    assert out.tiers is not None and out.alert is not None
    return out.tiers, out.alert


def _tiers(base: dict[str, Any], run: int) -> dict[str, Any]:
    msg = copy.deepcopy(base)
    msg["run"] = run
    msg["as_of_us"] = base["as_of_us"] + run * 300_000_000
    return msg


def _alert(base: dict[str, Any], run: int, state: str) -> dict[str, Any]:
    msg = copy.deepcopy(base)
    msg["run"] = run
    msg["state"] = state
    msg["severity"] = "warning" if state == "firing" else "info"
    return msg


# ---------------------------------------------------------------------------------------------------- helpers
async def _create_topics(bootstrap: str, *topics: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def _consume_all(bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes | None]]:
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
        got: list[tuple[bytes | None, bytes | None]] = []
        while len(got) < n:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=n - len(got))
            got.extend((rec.key, rec.value) for rec in batch.get(tp, []))
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


def _metric(metrics: Metrics, topic: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value("skyattr_kafka_messages_total", {"topic": topic, "outcome": outcome})
    return value or 0.0


async def test_round_trip_in_order(real_output: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """20 tiers + 2 alerts come back from the broker unchanged, in publish order, keyed by indicator."""
    bootstrap = _bootstrap()
    tiers_base, alert_base = real_output
    tag = uuid.uuid4().hex[:12]
    topics = {"tiers": f"skyattr-test-{tag}-tiers", "alerts": f"skyattr-test-{tag}-alerts"}
    await asyncio.wait_for(_create_topics(bootstrap, *topics.values()), TIMEOUT_S)
    tiers = [_tiers(tiers_base, run) for run in range(1, 21)]
    alerts = [_alert(alert_base, 8, "firing"), _alert(alert_base, 15, "resolved")]
    metrics = Metrics()
    pub = KafkaPublisher(bootstrap, topics, metrics=metrics, retry_backoff_s=FAST_BACKOFF)

    with LoopLag() as lag:
        for msg in tiers[:5]:  # published before start: they wait in the buffer
            pub.publish("tiers", msg)
        await pub.start()
        for msg in tiers[5:]:
            pub.publish("tiers", msg)
            for alert in alerts:
                if alert["run"] == msg["run"]:  # an alert goes out right after the tiers of its run
                    pub.publish("alerts", alert)
        assert await pub.flush(TIMEOUT_S)
    assert pub.sent == 22 and pub.buffered == 0 and pub.dropped == 0 and pub.failed == 0
    assert pub.connected
    assert _metric(metrics, topics["tiers"], "sent") == 20
    assert _metric(metrics, topics["alerts"], "sent") == 2
    assert metrics.registry.get_sample_value("skyattr_kafka_buffered") == 0
    assert await pub.close(timeout=5) == 0
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"

    for kind, sent in (("tiers", tiers), ("alerts", alerts)):
        got = await asyncio.wait_for(_consume_all(bootstrap, topics[kind], len(sent)), TIMEOUT_S)
        assert [key for key, _ in got] == [m["indicator"].encode() for m in sent]
        assert [json.loads(value) for _, value in got] == sent  # same messages, same order
        for (_, value), m in zip(got, sent, strict=True):  # the exact bytes: compact JSON, sorted keys
            assert value == json.dumps(m, sort_keys=True, separators=(",", ":")).encode()


async def test_broker_down_at_start_never_blocks(real_output: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """No broker: start returns at once, publish stays instant, failures are counted, close is bounded."""
    tiers_base, _ = real_output
    metrics = Metrics()
    topics = {"tiers": "skyattr-test-nobroker-tiers", "alerts": "skyattr-test-nobroker-alerts"}
    pub = KafkaPublisher(NO_BROKER, topics, metrics=metrics, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=2000)
    messages = [_tiers(tiers_base, run) for run in range(1, 31)]

    with LoopLag() as lag:
        t0 = time.perf_counter()
        await pub.start()
        assert time.perf_counter() - t0 < 0.1, "start() must not wait for the broker"
        worst_publish = 0.0
        for msg in messages:
            t = time.perf_counter()
            pub.publish("tiers", msg)
            worst_publish = max(worst_publish, time.perf_counter() - t)
            await asyncio.sleep(0.01)  # let the sender try meanwhile
        assert worst_publish < 0.05, f"publish took {worst_publish:.3f} s"
        await _wait_until(lambda: pub.failed >= 2, 5.0, "failed attempts to be counted")
        assert not pub.connected
        assert pub.buffered == 30 and pub.sent == 0
        assert _metric(metrics, topics["tiers"], "failed") == pub.failed
        assert metrics.registry.get_sample_value("skyattr_kafka_buffered") == 30

        t0 = time.perf_counter()
        left = await pub.close(timeout=2)
        elapsed = time.perf_counter() - t0
    assert left == 30, "close reports the messages left unsent"
    assert elapsed < 3.0, f"close(timeout=2) took {elapsed:.2f} s"
    assert [m.run for m in pub.pending()] == list(range(1, 31))
    assert lag.worst < 0.25, f"event loop blocked for {lag.worst:.3f} s"
    with pytest.raises(RuntimeError):
        pub.publish("tiers", messages[0])


async def test_buffer_bound_drops_oldest(real_output: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """A full buffer drops its oldest message: the newest results survive an outage, in order."""
    tiers_base, alert_base = real_output
    metrics = Metrics()
    topics = {"tiers": "skyattr-test-bound-tiers", "alerts": "skyattr-test-bound-alerts"}
    pub = KafkaPublisher(NO_BROKER, topics, buffer_limit=5, metrics=metrics, retry_backoff_s=FAST_BACKOFF)
    await pub.start()
    for run in range(1, 8):
        pub.publish("tiers", _tiers(tiers_base, run))
    pub.publish("alerts", _alert(alert_base, 8, "firing"))
    assert pub.dropped == 3 and pub.buffered == 5
    assert [(m.kind, m.run) for m in pub.pending()] == [("tiers", r) for r in (4, 5, 6, 7)] + [("alerts", 8)]
    assert [json.loads(m.value)["run"] for m in pub.pending()] == [4, 5, 6, 7, 8]
    assert _metric(metrics, topics["tiers"], "dropped") == 3
    assert metrics.registry.get_sample_value("skyattr_kafka_buffered") == 5
    assert await pub.close(timeout=0.4) == 5


async def test_broker_restart_loses_and_duplicates_nothing(
    real_output: tuple[dict[str, Any], dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Broker stopped mid-run and restarted: the buffered results go out once each, in order. Meanwhile a second
    publisher closes during the outage with a message in flight: bounded, and aiokafka is left in order."""
    bootstrap = _bootstrap()
    if bootstrap != SCRIPTS_BOOTSTRAP or os.environ.get("SKYATTR_KAFKA_PORT", "9092") != "9092":
        pytest.skip(f"restart test needs the ops/kafka scripts' own broker on {SCRIPTS_BOOTSTRAP}")
    if not (KAFKA_OPS / "start.sh").exists() or not (KAFKA_OPS / "stop.sh").exists():
        pytest.skip("ops/kafka/start.sh and stop.sh not found")
    broker = ScriptBroker()
    if broker.pid is None:
        pytest.skip(f"the broker on {SCRIPTS_BOOTSTRAP} was not started by ops/kafka/start.sh")
    tiers_base, _ = real_output
    topic = f"skyattr-test-{uuid.uuid4().hex[:12]}-restart"
    other_topic = f"{topic}-closed-while-down"
    await asyncio.wait_for(_create_topics(bootstrap, topic, other_topic), TIMEOUT_S)
    other = KafkaPublisher(bootstrap, {"tiers": other_topic}, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=3000)
    metrics = Metrics()
    pub = KafkaPublisher(
        bootstrap,
        {"tiers": topic, "alerts": f"{topic}-alerts"},
        metrics=metrics,
        retry_backoff_s=FAST_BACKOFF,
        request_timeout_ms=3000,
    )
    messages = [_tiers(tiers_base, run) for run in range(1, 21)]
    caplog.set_level(logging.WARNING, logger="asyncio")
    await pub.start()
    await other.start()
    try:
        try:
            for msg in messages[:10]:
                pub.publish("tiers", msg)
            other.publish("tiers", messages[0])
            assert await pub.flush(TIMEOUT_S) and await other.flush(TIMEOUT_S)
            assert pub.sent == 10 and pub.connected

            await asyncio.to_thread(broker.stop)
            for msg in messages[10:]:
                pub.publish("tiers", msg)
            for msg in messages[1:4]:
                other.publish("tiers", msg)
            await asyncio.sleep(0.5)  # the head is with aiokafka now, retried against a dead broker
            t0 = time.perf_counter()
            assert await other.close(timeout=2) == 3
            assert time.perf_counter() - t0 < 3.5, "close must not wait for the broker"
            await _wait_until(lambda: pub.failed > 0, 30.0, "the outage to be noticed")
            assert pub.sent == 10 and pub.buffered == 10 and not pub.connected
        finally:
            await asyncio.to_thread(broker.ensure_running)  # leave the shared broker up, whatever happened
        assert await pub.flush(TIMEOUT_S), f"{pub.buffered} message(s) still buffered after the restart"
        assert pub.sent == 20 and pub.connected and pub.dropped == 0
        assert _metric(metrics, topic, "sent") == 20
        assert _metric(metrics, topic, "failed") == pub.failed > 0
    finally:
        await pub.close(timeout=5)

    got = await asyncio.wait_for(_consume_all(bootstrap, topic, 20), TIMEOUT_S)  # exactly 20: no duplicate
    assert [json.loads(value)["run"] for _, value in got] == list(range(1, 21))
    assert [json.loads(value) for _, value in got] == messages
    gc.collect()  # unretrieved future exceptions are reported when collected
    await asyncio.sleep(0)
    asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not asyncio_errors, asyncio_errors


async def test_schema_violation_raises_value_error(real_output: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """A message that breaks its schema is a bug upstream: ValueError at the call site, naming the field."""
    tiers_base, alert_base = real_output
    pub = KafkaPublisher(NO_BROKER)  # never started: validation needs no broker

    missing = _tiers(tiers_base, 1)
    del missing["indicator"]
    with pytest.raises(ValueError, match="indicator"):
        pub.publish("tiers", missing)
    wrong_type = _tiers(tiers_base, 1)
    wrong_type["run"] = "one"
    with pytest.raises(ValueError, match=r"\$\.run"):
        pub.publish("tiers", wrong_type)
    nested = _tiers(tiers_base, 1)
    nested["tiers"]["panel"]["head"] = "lots"
    with pytest.raises(ValueError, match=r"\$\.tiers\.panel\.head"):
        pub.publish("tiers", nested)
    extra = _alert(alert_base, 2, "firing")
    extra["bogus_field"] = 1
    with pytest.raises(ValueError, match="bogus_field"):
        pub.publish("alerts", extra)
    bad_state = _alert(alert_base, 2, "exploded")
    with pytest.raises(ValueError, match=r"\$\.state"):
        pub.publish("alerts", bad_state)
    not_json = _tiers(tiers_base, 1)
    not_json["value"] = float("nan")
    with pytest.raises(ValueError, match="JSON"):
        pub.publish("tiers", not_json)
    with pytest.raises(ValueError, match="unknown message kind"):
        pub.publish("metrics", _tiers(tiers_base, 1))
    with pytest.raises(ValueError, match="no JSON Schema"):
        KafkaPublisher(NO_BROKER, {"tiers": "t", "other": "o"})
    assert pub.buffered == 0  # nothing invalid was buffered
    pub.publish("tiers", _tiers(tiers_base, 1))
    assert pub.buffered == 1
    assert await pub.close(timeout=0.5) == 1


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
    real_output: tuple[dict[str, Any], dict[str, Any]], fake_producer: type[FakeProducer]
) -> None:
    """A slow acknowledgement counts as a failure, but the same producer keeps the message: no second send."""
    tiers_base, _ = real_output
    fake_producer.plan = [("late", 0.35)]
    pub = KafkaPublisher("fake:9092", retry_backoff_s=FAST_BACKOFF, request_timeout_ms=100)
    await pub.start()
    pub.publish("tiers", _tiers(tiers_base, 1))
    pub.publish("tiers", _tiers(tiers_base, 2))
    assert await pub.flush(5)
    assert pub.failed >= 2 and pub.sent == 2
    assert len(fake_producer.instances) == 1
    assert _runs_of(fake_producer.instances[0].sent) == [1, 2]  # run 1 handed over once
    kwargs = fake_producer.instances[0].kwargs
    assert (kwargs["acks"], kwargs["enable_idempotence"], kwargs["compression_type"]) == ("all", True, "gzip")
    assert await pub.close(timeout=1) == 0


async def test_failed_future_replaces_producer_and_keeps_order(
    real_output: tuple[dict[str, Any], dict[str, Any]], fake_producer: type[FakeProducer]
) -> None:
    """A delivery future that fails (sequence gap) retires the producer; the same message goes out first on the
    next one."""
    from aiokafka.errors import OutOfOrderSequenceNumber

    tiers_base, _ = real_output
    fake_producer.plan = ["ok", OutOfOrderSequenceNumber()]
    pub = KafkaPublisher("fake:9092", retry_backoff_s=FAST_BACKOFF)
    await pub.start()
    for run in (1, 2, 3):
        pub.publish("tiers", _tiers(tiers_base, run))
    assert await pub.flush(5)
    first, second = fake_producer.instances
    assert first.stopped and not second.stopped
    assert _runs_of(first.sent) == [1, 2] and _runs_of(second.sent) == [2, 3]
    assert pub.sent == 3 and pub.failed == 1 and pub.dropped == 0
    assert await pub.close(timeout=1) == 0 and second.stopped


async def test_rejected_message_is_dropped_not_retried_forever(
    real_output: tuple[dict[str, Any], dict[str, Any]], fake_producer: type[FakeProducer]
) -> None:
    """A message the broker refuses for what it is (too large) must not hold back the ones behind it."""
    from aiokafka.errors import MessageSizeTooLargeError

    tiers_base, _ = real_output
    fake_producer.plan = [MessageSizeTooLargeError(), MessageSizeTooLargeError()]
    metrics = Metrics()
    pub = KafkaPublisher("fake:9092", metrics=metrics, retry_backoff_s=FAST_BACKOFF)
    await pub.start()
    pub.publish("tiers", _tiers(tiers_base, 1))
    pub.publish("tiers", _tiers(tiers_base, 2))
    assert await pub.flush(5)
    assert pub.sent == 1 and pub.dropped == 1 and pub.failed == 2
    assert _runs_of([v for p in fake_producer.instances for v in p.sent]) == [1, 1, 2]
    assert _metric(metrics, "skyattr.tiers", "dropped") == 1
    await pub.close(timeout=1)


async def test_overflow_keeps_the_message_in_flight(
    real_output: tuple[dict[str, Any], dict[str, Any]], fake_producer: type[FakeProducer]
) -> None:
    """The message the producer already holds may be written any moment: overflow drops the next oldest."""
    tiers_base, _ = real_output
    fake_producer.plan = ["hang"]
    pub = KafkaPublisher("fake:9092", buffer_limit=2, retry_backoff_s=FAST_BACKOFF, request_timeout_ms=200)
    await pub.start()
    pub.publish("tiers", _tiers(tiers_base, 1))
    await _wait_until(lambda: bool(fake_producer.instances and fake_producer.instances[0].sent), 2, "the send")
    for run in (2, 3, 4):
        pub.publish("tiers", _tiers(tiers_base, run))
    assert [m.run for m in pub.pending()] == [1, 4] and pub.dropped == 2
    t0 = time.perf_counter()
    assert await pub.close(timeout=0.5) == 2
    assert time.perf_counter() - t0 < 1.5
