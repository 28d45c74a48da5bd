"""The one stats type every stage of ingest counts into, from the socket (or file) to the state.

It lives with the state's stages, not with the sources, so the dispatcher and the pipeline count into it without
importing a source; every source (:mod:`streamer.sources`) fills its source side.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SourceStats:
    """Counters of one stream, from the socket (or file) to the state.

    Source side: ``items`` consumed (frames, archive items, Jetstream messages), ``frames`` that decoded by type,
    ``errors`` (undecodable, by reason), ``duplicates`` (re-sends, dropped), ``gaps``/``gap_frames`` (seq jumps
    and the seqs jumped over), ``out_of_order`` (late, kept), ``resets`` (relay sequence restarts followed),
    ``info`` (``#info`` frames by name), ``relay_errors`` (error frames by name), ``connects``, ``reconnects``,
    ``disconnects`` (of connections that opened, by reason), ``connect_failures`` (attempts that never opened, by
    reason: they end no connection, so they must not make an open one look closed), ``yielded``. State side (the
    dispatcher): ``events`` applied by kind, ``skipped`` operations and events by reason."""

    items: int = 0
    yielded: int = 0
    duplicates: int = 0
    gaps: int = 0
    gap_frames: int = 0
    out_of_order: int = 0
    resets: int = 0
    connects: int = 0
    reconnects: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    info: Counter[str] = field(default_factory=Counter)
    relay_errors: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)
    connect_failures: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def connected(self) -> bool:
        return self.connects > sum(self.disconnects.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            name: (dict(value) if isinstance(value, Counter) else value)
            for name, value in vars(self).items()
            if not name.startswith("_")
        }
