"""The daemon: ingest → rolling state → periodic attribution → sinks (terminal, JSONL, Prometheus, Kafka).

Two drivers share one :class:`Pipeline`:

* :func:`replay_pipeline` runs the synchronous replay (:func:`streamer.core.ingest.replay`) in a worker thread; the
  scheduler rides on it in **event time**, so the runs of a replay are those of the live run that recorded the
  archive. The asyncio loop in the main thread keeps serving Kafka and the metrics endpoint meanwhile.
* :func:`live_pipeline` reads the relay with :class:`streamer.sources.firehose.FirehoseSource` into a bounded queue,
folds
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
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streamer.app.settings import DEFAULT_METRICS_PORT, ConfigError, Settings
from streamer.app.terminal import TerminalSink
from streamer.core.checkpoint import capture, check_dependencies, file_identity, load_checkpoint, write_checkpoint
from streamer.core.ingest import Ingestor, ReplayResult, load_followers, replay
from streamer.core.journal import KafkaAcks, ResultJournal, identities, result_id
from streamer.core.schedule import Scheduler, ScheduleState
from streamer.core.state import AgentState
from streamer.sinks.jsonl import JsonlSink
from streamer.sinks.prometheus import Metrics

log = logging.getLogger("skyattr.daemon")


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
    """Scheduler, sinks and metrics around one :class:`AgentState`.

    Every result goes through :meth:`deliver`: deduplicated on its identity, made durable in the results journal
    (with a checkpoint directory), then handed to the terminal, Prometheus, the JSONL file and Kafka. A result
    that cannot be written durably stops the pipeline (:class:`~streamer.core.journal.ResultWriteError`)."""

    def __init__(
        self, settings: Settings, *, console: Console | None = None, tables: bool = True, every_run: bool = False
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.terminal = TerminalSink(console, tables=tables, every_run=every_run)
        self.kafka: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.followers = load_followers(settings.followers) if settings.followers else None
        self.journal: ResultJournal | None = None
        self.acks: KafkaAcks | None = None
        if settings.checkpoint_dir:
            check_writable(settings.checkpoint_dir)
            self.journal = ResultJournal(settings.checkpoint_dir)
            if settings.kafka_bootstrap:
                self.acks = KafkaAcks(settings.checkpoint_dir)
        self.jsonl = JsonlSink(settings.out) if settings.out else None
        self.scheduler = Scheduler(settings.attribution(), settings.interval, [self.deliver], on_skip=self._skipped)
        self._seen = _Seen()
        self._out_ids: set[tuple[str, str]] = set()
        self.results_repeated = 0  # results computed again after a restart, already delivered: not sent again
        self.kafka_unsent = 0
        self.kafka_recovered = 0
        self.delivered_seq = self.journal.last_seq if self.journal is not None else 0  # journal seq the file has

    def dependencies(self) -> dict[str, Any]:
        """What a checkpoint's results depend on besides the window (which the state itself records and the resume
        checks): resuming with any of them changed would mix results."""
        return {
            "interval": self.settings.interval,
            "attribution": self.settings.attribution().as_dict(),
            "followers": file_identity(self.settings.followers) if self.settings.followers else None,
        }

    async def start(self, metrics_port: int | None) -> None:
        self.loop = asyncio.get_running_loop()
        if metrics_port is not None:
            port = self.metrics.serve(metrics_port, self.settings.metrics_host)
            log.info("metrics on %s:%d/metrics", self.settings.metrics_host, port)
        if self.settings.kafka_bootstrap:
            from streamer.sinks.kafka import KafkaPublisher

            topics = {"tiers": self.settings.kafka_topic_tiers, "alerts": self.settings.kafka_topic_alerts}
            self.kafka = KafkaPublisher(
                self.settings.kafka_bootstrap,
                topics,
                buffer_limit=self.settings.kafka_buffer,
                metrics=self.metrics,
                security=self.settings.kafka_security(),
                on_ack=self.acks.ack if self.acks is not None else None,
            )
            await self.kafka.start()

    async def stop(self) -> None:
        if self.kafka is not None:
            self.kafka_unsent = await self.kafka.close(timeout=self.settings.kafka_shutdown_timeout)
            if self.kafka_unsent and self.journal is not None:
                log.warning(
                    "%d result(s) not acknowledged by Kafka are kept in %s and sent at the next start with this "
                    "checkpoint directory",
                    self.kafka_unsent,
                    self.journal.path,
                )
            elif self.kafka_unsent:
                log.error("%d result(s) not acknowledged by Kafka are lost (no --checkpoint-dir)", self.kafka_unsent)
        if self.jsonl is not None:
            self.jsonl.close()
        if self.journal is not None:
            self.journal.close()
        self.metrics.close()

    # results -------------------------------------------------------------------------------------------------
    def recover(self, extra: dict[str, Any], *, live: bool) -> None:
        """Bring the sinks up to the journal after a restart (called once the checkpoint is loaded, before any new
        result): results journaled after the checkpoint but missing from the JSONL file are written to it,
        results Kafka did not acknowledge are published again (verified against the topic first). Live, the run
        counter and the alert state continue from the newest journaled result, so run numbers are never reused."""
        results = extra.get("results") or {}
        ckpt_seq = int(results.get("journal_seq", 0))
        if self.jsonl is not None and self.jsonl.offset >= 0:
            path = Path(self.jsonl.path)
            offset = int(results.get("out_offset", 0)) if results.get("out") == str(path) else 0
            size = path.stat().st_size
            if size < offset:
                raise ConfigError(
                    f"results file {path} holds {size} bytes but the checkpoint in {self.settings.checkpoint_dir} "
                    f"recorded {offset}: it was truncated or replaced; restore it, or give another --out"
                )
            self._out_ids = identities(path, offset)
            if self.journal is not None:
                for e in self.journal.after(ckpt_seq):
                    if (e.topic, e.id) not in self._out_ids:
                        self.jsonl(e.topic, e.message)
                        self._out_ids.add((e.topic, e.id))
                self.delivered_seq = self.journal.last_seq
        if self.journal is None:
            return
        if live:
            last = self.journal.last_tiers()
            sched = self.scheduler.sched
            if last is not None and int(last["run"]) > sched.run:
                sched.run = int(last["run"])
                sched.alert_active = bool(last["alert"]["active"])
        if self.acks is not None:
            pending = self.journal.after(self.acks.through)
            self.kafka_recovered = len(pending)
            if pending:
                log.info("sending %d journaled result(s) Kafka has not acknowledged", len(pending))
            for e in pending:
                self._on_loop(self._publish_kafka, e.topic, e.message, e.seq, True)

    def results_extra(self) -> dict[str, Any]:
        """The results part of a checkpoint: how far the journal and the JSONL file were when it was taken."""
        return {
            "journal_seq": self.delivered_seq,
            "out": self.jsonl.path if self.jsonl is not None else None,
            "out_offset": self.jsonl.offset if self.jsonl is not None else -1,
        }

    def checkpointed(self, extra: dict[str, Any]) -> None:
        """After a checkpoint is durable: drop journal entries every sink has."""
        if self.journal is None:
            return
        through = int(extra["results"]["journal_seq"])
        if self.acks is not None:
            through = min(through, self.acks.through)
        self.journal.compact(through)

    def deliver(self, kind: str, message: dict[str, Any]) -> None:
        """The one sink the scheduler knows (see the class docstring)."""
        key = (kind, result_id(message))
        if (self.journal is not None and self.journal.has(*key)) or key in self._out_ids:
            self.results_repeated += 1
            self.metrics.results_repeated.inc()
            return
        token = self.journal.append(kind, message).seq if self.journal is not None else None
        for sink in (self.terminal, self._metrics_sink):
            try:
                sink(kind, message)
            except Exception:
                log.exception("a %s result could not be shown by %r", kind, sink)
        if self.jsonl is not None:
            self.jsonl(kind, message)
            self._out_ids.add(key)
        if token is not None:
            self.delivered_seq = token
        if self.kafka is not None:
            self._on_loop(self._publish_kafka, kind, message, token, False)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        if self.loop is not None and threading.current_thread() is not threading.main_thread():
            self.loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def _publish_kafka(self, kind: str, message: dict[str, Any], token: int | None, verify: bool) -> None:
        if self.kafka is None:
            return
        if self.acks is not None and token is not None:
            self.acks.expect(token)
        try:
            self.kafka.publish(kind, message, token=token, verify=verify)
        except Exception:
            log.exception("a %s result could not be published to Kafka", kind)

    def _metrics_sink(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "tiers":
            self.metrics.record_run(message)
            self.metrics.runs.labels("ok").inc()
            self.metrics.last_success.set(time.time())

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
    task = bar.add_task(escape(Path(archive).name), total=None, run=0)
    await pipe.start(settings.metrics_port)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    _install_signals(loop, stop.set)

    def on_start(ing: Ingestor, extra: dict[str, Any]) -> None:
        pipe.scheduler.sched = ScheduleState.from_dict(extra.get("schedule", {}))
        pipe.recover(extra, live=False)
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
            checkpoint_extra=lambda: {"schedule": pipe.scheduler.sched.as_dict(), "results": pipe.results_extra()},
            on_end=on_end,
            depends=pipe.dependencies(),
            after_checkpoint=pipe.checkpointed,
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
    from streamer.sources.firehose import FirehoseSource

    pipe = Pipeline(settings, console=console, tables=tables, every_run=True)
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    _install_signals(loop, stop.set)
    cursor = -1
    state: AgentState
    deps = {**pipe.dependencies(), "relay": settings.relay}
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
        try:
            check_dependencies(settings.checkpoint_dir, extra.get("deps") or {}, deps)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        pipe.scheduler.sched = ScheduleState.from_dict(extra.get("schedule", {}))
        pipe.scheduler.sched.next_due_us = -1  # wall-clock schedule restarts from now
    else:
        state = AgentState(settings.state(), pipe.followers)
        extra = {}
    ingestor = Ingestor(state, cursor=cursor, seen=extra.get("seen"))
    ingestor.clock = lambda: time.time_ns() // 1000
    pipe.metrics.not_ready_reason = f"relay {settings.relay} not connected yet"
    await pipe.start(settings.metrics_port if settings.metrics_port is not None else DEFAULT_METRICS_PORT)
    pipe.recover(extra, live=True)
    source = FirehoseSource(settings.relay, cursor=cursor if cursor >= 0 else None, stop=stop, seen=ingestor.seen)
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
        m = pipe.metrics
        while not stop.is_set():
            st = source.stats
            connected = st.connects > sum(st.disconnects.values())
            # Not ready while recovering from a relay reset (FutureCursor): connected or not, no new frame flows
            # until the source has reconnected from the relay's head.
            m.ready = connected and not source.recovering
            m.connected.set(1 if connected else 0)
            m.not_ready_reason = source.recovering or ("" if connected else f"relay {settings.relay} not connected")
            m.seq_anomaly.set(1 if source.anomalous else 0)
            # The live source is the one dedupe point in live mode (the ingestor trusts its verdict), so its
            # duplicates and seq anomalies are the ones to export.
            source_counts = {
                "reconnects": (st.reconnects, m.reconnects),
                "duplicates": (st.duplicates, m.duplicates),
                "seq_gaps": (st.gaps, m.seq_gaps),
                "seq_gap_frames": (st.gap_frames, m.seq_gap_frames),
                "seq_out_of_order": (st.out_of_order, m.seq_out_of_order),
                "seq_resets": (st.resets, m.seq_resets),
            }
            for name, (value, counter) in source_counts.items():
                for _, n in seen.delta(name, {name: value}).items():
                    counter.inc(n)
            for reason, n in seen.delta("source_errors", st.errors).items():
                m.decode_errors.labels(reason).inc(n)
            pipe.sync_metrics(ingestor)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def checkpoint() -> None:
        if not settings.checkpoint_dir:
            return
        arrays, meta = capture(ingestor.state, ingestor.seen)
        info = {
            "schedule": pipe.scheduler.sched.as_dict(),
            "mode": "live",
            "relay": settings.relay,
            "results": pipe.results_extra(),
            "deps": deps,
        }
        try:
            await asyncio.to_thread(write_checkpoint, settings.checkpoint_dir, arrays, meta, ingestor.cursor, info)
            pipe.metrics.checkpoints.labels("ok").inc()
        except OSError as exc:
            pipe.metrics.checkpoints.labels("failed").inc()
            log.error("checkpoint to %s failed: %s", settings.checkpoint_dir, exc)
            return
        pipe.checkpointed(info)

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

    if loaded is None:
        await checkpoint()  # from the first moment on, a restart knows where the results file stood
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
