"""``skyattr ingest --to-kafka``: any source to ``skyattr.events``, exactly once, resumable from Kafka alone.

Items are read from the source and their events written in batches (every ``batch_items`` items or
``batch_seconds``, whichever comes first), one Kafka transaction per batch: the events, then the source's cursor
after the batch as the latest record of the source's key in the compacted cursor topic. Consumers read with
``isolation_level=read_committed``, so a transaction is all there or not at all:

* killed before a commit: the broker aborts the open transaction (at once when the next ingest with the same
  transactional id starts and fences it), its events are never seen, and the restart resumes from the cursor of
  the last committed one, so it writes them again, once;
* killed after: the events and the cursor that covers them are both committed; the restart goes on after them.

The cursor record carries what a source needs to go on exactly where it stopped: the position (archive items, a
relay seq, a Jetstream ``time_us``) and, for relay frames, the seq judge's cursor and its ring of seqs seen lately
(zstd-compressed arrays), as the single-process checkpoint does. No local volume is involved: a rescheduled pod
resumes from the topic.

One ingest per source and events topic (:func:`ingest_key`): the transactional id and the cursor's key are
derived from both, so a second ingest of the same source into the same topic fences the first (which then fails
on its next commit) instead of doubling its events, while ingests of one source into two topics neither fence each
other nor share a cursor. A cursor written before cursors were keyed by topic (the bare source) is still found, by
an ingest whose events topic already holds records.

Every event goes through the :class:`~streamer.distributed.sequencer.Sequencer` on its way: its verdict rides in
the record, and the control records it makes (``config`` at each start, ``window``, ``tick``, the tail's last
``tick``) go to every partition in the same transaction, at their place in the stream; the sequencer's state is
part of the cursor record, so a restart decides on exactly as an uninterrupted ingest would. So are the counts of
records written per partition: each record carries its number in its partition (``skyattr-seq``,
:class:`~streamer.distributed.event_records.Numbering`), and a worker folds a partition in that order only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kernels.defaults import INTERVAL_S
from streamer.core.pace import Pace
from streamer.core.revs import CAPACITY, RevGuard, repeated
from streamer.core.seqs import RESET_WINDOW, SeenSeqs
from streamer.core.source import SourceStats
from streamer.core.state import StateConfig
from streamer.distributed import event_records, packed
from streamer.distributed.defaults import BATCH_ITEMS, BATCH_SECONDS, CURSOR_TOPIC, EVENTS_TOPIC, PARTITIONS
from streamer.distributed.ride_out import BrokerLink, probe
from streamer.distributed.sequencer import Sequencer
from streamer.sinks.kafka_topics import ensure_topics, load_latest, partitions_of, read_back, stop_consumer
from streamer.sources.base import Source

log = logging.getLogger("skyattr.ingest")


@dataclass
class IngestCursor:
    """Where a source's ingest stands after its last committed transaction."""

    source: str
    position: int = -1  # the source's cursor (Source.cursor); -1 before anything was consumed
    seq_cursor: int = -1  # the relay seq judge's cursor (relay frames; -1: none)
    seen: str = ""  # the judge's ring of seqs seen lately, zstd-compressed npz in base64 ("" when not kept)
    items: int = 0  # source items consumed, all transactions together
    events: int = 0  # events written, all transactions together
    transactions: int = 0
    committed_at: float = 0.0  # wall clock of the commit (seconds since the epoch)
    sequencer: str = ""  # the sequencer's state after the transaction (Sequencer.to_text; "" when none)
    written: list[int] = field(default_factory=list)  # records written per partition (event_records.Numbering)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> IngestCursor:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an ingest cursor record: {exc}") from None

    def seen_seqs(self) -> SeenSeqs | None:
        if not self.seen:
            return None
        arrays = packed.unpack(self.seen)
        return SeenSeqs.from_arrays(arrays["seen_seqs"], arrays["seen_prints"])


def pack_seen(seen: SeenSeqs | None) -> str:
    return packed.pack(seen.to_arrays()) if seen is not None else ""


@dataclass
class IngestStats:
    transactions: int = 0
    items: int = 0
    events: int = 0
    resumed_from: IngestCursor | None = None
    seconds: float = 0.0
    source: SourceStats = field(default_factory=SourceStats)
    attempts: int = 0  # runs of ingest_to_kafka that added to these (more than one after a broker outage)


def ingest_key(source_id: str, events_topic: str) -> str:
    """What names one ingest, a source into an events topic: its cursor's key in the cursor topic and, after
    ``skyattr-ingest:``, its default transactional id."""
    return f"{source_id}@{events_topic}"


async def load_cursor(
    bootstrap: str, cursor_topic: str, key: str, security: dict[str, Any] | None = None
) -> IngestCursor | None:
    """The last committed cursor under ``key`` (:func:`ingest_key`; None when it never committed)."""
    value = await load_latest(bootstrap, cursor_topic, key, security)
    return IngestCursor.from_bytes(value) if value is not None else None


async def holds_records(bootstrap: str, topic: str, security: dict[str, Any] | None = None) -> bool:
    """Whether ``topic`` has ever been written to (any partition's end offset above 0)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic, security)]
    if not tps:
        return False
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(security or {}))
    try:
        await consumer.start()
        return any(offset > 0 for offset in (await consumer.end_offsets(tps)).values())
    finally:
        await stop_consumer(consumer)


async def applied_revs(
    bootstrap: str, events_topic: str, source_id: str, security: dict[str, Any] | None = None, last: int = CAPACITY
) -> RevGuard:
    """The (DID, rev) guard as this ingest's committed event records leave it: the last ``last`` records of each
    partition of ``events_topic`` written by ``source_id``, applied in the order the ingest applied them (by source
    position; an account's records are all in one partition, in its order). An at-least-once source's ingest
    rebuilds its guard so at each start, from what it wrote rather than from a copy that could run ahead of it."""
    wanted_source, wanted_schema = source_id.encode(), event_records.SCHEMA.encode()
    applied: list[tuple[int, int, Any]] = []

    def take(record: Any) -> None:
        headers = dict(record.headers or ())
        if headers.get(event_records.SOURCE_HEADER) != wanted_source:
            return
        if headers.get(event_records.SCHEMA_HEADER) != wanted_schema:
            return
        try:
            rec = event_records.decode(record.value)
        except ValueError:
            return
        if rec.event.rev:
            applied.append((rec.position, rec.index, rec.event))

    await read_back(bootstrap, events_topic, take, security, last=last)
    applied.sort(key=lambda row: (row[0], row[1]))
    return RevGuard.replayed(event for _, _, event in applied)


async def ingest_to_kafka(
    make_source: Callable[[IngestCursor | None], Source],
    *,
    bootstrap: str,
    source_id: str,
    events_topic: str = EVENTS_TOPIC,
    cursor_topic: str = CURSOR_TOPIC,
    partitions: int = PARTITIONS,
    batch_items: int = BATCH_ITEMS,
    batch_seconds: float = BATCH_SECONDS,
    security: dict[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    state_config: StateConfig | None = None,
    interval_s: float = INTERVAL_S,
    live: bool = False,
    speed: float | None = None,
    transactional_id: str | None = None,
    link: BrokerLink | None = None,
    totals: IngestStats | None = None,
    at_least_once: bool = False,
) -> IngestStats:
    """Ingest until the source ends or ``stop`` is set (see the module doc). ``make_source(cursor)`` builds the
    source resuming after ``cursor`` (None: from its start). ``state_config`` and ``interval_s`` are what the
    sequencer decides with (the window, the weights, the due times); ``live``: the source is a live relay, so its
    events are judged against the receive clock too, as ``skyattr run`` does. ``speed``: an archive is written at
    this multiple of its event time (:class:`~streamer.core.pace.Pace`, after each transaction), as ``replay
    --speed`` plays it; None: as fast as the broker takes it. ``transactional_id``: the producer's (default
    ``skyattr-ingest:`` and the :func:`ingest_key`). ``link``: told when the producer is up (see
    :mod:`streamer.distributed.ride_out`: a run of this function after a lost broker resumes from the cursor
    topic, so nothing is written twice); ``totals``, when given, is added to (so several attempts add up).
    ``at_least_once``: the source may send an event again under a new position (Jetstream v2): events are deduped
    by (DID, rev) as they are written, the guard rebuilt at each start from the records written
    (:func:`applied_revs`)."""
    from aiokafka import AIOKafkaProducer

    if batch_items < 1 or batch_seconds <= 0:
        raise ValueError("batch_items must be at least 1 and batch_seconds positive")
    started = time.monotonic()
    name = ingest_key(source_id, events_topic)  # (``key`` is each event record's, below)
    held = await ensure_topics(bootstrap, {events_topic: (partitions, False), cursor_topic: (1, True)}, security)
    if held.get(events_topic, partitions) != partitions:  # Kafka cannot shrink a topic
        log.warning("%s has %d partitions (not %d): used as it is", events_topic, held[events_topic], partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id or f"skyattr-ingest:{name}",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        **(security or {}),
    )
    prober: asyncio.Task[None] | None = None
    try:
        await producer.start()  # registers the transactional id: an earlier ingest's open transaction is aborted
        if link is not None:
            link.up()
            prober = asyncio.create_task(probe(link, producer.client.fetch_all_metadata))
        cursor = await load_cursor(bootstrap, cursor_topic, name, security)
        if cursor is None and await holds_records(bootstrap, events_topic, security):
            cursor = await load_cursor(bootstrap, cursor_topic, source_id, security)  # keyed by the source alone
            if cursor is not None:
                log.info("%s: resuming from its cursor written before cursors were keyed by topic", name)
        stats = totals if totals is not None else IngestStats()
        if stats.attempts == 0:
            stats.resumed_from = cursor
        stats.attempts += 1
        state = cursor or IngestCursor(source_id)
        ring = (cursor.seen_seqs() if cursor is not None else None) or SeenSeqs(RESET_WINDOW)
        last_seq = state.seq_cursor
        clock = (lambda: time.time_ns() // 1000) if live else None
        seq = Sequencer(state_config, interval_s, clock=clock)
        if cursor is not None and cursor.sequencer:
            held = Sequencer.from_text(cursor.sequencer, clock=clock)
            if held.config_dict() != seq.config_dict():
                raise ValueError(
                    f"{events_topic} holds the events of {source_id} sequenced with {held.config_dict()}; this "
                    f"ingest was given {seq.config_dict()}: resume with the same window, weights and interval, or "
                    "write to another events topic"
                )
            seq = held
        parts = await partitions_of(bootstrap, events_topic, security)
        revs = await applied_revs(bootstrap, events_topic, source_id, security) if at_least_once else None
        source = make_source(cursor)
        stats.source = source.stats
        hdrs = event_records.headers(source_id)
        control_hdrs = event_records.control_headers(source_id)
        numbering = event_records.Numbering(parts, state.written)
        batch: list[Any] = []
        due = time.monotonic() + batch_seconds
        controls: list[Any] = [seq.config_dict()]  # every start says what it decides with (workers keep the first)

        async def broadcast() -> None:
            for control in controls:
                value = event_records.encode_control(control)
                for p in parts:
                    await producer.send(events_topic, value, partition=p, headers=numbering.headers(p, control_hdrs))
            controls.clear()

        async def commit(ended: bool = False) -> None:
            nonlocal batch, state, last_seq
            position = source.cursor if source.cursor is not None else -1  # before any await: the batch's own
            events = 0
            async with producer.transaction():
                await broadcast()
                for item in batch:
                    if item.seq >= 0:  # the seqs this ingest has written, as the single process's dispatcher keeps
                        if item.seq < last_seq:
                            ring.clear()  # the source followed a relay that restarted its sequence
                        ring.add(item.seq, item.fingerprint)
                        last_seq = item.seq
                    if revs is not None and repeated(revs, item):  # consumed (the cursor moves), not written again
                        source.stats.duplicates += 1
                        continue
                    for index, event in enumerate(item.events):
                        verdict = seq.decide(event)
                        if verdict.controls:
                            controls.extend(verdict.controls)
                            await broadcast()
                        key, value = event_records.encode(
                            item.source_cursor,
                            index,
                            verdict.recorded(event),
                            ordinal=verdict.ordinal,
                            refused=verdict.reason or "",
                        )
                        p = numbering.partition(key)
                        await producer.send(
                            events_topic, value, key=key, partition=p, headers=numbering.headers(p, hdrs)
                        )
                        events += 1
                        if verdict.after:
                            controls.extend(verdict.after)
                            await broadcast()
                tail = seq.finish() if ended else None  # a finite source's tail after its last due time: one more run
                if tail is not None:
                    controls.append(tail)
                    await broadcast()
                state = IngestCursor(
                    source_id,
                    position=position,
                    seq_cursor=last_seq,
                    seen=pack_seen(ring) if last_seq >= 0 else "",
                    items=state.items + len(batch),
                    events=state.events + events,
                    transactions=state.transactions + 1,
                    committed_at=time.time(),
                    sequencer=seq.to_text(),
                    written=list(numbering.written),
                )
                await producer.send(cursor_topic, state.to_bytes(), key=name.encode())
            stats.transactions += 1
            stats.items += len(batch)
            stats.events += events
            batch = []

        async def stop_source() -> None:  # a source waiting for its next item (an idle relay) ends at once
            assert stop is not None
            await stop.wait()
            source.stop()

        stopper = asyncio.create_task(stop_source()) if stop is not None else None
        pace, paused = Pace(speed), stop if stop is not None else asyncio.Event()  # a pause ends with the stop
        items = aiter(source)
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                # live, a partial batch is committed batch_seconds after it began even when the stream is quiet:
                # the next item is awaited as a future kept across the wait (cancelling it would end the source)
                if pending is None:
                    pending = asyncio.ensure_future(anext(items))
                wait = max(0.0, due - time.monotonic()) if live and batch else None
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if not done:
                    await commit()
                    due = time.monotonic() + batch_seconds
                    continue
                future, pending = pending, None
                try:
                    item = future.result()
                except StopAsyncIteration:
                    break
                if live and not batch:  # a quiet stream's next batch has its whole batch_seconds
                    due = time.monotonic() + batch_seconds
                batch.append(item)
                if len(batch) >= batch_items or time.monotonic() >= due:
                    await commit()
                    if speed and await pace.wait(seq.last_time_us, paused):
                        break
                    due = time.monotonic() + batch_seconds
                if stop is not None and stop.is_set():  # at once: the stopper task may not get a turn before then
                    break
            ended = not live and not (stop is not None and stop.is_set())
            if batch or controls or (ended and not seq.finished):
                await commit(ended)
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            if stopper is not None:
                stopper.cancel()
            await source.aclose()
        stats.seconds += time.monotonic() - started
        return stats
    finally:
        if prober is not None:
            prober.cancel()
        await producer.stop()
