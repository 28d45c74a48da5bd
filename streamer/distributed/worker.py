"""``skyattr worker``: folds ``skyattr.events`` into per-partition state in batches and publishes a shard of it at
every due time, exactly once.

One consumer of the group reads the events topic ``read_committed`` in batches (``getmany``); each partition's
records go, in offset order, to that partition's :class:`~streamer.distributed.partition_state.PartitionState`,
held in memory on a :class:`~streamer.distributed.changelog.TrackedStore`. What a batch changed leaves in **one
Kafka transaction per partition**: one changelog record of the keys it changed (:mod:`streamer.distributed.
changelog`), the shard of a ``tick`` when the batch reached one (a transaction ends at each tick, so a shard holds
the state at its tick and nothing after it), and the consumer offset past the batch. State, offsets and shards
so move together or not at all: a worker killed anywhere leaves either the whole transaction or none of it, and
whoever takes the partition next restores the state from the changelog and goes on at the committed offset.
This is how Kafka Streams runs exactly once; a record per changed key and per-record bookkeeping cost more than
the folding itself.

Each partition's transactions come from a producer whose transactional id names the partition
(``<app_id>-<partition>``): the worker given a partition starts that producer first, which fences the producer
of whoever held it before and aborts its open transaction, and only then reads the changelog and the committed
offset. So a worker that lost a partition without knowing it (paused past its session, then back) can commit
nothing more for it.

A partition's state is rebuilt from its changelog topic (``<app_id>-changelog``, one partition per events
partition): a snapshot and the deltas after it (the records before the last snapshot are deleted once it is
committed). Nothing is kept on disk; a worker restarted anywhere holds its state again once it read that.

The per-key offsets and ``skyattr-seq`` turns of :mod:`~streamer.distributed.partition_state` stay as a second
guard: a record read again changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.distributed import changelog
from streamer.distributed.defaults import (
    EVENTS_TOPIC,
    SESSION_TIMEOUT_S,
    SHARDS_TOPIC,
    STUCK_TIMEOUT_S,
    WORKER_APP_ID,
)
from streamer.distributed.partition_state import PartitionState
from streamer.distributed.ride_out import BrokerLink, probe
from streamer.distributed.shards import CHUNK_BYTES
from streamer.sinks.kafka_sender import acknowledged, tracked, transactional_producer

if TYPE_CHECKING:
    from streamer.distributed.worker_metrics import WorkerMetrics

log = logging.getLogger("skyattr.worker")

MAX_BATCH = 5_000  # records of one getmany
POLL_MS = 500


@dataclass(frozen=True)
class WorkerConfig:
    """Where the worker reads and writes."""

    bootstrap: str = "127.0.0.1:9092"
    events_topic: str = EVENTS_TOPIC
    shards_topic: str = SHARDS_TOPIC
    app_id: str = WORKER_APP_ID
    instance: str = ""  # static group membership (``group.instance.id``): a restarted pod keeps its partitions
    chunk_bytes: int = CHUNK_BYTES
    session_timeout_s: float = SESSION_TIMEOUT_S  # a worker silent this long leaves the group and its partitions move
    metrics_port: int | None = None  # /metrics, /healthz, /readyz (streamer.distributed.worker_metrics)
    metrics_host: str = "127.0.0.1"
    stuck_timeout_s: float = STUCK_TIMEOUT_S  # no partition held and none recovering this long: exit 3 (StuckWatch)
    security: dict[str, Any] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-changelog"


STUCK_CHECK_S = 10.0


class StuckWatch:
    """A worker that holds no partition of the events topic and is not recovering one, for ``timeout_s`` in a row,
    exits (status 3) so that Kubernetes starts it again: a worker that sits without partitions while others have
    more than they can fold helps nobody, and a new pod joins the group afresh. The exit is immediate
    (``os._exit``): everything it did is in committed transactions. 0 turns it off (more workers than
    partitions)."""

    def __init__(self, timeout_s: float, clock: Any = time.monotonic) -> None:
        self.timeout_s, self.clock = timeout_s, clock
        self.idle_since: float | None = None

    def check(self, idle: bool, exit: Any = None) -> None:
        if not self.timeout_s:
            return
        now = self.clock()
        if not idle:
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.timeout_s:
            log.critical(
                "no partition of the events topic held and none recovering for %.0f s (--stuck-timeout): exiting so "
                "the worker is started again",
                now - self.idle_since,
            )
            logging.shutdown()
            (exit or os._exit)(3)


def _fenced_writes_named_once(previous: Any) -> Any:
    """An event loop exception handler: a fenced producer fails the writes it still had pending inside aiokafka
    with the same error, futures nobody awaits any more, which asyncio would log each with a traceback; the fence
    is named once by :meth:`Worker.run`, so these go to the debug log. Anything else goes on as before."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        fenced = type(exc).__name__ in ("ProducerFenced", "InvalidProducerEpoch")
        if fenced and str(context.get("message", "")).startswith("Future exception was never retrieved"):
            log.debug("a write of a fenced producer, abandoned: %s", exc)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle


@dataclass
class Held:
    """A partition this worker folds: its state, its store and changelog meter, its transactional producer, the
    next offset to fold and the record bytes folded since its last shard."""

    partition: int
    state: PartitionState
    store: changelog.TrackedStore
    meter: changelog.Meter
    producer: Any
    next_offset: int
    folded_bytes: int = 0


class Worker:
    """One worker process's partitions (see the module doc); :meth:`run` is one session with the broker."""

    def __init__(self, config: WorkerConfig, partitions: int, metrics: WorkerMetrics | None = None) -> None:
        self.config, self.partitions, self.metrics = config, partitions, metrics
        self.held: dict[int, Held] = {}
        self.recovering: dict[int, int] = {}  # partition -> changelog records still to read
        self.assigned_once = False
        self.consumer: Any = None
        self.lock = asyncio.Lock()  # a batch's transactions and a rebalance's hand-over, one at a time
        self.told: set[int] = set()
        if metrics is not None:
            metrics.bind(self)

    # what the metrics read -----------------------------------------------------------------------------------
    def held_partitions(self) -> list[int]:
        return sorted(dict(self.held))  # (read from the metrics' thread: a copy first)

    def highwater(self, partition: int) -> int | None:
        consumer = self.consumer
        if consumer is None:
            return None
        try:
            high = consumer.highwater(self._tp(partition))
        except Exception:  # not assigned (any more): no sample this time
            return None
        return int(high) if high is not None and high >= 0 else None

    def positions(self) -> dict[int, int]:
        return {p: h.next_offset for p, h in dict(self.held).items()}

    def idle(self) -> bool:
        return not self.held and not self.recovering

    # a session ------------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, link: BrokerLink | None = None) -> None:
        """Fold until ``stop`` is set; a failure (the broker lost) ends the session with every partition dropped,
        and a new one (:func:`streamer.distributed.ride_out.ride_out`) starts from what Kafka holds. A worker that
        finds one of its partitions' producers fenced was away past its session (paused, cut off) and the
        partition went to another worker: it starts a new session at once (one line), as a new pod would."""
        from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(_fenced_writes_named_once(previous))
        try:
            while True:
                try:
                    return await self._session(stop, link)
                except (ProducerFenced, InvalidProducerEpoch) as exc:
                    log.warning(
                        "a partition of this worker went to another while it was away (%s): joining the group again",
                        type(exc).__name__,
                    )
        finally:
            loop.set_exception_handler(previous)

    async def _session(self, stop: asyncio.Event, link: BrokerLink | None) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        from streamer.sinks.kafka_topics import ensure_topics, stop_consumer

        cfg = self.config
        await ensure_topics(
            cfg.bootstrap,
            {cfg.shards_topic: (1, False), cfg.changelog_topic: (self.partitions, False)},
            cfg.security,
            configs={cfg.changelog_topic: {"retention.ms": "-1", "retention.bytes": "-1"}},
        )
        worker = self

        class Handover(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                async with worker.lock:  # a batch in flight commits first
                    await worker.drop([tp.partition for tp in revoked if tp.topic == cfg.events_topic])

            async def on_partitions_assigned(self, assigned: Any) -> None:
                async with worker.lock:
                    await worker.take([tp.partition for tp in assigned if tp.topic == cfg.events_topic])

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.app_id,
            group_instance_id=cfg.instance or None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(cfg.session_timeout_s * 1000),
            heartbeat_interval_ms=max(1000, int(cfg.session_timeout_s * 1000) // 3),
            max_poll_interval_ms=600_000,
            **cfg.security,
        )
        watch = StuckWatch(cfg.stuck_timeout_s)
        prober = None
        try:
            await self.consumer.start()
            self.consumer.subscribe([cfg.events_topic], listener=Handover())
            if link is not None:
                link.up()
                prober = asyncio.create_task(probe(link, self.consumer.topics))
            checked = time.monotonic()
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_BATCH)
                async with self.lock:
                    for tp, records in batch.items():
                        held = self.held.get(tp.partition)
                        if held is not None and records:
                            await self.fold(held, records)
                if time.monotonic() - checked >= STUCK_CHECK_S:
                    checked = time.monotonic()
                    watch.check(self.idle())
        finally:
            if prober is not None:
                prober.cancel()
            async with self.lock:
                await self.drop(list(self.held))
            await stop_consumer(self.consumer)
            self.consumer = None

    async def take(self, partitions: list[int]) -> None:
        """Partitions given to this worker: for each, its producer first (fencing the last holder), then its
        state from the changelog, then the consumer at the committed offset."""
        cfg = self.config
        self.assigned_once = True
        for p in partitions:
            if p in self.held:
                continue
            producer = transactional_producer(
                cfg.bootstrap,
                f"{cfg.app_id}-{p}",
                max_request_size=max(cfg.chunk_bytes * 2, 1 << 21),
                **cfg.security,
            )
            try:
                await producer.start()  # fences the partition's last holder: its open transaction is aborted
            except BaseException:
                await producer.stop()
                raise
            try:
                started = time.monotonic()
                store, meter, records = await self.restore(p)
                tp = self._tp(p)
                committed = await self.consumer.committed(tp)
                next_offset = committed if committed is not None else 0
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
            except BaseException:
                await producer.stop()
                raise
            state = PartitionState(p, store)
            self.held[p] = Held(p, state, store, meter, producer, next_offset)
            log.info(
                "partition %d: %d changelog records read back in %.1f s (%d events held), folding from offset %d",
                p,
                records,
                time.monotonic() - started,
                state.events,
                next_offset,
            )

    async def drop(self, partitions: list[int]) -> None:
        """Partitions taken away (or a session ending): their producers stop, their state goes (whoever folds them
        next reads it back from the changelog)."""
        for p in partitions:
            held = self.held.pop(p, None)
            self.told.discard(p)
            if held is not None:
                await held.producer.stop()

    async def restore(self, partition: int) -> tuple[changelog.TrackedStore, changelog.Meter, int]:
        """The partition's state read back from its changelog: every committed record, in order."""
        from streamer.sinks.kafka_topics import read_back

        store, meter = changelog.TrackedStore(), changelog.Meter()
        count, end = 0, 0

        def each(record: Any) -> None:
            nonlocal count
            kind = changelog.kind_of(record.headers)
            changelog.apply(store, kind, record.value or b"")
            meter.read(kind, len(record.value or b""))
            count += 1
            self.recovering[partition] = max(0, end - record.offset - 1)

        def target(tp: Any, offset: int) -> None:
            nonlocal end
            end = offset
            self.recovering[partition] = offset

        self.recovering[partition] = 0
        try:
            await read_back(
                self.config.bootstrap,
                self.config.changelog_topic,
                each,
                self.config.security,
                partitions=[partition],
                on_target=target,
            )
        finally:
            self.recovering.pop(partition, None)
        return store, meter, count

    # folding --------------------------------------------------------------------------------------------------
    async def fold(self, held: Held, records: list[Any]) -> None:
        """A batch of one partition's records, in transactions: one up to each tick (with its shard), one for the
        rest."""
        start = 0
        while start < len(records) and held.partition in self.held:
            tick, end = None, start
            while end < len(records) and tick is None:
                record = records[end]
                end += 1
                if record.offset < held.next_offset:  # fetched before the seek of a hand-over: folded already
                    continue  # (offsets after it may skip: a transaction's marker and aborted records take offsets)
                tick = self._fold_one(held, record)
                held.next_offset = record.offset + 1
            start = end
            await self.commit(held, tick)

    def _tp(self, partition: int) -> Any:
        from aiokafka import TopicPartition

        return TopicPartition(self.config.events_topic, partition)

    def _fold_one(self, held: Held, record: Any) -> Any:
        state, metrics = held.state, self.metrics
        held.folded_bytes += len(record.value or b"")
        early = state.skipped["early"]
        try:
            tick = state.fold(record.offset, record.value, record.headers)
        except ValueError as exc:
            log.warning("partition %d offset %d skipped: %s", held.partition, record.offset, exc)
            state.skipped["refused"] += 1
            if metrics is not None:
                metrics.refused.inc()
                metrics.folded()
            return None
        if metrics is not None:
            metrics.folded()
        if state.skipped["early"] != early:
            if metrics is not None:
                metrics.early.inc()
            if held.partition not in self.told:
                self.told.add(held.partition)
                log.error(
                    "partition %d offset %d: its skyattr-seq is not the next one; records missing before it are "
                    "not in the events topic",
                    held.partition,
                    record.offset,
                )
        return tick

    async def commit(self, held: Held, tick: Any) -> None:
        """One transaction of the partition: the tick's shard (when there is one), the changelog of what changed,
        the offset past what was folded."""
        cfg, producer, metrics = self.config, held.producer, self.metrics
        started = time.monotonic()
        chunks: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        shard = None
        if tick is not None:
            shard = held.state.shard(tick, self.partitions)
            chunks = shard.to_chunks(cfg.chunk_bytes)
            held.state.published()  # the tick's turn: in this transaction's changelog, so it commits with the shard
        records, snapshot = held.meter.records(held.store)
        await producer.begin_transaction()
        sent = []
        for kind, value in records:
            sent.append(tracked(await producer.send(
                cfg.changelog_topic, value, partition=held.partition, headers=[(changelog.KIND_HEADER, kind)]
            )))  # fmt: skip
        first = sent[0] if sent else None
        key = str(held.partition).encode()
        for value, headers in chunks:
            sent.append(tracked(await producer.send(cfg.shards_topic, value, key=key, headers=headers, partition=0)))
        await producer.send_offsets_to_transaction({self._tp(held.partition): held.next_offset}, cfg.app_id)
        await acknowledged(producer, sent)  # nothing committed past a record the broker refused
        await producer.commit_transaction()
        if snapshot and first is not None:
            at = (await first).offset
            await self._truncate(held.partition, at)
            log.info(
                "partition %d: changelog snapshot at offset %d (%d keys, %d bytes); the records before it deleted",
                held.partition,
                at,
                len(held.store),
                held.meter.snapshot_bytes,
            )
        if shard is not None:
            size = sum(len(v) for v, _ in chunks)
            if metrics is not None:
                metrics.shards.inc()
                metrics.shard_bytes.inc(size)
                metrics.publish.observe(time.monotonic() - started)
            log.info(
                "partition %d: %s shard at %d published (%d accounts, %d edges%s, %d bytes, %.0f ms; %d record bytes "
                "folded since the last)",
                held.partition,
                "full" if shard.full else "delta",
                tick.as_of_us,
                len(shard.arrays["dids" if shard.full else "up_ids"]),
                len(shard.arrays["att" if shard.full else "up_edges"]),
                "" if shard.full else " changed",
                size,
                1000 * (time.monotonic() - started),
                held.folded_bytes,
            )
            held.folded_bytes = 0

    async def _truncate(self, partition: int, before: int) -> None:
        """Delete the partition's changelog records before the snapshot at ``before`` (committed)."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap, **self.config.security)
        try:
            await admin.start()
            await admin.delete_records(
                {TopicPartition(self.config.changelog_topic, partition): RecordsToDelete(before)}
            )
        finally:
            await admin.close()
