"""A worker's changelog on the real broker: transactions of the worker's own commit, snapshots, the records before
each snapshot deleted, and a partition read back into exactly the state that was committed.

Keys are set and deleted in a partition's store and committed by :meth:`Worker.commit`, the worker's one
transaction (changelog record and consumer offset), with a small snapshot threshold so that several snapshots are
taken and the log before each is deleted; :meth:`Worker.restore`, what a worker given the partition runs, then reads
the same state back from far fewer records than were written.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from streamer.distributed import changelog
from streamer.distributed.partition_state import PartitionState
from streamer.distributed.worker import Held, Worker, WorkerConfig
from streamer.sinks.kafka_sender import transactional_producer
from streamer.sinks.kafka_topics import ensure_topics
from tests.broker import kafka_bootstrap


def test_snapshots_delete_the_log_before_them_and_the_state_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = kafka_bootstrap()
    monkeypatch.setattr(changelog, "SNAPSHOT_RATIO", 0.02)  # a snapshot once the deltas pass ~1.3 kB
    run = uuid.uuid4().hex[:8]
    cfg = WorkerConfig(bootstrap=bootstrap, events_topic=f"test.events.{run}", app_id=f"test-cl-{run}")

    async def main() -> tuple[dict, dict, int, int, int]:
        await ensure_topics(bootstrap, {cfg.events_topic: (1, False)})
        await ensure_topics(bootstrap, {cfg.changelog_topic: (1, False)}, configs={cfg.changelog_topic: {
            "retention.ms": "-1"}})  # fmt: skip
        worker = Worker(cfg, 1)
        producer = transactional_producer(bootstrap, f"{cfg.app_id}-0")
        await producer.start()
        store = changelog.TrackedStore()
        held = Held(0, PartitionState(0, store), store, changelog.Meter(), producer, 0)
        try:
            for batch in range(60):
                for i in range(40):
                    store[f"0\x1fa\x1f{batch % 7}\x1fdid:plc:{batch}-{i}"] = [batch, i, batch * 40 + i]
                for i in range(0, 40, 3):
                    store.pop(f"0\x1fa\x1f{(batch - 1) % 7}\x1fdid:plc:{batch - 1}-{i}", None)
                held.next_offset += 1
                await worker.commit(held, None)
        finally:
            await producer.stop()
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(cfg.changelog_topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            start, end = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
        back, _, read = await worker.restore(0)
        return dict(store.data), dict(back.data), read, start, end

    want, got, read, start, end = asyncio.run(main())
    assert got == want and len(want) > 1000
    assert start > 0, "the records before the last snapshot were deleted"
    assert read < 60 / 2, f"read back from the last snapshot on: {read} records of the 60 transactions' ({end})"
