"""The daemon: ingest → rolling state → periodic attribution → sinks (terminal, JSONL, Prometheus, Kafka).

Two drivers share one :class:`Pipeline`:

* :func:`replay_pipeline` runs the synchronous replay (:func:`streamer.ingest.replay`) in a worker thread; the
  scheduler rides on it in **event time**, so the runs of a replay are those of the live run that recorded the
  archive. The asyncio loop in the main thread keeps serving Kafka and the metrics endpoint meanwhile.
* :func:`live_pipeline` reads the relay with :class:`streamer.live.LiveSource` into a bounded queue, folds
  frames into the state on the loop, and every ``interval`` seconds of wall time takes a snapshot and computes
  the attribution in a worker thread, so the websocket keeps being read while JAX works.

Both stop on SIGTERM/SIGINT: stop reading, write a checkpoint, flush Kafka within a bound, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streamer.checkpoint import capture, load_checkpoint, write_checkpoint
from streamer.config import DEFAULT_METRICS_PORT, ConfigError, Settings
from streamer.ingest import Ingestor, ReplayResult, load_followers, replay
from streamer.metrics import Metrics
from streamer.scheduler import Scheduler, ScheduleState
from streamer.sinks import JsonlSink, TerminalSink
from streamer.state import AgentState

log = logging.getLogger("skyattr.daemon")
SHUTDOWN_KAFKA_S = 20.0


def check_writable(directory: Path) -> None:
    """Fail at start, not at the first checkpoint, when the checkpoint directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"checkpoint directory {directory} is not writable: {exc.strerror or exc}") from None


@dataclass
class _Seen:
    """Counter values already exported, so Prometheus counters get increments."""

    counters: dict[str, Counter[str]] = field(default_factory=dict)

    def delta(self, name: str, current: Counter[str] | dict[str, int]) -> dict[str, int]:
        seen = self.counters.setdefault(name, Counter())
        out = {k: v - seen[k] for k, v in current.items() if v > seen[k]}
        seen.update(out)
        return out


class Pipeline:
    """Scheduler, sinks and metrics around one :class:`AgentState`."""

    def __init__(
        self, settings: Settings, *, console: Console | None = None, tables: bool = True, every_run: bool = False
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.terminal = TerminalSink(console, tables=tables, every_run=every_run)
        self.jsonl = JsonlSink(settings.out) if settings.out else None
        self.kafka: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.followers = load_followers(settings.followers) if settings.followers else None
        if settings.checkpoint_dir:
            check_writable(settings.checkpoint_dir)
        sinks = [self.terminal, self._metrics_sink, self._kafka_sink]
        if self.jsonl is not None:
            sinks.insert(1, self.jsonl)
        self.scheduler = Scheduler(settings.attribution(), settings.interval, sinks, on_skip=self._skipped)
        self._seen = _Seen()

    async def start(self, metrics_port: int | None) -> None:
        self.loop = asyncio.get_running_loop()
        if metrics_port is not None:
            port = self.metrics.serve(metrics_port)
            log.info("metrics on :%d/metrics", port)
        if self.settings.kafka_bootstrap:
            from streamer.kafka_publisher import KafkaPublisher

            topics = {"tiers": self.settings.kafka_topic_tiers, "alerts": self.settings.kafka_topic_alerts}
            self.kafka = KafkaPublisher(
                self.settings.kafka_bootstrap,
                topics,
                buffer_limit=self.settings.kafka_buffer,
                metrics=self.metrics,
                security=self.settings.kafka_security(),
            )
            await self.kafka.start()

    async def stop(self) -> None:
        if self.kafka is not None:
            await self.kafka.close(timeout=SHUTDOWN_KAFKA_S)
        if self.jsonl is not None:
            self.jsonl.close()
        self.metrics.close()

    # sinks ---------------------------------------------------------------------------------------------------
    def _metrics_sink(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "tiers":
            self.metrics.record_run(message)
            self.metrics.runs.labels("ok").inc()
            self.metrics.last_success.set(time.time())

    def _kafka_sink(self, kind: str, message: dict[str, Any]) -> None:
        if self.kafka is not None:
            if self.loop is not None and threading.current_thread() is not threading.main_thread():
                self.loop.call_soon_threadsafe(self.kafka.publish, kind, message)
            else:
                self.kafka.publish(kind, message)

    def _skipped(self, reason: str) -> None:
        self.metrics.runs.labels("skipped").inc()

    # metrics -------------------------------------------------------------------------------------------------
    def sync_metrics(self, ingestor: Ingestor) -> None:
        """Export the ingest counters and state gauges (cheap: called every few thousand items)."""
        st, m = ingestor.stats, self.metrics
        for kind, n in self._seen.delta("events", st.events).items():
            m.events.labels(kind).inc(n)
        for type_, n in self._seen.delta("frames", st.frames).items():
            m.frames.labels(type_).inc(n)
        for reason, n in self._seen.delta("errors", st.errors).items():
            m.decode_errors.labels(reason).inc(n)
        for reason, n in self._seen.delta("skipped", st.skipped).items():
            m.skipped_ops.labels(reason).inc(n)
        for _, n in self._seen.delta("dup", {"dup": st.duplicates}).items():
            m.duplicates.inc(n)
        state = ingestor.state
        m.cursor.set(ingestor.cursor)
        m.agents.set(len(state.dids))
        m.edges.set(sum(len(b.att) for b in state.buckets.values()))
        if state.last_time_us:
            m.event_time.set(state.last_time_us / 1e6)
            m.lag.set(time.time() - state.last_time_us / 1e6)


def _install_signals(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)


async def replay_pipeline(
    settings: Settings,
    archive: Path,
    *,
    console: Console | None = None,
    tables: bool = True,
    checkpoint_every_items: int | None = None,
    progress: bool = False,
) -> tuple[ReplayResult, Pipeline]:
    """Replay ``archive`` through the whole pipeline (event-time schedule); returns the replay result."""
    pipe = Pipeline(settings, console=console, tables=tables)
    bar = Progress(
        TextColumn("replaying {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} items · run {task.fields[run]}"),
        TimeElapsedColumn(),
        console=pipe.terminal.console,
        transient=True,
        disable=not progress,
    )
    task = bar.add_task(Path(archive).name, total=None, run=0)
    await pipe.start(settings.metrics_port)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    _install_signals(loop, stop.set)

    def on_start(ing: Ingestor, extra: dict[str, Any]) -> None:
        pipe.scheduler.sched = ScheduleState.from_dict(extra.get("schedule", {}))
        ing.before_event = lambda t: pipe.scheduler.maybe_run(ing.state, t)
        pipe.metrics.ready, pipe.metrics.not_ready_reason = True, ""

    def on_item(ing: Ingestor) -> None:
        if ing.position % 2000 == 0:
            pipe.sync_metrics(ing)
            bar.update(task, completed=ing.position, run=pipe.scheduler.sched.run)

    def on_end(ing: Ingestor) -> None:
        if ing.state.last_time_us:  # the tail of the archive after the last scheduled run
            pipe.scheduler.run(ing.state, ing.state.last_time_us)

    try:
        bar.start()
        result = await asyncio.to_thread(
            replay,
            archive,
            config=settings.state(),
            followers=pipe.followers,
            checkpoint_dir=settings.checkpoint_dir,
            checkpoint_every_s=settings.checkpoint_every,
            checkpoint_every_items=checkpoint_every_items,
            speed=settings.speed,
            on_item=on_item,
            stop_event=stop,
            on_start=on_start,
            checkpoint_extra=lambda: {"schedule": pipe.scheduler.sched.as_dict()},
            on_end=on_end,
        )
        bar.stop()
        pipe.sync_metrics(result.ingestor)
        pipe.terminal.final()
    finally:
        bar.stop()
        await pipe.stop()
    return result, pipe


async def live_pipeline(
    settings: Settings,
    *,
    console: Console | None = None,
    tables: bool = True,
    stop: asyncio.Event | None = None,
    on_ready: Any = None,
) -> Pipeline:
    """Run on the live relay until SIGTERM/SIGINT or ``stop`` is set. ``on_ready(pipe)`` is called once the
    pipeline has started (tests use it to find the metrics port)."""
    from streamer.live import LiveSource

    pipe = Pipeline(settings, console=console, tables=tables, every_run=True)
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    _install_signals(loop, stop.set)
    cursor = -1
    state: AgentState
    loaded = load_checkpoint(settings.checkpoint_dir, pipe.followers) if settings.checkpoint_dir else None
    if loaded is not None:
        state, cursor, extra = loaded
        if extra.get("mode") != "live":
            raise ConfigError(
                f"checkpoint in {settings.checkpoint_dir} was written by a replay; give `run` its own checkpoint "
                "directory"
            )
        if state.config.as_dict() != settings.state().as_dict():
            raise ConfigError(f"checkpoint in {settings.checkpoint_dir} was made with another window configuration")
        pipe.scheduler.sched = ScheduleState.from_dict(extra.get("schedule", {}))
        pipe.scheduler.sched.next_due_us = -1  # wall-clock schedule restarts from now
    else:
        state = AgentState(settings.state(), pipe.followers)
    ingestor = Ingestor(state, cursor=cursor)
    pipe.metrics.not_ready_reason = f"relay {settings.relay} not connected yet"
    await pipe.start(settings.metrics_port if settings.metrics_port is not None else DEFAULT_METRICS_PORT)
    source = LiveSource(settings.relay, cursor=cursor if cursor >= 0 else None, stop=stop)
    pipe.source = source  # type: ignore[attr-defined]
    if on_ready is not None:
        on_ready(pipe)
    queue: asyncio.Queue[Any] = asyncio.Queue(settings.queue_size)
    seen = _Seen()

    async def read() -> None:
        async for _, decoded in source.items():
            await queue.put(decoded)

    async def ingest() -> None:
        while True:
            decoded = await queue.get()
            ingestor.apply_decoded(decoded)
            if ingestor.position % 2000 == 0:
                pipe.sync_metrics(ingestor)

    async def watch() -> None:
        while not stop.is_set():
            st = source.stats
            connected = st.connects > sum(st.disconnects.values())
            pipe.metrics.ready = connected
            pipe.metrics.connected.set(1 if connected else 0)
            pipe.metrics.not_ready_reason = "" if connected else f"relay {settings.relay} not connected"
            for _, n in seen.delta("reconnects", {"r": st.reconnects}).items():
                pipe.metrics.reconnects.inc(n)
            for reason, n in seen.delta("source_errors", st.errors).items():
                pipe.metrics.decode_errors.labels(reason).inc(n)
            pipe.sync_metrics(ingestor)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def checkpoint() -> None:
        if not settings.checkpoint_dir:
            return
        arrays, meta = capture(ingestor.state)
        extra = {"schedule": pipe.scheduler.sched.as_dict(), "mode": "live", "relay": settings.relay}
        try:
            await asyncio.to_thread(write_checkpoint, settings.checkpoint_dir, arrays, meta, ingestor.cursor, extra)
            pipe.metrics.checkpoints.labels("ok").inc()
        except OSError as exc:
            pipe.metrics.checkpoints.labels("failed").inc()
            log.error("checkpoint to %s failed: %s", settings.checkpoint_dir, exc)

    async def checkpoints() -> None:
        while True:
            await asyncio.sleep(settings.checkpoint_every)
            await checkpoint()

    async def schedule() -> None:
        while True:
            now = time.time_ns() // 1000
            if pipe.scheduler.due(now):
                as_of = pipe.scheduler.sched.next_due_us
                snap = ingestor.state.snapshot()
                try:
                    out = await asyncio.to_thread(pipe.scheduler.compute, snap, as_of)
                except Exception:
                    pipe.metrics.runs.labels("failed").inc()
                    log.exception("attribution run failed")
                    pipe.scheduler.sched.next_due_us = -1
                    continue
                pipe.scheduler.accept(out, time.time_ns() // 1000)
            wait = max(0.05, (pipe.scheduler.sched.next_due_us - time.time_ns() // 1000) / 1e6)
            await asyncio.sleep(min(wait, 1.0))

    tasks = [asyncio.create_task(t()) for t in (read, ingest, watch, checkpoints, schedule)]
    try:
        done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in tasks and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        source.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not queue.empty():  # frames already read are applied before the final checkpoint
            ingestor.apply_decoded(queue.get_nowait())
        pipe.sync_metrics(ingestor)
        await checkpoint()
        await pipe.stop()
    return pipe


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=os.environ.get("SKYATTR_LOG_FORCE") == "1",
    )
    if level != "DEBUG":  # aiokafka logs every retry while the broker is away; the publisher logs a summary
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
