"""The daemon's wiring: settings → source, dispatcher, state, pipeline → results journal → sinks.

Two drivers share one :class:`Daemon` (the results side) and one :class:`~streamer.core.pipeline.Pipeline`:

* :func:`replay_pipeline`: an archive on **event time** (:func:`streamer.app.replay.replay_archive`), so the
  runs of a replay are those of the live run that recorded the archive.
* :func:`live_pipeline`: a live source (the relay's firehose, or Jetstream) on **wall time**; the attribution runs
  in a worker thread while the websocket keeps being read.

Both stop on SIGTERM/SIGINT: stop reading, write a checkpoint, flush Kafka within a bound, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from streamer.app.progress import JobProgress, archive_frames
from streamer.app.replay import ReplayResult, replay_archive
from streamer.app.settings import DEFAULT_METRICS_PORT, ConfigError, Settings
from streamer.app.terminal import TerminalSink
from streamer.app.wiring import Resumed, Run, RunOptions
from streamer.core.checkpoint import file_identity
from streamer.core.journal import ResultJournal, ResultWriteError, identities
from streamer.core.pipeline import Clock, Pipeline
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState
from streamer.core.seqs import SeenSeqs
from streamer.core.source import Source, SourceStats
from streamer.sinks.base import Sink
from streamer.sinks.jsonl import JsonlSink
from streamer.sinks.prometheus import Metrics
from streamer.sources.archive import ArchiveSource, archive_bytes

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


class Daemon:
    """The results side around one pipeline: journal, sinks, metrics.

    Every result goes through :meth:`deliver`: deduplicated on its identity, made durable in the results journal
    (with a checkpoint directory), then published to each sink (terminal, Prometheus, the JSONL file, Kafka). A
    sink that raises is logged and counted (``skyattr_sink_errors_total{sink}``) and the others still get the
    result; a result that cannot be written durably stops the daemon (:class:`ResultWriteError`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        console: Console | None = None,
        tables: bool = True,
        every_run: bool = False,
        sinks: Sequence[Sink] = (),
    ) -> None:
        """``sinks``: more sinks (the Sink protocol), after the built-in ones: started, fed every result once,
        isolated and counted like them, and closed at the stop."""
        self.settings = settings
        self.metrics = Metrics()
        self.terminal = TerminalSink(console, tables=tables, every_run=every_run)
        self.kafka: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.followers = settings.follower_source()
        self.journal: ResultJournal | None = None
        if settings.checkpoint_dir:
            check_writable(settings.checkpoint_dir)
            self.journal = ResultJournal(settings.checkpoint_dir)
        self.jsonl = JsonlSink(settings.out) if settings.out else None
        # every result goes to each of these, in this order (Kafka joins at start)
        self.sinks: list[Sink] = [self.terminal, self.metrics, *([self.jsonl] if self.jsonl is not None else [])]
        self.sinks += sinks
        self._added = list(sinks)
        self.pipeline: Pipeline | None = None
        self.source: Source | None = None
        self.sink_errors: Counter[str] = Counter()
        self._out_ids: set[tuple[str, str]] = set()
        self.results_repeated = 0  # results computed again after a restart, already delivered: not sent again
        self.kafka_unsent = 0
        self.kafka_recovered = 0
        self.delivered_seq = self.journal.last_seq if self.journal is not None else 0  # journal seq the file has

    @property
    def schedule(self) -> ScheduleState:
        return self.pipeline.schedule if self.pipeline is not None else ScheduleState()

    def dependencies(self) -> dict[str, Any]:
        """What a checkpoint's results depend on besides the window (which the state itself records and the resume
        checks): resuming with any of them changed would mix results."""
        return {
            "interval": self.settings.interval,
            "attribution": self.settings.attribution().as_dict(),
            "followers": file_identity(self.settings.followers) if self.settings.followers else None,
            **({"appview": self.settings.appview.rstrip("/")} if self.settings.appview else {}),
        }

    def run_options(self, checkpoint_every_items: int | None = None) -> RunOptions:
        """The options of a run, from the settings."""
        s = self.settings
        return RunOptions(
            config=s.state(),
            followers=self.followers,
            checkpoint_dir=s.checkpoint_dir,
            depends=self.dependencies(),
            attribution=s.attribution(),
            interval_s=s.interval,
            checkpoint_every_s=s.checkpoint_every,
            checkpoint_every_items=checkpoint_every_items,
            speed=s.speed,
            queue_size=s.queue_size,
        )

    async def start(self, metrics_port: int | None) -> None:
        self.loop = asyncio.get_running_loop()
        if metrics_port is not None:
            port = self.metrics.serve(metrics_port, self.settings.metrics_host)
            log.info("metrics on %s:%d/metrics", self.settings.metrics_host, port)
        if self.settings.kafka_bootstrap:
            from streamer.sinks.kafka import KafkaSink

            topics = {"tiers": self.settings.kafka_topic_tiers, "alerts": self.settings.kafka_topic_alerts}
            journal = self.journal
            self.kafka = KafkaSink(
                self.settings.kafka_bootstrap,
                topics,
                transactional_id=journal.writer_id if journal is not None else None,
                mark_topic=self.settings.topics.state,
                initial_mark=(journal.legacy_mark() or 0) if journal is not None else 0,
                buffer_limit=self.settings.kafka_buffer,
                security=self.settings.kafka_security(),
            )
            self.metrics.stream.kafka = self.kafka.stats
            self.sinks.append(self.kafka)
        for sink in self.sinks:
            await sink.start()

    async def stop(self) -> None:
        if self.kafka is not None:
            self.kafka_unsent = await self.kafka.close(timeout=self.settings.kafka_shutdown_timeout)
            if self.kafka_unsent and self.journal is not None:
                log.warning(
                    "%d result(s) not committed to Kafka are kept in %s and sent at the next start with this "
                    "checkpoint directory",
                    self.kafka_unsent,
                    self.journal.path,
                )
            elif self.kafka_unsent:
                log.error("%d result(s) not committed to Kafka are lost (no --checkpoint-dir)", self.kafka_unsent)
        if self.jsonl is not None:
            await self.jsonl.close(0)
        for sink in self._added:
            await sink.close(self.settings.kafka_shutdown_timeout)
        if self.journal is not None:
            self.journal.close()
        self.metrics.stop_serving()

    # results -------------------------------------------------------------------------------------------------
    def resumed(self, extra: dict[str, Any], pipeline: Pipeline) -> None:
        """Bring the sinks up to the journal after a restart (the outlet's hook: the checkpoint is loaded, no new
        result yet): results journaled after the checkpoint but missing from the JSONL file are written to it,
        every retained journal entry is published to Kafka again with its sequence number (the publisher drops
        those its mark in Kafka says are committed). On the wall
        clock, where the runs after the checkpoint are not computed again alike, the run counter and the alert
        state continue from the newest journaled result, so run numbers are never reused."""
        self.pipeline = pipeline
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
                        self.jsonl.publish(e.result)
                        self._out_ids.add((e.topic, e.id))
                self.delivered_seq = self.journal.last_seq
        if self.journal is None:
            return
        if pipeline.clock == "wall":
            last = self.journal.last_tiers()
            if last is not None and last.run > pipeline.schedule.run:
                pipeline.schedule = ScheduleState(last.run, pipeline.schedule.next_due_us, last.alert.active)
        if self.kafka is not None:
            self.kafka_recovered = len(self.journal.entries)
            for e in self.journal.entries:
                self._isolated("kafka", self.kafka.publish, e.result, e.seq)

    def checkpoint_info(self) -> dict[str, Any]:
        """The results part of a checkpoint: how far the journal and the JSONL file were when it was taken."""
        results = {
            "journal_seq": self.delivered_seq,
            "out": self.jsonl.path if self.jsonl is not None else None,
            "out_offset": self.jsonl.offset if self.jsonl is not None else -1,
        }
        return {"results": results}

    def checkpointed(self, info: dict[str, Any] | None) -> None:
        """A checkpoint was written (``info``) or failed (None): counted; once one is durable, the journal entries
        every sink has are dropped."""
        self.metrics.checkpoints.labels("ok" if info is not None else "failed").inc()
        if self.journal is None or info is None:
            return
        through = int(info["results"]["journal_seq"])
        if self.kafka is not None:
            through = min(through, self.kafka.committed_through)
        self.journal.compact(through)

    def deliver(self, result: Result) -> None:
        """The one place results enter the sinks (see the class docstring)."""
        key = (result.topic, result.id)
        if (self.journal is not None and self.journal.has(*key)) or key in self._out_ids:
            self.results_repeated += 1
            self.metrics.results_repeated.inc()
            return
        token = self.journal.append(result).seq if self.journal is not None else None
        for sink in self.sinks:  # the JSONL sink's ResultWriteError goes through: nothing is checkpointed past it
            if sink is self.kafka:
                self._isolated(sink.name, self.kafka.publish, result, token)
            else:
                self._isolated(sink.name, sink.publish, result)
        if self.jsonl is not None:
            self._out_ids.add(key)
        if token is not None:
            self.delivered_seq = token

    def _isolated(self, name: str, fn: Any, *args: Any) -> None:
        """Run one sink; anything but a durability failure is logged and counted, and must not stop the others."""
        try:
            fn(*args)
        except ResultWriteError:
            raise
        except Exception:
            self.sink_errors[name] += 1
            self.metrics.sink_errors.labels(name).inc()
            log.exception("the %s sink failed on a result", name)

    def skipped(self, reason: str) -> None:
        self.metrics.runs.labels("skipped").inc()

    def failed(self, exc: BaseException) -> None:
        self.metrics.runs.labels("failed").inc()


def _install_signals(loop: asyncio.AbstractEventLoop, callback: Any, checkpointing: bool) -> None:
    """SIGTERM/SIGINT stop the pipeline gracefully; the first one says so in the log (a stop must never be
    silent: an operator watching a pod's log sees why it is finishing), promising a checkpoint only where one is
    written (``checkpointing``: a --checkpoint-dir was given)."""

    said: list[signal.Signals] = []
    steps = (
        "applying what was read, final checkpoint, flushing sinks"
        if checkpointing
        else ("applying what was read, flushing sinks; no --checkpoint-dir, so no checkpoint")
    )

    def on_signal(sig: signal.Signals) -> None:
        if not said:
            log.info("%s received: stopping (%s)", sig.name, steps)
        said.append(sig)
        callback()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)


async def replay_pipeline(
    settings: Settings,
    archive: Path,
    *,
    console: Console | None = None,
    tables: bool = True,
    checkpoint_every_items: int | None = None,
    progress: bool = False,
    sinks: Sequence[Sink] = (),
) -> tuple[ReplayResult, Daemon]:
    """Replay ``archive`` through the whole pipeline (event-time schedule); returns the replay result. ``sinks``:
    more sinks for the results (see :class:`Daemon`)."""
    daemon = Daemon(settings, console=console, tables=tables, sinks=sinks)
    bar = JobProgress(progress, share=daemon.terminal.console)  # stderr: a bar on a terminal, else a log line
    frames = archive_frames(archive)  # from the files' trailers; without them, progress is in bytes of the files
    task = bar.task(
        "replay",
        total=frames if frames is not None else _archive_bytes(archive),
        unit="items" if frames is not None else "bytes",
        detail=Path(archive).name,
    )
    await daemon.start(settings.metrics_port)
    daemon.metrics.ready, daemon.metrics.not_ready_reason = True, ""
    stop = asyncio.Event()
    _install_signals(asyncio.get_running_loop(), stop.set, settings.checkpoint_dir is not None)

    def on_progress(source: ArchiveSource, pipe: Pipeline) -> None:
        if daemon.source is None:
            daemon.source = source
            daemon.metrics.bind(source.stats, pipe.dispatcher, source)
        done = source.position if frames is not None else source.bytes_read
        task.update(done, detail=f"{Path(archive).name}, run {pipe.schedule.run}")

    try:
        bar.start()
        result = await replay_archive(
            archive,
            stop=stop,
            outlet=daemon,
            on_progress=on_progress,
            progress_every=500,
            options=daemon.run_options(checkpoint_every_items),
        )
        bar.stop()
        if result.pipeline is not None:
            daemon.metrics.bind(result.stats, result.pipeline.dispatcher, None)
        daemon.terminal.final()
    finally:
        bar.stop()
        await daemon.stop()
    return result, daemon


def _archive_bytes(archive: Path) -> int | None:
    try:
        return archive_bytes(archive)
    except OSError:
        return None


def live_source(
    settings: Settings,
    *,
    cursor: int | None,
    seen: SeenSeqs | None,
    at_cursor: list[int],
    stop: asyncio.Event,
    stats: SourceStats,
) -> Source:
    """The live source the settings name: the relay's firehose (default) or a Jetstream (v1 or v2) server."""
    if settings.source == "jetstream2":
        return jetstream2_source(settings, cursor=cursor, stop=stop, stats=stats)
    if settings.source == "jetstream":
        from streamer.sources.jetstream import JetstreamSource

        return JetstreamSource(
            settings.jetstream_url,
            cursor=cursor,
            wanted_collections=settings.jetstream_collections,
            compress=settings.jetstream_compress,
            stop=stop,
            stats=stats,
            seen=at_cursor,
        )
    from streamer.sources.firehose import FirehoseSource

    return FirehoseSource(settings.relay, cursor=cursor, stop=stop, seen=seen, stats=stats)


def jetstream2_source(
    settings: Settings, *, cursor: int | None, stop: asyncio.Event | None = None, stats: SourceStats | None = None
) -> Source:
    """A Jetstream v2 source: the live tail alone, or, with an archive key and ``--backfill`` (or a cursor to
    resume from, which may be past the live lookback), the archive swept first and the tail after it
    (:class:`~streamer.sources.jetstream2_backfill.Jetstream2Backfill`), its progress logged every 10 s."""
    from streamer.sources.jetstream2 import Jetstream2Source

    options: dict[str, Any] = {
        "collections": settings.jetstream_collections, "kinds": settings.jetstream2_kinds,
        "compress": settings.jetstream_compress, "stop": stop, "stats": stats,
    }  # fmt: skip
    key = settings.archive_key()
    if key is None or (settings.backfill is None and cursor is None):
        return Jetstream2Source(settings.jetstream2_url, cursor=cursor, **options)
    from streamer.app.settings import duration_s
    from streamer.sources.jetstream2_backfill import Jetstream2Backfill

    since = None if cursor is not None else int((time.time() - duration_s(settings.backfill or "0s")) * 1e6)
    return Jetstream2Backfill(
        settings.jetstream2_url, api_key=key, archive_url=settings.jetstream2_archive_url, cursor=cursor,
        since_us=since, live=not settings.backfill_only, on_progress=BackfillLog(), **options,
    )  # fmt: skip


class BackfillLog:
    """A backfill's progress in one log line every ``every_s``: segments, bytes, events, seq against the sealed
    tip, rate and the time left at that rate (by seq)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.started, self.last = every_s, time.monotonic(), 0.0
        self.first_seq: int | None = None

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if self.first_seq is None:
            self.first_seq = p.seq
        if not p.live and now - self.last < self.every_s:
            return
        self.last = now
        rate = p.events / max(now - self.started, 1e-9)
        done = p.seq - (self.first_seq or 0)
        left = (p.tip - p.seq) * (now - self.started) / done if p.tip and done > 0 else None
        eta = f", about {left / 60:.0f} min left" if left is not None and not p.live else ""
        log.info(
            "backfill: %d of %d segments, %.1f MB, %s events (%.0f/s), seq %d of %s%s%s", p.units_done,
            p.units_planned, p.bytes / 1e6, f"{p.events:,}", rate, p.seq, p.tip, eta,
            "; the live tail from here" if p.live else "",
        )  # fmt: skip


@dataclass
class LiveFeed:
    """The live source the settings name, on the wall clock (the :class:`~streamer.app.wiring.Feed` of ``run``):
    a checkpoint records the relay (or Jetstream server) it followed, as a dependency too, and the wall-clock
    schedule restarts from now on a resume (the run counter and the alert state continue). A backfill that ends at
    the archive's tip (``--backfill-only``) is a replay of the window: event time, its schedule kept on a resume."""

    settings: Settings
    mode: Literal["live", "replay"] = "live"
    clock: Clock = "wall"

    @property
    def at_least_once(self) -> bool:
        """Jetstream v2 delivers at least once (a commit can come again under a new seq)."""
        return self.settings.source == "jetstream2"

    @property
    def where(self) -> str:
        s = self.settings
        return {"jetstream": s.jetstream_url, "jetstream2": s.jetstream2_url}.get(s.source, s.relay)

    def identity(self) -> dict[str, Any]:
        return {"relay": self.where}

    def check(self, extra: dict[str, Any]) -> None:
        pass  # the relay is a dependency: check_dependencies names it

    def schedule(self, held: ScheduleState) -> ScheduleState:
        return held if self.clock == "event" else ScheduleState(held.run, -1, held.alert_active)

    def open(self, resumed: Resumed, stats: SourceStats, stop: asyncio.Event) -> Source:
        at_cursor = list(resumed.extra.get("at_cursor") or [])
        cursor = resumed.cursor if resumed.cursor >= 0 else None
        return live_source(self.settings, cursor=cursor, seen=resumed.seen, at_cursor=at_cursor, stop=stop, stats=stats)

    def position(self) -> dict[str, Any]:
        return {"relay": self.where}


async def live_pipeline(
    settings: Settings,
    *,
    console: Console | None = None,
    tables: bool = True,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
    sinks: Sequence[Sink] = (),
) -> Daemon:
    """Run on the live source until SIGTERM/SIGINT or ``stop`` is set. ``on_ready(daemon)`` is called once the
    pipeline has started (tests use it to find the metrics port); ``sinks``: more sinks (see :class:`Daemon`)."""
    daemon = Daemon(settings, console=console, tables=tables, every_run=True, sinks=sinks)
    stop = stop if stop is not None else asyncio.Event()
    _install_signals(asyncio.get_running_loop(), stop.set, settings.checkpoint_dir is not None)
    # --backfill-only: the archive's window replayed, a finite feed on event time (its own kind of checkpoint)
    feed = LiveFeed(settings, "replay", "event") if settings.backfill_only else LiveFeed(settings)
    run = Run.open(feed, daemon.run_options(), daemon, stop)
    daemon.pipeline, daemon.source = run.pipeline, run.source
    daemon.metrics.not_ready_reason = f"{feed.where} not connected yet"
    await daemon.start(settings.metrics_port if settings.metrics_port is not None else DEFAULT_METRICS_PORT)
    daemon.metrics.bind(run.stats, run.dispatcher, run.source)
    if on_ready is not None:
        on_ready(daemon)
    watcher = asyncio.create_task(_watch_readiness(daemon, run, feed.where))
    try:
        await run.go()
    finally:
        stop.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(Exception):
            await run.source.aclose()
        await daemon.stop()
    return daemon


async def _watch_readiness(daemon: Daemon, run: Run, where: str) -> None:
    """/readyz follows the source: ready while connected, and not while recovering from a relay reset
    (FutureCursor): connected or not, no new frame flows until the source has reconnected from the relay's head."""
    m = daemon.metrics
    while not run.stop.is_set():
        connected = run.stats.connected
        recovering = getattr(run.source, "recovering", "")
        m.ready = connected and not recovering
        m.not_ready_reason = recovering or ("" if connected else f"{where} not connected")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), 0.5)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=os.environ.get("SKYATTR_LOG_FORCE") == "1",
    )
    if level != "DEBUG":  # aiokafka logs every retry while the broker is away; the publisher logs a summary
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        # JAX says at INFO that it looked for a TPU and found none, in words that read like an error; the device a
        # run used is in every result (``device``)
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
