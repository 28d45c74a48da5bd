"""What the pipeline reads from: the Source protocol, and the one stats type every stage of ingest counts into.

A source is an async iterator of decoded items (:class:`~streamer.core.seqs.Sequenced`: a
:class:`~streamer.core.frames.Decoded` with the source's cursor after it), plus:

* ``cursor``: where a new source of the same kind resumes from, in the source's own unit (a relay ``seq``, a
  Jetstream ``time_us``, a position in an archive); ``None`` before anything was consumed;
* ``stats``: a :class:`~streamer.core.source.SourceStats`, shared with the dispatcher that folds the items into the
  state, so one object counts a frame once from the socket to the state;
* ``stop()`` (ends the iteration after the current item) and ``async aclose()``.

Every source decodes with :func:`streamer.core.decode.decode_item` and judges relay seqs with
:class:`streamer.core.seqs.SeqJudge`, so a frame is decoded, deduplicated and counted in exactly one place
whichever source brought it. Duplicates and undecodable items are counted and never yielded.

Both live with the stages that read them, not with the sources (:mod:`streamer.sources`, which fill them), so the
dispatcher and the pipeline are typed by them without importing a source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from streamer.core.seqs import Sequenced


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


@runtime_checkable
class Source(Protocol):
    """What the pipeline reads from (see the module doc)."""

    stats: SourceStats

    @property
    def cursor(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[Sequenced]: ...

    def stop(self) -> None: ...

    async def aclose(self) -> None: ...
