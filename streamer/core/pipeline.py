"""The driver: Source → Dispatcher → State → Schedule → attribution → deliver, on event time or wall time.

One :class:`Pipeline` runs both clocks with the same pure :func:`~streamer.core.schedule.step`:

* **event time** (replay): each event the state accepts moves the clock (the dispatcher's ``before_fold`` hook,
  just before the event is folded). When a run is due, the state is frozen right there (:meth:`~streamer.core.
  state.AgentState.freeze`: references and a copy of the counters, no snapshot yet), so the run stamped T sees
  exactly the events before T. Building the snapshot and running the kernels happen in ``workers`` threads while
  ingest goes on (the kernels release the GIL, so on a CPU two runs compute at once on two cores); at most
  ``ahead`` runs, holding at most :data:`FLIGHT_BYTES` of frozen state, are in flight, then ingest waits for the
  oldest. Each run is finished — numbered, its alert decided — and delivered in due order, and every run in
  flight is delivered before a checkpoint is written, so a checkpoint never falls between a due time and its
  result.
* **wall time** (live): a reader task fills a bounded queue from the source, the ingest task applies it, and a
  ticker steps the schedule on the wall clock; the attribution runs in a worker thread while the websocket keeps
  being read.
* **a backfill, then wall time**: a live source that first sweeps an archive (its ``backfilling`` true, the seq it
  cuts over at in ``cutover_seq`` once known: :class:`~streamer.sources.jetstream2_backfill.Jetstream2Backfill`)
  has the archive's runs made in event time, exactly as a replay makes them (the ingest task checkpoints between
  items then, with every due run delivered first), and the wall clock takes over at the first item past the
  cut-over (or once the archive is done and nothing else waits), with its schedule started afresh from the run
  counter and the alert state.

Everything here is I/O-free apart from the source it is given and the callables it is handed: ``deliver(result)``
(the sinks, behind the app's journal), ``checkpoint()`` (async; called between items, never with a run
pending), ``on_skip(reason)`` and ``on_failure(exc)`` (counters). So a test can build a pipeline from any
source, the real dispatcher and state, and a list as its sink.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from streamer.core.attribution import AttributionConfig, Measured, RunOutput, finish, measure_snapshot
from streamer.core.dispatch import Dispatcher, repo_of
from streamer.core.pace import Pace
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState, accepted, align, interval_us, step, tail
from streamer.core.source import Source
from streamer.core.state import AgentState, FrozenState

log = logging.getLogger("skyattr.pipeline")
FLIGHT_BYTES = 512 << 20  # frozen state held by runs in flight before ingest waits (one run may always fly)
Clock = Literal["event", "wall"]


def default_workers() -> int:
    """Attribution threads: one per core, at most 4 (beyond that memory, not cores, is what runs out)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Ended:
    """How a :meth:`Pipeline.run` ended: ``interrupted`` (stopped), or not (the source ran out)."""

    interrupted: bool
    seconds: float


class Pipeline:
    """See the module doc. ``schedule`` is the state to continue from (a checkpoint's)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        config: AttributionConfig | None,
        interval_s: float,
        deliver: Callable[[Result], None],
        *,
        clock: Clock = "event",
        schedule: ScheduleState | None = None,
        on_skip: Callable[[str], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        ahead: int = 8,
        workers: int | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.config = config
        self.every_us = interval_us(interval_s)
        self.deliver = deliver
        self.clock = clock
        self.schedule = schedule or ScheduleState()
        self.on_skip = on_skip
        self.on_failure = on_failure
        self.wall_us = wall_us
        self.workers = max(1, workers if workers is not None else default_workers())
        self.ahead = max(1, ahead)
        self._due: deque[tuple[int, FrozenState]] = deque()  # due, not yet handed to the workers
        # handed to the workers, in due order: (due time, bytes the frozen state holds, the measurement to come)
        self._flight: deque[tuple[int, int, asyncio.Future[Measured]]] = deque()
        self._finishing = asyncio.Lock()  # one task at a time takes the oldest run off the flight (see below)
        self._worker: ThreadPoolExecutor | None = None
        self.last: RunOutput | None = None
        if clock == "event" and config is not None:  # without a configuration: ingest only
            dispatcher.before_fold = self._event_time

    @property
    def state(self) -> AgentState:
        return self.dispatcher.state

    # -- the schedule ---------------------------------------------------------------------------------------------
    def _event_time(self, t_us: int) -> None:
        self.schedule, due = step(self.schedule, t_us, self.every_us)
        if due is not None:
            self._due.append((due, self.state.freeze()))

    def compute(self, frozen: FrozenState, as_of_us: int) -> RunOutput:
        """The attribution of one state's snapshot; pure, so it runs in a worker thread."""
        assert self.config is not None
        s = self.schedule
        return finish(self._measure(frozen), self.config, run=s.run + 1, as_of_us=as_of_us, alert_active=s.alert_active)

    def _accept(self, out: RunOutput) -> None:
        self.last = out
        if out.result is None:
            log.info("run skipped: %s", out.skipped)
            if self.on_skip is not None:
                self.on_skip(out.skipped)
            return
        self.schedule = accepted(self.schedule, out.alert_active)
        self.deliver(out.result)
        if out.alert is not None:
            self.deliver(out.alert)

    def _measure(self, frozen: FrozenState) -> Measured:
        """The run's snapshot and its measurement; a follower source that cannot answer (the AppView unreachable)
        skips the run with its line rather than run it on visibility it does not have."""
        assert self.config is not None
        return measure_snapshot(frozen.snapshot, self.config)

    async def _launch(self) -> None:
        """Hand the due runs to the workers; finish those already done, and the oldest while too many runs (or too
        many bytes of frozen state) are in flight: ingest waits here when attribution is the slower side."""
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(self.workers, thread_name_prefix="skyattr-attribution")
        while self._due:
            as_of, frozen = self._due.popleft()
            future = loop.run_in_executor(self._worker, self._measure, frozen)
            self._flight.append((as_of, frozen.nbytes, future))
        while self._flight and (
            self._flight[0][2].done()
            or len(self._flight) > self.ahead
            or (len(self._flight) > 1 and sum(f[1] for f in self._flight) > FLIGHT_BYTES)
        ):
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        """Deliver the oldest run in flight. The run stays in the flight until it is delivered (a task cancelled
        while it waits leaves it for the next), and one task at a time does this (two tasks draining at once, the
        ingest and the cut-over to the wall clock, would each deliver the same run)."""
        assert self.config is not None
        async with self._finishing:
            if not self._flight:
                return
            as_of, _, future = self._flight[0]
            m = await future
            self._flight.popleft()
            s = self.schedule
            self._accept(finish(m, self.config, run=s.run + 1, as_of_us=as_of, alert_active=s.alert_active))

    async def _drain(self) -> None:
        """Compute and deliver every due run, in order."""
        await self._launch()
        while self._flight:
            await self._finish_oldest()

    async def run_tail(self) -> RunOutput | None:
        """The run of a finite source's tail after its last due time (:func:`~streamer.core.schedule.tail`), on
        the state as it is; None when there is nothing to run on."""
        self.schedule, due = tail(self.schedule, self.state.last_time_us, self.every_us)
        if due is None:
            return None
        out = await asyncio.to_thread(self.compute, self.state.freeze(), due)
        self._accept(out)
        return out

    async def tick(self) -> None:
        """One step of the wall clock: run if due (a failed run is counted, and the schedule starts again from
        the clock); the next due time is the multiple after the run finished, so a run longer than the interval
        skips slots instead of queueing them."""
        self.schedule, due = step(self.schedule, self.wall_us(), self.every_us)
        if due is None:
            return
        try:
            out = await asyncio.to_thread(self.compute, self.state.freeze(), due)
        except Exception as exc:
            log.exception("attribution run failed")
            if self.on_failure is not None:
                self.on_failure(exc)
            self.schedule = replace(self.schedule, next_due_us=-1)
            return
        self.schedule = replace(self.schedule, next_due_us=align(self.wall_us(), self.every_us))
        self._accept(out)

    # -- driving --------------------------------------------------------------------------------------------------
    async def run(
        self,
        source: Source,
        *,
        stop: asyncio.Event | None = None,
        checkpoint: Callable[[], Awaitable[None]] | None = None,
        checkpoint_every_s: float = 60.0,
        checkpoint_every_items: int | None = None,
        speed: float | None = None,
        queue_size: int = 10_000,
        on_progress: Callable[[], None] | None = None,
        progress_every: int = 2000,
    ) -> Ended:
        """Feed ``source`` through the pipeline until it ends or ``stop`` is set; checkpoint along the way and
        once at the end (with every item read applied and every due run delivered)."""
        stop = stop if stop is not None else asyncio.Event()
        start = time.perf_counter()
        if self.clock == "event":
            await self._run_event_time(
                source, stop, checkpoint, checkpoint_every_s, checkpoint_every_items, speed, on_progress, progress_every
            )
        else:
            await self._run_wall_time(
                source, stop, checkpoint, checkpoint_every_s, queue_size, on_progress, progress_every
            )
        self.dispatcher.shutdown()
        return Ended(stop.is_set(), time.perf_counter() - start)

    async def _run_event_time(
        self,
        source: Source,
        stop: asyncio.Event,
        checkpoint: Callable[[], Awaitable[None]] | None,
        every_s: float,
        every_items: int | None,
        speed: float | None,
        on_progress: Callable[[], None] | None,
        progress_every: int,
    ) -> None:
        dispatcher, last_ckpt, n = self.dispatcher, time.monotonic(), 0
        pace = Pace(speed)
        items = aiter(source)
        try:
            async for item in items:
                dispatcher.add(repo_of(item), item)
                if self._due or self._flight:
                    await self._launch()
                n += 1
                if on_progress is not None and n % progress_every == 0:
                    on_progress()
                if checkpoint is not None and (
                    (every_items and n % every_items == 0) or time.monotonic() - last_ckpt >= every_s
                ):
                    await self._drain()
                    await checkpoint()
                    last_ckpt = time.monotonic()
                if stop.is_set() or (speed and await pace.wait(self.state.last_time_us, stop)):
                    break
            await self._drain()  # every item read is applied: its due runs are delivered before the last checkpoint
        finally:
            if isinstance(items, AsyncIterator) and hasattr(items, "aclose"):
                await items.aclose()
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None

    async def _run_wall_time(
        self,
        source: Source,
        stop: asyncio.Event,
        checkpoint: Callable[[], Awaitable[None]] | None,
        every_s: float,
        queue_size: int,
        on_progress: Callable[[], None] | None,
        progress_every: int,
    ) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        dispatcher = self.dispatcher
        backfill = self.config is not None and bool(getattr(source, "backfilling", False))
        if backfill:
            dispatcher.before_fold = self._event_time  # the archive's runs, as a replay makes them

        def archived(item: Any) -> bool:
            cut = getattr(source, "cutover_seq", None)
            return cut is None or item.source_cursor <= cut

        async def to_wall_clock() -> None:
            nonlocal backfill
            if not backfill:
                return
            dispatcher.before_fold = None
            # the archive's due runs delivered first; a stop landing while they compute cancels this task, and the
            # run's end (below) delivers them, as it does for a backfill still going: none is lost
            await self._drain()
            backfill = False
            s = self.schedule
            self.schedule = ScheduleState(s.run, -1, s.alert_active)
            log.info("backfill done after run %d: runs on the wall clock from now on", s.run)

        async def read() -> None:
            async for item in source:
                await queue.put(item)

        async def ingest() -> None:
            n, last_ckpt = 0, time.monotonic()
            while True:
                item = await queue.get()
                if backfill and not archived(item):
                    await to_wall_clock()
                dispatcher.add(repo_of(item), item)
                n += 1
                if backfill:
                    if self._due or self._flight:
                        await self._launch()
                    if checkpoint is not None and time.monotonic() - last_ckpt >= every_s:
                        await self._drain()  # as in a replay: no checkpoint between a due time and its result
                        await checkpoint()
                        last_ckpt = time.monotonic()
                if on_progress is not None and n % progress_every == 0:
                    on_progress()

        async def ticker() -> None:
            while True:
                if backfill and queue.empty() and getattr(source, "cutover_seq", None) is not None:
                    await to_wall_clock()  # the archive is all applied and the tail has nothing yet
                if not backfill:
                    await self.tick()
                due = self.schedule.next_due_us
                wait = (due - self.wall_us()) / 1e6 if due >= 0 and not backfill else 1
                await asyncio.sleep(min(max(wait, 0.05), 1.0))

        async def checkpoints() -> None:
            assert checkpoint is not None
            while True:
                await asyncio.sleep(every_s)
                if not backfill:  # during a backfill the ingest task checkpoints, between items
                    await checkpoint()

        # any of these ending (the source ran out, or one raised) ends the run; the checkpoint task only exists
        # when there is a checkpoint to write
        loops = (read, ingest, ticker, *((checkpoints,) if checkpoint is not None else ()))
        tasks = [asyncio.create_task(t()) for t in loops]
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopped and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            stop.set()
            stopper = getattr(source, "stop", None)
            if stopper is not None:
                stopper()
            for t in (*tasks, stopped):
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
            while not queue.empty():  # items already read are applied before the final checkpoint
                item = queue.get_nowait()
                dispatcher.add(repo_of(item), item)
            if backfill:  # the archive's due runs are delivered before the final checkpoint, as a replay's are
                await self._drain()
                dispatcher.before_fold = None
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None
