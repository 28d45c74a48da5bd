"""Round trip through a real Kafka broker (the one ops/kafka/start.sh runs, or any other).

Runs only when SKYATTR_KAFKA_BOOTSTRAP is set (e.g. ``127.0.0.1:9092``); otherwise it skips, unless
SKYATTR_REQUIRE_KAFKA=1, in which case a missing broker is a failure (CI sets both).
"""

from __future__ import annotations

import asyncio
import uuid

from ..broker import kafka_bootstrap

N_MESSAGES = 100
TIMEOUT_S = 60.0


def _bootstrap() -> str:
    return kafka_bootstrap()


async def _create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="gzip",
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {md.partition for md in metadata} == {0}
    return [md.offset for md in metadata]


async def _consume(bootstrap: str, topic: str, n: int) -> list[tuple[int, bytes | None, bytes | None]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"skyattr-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    got: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        async for msg in consumer:
            got.append((msg.offset, msg.key, msg.value))
            if len(got) >= n:
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_produce_consume_round_trip() -> None:
    bootstrap = _bootstrap()
    topic = f"skyattr-ops-test-{uuid.uuid4().hex[:12]}"
    records = [
        (f"key-{i:03d}".encode(), f'{{"seq": {i}, "payload": "{"x" * (i % 17)}"}}'.encode()) for i in range(N_MESSAGES)
    ]

    await asyncio.wait_for(_create_topic(bootstrap, topic), TIMEOUT_S)
    offsets = await asyncio.wait_for(_produce(bootstrap, topic, records), TIMEOUT_S)
    assert offsets == list(range(N_MESSAGES)), "idempotent producer should write one record per send, in order"

    got = await asyncio.wait_for(_consume(bootstrap, topic, N_MESSAGES), TIMEOUT_S)
    assert [offset for offset, _, _ in got] == list(range(N_MESSAGES))
    assert [(key, value) for _, key, value in got] == records
