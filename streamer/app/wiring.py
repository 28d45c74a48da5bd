"""One wiring for the live daemon and the replay: checkpoint → state → dispatcher → pipeline → source → run.

Live and replay differ in three things only, and those are a :class:`Feed`: where the items come from (the relay
or Jetstream on the wall clock; an archive on event time), what a checkpoint records of the feed's position (the
relay's cursor; the archive's path and item count), and how the schedule continues after a resume (the wall-clock
schedule restarts from now; an archive's continues where it stood). Everything else is written once, here:

* :meth:`Run.open` loads the checkpoint (refusing one of the other mode, another window or other dependencies) and
  builds the state, the dispatcher, the pipeline and the source in that order, each from the one before;
* :meth:`Run.go` writes a checkpoint before the first item of a fresh run (so whatever is killed when, a restart
  knows where the results stood), runs the pipeline with a checkpoint every ``checkpoint_every_s`` seconds (or
  ``checkpoint_every_items`` items), gives a finite feed on event time its tail run once (not again when a
  finished replay is resumed), and checkpoints at the end.

One error policy for checkpoints: a write that fails is logged and counted (the :class:`Outlet` hears of it) and
tried again at the next checkpoint; the run goes on, because nothing is lost by it (the results are in the journal,
and a restart resumes from the last checkpoint that was written, results computed again are not sent again).

Where results go is an :class:`Outlet`: the daemon (journal, sinks, metrics) or, for tools and tests, a callable
(:class:`Deliver`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from kernels import defaults
from streamer.core.attribution import AttributionConfig
from streamer.core.checkpoint import Checkpoints
from streamer.core.dispatch import SequentialDispatcher
from streamer.core.followers import Followers
from streamer.core.pipeline import Clock, Ended, Pipeline
from streamer.core.results import Result
from streamer.core.revs import RevGuard
from streamer.core.schedule import ScheduleState
from streamer.core.seqs import SeenSeqs
from streamer.core.source import Source, SourceStats
from streamer.core.state import AgentState, StateConfig

log = logging.getLogger("skyattr.wiring")


@dataclass(frozen=True)
class Resumed:
    """Where a run starts: the checkpoint's cursor, ring of seqs seen and extra (empty for a fresh run)."""

    cursor: int = -1
    seen: SeenSeqs | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    revs: RevGuard | None = None

    @property
    def fresh(self) -> bool:
        return not self.extra


class Feed(Protocol):
    """What live and replay do differently (see the module doc)."""

    mode: Literal["live", "replay"]
    clock: Clock
    at_least_once: bool  # its source may send an event again under a new position: dedupe by (DID, rev)

    def identity(self) -> dict[str, Any]:
        """What the checkpoint's dependencies record of the feed (an archive's size and head hash)."""
        ...

    def check(self, extra: dict[str, Any]) -> None:
        """Refuse a checkpoint of another feed (``ValueError`` naming it), before the window is compared."""
        ...

    def schedule(self, held: ScheduleState) -> ScheduleState:
        """The schedule to continue from, given the checkpoint's."""
        ...

    def open(self, resumed: Resumed, stats: SourceStats, stop: asyncio.Event) -> Source:
        """The source, positioned after what the checkpoint holds."""
        ...

    def position(self) -> dict[str, Any]:
        """What a checkpoint records of the feed's position, besides the dispatcher's cursor."""
        ...


class Outlet(Protocol):
    """Where a run's results go, and what its checkpoints record of them."""

    def deliver(self, result: Result) -> None: ...

    def skipped(self, reason: str) -> None: ...

    def failed(self, exc: BaseException) -> None: ...

    def resumed(self, extra: dict[str, Any], pipeline: Pipeline) -> None:
        """When the run starts, before any item: the checkpoint's extra (empty for a fresh run), to bring the
        sinks up to the journal."""
        ...

    def checkpoint_info(self) -> dict[str, Any]:
        """What each checkpoint records of the results (how far the journal and the results file were)."""
        ...

    def checkpointed(self, info: dict[str, Any] | None) -> None:
        """A checkpoint is durable (``info``: what it recorded), or failed to be written (None)."""
        ...


@dataclass
class Deliver:
    """An outlet that hands each result to a callable (none: drops it) and keeps nothing else (tools, tests,
    benchmarks)."""

    to: Callable[[Result], None] | None = None

    def deliver(self, result: Result) -> None:
        if self.to is not None:
            self.to(result)

    def skipped(self, reason: str) -> None:
        pass

    def failed(self, exc: BaseException) -> None:
        pass

    def resumed(self, extra: dict[str, Any], pipeline: Pipeline) -> None:
        pass

    def checkpoint_info(self) -> dict[str, Any]:
        return {}

    def checkpointed(self, info: dict[str, Any] | None) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """The options of a run that do not depend on its feed. ``attribution`` None: ingest only, no runs."""

    config: StateConfig | None = None
    followers: Followers | None = None
    checkpoint_dir: str | Path | None = None
    depends: dict[str, Any] = field(default_factory=dict)
    attribution: AttributionConfig | None = None
    interval_s: float = defaults.INTERVAL_S
    checkpoint_every_s: float = 60.0
    checkpoint_every_items: int | None = None
    speed: float | None = None
    queue_size: int = 10_000


class Run:
    """One run of the pipeline on one feed (see the module doc). Build it with :meth:`open`."""

    def __init__(
        self,
        feed: Feed,
        options: RunOptions,
        outlet: Outlet,
        store: Checkpoints | None,
        resumed: Resumed,
        pipeline: Pipeline,
        source: Source,
        stats: SourceStats,
        stop: asyncio.Event,
    ) -> None:
        self.feed, self.options, self.outlet, self.store = feed, options, outlet, store
        self.resumed, self.pipeline, self.source, self.stats, self.stop = resumed, pipeline, source, stats, stop
        self.finished = bool(resumed.extra.get("finished", False))

    @classmethod
    def open(cls, feed: Feed, options: RunOptions, outlet: Outlet, stop: asyncio.Event | None = None) -> Run:
        """Load the checkpoint (``ValueError`` for one that cannot be resumed) and build the run on it."""
        store = None
        if options.checkpoint_dir:
            deps = {**options.depends, **feed.identity()}
            store = Checkpoints(options.checkpoint_dir, feed.mode, deps)
        loaded = store.resume(options.config, options.followers, check=feed.check) if store is not None else None
        if loaded is not None:
            state, cursor, extra = loaded
            resumed = Resumed(cursor, extra.get("seen"), extra, extra.get("revs"))
        else:
            state, resumed = AgentState(options.config, options.followers), Resumed()
        stats = SourceStats()
        revs = (resumed.revs if resumed.revs is not None else RevGuard()) if feed.at_least_once else None
        dispatcher = SequentialDispatcher(
            state, stats, cursor=resumed.cursor, seen=resumed.seen, clock=_receive_clock(feed.clock), revs=revs
        )
        dispatcher.at_cursor = list(resumed.extra.get("at_cursor") or [])
        pipeline = Pipeline(
            dispatcher,
            options.attribution,
            options.interval_s,
            outlet.deliver,
            clock=feed.clock,
            schedule=feed.schedule(ScheduleState.from_dict(resumed.extra.get("schedule", {}))),
            on_skip=outlet.skipped,
            on_failure=outlet.failed,
        )
        stop = stop if stop is not None else asyncio.Event()
        source = feed.open(resumed, stats, stop)
        return cls(feed, options, outlet, store, resumed, pipeline, source, stats, stop)

    @property
    def dispatcher(self) -> SequentialDispatcher:
        dispatcher = self.pipeline.dispatcher
        assert isinstance(dispatcher, SequentialDispatcher)
        return dispatcher

    async def checkpoint(self) -> None:
        """Write a checkpoint of the state as the dispatcher holds it (see the module doc for a failed write)."""
        if self.store is None:
            return
        d = self.dispatcher
        info = {
            **self.outlet.checkpoint_info(),
            **self.feed.position(),
            "schedule": self.pipeline.schedule.as_dict(),
            "finished": self.finished,
            "at_cursor": list(d.at_cursor),
        }
        try:
            await self.store.save(d.state, d.cursor, d.seen, info, d.revs)
        except OSError as exc:
            log.error("checkpoint to %s failed: %s", self.store.directory, exc)
            self.outlet.checkpointed(None)
            return
        self.outlet.checkpointed(info)

    async def go(self, on_progress: Callable[[], None] | None = None, progress_every: int = 2000) -> Ended:
        """Run until the feed ends or ``stop`` is set; see the module doc. The outlet hears of the resume first
        (it is started by now: a sink that must send again what it may not have delivered can)."""
        self.outlet.resumed(self.resumed.extra, self.pipeline)
        if self.store is not None and self.resumed.fresh:
            await self.checkpoint()
        o = self.options
        ended = await self.pipeline.run(
            self.source,
            stop=self.stop,
            checkpoint=self.checkpoint if self.store is not None else None,
            checkpoint_every_s=o.checkpoint_every_s,
            checkpoint_every_items=o.checkpoint_every_items,
            speed=o.speed,
            queue_size=o.queue_size,
            on_progress=on_progress,
            progress_every=progress_every,
        )
        if not ended.interrupted and not self.finished and self.feed.clock == "event":
            if o.attribution is not None:  # the tail of a finite feed after its last due time
                await self.pipeline.run_tail()
            self.finished = True
        await self.checkpoint()  # the pipeline's run ended with the dispatcher's shutdown: the state is flushed
        return ended


def _receive_clock(clock: Clock) -> Callable[[], int] | None:
    """The receive clock the state checks event times against: the wall's, live; none in a replay, where the
    stream's own progress is the only clock."""
    if clock == "event":
        return None
    return lambda: time.time_ns() // 1000
