"""``skyattr attributor``: the shards of each run gathered, merged and attributed, the results published once.

It reads ``skyattr.shards`` (``read_committed``), puts each run together with :class:`~streamer.distributed.gather.
Gatherer` (a run incomplete after ``--gather-timeout`` is given up, logged with the partitions missing and counted
in ``skyattr_attributor_runs_total{outcome="incomplete"}``), merges the partitions' windows into the snapshot a
single process would hold (:func:`~streamer.distributed.merge.merge`) and runs the single process's own
attribution on it (:func:`~streamer.core.attribution.measure`, :func:`~streamer.core.attribution.finish`): the run
numbers, the alert's hysteresis and the messages are the same as ``skyattr replay``'s on the same events. Up to
``--pipeline`` runs are merged and measured at once in threads (a catching-up attributor keeps the cores busy:
numpy's sorts and the kernels release the GIL), and published one by one, in order.

Each run's messages (``skyattr.tiers``, and ``skyattr.alerts`` when the alert changes state), the attributor's own
state (the last due time done, the run count, the alert state: a compacted ``skyattr.attributor-state`` record)
and the shards topic offset it has consumed up to are committed in **one Kafka transaction**. Killed at any point,
a restarted attributor reads its state back, resumes reading the shards where the last committed run left them,
and skips every run at or before the last one done: no run is published twice, none is lost (its shards are read
again). The JSON lines file and the Prometheus metrics are written after the commit (they are this process's
view; Kafka is the record).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from streamer.core.attribution import AttributionConfig, Measured, finish, measure_snapshot
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState, accepted
from streamer.core.state import StateConfig
from streamer.distributed.defaults import ATTRIBUTOR_NAME, GATHER_TIMEOUT_S, PIPELINE, SHARDS_TOPIC, STATE_TOPIC
from streamer.distributed.gather import Complete, Gatherer, Incomplete
from streamer.distributed.merge import merge
from streamer.distributed.ride_out import BrokerLink, probe
from streamer.distributed.shards import chunk_meta
from streamer.sinks.kafka_topics import ensure_topics, load_latest, stop_consumer

log = logging.getLogger("skyattr.attributor")


@dataclass
class AttributorState:
    """Where the attributor stands after its last committed run."""

    done_through_us: int = -1  # due time of the last run done (published, skipped or given up)
    run: int = 0  # runs that produced a result, as the single process counts them
    alert_active: bool = False
    incomplete: int = 0
    skipped: int = 0
    final: bool = False  # the tail run of a finite source is done: nothing can follow it

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def accepted(self, alert_active: bool) -> None:
        """A run produced a result: :func:`streamer.core.schedule.accepted`, the single process's rule, on this
        state's run count and alert state."""
        after = accepted(ScheduleState(self.run, alert_active=self.alert_active), alert_active)
        self.run, self.alert_active = after.run, after.alert_active

    @classmethod
    def from_bytes(cls, data: bytes) -> AttributorState:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an attributor state record: {exc}") from None


@dataclass(frozen=True)
class AttributorConfig:
    bootstrap: str = "127.0.0.1:9092"
    shards_topic: str = SHARDS_TOPIC
    state_topic: str = STATE_TOPIC
    name: str = ATTRIBUTOR_NAME  # names the group, the transactional id and the state record
    topics: dict[str, str] = field(default_factory=lambda: {"tiers": "skyattr.tiers", "alerts": "skyattr.alerts"})
    gather_timeout_s: float = GATHER_TIMEOUT_S
    pipeline: int = PIPELINE  # runs merged and measured at once, published in order
    security: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttributorStats:
    runs: int = 0
    incomplete: int = 0
    skipped: int = 0
    undecodable: int = 0
    resumed_from: AttributorState | None = None
    started: bool = False  # a first attempt read the state (resumed_from says what it found)


async def run_attributor(
    config: AttributorConfig,
    attribution: AttributionConfig,
    *,
    followers: dict[str, float] | None = None,
    deliver: Callable[[Result], None] | None = None,
    stop: asyncio.Event | None = None,
    until_final: bool = False,
    on_outcome: Callable[[str, float], None] | None = None,
    link: BrokerLink | None = None,
    stats: AttributorStats | None = None,
) -> AttributorStats:
    """Attribute runs until ``stop`` is set (or, ``until_final``, until the tail run of a finite source is done).
    ``deliver(result)`` gets every published result after its transaction committed; ``on_outcome(outcome,
    gather_s)`` each run's outcome (``ok``, ``skipped``, ``incomplete``) for the metrics. ``link`` is told when
    the clients are up, and probed while the shards topic is quiet (see :mod:`streamer.distributed.ride_out`:
    a run of this function after a lost broker resumes from what Kafka holds); ``stats``, when given, is added
    to (so the runs of several attempts add up)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamer.sinks.kafka import encode
    from streamer.sinks.kafka_sender import commit, transactional_producer

    stop = stop if stop is not None else asyncio.Event()
    sec = dict(config.security)
    await ensure_topics(config.bootstrap, {config.shards_topic: (1, False), config.state_topic: (1, True)}, sec)
    producer = transactional_producer(config.bootstrap, f"{config.name}:results", **sec)
    try:
        await producer.start()  # fences an earlier attributor of the same name; its open transaction is aborted
    except BaseException:
        await producer.stop()  # its client's connections, when the broker went away while it started
        raise
    consumer = None
    prober: asyncio.Task[None] | None = None
    # runs handed out by the gatherer, oldest first, each with its measurement under way (None: given up); published
    # one by one in this order, so the run numbers and the alert's hysteresis are the single process's
    inflight: deque[tuple[Complete | Incomplete, asyncio.Task[Measured] | None]] = deque()
    try:
        held = await load_latest(config.bootstrap, config.state_topic, config.name, security=sec)
        state = AttributorState.from_bytes(held) if held is not None else AttributorState()
        if stats is None:
            stats = AttributorStats()
        if stats.resumed_from is None and not stats.started:
            # a copy: the state moves on with every run, the stats say where this process started
            stats.resumed_from = replace(state) if held is not None else None
        stats.started = True
        gatherer = Gatherer(state.done_through_us, config.gather_timeout_s)
        tp = TopicPartition(config.shards_topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.name,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            **sec,
        )
        await consumer.start()
        consumer.assign([tp])
        if link is not None:
            link.up()
            prober = asyncio.create_task(probe(link, consumer.topics))
        done = until_final and state.final  # a rerun of a finished job: nothing is left to wait for
        if done:
            log.info("the final run (at %d) is already done: nothing to attribute", state.done_through_us)

        def hand_out() -> None:
            """Start the measurement of each run ready now, as many as the pipeline holds."""
            while len(inflight) < config.pipeline and (ready := gatherer.next_ready()) is not None:
                task = None
                if isinstance(ready, Complete):
                    task = asyncio.create_task(asyncio.to_thread(measure_run, ready, attribution, followers))
                inflight.append((ready, task))

        while not stop.is_set() and not done:
            hand_out()  # runs already gathered first: the topic is read without waiting while there is work
            batch = await consumer.getmany(tp, timeout_ms=0 if inflight else 500)
            for record in batch.get(tp, []):
                try:
                    meta = chunk_meta(record.headers)
                    gatherer.add(record.offset, meta, record.value or b"")
                except ValueError as exc:
                    stats.undecodable += 1
                    log.warning("%s offset %d skipped: %s", config.shards_topic, record.offset, exc)
            hand_out()
            if not inflight:
                continue
            ready, task = inflight.popleft()
            results: list[Result] = []
            if isinstance(ready, Incomplete):
                state.incomplete += 1
                stats.incomplete += 1
                outcome, gather_s = "incomplete", config.gather_timeout_s
                log.warning(
                    "run at %d given up after %.0f s: no shard from partition(s) %s of %d",
                    ready.as_of_us,
                    config.gather_timeout_s,
                    ", ".join(map(str, ready.missing)),
                    ready.partitions,
                )
            else:
                assert task is not None
                out = finish(
                    await task,
                    attribution,
                    run=state.run + 1,
                    as_of_us=ready.as_of_us,
                    alert_active=state.alert_active,
                )
                if out.result is None:
                    state.skipped += 1
                    stats.skipped += 1
                    outcome = "skipped"
                    log.info("run at %d skipped: %s", ready.as_of_us, out.skipped)
                else:
                    state.accepted(out.alert_active)
                    results = [r for r in (out.result, out.alert) if r is not None]
                    stats.runs += 1
                    outcome = "ok"
                gather_s = ready.gather_s
                log.info(
                    "run at %d: %d shards gathered in %.2f s (%s)",
                    ready.as_of_us,
                    len(ready.shards),
                    gather_s,
                    outcome,
                )
                state.final = state.final or ready.final
                done = until_final and ready.final
            state.done_through_us = ready.as_of_us
            # a restart reads again every chunk of the runs not committed yet, those being measured included
            low = gatherer.low_offset(handed_out=[later for later, _ in inflight])
            resume_at = low if low is not None else await consumer.position(tp)
            messages = [encode(r.topic, config.topics[r.topic], r.to_message()) for r in results]
            mark = (config.state_topic, config.name, state.to_bytes())
            await commit(producer, messages, mark, ({tp: resume_at}, config.name))
            for r in results:
                if deliver is not None:
                    deliver(r)
            if on_outcome is not None:
                on_outcome(outcome, gather_s)
        return stats
    finally:
        for _, task in inflight:
            if task is not None:
                task.cancel()  # a run not committed: a restart measures it again
        if prober is not None:
            prober.cancel()
        if consumer is not None:
            await stop_consumer(consumer)
        await producer.stop()


def measure_run(ready: Complete, attribution: AttributionConfig, followers: Any) -> Measured:
    """The merge and the measurement of one complete set of shards (in a worker thread: numpy's sorts and gathers
    and the kernels release the GIL, so the runs of a pipeline overlap)."""
    configs = {json.dumps(s.config, sort_keys=True) for s in ready.shards}
    if len(configs) != 1:
        raise ValueError(f"the shards of the run at {ready.as_of_us} were made with different configurations")
    state_config = StateConfig(**ready.shards[0].config["state"])
    started = time.perf_counter()
    m = measure_snapshot(lambda: merge(ready.parts, ready.numbers, state_config, followers), attribution)
    log.debug("run at %d: %.0f ms", ready.as_of_us, 1000 * (time.perf_counter() - started))
    return m
