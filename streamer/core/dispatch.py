"""The dispatcher: decoded items, keyed by the actor's DID, folded into the state.

The shape follows a relay consumer's scheduler: ``add(repo_did, item)`` hands one item of one repo over, and
``shutdown()`` finishes what was handed over. Keying by the actor's DID is what lets a partitioned dispatcher
(several workers, each owning the repos of its partitions, every attention edge in the partition of its attender)
take the place of :class:`SequentialDispatcher` without a source or a sink knowing.

The sequential one folds each item into one :class:`~streamer.core.state.AgentState` at once, in the order given,
and counts what it applied into the stream's :class:`~streamer.core.source.SourceStats` (``events`` by kind,
``skipped`` by reason). It also keeps the source position *in step with the state* (``cursor`` and the ring of
seqs seen, from each :class:`~streamer.core.seqs.Sequenced` item): a source may run ahead of the state (a queue
between them), but a checkpoint must resume from what the state holds. For the same reason the (DID, rev) dedupe
of an at-least-once source (:mod:`streamer.core.revs`) is done here, when given one, and saved with the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from streamer.core.revs import RevGuard, repeated
from streamer.core.seqs import RESET_WINDOW, SeenSeqs, Sequenced
from streamer.core.source import SourceStats
from streamer.core.state import AgentState


@runtime_checkable
class Dispatcher(Protocol):
    """What the pipeline hands items to (see the module doc): ``add`` and ``shutdown``, plus the state whose
    snapshots it attributes and the hook it runs the event-time schedule from (``before_fold``)."""

    state: AgentState
    before_fold: Callable[[int], None] | None
    cursor: int  # the source position the state holds (what a checkpoint resumes from)

    def add(self, repo_did: str, item: Sequenced) -> None: ...

    def shutdown(self) -> None: ...


def repo_of(item: Sequenced) -> str:
    """The DID an item belongs to: the repo of a commit, the account of an identity/account event."""
    return item.events[0].actor if item.events else ""


class SequentialDispatcher:
    """Applies each item to one state, in order (see the module doc).

    ``before_fold(time_us)`` is called for each event the state accepts, just before it is folded in: the
    event-time schedule takes its snapshot there, so a run stamped T sees exactly the events before T. ``clock``
    (µs) is the receive clock live, None in replay (where the stream's own progress is the only clock)."""

    def __init__(
        self,
        state: AgentState,
        stats: SourceStats,
        *,
        cursor: int = -1,
        seen: SeenSeqs | None = None,
        clock: Callable[[], int] | None = None,
        revs: RevGuard | None = None,
    ) -> None:
        self.state = state
        self.revs = revs  # the (DID, rev) dedupe of an at-least-once source; None: the source's seqs suffice
        self.stats = stats
        self.cursor = cursor
        self.seen = seen if seen is not None else SeenSeqs(RESET_WINDOW)
        self.clock = clock
        self.before_fold: Callable[[int], None] | None = None
        self.applied = 0  # items applied
        self.at_cursor: list[int] = []  # fingerprints of the items applied at exactly ``cursor``

    def add(self, repo_did: str, item: Sequenced) -> None:
        self.applied += 1
        self.stats.skipped.update(item.skipped)
        if item.source_cursor >= 0:
            if item.seq >= 0:
                if item.source_cursor < self.cursor:  # the source followed a relay that restarted its sequence
                    self.seen.clear()
                self.seen.add(item.seq, item.fingerprint)
            if item.source_cursor != self.cursor:
                self.at_cursor = []
            self.cursor = item.source_cursor
            self.at_cursor.append(item.fingerprint)
        if self.revs is not None and repeated(self.revs, item):  # consumed (the cursor moved), not applied twice
            self.stats.duplicates += 1
            return
        state, before_fold = self.state, self.before_fold
        for event in item.events:
            decision = state.decide(event, self.clock() if self.clock is not None else None)
            if decision.reason is not None:
                self.stats.skipped[decision.reason] += 1
                continue
            if before_fold is not None:  # a run due before this event sees the state without it
                before_fold(event.time_us)
            state.fold(event, decision)
            self.stats.events[event.kind] += 1

    def shutdown(self) -> None:
        self.state.flush()
