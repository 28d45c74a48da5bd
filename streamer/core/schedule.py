"""When to run the attribution, and where its results go.

Runs fall on multiples of the interval (aligned to the Unix epoch): in replay the clock is **event time**, live it
is the wall clock. Alignment makes the schedule independent of where a replay started or resumed, so a resumed
replay produces exactly the runs of an uninterrupted one; the run counter, the next due time and the alert state
travel in the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamer.core.attribution import AttributionConfig, RunOutput, attribute_snapshot
from streamer.core.journal import ResultWriteError
from streamer.core.state import AgentState, Snapshot

log = logging.getLogger("skyattr.scheduler")
Sink = Callable[[str, dict[str, Any]], None]  # (topic kind "tiers" | "alerts", message)


@dataclass
class ScheduleState:
    run: int = 0
    next_due_us: int = -1
    alert_active: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "next_due_us": self.next_due_us, "alert_active": self.alert_active}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleState:
        return cls(int(d.get("run", 0)), int(d.get("next_due_us", -1)), bool(d.get("alert_active", False)))


class Scheduler:
    """Calls :func:`attribute_snapshot` every ``interval_s`` of the given clock and hands results to the sinks."""

    def __init__(
        self,
        config: AttributionConfig,
        interval_s: float,
        sinks: list[Sink],
        state: ScheduleState | None = None,
        on_skip: Callable[[str], None] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval_s!r}")
        self.config = config
        self.interval_us = round(interval_s * 1_000_000)
        self.sinks = sinks
        self.sched = state or ScheduleState()
        self.on_skip = on_skip

    def _align(self, now_us: int) -> int:
        return (now_us // self.interval_us + 1) * self.interval_us

    def due(self, now_us: int) -> bool:
        if self.sched.next_due_us < 0:
            self.sched.next_due_us = self._align(now_us)
        return now_us >= self.sched.next_due_us

    def maybe_run(self, state: AgentState, now_us: int) -> RunOutput | None:
        """Run if ``now_us`` has reached the next due time (event time in replay)."""
        if not self.due(now_us):
            return None
        return self.run(state, self.sched.next_due_us, now_us)

    def run(self, state: AgentState, as_of_us: int, now_us: int | None = None) -> RunOutput:
        """Run now on the state's snapshot, stamped ``as_of_us``; the next run is the following multiple."""
        return self.accept(self.compute(state.snapshot(), as_of_us), now_us if now_us is not None else as_of_us)

    def compute(self, snap: Snapshot, as_of_us: int) -> RunOutput:
        """The attribution itself; pure and thread-safe, so the live daemon runs it off the event loop."""
        return attribute_snapshot(
            snap, self.config, run=self.sched.run + 1, as_of_us=as_of_us, alert_active=self.sched.alert_active
        )

    def accept(self, out: RunOutput, now_us: int) -> RunOutput:
        """Advance the schedule past ``now_us`` and hand a computed run to the sinks."""
        self.sched.next_due_us = self._align(now_us)
        if out.tiers is None:
            log.info("run skipped: %s", out.skipped)
            if self.on_skip is not None:
                self.on_skip(out.skipped)
            return out
        self.sched.run += 1
        self.sched.alert_active = out.alert_active
        for sink in self.sinks:
            self._deliver(sink, "tiers", out.tiers)
            if out.alert is not None:
                self._deliver(sink, "alerts", out.alert)
        return out

    @staticmethod
    def _deliver(sink: Sink, kind: str, message: dict[str, Any]) -> None:
        """A result that cannot be made durable stops the daemon (before anything is checkpointed past it); any
        other failing sink (a schema bug) is logged and must not stop it."""
        try:
            sink(kind, message)
        except ResultWriteError:
            raise
        except Exception:
            log.exception("a %s result could not be delivered to %r", kind, sink)
