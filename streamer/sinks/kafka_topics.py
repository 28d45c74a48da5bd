"""Kafka topics as skyattr's exactly-once writers use them: made when missing, and read back.

Both the results publisher (:mod:`streamer.sinks.kafka_sender`) and the distributed roles keep where they stand in
compacted topics written in the same transaction as their output; these are the helpers that create such topics and
read committed records back (the last of a key, or the tail of each partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

READ_BACK_TIMEOUT_S = 30.0  # a compacted topic read back with no record for this long: the broker is away
SETTLE_S = 90.0  # longest wait for a transaction open on a topic read back (aiokafka's transaction timeout: 60 s)


async def ensure_topics(
    bootstrap: str,
    wanted: dict[str, tuple[int, bool]],
    security: dict[str, Any] | None = None,
    configs: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """Create each missing topic of ``wanted`` (name → (partitions, compacted)), replicated on as many brokers as
    there are, up to 3, with its ``configs`` (name → topic configuration) besides; a topic that exists, or that
    another process makes meanwhile, is used as it is. Returns the partition count of each topic that existed
    before."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            replicas = max(1, min(3, len((await admin.describe_cluster())["brokers"])))
            for name in missing:
                partitions, compacted = wanted[name]
                made = {"cleanup.policy": "compact"} if compacted else {}
                made.update((configs or {}).get(name, {}))
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(name, partitions, replicas, topic_configs=made)])
        held = [name for name in wanted if name in existing]
        described = await admin.describe_topics(held) if held else []
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


async def partitions_of(bootstrap: str, topic: str, security: dict[str, Any] | None = None) -> list[int]:
    """The partition numbers of ``topic`` ([] when there is no such topic), asked of the cluster now. The topic
    list is asked first: describing a missing topic makes a broker with ``auto.create.topics.enable`` (the
    default) create it, with one partition, under a worker that started before its ingest."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
    try:
        await admin.start()
        if topic not in set(await admin.list_topics()):
            return []
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0].get("error_code"):
        return []
    return sorted(p["partition"] for p in described[0]["partitions"])


async def load_latest(bootstrap: str, topic: str, key: str, security: dict[str, Any] | None = None) -> bytes | None:
    """The value of the last committed record of ``key`` in a compacted ``topic`` (None when there is none): the
    topic read from its start through every record written before the call (:func:`read_back`)."""
    latest: bytes | None = None
    wanted = key.encode()

    def take(record: Any) -> None:
        nonlocal latest
        if record.key == wanted:
            latest = record.value

    await read_back(bootstrap, topic, take, security)
    return latest


async def read_back(
    bootstrap: str,
    topic: str,
    each: Callable[[Any], None],
    security: dict[str, Any] | None = None,
    *,
    last: int | None = None,
    partitions: list[int] | None = None,
    on_target: Callable[[Any, int], None] | None = None,
) -> None:
    """Hand ``each`` every committed record of ``topic`` (of its ``partitions``, or all) written before the call,
    partition by partition, each in offset order: all of them, or those among the ``last`` offsets of each
    partition. ``on_target(tp, offset)`` hears where each partition's read will end, before its first record.

    Under ``read_committed`` a consumer stops at the last stable offset, the start of the oldest transaction still
    open on the partition, which may be another writer's (or a killed one's, until the broker aborts it); a record
    committed after that offset would be missed, and a stale position read. So each partition is read up to its
    high watermark as it was at the start, waiting (at most :data:`SETTLE_S`) for transactions open before it to
    end. Raises ``TimeoutError`` when no record arrives for :data:`READ_BACK_TIMEOUT_S` (the broker went away under
    the read) or the wait is over."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    held = await partitions_of(bootstrap, topic, security)
    tps = [TopicPartition(topic, p) for p in held if partitions is None or p in partitions]
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **(security or {}),
    )
    try:
        await consumer.start()
        consumer.assign(tps)
        if last is None:
            await consumer.seek_to_beginning(*tps)
        else:
            begins, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(begins[tp], ends[tp] - last))
        for tp in tps:
            settle_by = time.monotonic() + SETTLE_S
            progress = time.monotonic()
            target: int | None = None  # the high watermark seen at the first fetch
            while target is None or await consumer.position(tp) < target:
                batch = await consumer.getmany(tp, timeout_ms=200 if target is None else 1000)
                if target is None:
                    target = consumer.highwater(tp)
                    if target is not None and on_target is not None:
                        on_target(tp, target)
                if batch.get(tp):
                    progress = time.monotonic()
                elif time.monotonic() - progress > READ_BACK_TIMEOUT_S and consumer.last_stable_offset(tp) != (
                    await consumer.position(tp)
                ):
                    raise TimeoutError(f"no record of {topic} for {READ_BACK_TIMEOUT_S:g} s while reading it back")
                elif time.monotonic() > settle_by:
                    raise TimeoutError(f"a transaction on {tp.topic}[{tp.partition}] stayed open for {SETTLE_S:g} s")
                for record in batch.get(tp, []):
                    each(record)
    finally:
        await stop_consumer(consumer)


async def stop_consumer(consumer: Any) -> None:
    """Stop an aiokafka consumer. Its coordinator task can end in CancelledError when the consumer stops soon
    after it started; that one is not ours and is dropped, a cancellation of this task is passed on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
