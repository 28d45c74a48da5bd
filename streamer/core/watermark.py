"""The stream's watermark: which bucket is the head of the window, and which event times are late or too far ahead.

The rule is described in :mod:`streamer.core.state` (median and upper quartile of the last ``WATERMARK_SAMPLES``
event times, recomputed every ``WATERMARK_EVERY`` samples). It lives on its own because two places decide with it:
the single process's :class:`~streamer.core.state.AgentState`, and the distributed mode's sequencer, which makes
the same decisions once, on the whole stream, before the events are split over partitions
(:mod:`streamer.distributed.sequencer`). Both call :meth:`Watermark.observe` then :meth:`Watermark.judge` for
every event with a representable time, so both make exactly the same decisions on the same stream.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

WATERMARK_SAMPLES = 1001  # K: the watermark is the median of this many recent event times
WATERMARK_EVERY = 128  # R: recompute cadence once the ring is full (np.partition of K values: ~8 us)
WATERMARK_WARMUP = 16  # K0: samples before the watermark is trusted
LEAD_FACTOR = 3  # horizon margin, in units of (upper quartile - median) of the ring
MAX_TIME_US = 1 << 62  # beyond any calendar; keeps every sample an int64
LATE, FUTURE_TIME = "late", "future_time"


@dataclass(frozen=True)
class Advance:
    """The head moved to ``head``: buckets before ``oldest`` leave the window; ``drop_beyond`` (only when the
    watermark is first established) is the last bucket a warm-up may have opened, later ones are dropped."""

    head: int
    oldest: int
    drop_beyond: int | None = None


def next_update(seen: int) -> int:
    """The sample count at which the watermark is next recomputed: every sample during warm-up, every
    ``WATERMARK_WARMUP``-th while the ring fills, then every ``WATERMARK_EVERY``-th. A pure function of the count,
    so a resumed watermark recomputes exactly where an uninterrupted one does."""
    if seen < WATERMARK_WARMUP:
        return seen + 1
    step = WATERMARK_WARMUP if seen < WATERMARK_SAMPLES else WATERMARK_EVERY
    return (seen // step + 1) * step


class Watermark:
    """See the module doc. ``head`` is the watermark's bucket (-1 before any sample; provisional in warm-up)."""

    def __init__(self, bucket_us: int, buckets: int, skew_us: int) -> None:
        self.bucket_us, self.buckets, self.skew_us = bucket_us, buckets, skew_us
        self.window_us = bucket_us * buckets
        # a ring of recent event times (array: cheap item writes, zero-copy view for np.partition)
        self.ring = array("q", bytes(8 * WATERMARK_SAMPLES))
        self.seen = 0  # samples ever written to the ring
        self.next_update = 1
        self.oldest = -MAX_TIME_US  # the oldest bucket in the window: older events are late (none before warm-up)
        self.watermark_us = 0
        self.lead_us = 0  # upper quartile - median of the ring
        self.horizon_us = MAX_TIME_US  # newest acceptable event time
        self.established = False
        self.head = -1

    def observe(self, t: int) -> Advance | None:
        """Write ``t`` (0 <= t < MAX_TIME_US) into the ring; when this moves the head, the move."""
        seen = self.seen
        self.ring[seen % WATERMARK_SAMPLES] = t
        self.seen = seen = seen + 1
        if seen < self.next_update:
            return None
        return self._update()

    def judge(self, t: int, now_us: int | None = None) -> str | None:
        """None when an event at ``t`` is inside the window, else why not (``late``, ``future_time``). ``now_us``
        is the receive clock, when there is one."""
        if t > self.horizon_us or (now_us is not None and t > now_us + self.skew_us):
            return FUTURE_TIME
        if t // self.bucket_us < self.oldest:
            return LATE
        return None

    def _update(self) -> Advance | None:
        seen = self.seen
        self.next_update = next_update(seen)
        n = min(seen, WATERMARK_SAMPLES)
        ring = np.frombuffer(self.ring, np.int64, count=n)
        mid, upper = (n - 1) // 2, (3 * (n - 1)) // 4
        part = np.partition(ring, (mid, upper))
        median, quartile = int(part[mid]), int(part[upper])
        if n < WATERMARK_WARMUP:  # provisional: judges nothing, expires nothing
            self.watermark_us = median
            self.head = median // self.bucket_us
            return None
        first = not self.established
        self.established = True
        self.watermark_us = median if first else max(self.watermark_us, median)
        self.lead_us = max(0, quartile - median)
        self._set_horizon()
        head = self.watermark_us // self.bucket_us
        if first or head > self.head:
            self.head = head
            self.oldest = head - self.buckets + 1
            return Advance(head, self.oldest, self.horizon_us // self.bucket_us if first else None)
        return None

    def _set_horizon(self) -> None:
        self.horizon_us = self.watermark_us + min(LEAD_FACTOR * self.lead_us, self.window_us) + self.skew_us

    # persistence ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything but the ring (which :attr:`ring` holds as int64s): plain JSON values."""
        return {
            "seen": self.seen,
            "watermark_us": self.watermark_us,
            "lead_us": self.lead_us,
            "established": self.established,
        }

    def restore(self, ring: np.ndarray, meta: dict[str, Any], head: int) -> None:
        """Take up a saved watermark (``ring`` of ``WATERMARK_SAMPLES`` int64, :meth:`to_dict`'s ``meta``, the
        head); ``ValueError`` for a ring of another shape."""
        ring = np.asarray(ring, np.int64)
        if ring.shape != (WATERMARK_SAMPLES,):
            raise ValueError(f"watermark ring has shape {ring.shape}, expected ({WATERMARK_SAMPLES},)")
        self.ring = array("q", ring.tobytes())
        self.seen, self.watermark_us = int(meta["seen"]), int(meta["watermark_us"])
        self.lead_us, self.established = int(meta["lead_us"]), bool(meta["established"])
        self.next_update = next_update(self.seen)
        self.head = int(head)
        if self.established:
            self._set_horizon()
            self.oldest = self.head - self.buckets + 1
