"""``skyattr worker``: a faust-streaming app that folds ``skyattr.events`` into per-partition state and publishes
a shard of it at every due time.

One agent, ``concurrency=1`` (with more, faust-streaming can commit an offset past a message still being processed,
faust-streaming issue #606), consumes the events topic; each record goes to its partition's
:class:`~streamer.distributed.partition_state.PartitionState`, whose store is one faust Table (``state``): every
change is written to the table's changelog topic in the partition of the record that made it, so a partition that
moves to another worker, or a worker restarted without its disk, gets its state back from the changelog. With
``--store rocksdb://`` the table lives in RocksDB (rocksdict) under ``--data-dir`` and a restarted worker only reads
the changelog past what its disk already holds; ``memory://`` keeps it in memory (tests, small runs).

At a ``tick`` control record the worker publishes the partition's shard to ``skyattr.shards`` and waits for the
broker to acknowledge it before folding the next record, so a shard is never behind the state the worker goes on
to change.

Delivery is at least once (faust-streaming's exactly-once mode loses and duplicates records when a worker is
killed: its issues #517 and #440), and the state is made exact on top of it: every key remembers the offset of the
last record folded into it, so a record read again after a crash changes nothing twice; a shard published again
is the same shard and the attributor keeps the first of each (due time, partition). The events are read with
``read_committed`` (faust's at-least-once consumer would read ``read_uncommitted`` and so see the records of an
ingest transaction that was aborted and then written again): :class:`ReadCommittedTransport` is faust's aiokafka
transport with that one setting changed, registered as the ``kafka+rc://`` broker scheme.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.distributed.defaults import (
    EVENTS_TOPIC,
    SESSION_TIMEOUT_S,
    SHARDS_TOPIC,
    STUCK_TIMEOUT_S,
    WORKER_APP_ID,
    WORKER_DATA_DIR,
    WORKER_STORE,
)
from streamer.distributed.partition_state import PartitionState, keys_by_partition
from streamer.distributed.ride_out import BrokerLink, probe, reachable
from streamer.distributed.shards import CHUNK_BYTES

if TYPE_CHECKING:
    from streamer.distributed.worker_metrics import WorkerMetrics

log = logging.getLogger("skyattr.worker")

TABLE = "state"
PRODUCER_BUFFER = 10_000  # table changes buffered before the stream waits for them to be sent


@dataclass(frozen=True)
class WorkerConfig:
    """Where the worker reads and writes, and how it keeps its table."""

    bootstrap: str = "127.0.0.1:9092"
    events_topic: str = EVENTS_TOPIC
    shards_topic: str = SHARDS_TOPIC
    app_id: str = WORKER_APP_ID
    store: str = WORKER_STORE
    data_dir: Path = WORKER_DATA_DIR
    instance: str = ""  # static group membership (``group.instance.id``): a restarted pod keeps its partitions
    chunk_bytes: int = CHUNK_BYTES
    session_timeout_s: float = SESSION_TIMEOUT_S  # a worker silent this long leaves the group and its partitions move
    metrics_port: int | None = None  # /metrics, /healthz, /readyz (streamer.distributed.worker_metrics)
    metrics_host: str = "127.0.0.1"
    stuck_timeout_s: float = STUCK_TIMEOUT_S  # no partition held and none recovering this long: exit 3 (StuckWatch)


def _transport() -> Any:
    """Faust's aiokafka transport reading ``read_committed`` (see the module doc)."""
    from faust.transport.drivers import aiokafka as driver

    class ReadCommittedThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start() to build its fetcher
            return consumer

        async def seek_to_committed(self) -> Any:
            if not reads_committed(self._ensure_consumer()):  # the patch above did not take: never read on
                problem = "the worker's consumer does not read read_committed: the installed aiokafka ignores the patch"
                log.critical(problem)
                raise RuntimeError(problem)
            committed = await super().seek_to_committed()
            fresh = [tp for tp, offset in committed.items() if not offset and tp.topic in _FROM_START]
            if fresh:
                await self.call_thread(self._ensure_consumer().seek_to_beginning, *fresh)
            return committed

    class ReadCommittedConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    class ReadCommittedTransport(driver.Transport):
        Consumer = ReadCommittedConsumer

    return ReadCommittedTransport


# Event topics whose partitions with no committed offset are read from their start after every rebalance. Faust
# fetches while it recovers the tables, and aiokafka's seek to the committed offset does nothing for a partition
# that has none (nor for offset 0), so such a partition went on from wherever that fetch had got to, skipping
# records (seen here: a worker taking over two partitions from a killed one began at their ends).
_FROM_START: set[str] = set()


# What the worker changes in faust-streaming and aiokafka, by name: (what, owner, attribute, where it must be read).
# A rename in either library would make a patch silently do nothing (and the worker read uncommitted records), so
# :func:`check_internals` looks for each before the worker starts.
PATCHED = (
    ("faust's consumer thread builds the aiokafka consumer", "AIOKafkaConsumerThread", "_create_worker_consumer"),
    ("faust's consumer thread seeks to committed offsets", "AIOKafkaConsumerThread", "seek_to_committed"),
    ("faust's consumer thread runs calls in its thread", "AIOKafkaConsumerThread", "call_thread"),
    ("faust's consumer thread holds its consumer", "AIOKafkaConsumerThread", "_ensure_consumer"),
    ("faust's consumer makes its thread", "Consumer", "_new_consumer_thread"),
    ("faust's transport names its consumer class", "Transport", "Consumer"),
)


def check_internals() -> list[str]:
    """What the worker's patches need and the installed faust-streaming or aiokafka lacks ([] when all is there):
    each patched method, aiokafka's consumer reading ``_isolation_level`` when it starts (so setting it after
    construction takes effect) and faust's producer buffer's ``max_messages``."""
    import inspect

    from aiokafka import AIOKafkaConsumer
    from faust.transport import producer
    from faust.transport.drivers import aiokafka as driver

    missing = [
        f"{owner}.{attr} ({what})" for what, owner, attr in PATCHED if not hasattr(getattr(driver, owner, None), attr)
    ]
    try:
        reads = "_isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    except (OSError, TypeError):
        reads = False
    if not reads:
        missing.append("AIOKafkaConsumer.start reading _isolation_level (the read_committed patch)")
    if "max_messages" not in inspect.getsource(producer.ProducerBuffer):
        missing.append("ProducerBuffer.max_messages (the producer buffer's size)")
    return missing


def reads_committed(consumer: Any) -> bool:
    """Whether a started aiokafka consumer's fetcher reads ``read_committed`` (checked after every rebalance)."""
    from aiokafka.consumer.fetcher import READ_COMMITTED

    return getattr(getattr(consumer, "_fetcher", None), "_isolation_level", None) == READ_COMMITTED


def internals_error() -> str | None:
    """One line naming what :func:`check_internals` found missing and the installed versions, or None."""
    missing = check_internals()
    if not missing:
        return None
    from importlib.metadata import version

    return (
        f"this worker needs internals that faust-streaming {version('faust-streaming')} and aiokafka "
        f"{version('aiokafka')} do not have: {'; '.join(missing)} (install the versions pyproject.toml pins)"
    )


STUCK_CHECK_S = 10.0


class StuckWatch:
    """A worker that holds no partition of the events topic and is not recovering one, for ``timeout_s`` in a row,
    exits (status 3) so that Kubernetes starts it again: seen once, a worker restarted on an empty data directory
    sat in faust's "Recovery: Starting" with no partitions for minutes, unready, and then hung on SIGTERM. The exit
    is immediate (``os._exit``): the table is in the changelog (and on disk), the offsets are committed, and a
    record read again is folded once (see the module doc). 0 turns it off (more workers than partitions)."""

    def __init__(self, timeout_s: float, events_topic: str, clock: Any = time.monotonic) -> None:
        self.timeout_s, self.events_topic, self.clock = timeout_s, events_topic, clock
        self.idle_since: float | None = None

    def idle(self, app: Any) -> bool:
        from streamer.distributed.worker_metrics import _assigned

        recovering = bool(getattr(getattr(getattr(app, "tables", None), "recovery", None), "in_recovery", False))
        held = [tp for tp in _assigned(app) if tp.topic == self.events_topic]
        return not held and not recovering

    def check(self, app: Any, exit: Any = None) -> None:
        if not self.timeout_s:
            return
        now = self.clock()
        if not self.idle(app):
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.timeout_s:
            log.critical(
                "no partition of %s held and none recovering for %.0f s (--stuck-timeout): exiting so the worker is "
                "started again",
                self.events_topic,
                now - self.idle_since,
            )
            logging.shutdown()
            (exit or os._exit)(3)


def _register_transport() -> None:
    from faust.transport import drivers

    drivers.TRANSPORTS.aliases.setdefault("kafka+rc", f"{__name__}:ReadCommittedTransport")


def __getattr__(name: str) -> Any:  # the transport class, built when faust asks for it by name
    if name == "ReadCommittedTransport":
        return _transport()
    raise AttributeError(name)


def make_app(config: WorkerConfig, partitions: int, metrics: WorkerMetrics | None = None) -> Any:
    """The faust app (see the module doc) for an events topic of ``partitions`` partitions; ``metrics`` (if
    given) is fed by the fold loop and reads the app when scraped."""
    import faust

    _register_transport()
    _FROM_START.add(config.events_topic)
    app = faust.App(
        config.app_id,
        broker=f"kafka+rc://{config.bootstrap}",
        store=config.store,
        datadir=str(config.data_dir),
        topic_partitions=partitions,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=config.instance or None,
        broker_session_timeout=config.session_timeout_s,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_max_request_size=max(config.chunk_bytes * 2, 1 << 20),
        table_cleanup_interval=3600.0,
    )
    events = app.topic(config.events_topic, key_serializer="raw", value_serializer="raw", partitions=partitions)
    shards = app.topic(config.shards_topic, key_serializer="raw", value_serializer="raw", partitions=1)
    schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
    table = app.Table(TABLE, partitions=partitions, schema=schema)
    states: dict[int, PartitionState] = {}
    told: set[int] = set()  # partitions whose records delivered out of turn were named in the log since a rebalance
    owned: dict[int, list[str]] = {}  # the table's keys by partition, read once after a rebalance
    folded_bytes: Counter[int] = Counter()  # record bytes folded into each partition since its last shard
    if metrics is not None:
        metrics.bind(app)

    @app.on_partitions_revoked.connect
    async def _forget(sender: Any, revoked: Any, **kwargs: Any) -> None:
        states.clear()  # partitions may move: each index is rebuilt from the (recovered) table when next used
        owned.clear()
        told.clear()
        if metrics is not None:
            metrics.forget()

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        if metrics is not None:
            metrics.assigned_once = True

    @app.agent(events, concurrency=1)
    async def fold(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            state = states.get(msg.partition)
            if state is None:
                if not states:  # the first partition used since the (re)assignment: one pass over the table
                    owned.clear()
                    owned.update(keys_by_partition(table))
                keys = owned.pop(msg.partition, [])
                state = states[msg.partition] = PartitionState(msg.partition, table, keys)
                log.info(
                    "partition %d: folding from offset %d (%d events held)", msg.partition, msg.offset, state.events
                )
            again, early = state.skipped["tick_read_again"], state.skipped["early"]
            folded_bytes[msg.partition] += len(msg.value or b"")
            try:
                tick = state.fold(msg.offset, msg.value, msg.headers)
            except ValueError as exc:
                log.warning("partition %d offset %d skipped: %s", msg.partition, msg.offset, exc)
                state.skipped["refused"] += 1
                if metrics is not None:
                    metrics.refused.inc()
                    metrics.folded(msg.partition, msg.offset)
                continue
            if metrics is not None:
                metrics.folded(msg.partition, msg.offset)
            if state.skipped["early"] != early:
                if metrics is not None:
                    metrics.early.inc()
                if msg.partition not in told:
                    told.add(msg.partition)
                    log.info(
                        "partition %d offset %d: delivered ahead of its turn (its skyattr-seq is not the next), left "
                        "for the consumer to deliver again in order",
                        msg.partition,
                        msg.offset,
                    )
                continue
            if state.skipped["tick_read_again"] != again:
                log.info(
                    "partition %d offset %d: a tick read again, its shard went out before", msg.partition, msg.offset
                )
            if tick is None:
                continue
            started = time.monotonic()
            shard = state.shard(tick, partitions)
            chunks = shard.to_chunks(config.chunk_bytes)
            for value, headers in chunks:
                fut = await shards.send(key=str(msg.partition).encode(), value=value, headers=headers, partition=0)
                await fut
            state.published()
            size = sum(len(v) for v, _ in chunks)
            if metrics is not None:
                metrics.shards.inc()
                metrics.shard_bytes.inc(size)
                metrics.publish.observe(time.monotonic() - started)
            log.info(
                "partition %d: %s shard at %d published (%d accounts, %d edges%s, %d bytes, %.0f ms; %d record "
                "bytes folded since the last)",
                msg.partition,
                "full" if shard.full else "delta",
                tick.as_of_us,
                len(shard.arrays["dids" if shard.full else "up_ids"]),
                len(shard.arrays["att" if shard.full else "up_edges"]),
                "" if shard.full else " changed",
                size,
                1000 * (time.monotonic() - started),
                folded_bytes.pop(msg.partition, 0),
            )

    stuck = StuckWatch(config.stuck_timeout_s, config.events_topic)
    link = BrokerLink(config.bootstrap, on_change=metrics.on_kafka if metrics is not None else None)

    @app.task
    async def _broker_probe() -> None:
        # faust rides out an outage by itself (its consumer and producer retry); the probe makes the worker's
        # readiness and log say so: unready while no broker answers, one line when it is lost and one when back
        await probe(link, lambda: reachable(config.bootstrap))

    @app.timer(interval=STUCK_CHECK_S)
    async def _stuck_watch() -> None:
        stuck.check(app)

    @app.task
    async def _larger_producer_buffer() -> None:
        # faust makes a stream wait for a flush whenever more than 100 table changes are buffered (and warns each
        # time): with two changelog writes per event that caps a worker at a few thousand events/s
        app.producer.buffer.max_messages = PRODUCER_BUFFER

    return app


def run_worker(config: WorkerConfig, partitions: int, loglevel: str = "info") -> None:
    """Run the worker until SIGTERM/SIGINT (faust's worker handles both: it commits and leaves the group)."""
    import asyncio

    import faust

    from streamer.sinks.kafka_topics import ensure_topics

    config.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(config.bootstrap, {config.shards_topic: (1, False)}))
    metrics = None
    if config.metrics_port is not None:
        from streamer.distributed.worker_metrics import WorkerMetrics

        metrics = WorkerMetrics(config.events_topic)
        port = metrics.serve(config.metrics_port, config.metrics_host)
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, port)
    app = make_app(config, partitions, metrics)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
