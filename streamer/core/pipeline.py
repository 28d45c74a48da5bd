"""The driver: Source → Dispatcher → State → Schedule → attribution → deliver, on event time or wall time.

One :class:`Pipeline` runs both clocks with the same pure :func:`~streamer.core.schedule.step`:

* **event time** (replay): each event the state accepts moves the clock (the dispatcher's ``before_fold`` hook,
  just before the event is folded). When a run is due, the state's snapshot is taken right there (a copy), so the
  run stamped T sees exactly the events before T; the attribution itself runs in a worker thread once the item is
  applied, and the next item waits for it, so results come out in order and a checkpoint never falls between a
  due time and its result.
* **wall time** (live): a reader task fills a bounded queue from the source, the ingest task applies it, and a
  ticker steps the schedule on the wall clock; the attribution runs in a worker thread while the websocket keeps
  being read.

Everything here is I/O-free apart from the source it is given and the callables it is handed: ``deliver(result)``
(the sinks, behind the app's journal), ``checkpoint()`` (async; called between items, never with a run
pending), ``on_skip(reason)`` and ``on_failure(exc)`` (counters). So a test can build a pipeline from any
source, the real dispatcher and state, and a list as its sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from streamer.core.attribution import AttributionConfig, RunOutput, attribute_snapshot
from streamer.core.dispatch import SequentialDispatcher, repo_of
from streamer.core.results import Result
from streamer.core.schedule import ScheduleState, accepted, align, interval_us, step
from streamer.core.state import Snapshot

log = logging.getLogger("skyattr.pipeline")
MAX_PACE_SLEEP_S = 5.0  # longest pause --speed makes for one gap in event time (a day-long gap is not a day)
Clock = Literal["event", "wall"]


@dataclass
class Ended:
    """How a :meth:`Pipeline.run` ended: ``finished`` (the source ran out) or ``interrupted`` (stopped)."""

    finished: bool
    interrupted: bool
    seconds: float


class Pipeline:
    """See the module doc. ``schedule`` is the state to continue from (a checkpoint's)."""

    def __init__(
        self,
        dispatcher: SequentialDispatcher,
        config: AttributionConfig | None,
        interval_s: float,
        deliver: Callable[[Result], None],
        *,
        clock: Clock = "event",
        schedule: ScheduleState | None = None,
        on_skip: Callable[[str], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
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
        self._due: deque[tuple[int, Snapshot]] = deque()
        self.last: RunOutput | None = None
        if clock == "event" and config is not None:  # without a configuration: ingest only
            dispatcher.before_fold = self._event_time

    @property
    def state(self) -> Any:
        return self.dispatcher.state

    # -- the schedule ---------------------------------------------------------------------------------------------
    def _event_time(self, t_us: int) -> None:
        self.schedule, due = step(self.schedule, t_us, self.every_us)
        if due is not None:
            self._due.append((due, self.state.snapshot()))

    def compute(self, snap: Snapshot, as_of_us: int) -> RunOutput:
        """The attribution of one snapshot; pure, so it runs in a worker thread."""
        assert self.config is not None
        return attribute_snapshot(
            snap, self.config, run=self.schedule.run + 1, as_of_us=as_of_us, alert_active=self.schedule.alert_active
        )

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

    async def _drain(self) -> None:
        """Compute and deliver the due runs, in order."""
        while self._due:
            as_of, snap = self._due[0]
            out = await asyncio.to_thread(self.compute, snap, as_of)
            self._due.popleft()
            self._accept(out)

    async def run_now(self, as_of_us: int) -> RunOutput:
        """One run on the state as it is, stamped ``as_of_us`` (the tail of an archive after its last due time)."""
        self.schedule = replace(self.schedule, next_due_us=align(as_of_us, self.every_us))
        out = await asyncio.to_thread(self.compute, self.state.snapshot(), as_of_us)
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
            out = await asyncio.to_thread(self.compute, self.state.snapshot(), due)
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
        source: Any,
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
            finished = await self._run_event_time(
                source, stop, checkpoint, checkpoint_every_s, checkpoint_every_items, speed, on_progress, progress_every
            )
        else:
            finished = await self._run_wall_time(
                source, stop, checkpoint, checkpoint_every_s, queue_size, on_progress, progress_every
            )
        self.dispatcher.shutdown()
        return Ended(finished, stop.is_set(), time.perf_counter() - start)

    async def _run_event_time(
        self,
        source: Any,
        stop: asyncio.Event,
        checkpoint: Callable[[], Awaitable[None]] | None,
        every_s: float,
        every_items: int | None,
        speed: float | None,
        on_progress: Callable[[], None] | None,
        progress_every: int,
    ) -> bool:
        dispatcher, last_ckpt, n = self.dispatcher, time.monotonic(), 0
        pace = _Pace(speed, self.state)
        items = aiter(source)
        try:
            async for item in items:
                dispatcher.add(repo_of(item), item)
                if self._due:
                    await self._drain()
                n += 1
                if on_progress is not None and n % progress_every == 0:
                    on_progress()
                if checkpoint is not None and (
                    (every_items and n % every_items == 0) or time.monotonic() - last_ckpt >= every_s
                ):
                    await checkpoint()
                    last_ckpt = time.monotonic()
                if stop.is_set() or (speed and await pace.wait(stop)):
                    break
        finally:
            if isinstance(items, AsyncIterator) and hasattr(items, "aclose"):
                await items.aclose()
        return not stop.is_set()

    async def _run_wall_time(
        self,
        source: Any,
        stop: asyncio.Event,
        checkpoint: Callable[[], Awaitable[None]] | None,
        every_s: float,
        queue_size: int,
        on_progress: Callable[[], None] | None,
        progress_every: int,
    ) -> bool:
        queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        dispatcher = self.dispatcher

        async def read() -> None:
            async for item in source:
                await queue.put(item)

        async def ingest() -> None:
            n = 0
            while True:
                item = await queue.get()
                dispatcher.add(repo_of(item), item)
                n += 1
                if on_progress is not None and n % progress_every == 0:
                    on_progress()

        async def ticker() -> None:
            while True:
                await self.tick()
                wait = (self.schedule.next_due_us - self.wall_us()) / 1e6 if self.schedule.next_due_us >= 0 else 1
                await asyncio.sleep(min(max(wait, 0.05), 1.0))

        async def checkpoints() -> None:
            assert checkpoint is not None
            while True:
                await asyncio.sleep(every_s)
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
        return False


class _Pace:
    """``--speed``: sleep so event time advances at ``speed`` x wall time. A pause is at most
    :data:`MAX_PACE_SLEEP_S` (a gap in the stream is compressed and the pace re-anchored after it), and a stop
    ends it at once."""

    def __init__(self, speed: float | None, state: Any) -> None:
        self.speed, self.state = speed, state
        self.start_wall, self.start_event = time.monotonic(), None

    async def wait(self, stop: asyncio.Event) -> bool:
        """Pause as needed after an item; True when stopped meanwhile."""
        t = self.state.last_time_us
        if self.start_event is None and t:
            self.start_event = t
        if self.start_event is None or not self.speed:
            return False
        delay = (t - self.start_event) / 1e6 / self.speed - (time.monotonic() - self.start_wall)
        if delay > MAX_PACE_SLEEP_S:
            self.start_wall, self.start_event, delay = time.monotonic() + MAX_PACE_SLEEP_S, t, MAX_PACE_SLEEP_S
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return stop.is_set()
