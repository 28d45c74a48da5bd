"""``--speed``: play a recorded stream at a multiple of its event time, for the replay and for ``ingest --to-kafka``.

One pacer for both, so an archive replayed into the single process and one ingested into Kafka happen at the same
rate: a demonstration, a load test or a fault test that must catch a process mid-stream gets the same wall-clock
shape either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

MAX_PACE_SLEEP_S = 5.0  # longest pause --speed makes for one gap in event time (a day-long gap is not a day)
MAX_PACE_LAG_S = 1.0  # a stall longer than this (a slow run, the first compilation) is not caught up in a burst


class Pace:
    """Sleep so event time advances at ``speed`` x wall time. A pause is at most :data:`MAX_PACE_SLEEP_S` (a gap
    in the stream is compressed and the pace re-anchored after it), a stall of more than :data:`MAX_PACE_LAG_S`
    re-anchors it too (the stream goes on at its pace instead of racing through what the stall held up), and a
    stop ends a pause at once. ``speed`` None or 0: no pause at all."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.start_wall, self.start_event = time.monotonic(), 0

    async def wait(self, event_time_us: int, stop: asyncio.Event) -> bool:
        """Pause as needed once the stream has reached ``event_time_us`` (0: no time yet); True when stopped
        meanwhile."""
        t = event_time_us
        if not self.start_event and t:
            self.start_event = t
        if not self.start_event or not self.speed:
            return stop.is_set()
        delay = (t - self.start_event) / 1e6 / self.speed - (time.monotonic() - self.start_wall)
        if delay > MAX_PACE_SLEEP_S:
            self.start_wall, self.start_event, delay = time.monotonic() + MAX_PACE_SLEEP_S, t, MAX_PACE_SLEEP_S
        elif delay < -MAX_PACE_LAG_S:
            self.start_wall, self.start_event = time.monotonic(), t
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return stop.is_set()
