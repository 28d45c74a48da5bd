"""When to run the attribution: a pure step on a clock.

Runs fall on multiples of the interval (aligned to the Unix epoch). In replay the clock is **event time**, live it
is the wall clock; both drive the same :func:`step`. Alignment makes the schedule independent of where a replay
started or resumed, so a resumed replay produces exactly the runs of an uninterrupted one; the run counter, the
next due time and the alert state are a :class:`ScheduleState`, which travels in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ScheduleState:
    run: int = 0  # runs that produced a result
    next_due_us: int = -1  # -1: not set yet (the first step aligns it to the clock)
    alert_active: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "next_due_us": self.next_due_us, "alert_active": self.alert_active}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleState:
        return cls(int(d.get("run", 0)), int(d.get("next_due_us", -1)), bool(d.get("alert_active", False)))


def interval_us(interval_s: float) -> int:
    if not interval_s > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval_s!r}")
    return round(interval_s * 1_000_000)


def align(now_us: int, every_us: int) -> int:
    """The first multiple of ``every_us`` strictly after ``now_us``."""
    return (now_us // every_us + 1) * every_us


def step(state: ScheduleState, now_us: int, every_us: int) -> tuple[ScheduleState, int | None]:
    """Advance the schedule to ``now_us``: returns the new state and the due time of a run to make now (None when
    nothing is due). After a due run the next one is the multiple following ``now_us``, so a clock that jumped
    over several intervals makes one run, not one per interval missed."""
    due = state.next_due_us if state.next_due_us >= 0 else align(now_us, every_us)
    if now_us < due:
        return (state if due == state.next_due_us else replace(state, next_due_us=due)), None
    return replace(state, next_due_us=align(now_us, every_us)), due


def accepted(state: ScheduleState, alert_active: bool) -> ScheduleState:
    """A run produced a result: count it and take its alert state."""
    return replace(state, run=state.run + 1, alert_active=alert_active)


def tail(state: ScheduleState, last_time_us: int, every_us: int) -> tuple[ScheduleState, int | None]:
    """A finite source has ended: the run of its tail (the events after its last due time), due at the last
    accepted event's time, and the schedule after it; None when no accepted event had a time after the epoch
    (there is nothing to run on). Replay and the distributed ingest both end a finite source here."""
    if last_time_us <= 0:
        return state, None
    return replace(state, next_due_us=align(last_time_us, every_us)), last_time_us
