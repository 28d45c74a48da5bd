"""The decisions that need the whole stream in order, made once at ingest so that partitioned workers need none.

A single process decides, event by event: is this DID storable, is this time late or too far ahead (the
watermark), has the window's head moved (and with it, which buckets expire), is a run due before this event. Each
of these depends on every event before it, across all accounts, so a worker that sees one partition cannot make
them. The ingest sees the stream in order, so :class:`Sequencer` makes them there, with the very
:meth:`~streamer.core.decisions.Decider.decide` and :func:`~streamer.core.schedule.step` the single process uses, and
writes them into ``skyattr.events``:

* each event record carries its verdict: the reason it is refused (``late``, ``future_time``, ``bad_did``), or,
  accepted, its ordinal ``n`` among accepted events (the order in which a single process interns DIDs);
* control records, written to **every** partition at the point of the stream where they happen: ``config`` (the
  window and weights the decisions were made with, at each ingest start), ``window`` (the head moved; ``prune``
  says whether a bucket where an event left a trace, :func:`~streamer.core.decisions.leaves_trace`, left the
  window, which is when a single process forgets accounts left without a trace) and ``tick`` (a run is due: every
  worker publishes its shard of the state as it stands there). The tail of a finite source gets one last ``tick``
  with ``final`` set. ``deactivate`` follows the ``#account`` event that deactivated an account (``active: false``:
  deleted, taken down, suspended, deactivated): every partition drops what the account did and every edge towards
  it, as a single process does at that event.

Deactivated accounts are the sequencer's too: until an ``#account`` event reactivates one, its events are refused
(``deactivated``) and events towards it are recorded without their subject (the author's activity counts, the edge
does not), so no partition needs to know who is inactive.

Kafka keeps the order within a partition, so at a ``tick`` each partition's worker holds exactly its share of what
the single process holds at the same due time, and the attributor's merge of the shards is that state.

The sequencer's own state (the watermark, the schedule, the buckets that hold a trace, the counters) travels in
the ingest's cursor record, in the same transaction as the records it decided, so a restarted ingest decides on
exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kernels.defaults import INTERVAL_S
from streamer.core.decisions import Decider, leaves_trace
from streamer.core.events import Event
from streamer.core.schedule import ScheduleState, interval_us, step, tail
from streamer.core.state import StateConfig, decode_strings, encode_strings
from streamer.core.watermark import Watermark
from streamer.distributed import packed


@dataclass(frozen=True)
class Tick:
    """A run is due at ``as_of_us`` (``final``: the tail of a finite source, after its last due time)."""

    as_of_us: int
    final: bool = False


@dataclass(frozen=True)
class WindowMove:
    """The window's head moved to ``head``: buckets before ``oldest`` (and, once, after ``drop_beyond``) leave it;
    ``prune``: one of them held a trace, so accounts left without any trace in the window are forgotten."""

    head: int
    oldest: int
    drop_beyond: int | None
    prune: bool


@dataclass(frozen=True)
class Deactivate:
    """``did`` was deactivated by the event just before: drop its activity, its edges and the edges towards it."""

    did: str


Control = Tick | WindowMove | Deactivate


@dataclass
class Verdict:
    """What the sequencer decided about one event: the controls that come before it, the event's own fate
    (``reason`` when refused, else its ordinal among accepted events), whether its subject is dropped (an inactive
    account's), and the controls that come after it."""

    controls: list[Control] = field(default_factory=list)
    reason: str | None = None
    ordinal: int = -1
    no_subject: bool = False
    after: list[Control] = field(default_factory=list)

    def recorded(self, event: Event) -> Event:
        """The event as it is written to ``skyattr.events``."""
        return replace(event, subject="") if self.no_subject else event


class Sequencer:
    """See the module doc. ``interval_s`` is the attribution interval the ticks fall on; ``clock`` (µs) the
    receive clock of a live source (None for an archive, as in a single-process replay)."""

    def __init__(
        self,
        config: StateConfig | None = None,
        interval_s: float = INTERVAL_S,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.config = config or StateConfig()
        self.interval_s = float(interval_s)
        self.every_us = interval_us(interval_s)
        self.clock = clock
        self._bucket_us = self.config.bucket_us
        attention = frozenset(self.config.attention())
        self._activity = frozenset(self.config.activity_codes())
        self.watermark = Watermark(self._bucket_us, self.config.buckets, self.config.skew_us)
        self.decider = Decider(self.watermark, attention)
        self.schedule = ScheduleState()
        self.buckets: set[int] = set()  # buckets where an accepted event left a trace, as the state has them
        self.accepted = 0
        self.last_time_us = 0
        self.refused: Counter[str] = Counter()
        self.finished = False

    def decide(self, event: Event) -> Verdict:
        """The verdict on ``event``, in stream order: :meth:`streamer.core.decisions.Decider.decide`'s answers, as
        control records and the event's fate, then the schedule's step."""
        verdict = Verdict()
        decision = self.decider.decide(event, self.clock() if self.clock is not None else None)
        moved = decision.moved
        if moved is not None:
            beyond = moved.drop_beyond
            gone = {b for b in self.buckets if b < moved.oldest or (beyond is not None and b > beyond)}
            self.buckets -= gone
            verdict.controls.append(WindowMove(moved.head, moved.oldest, beyond, bool(gone)))
        if decision.reason is not None:
            self.refused[decision.reason] += 1
            verdict.reason = decision.reason
            return verdict
        if decision.account == "deactivated":
            verdict.after.append(Deactivate(event.actor))
        verdict.no_subject = decision.no_subject
        t = event.time_us
        self.schedule, due = step(self.schedule, t, self.every_us)
        if due is not None:
            verdict.controls.append(Tick(due))
        if leaves_trace(event, decision, self._activity, self.decider.attention_kinds):
            self.buckets.add(t // self._bucket_us)
        self.last_time_us = max(self.last_time_us, t)
        verdict.ordinal = self.accepted
        self.accepted += 1
        return verdict

    def finish(self) -> Tick | None:
        """The tail's run of a finite source that has ended: once, and only when an accepted event had a time
        after the epoch (as a single-process replay decides)."""
        if self.finished:
            return None
        self.schedule, due = tail(self.schedule, self.last_time_us, self.every_us)
        if due is None:
            return None
        self.finished = True
        return Tick(due, final=True)

    # the ingest cursor carries this -----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """What the decisions depend on: the state's window and weights and the interval (the ``config`` control
        record, and what a resumed ingest must match)."""
        return {"state": self.config.as_dict(), "interval_s": self.interval_s}

    def to_text(self) -> str:
        """The whole sequencer state as text (:mod:`streamer.distributed.packed`, for a JSON cursor record)."""
        wm = self.watermark
        meta = {
            "config": self.config_dict(),
            "watermark": wm.to_dict(),
            "head": wm.head,
            "next_due_us": self.schedule.next_due_us,
            "accepted": self.accepted,
            "last_time_us": self.last_time_us,
            "refused": dict(self.refused),
            "finished": self.finished,
        }
        gone_offsets, gone_blob = encode_strings(list(self.decider.deactivated))
        return packed.pack(
            {
                "ring": np.array(wm.ring, np.int64),
                "buckets": np.array(sorted(self.buckets), np.int64),
                "deactivated_offsets": gone_offsets,
                "deactivated_blob": gone_blob,
                "deactivated_time_us": np.array(list(self.decider.deactivated.values()), np.int64),
                "meta": np.frombuffer(json.dumps(meta, separators=(",", ":"), sort_keys=True).encode(), np.uint8),
            }
        )

    @classmethod
    def from_text(cls, text: str, *, clock: Callable[[], int] | None = None) -> Sequencer:
        """The sequencer :meth:`to_text` saved; ``ValueError`` naming what is wrong for anything else."""
        try:
            arrays = packed.unpack(text)
            meta = json.loads(arrays["meta"].tobytes())
            cfg = meta["config"]
            seq = cls(StateConfig(**cfg["state"]), cfg["interval_s"], clock=clock)
            seq.watermark.restore(arrays["ring"], meta["watermark"], meta["head"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a saved sequencer state: {exc}") from None
        seq.buckets = {int(b) for b in arrays["buckets"]}
        seq.schedule = ScheduleState(0, int(meta["next_due_us"]))
        seq.accepted, seq.last_time_us = int(meta["accepted"]), int(meta["last_time_us"])
        seq.refused = Counter(meta["refused"])
        seq.finished = bool(meta["finished"])
        if "deactivated_offsets" in arrays:  # absent from a cursor written before deactivations were honoured
            try:
                gone = decode_strings(arrays["deactivated_offsets"], arrays["deactivated_blob"])
                times = arrays["deactivated_time_us"].tolist()
                seq.decider.deactivated = dict(zip(gone, times, strict=True))
            except ValueError as exc:
                raise ValueError(f"not a saved sequencer state: deactivated accounts: {exc}") from None
        return seq
