"""Synchronous ingest without a source object: decode, judge seqs, apply, with the same parts every source uses.

:class:`Ingestor` is :func:`~streamer.core.decode.decode_item` + :class:`~streamer.core.seqs.SeqJudge` +
:class:`~streamer.core.dispatch.SequentialDispatcher` over one :class:`~streamer.sources.base.SourceStats`, for
callers that hold raw frames in a list (tests, benchmarks, tools). Streams go through a Source instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamer.core.decode import decode_item
from streamer.core.dispatch import SequentialDispatcher, repo_of
from streamer.core.frames import Decoded
from streamer.core.seqs import SeqJudge, Sequenced
from streamer.core.source import SourceStats
from streamer.core.state import AgentState


class Ingestor:
    def __init__(self, state: AgentState) -> None:
        self.stats = SourceStats()
        self.seq = SeqJudge(self.stats)
        self.dispatcher = SequentialDispatcher(state, self.stats)

    @property
    def state(self) -> AgentState:
        return self.dispatcher.state

    @property
    def cursor(self) -> int:
        return self.seq.cursor if self.seq.cursor is not None else -1

    @property
    def before_event(self) -> Callable[[int], None] | None:
        return self.dispatcher.before_fold

    @before_event.setter
    def before_event(self, hook: Callable[[int], None] | None) -> None:
        self.dispatcher.before_fold = hook

    def feed(self, item: bytes | dict[str, Any]) -> None:
        """Decode one relay frame (bytes) or Jetstream event (dict) and apply it; never raises on bad input."""
        self.stats.items += 1
        decoded = decode_item(item)
        if isinstance(item, dict):
            if decoded.error:
                self.stats.errors[decoded.error] += 1
                return
            self.stats.frames[decoded.type] += 1
            self.apply_decoded(decoded)
            return
        for _, sequenced in self.seq.judge(None, decoded):
            self.dispatcher.add(repo_of(sequenced), sequenced)

    def apply_decoded(self, decoded: Decoded) -> None:
        """Apply a decoded item as it is (no seq judgement)."""
        item = decoded if isinstance(decoded, Sequenced) else Sequenced.of(decoded, -1, 0)
        self.dispatcher.add(repo_of(item), item)
