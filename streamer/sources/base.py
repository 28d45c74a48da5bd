"""The source protocol.

A source is an async iterator of decoded items (:class:`~streamer.core.seqs.Sequenced`: a
:class:`~streamer.core.frames.Decoded` with the source's cursor after it), plus:

* ``cursor``: where a new source of the same kind resumes from, in the source's own unit (a relay ``seq``, a
  Jetstream ``time_us``, a position in an archive); ``None`` before anything was consumed;
* ``stats``: a :class:`~streamer.core.stats.SourceStats`, shared with the dispatcher that folds the items into the
  state, so one object counts a frame once from the socket to the state;
* ``stop()`` (ends the iteration after the current item) and ``async aclose()``.

Every source decodes with :func:`streamer.core.decode.decode_item` and judges relay seqs with
:class:`streamer.core.seqs.Sequencer`, so a frame is decoded, deduplicated and counted in exactly one place
whichever source brought it. Duplicates and undecodable items are counted and never yielded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from streamer.core.seqs import Sequenced
from streamer.core.stats import SourceStats

__all__ = ["Source", "SourceStats"]


@runtime_checkable
class Source(Protocol):
    """What the pipeline reads from (see the module doc)."""

    stats: SourceStats

    @property
    def cursor(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[Sequenced]: ...

    def stop(self) -> None: ...

    async def aclose(self) -> None: ...
