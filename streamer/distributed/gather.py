"""Gathering the shards of each run, in due order, with a deadline: the attributor's pure part.

Chunks arrive from ``skyattr.shards`` in any interleaving of partitions and due times. :class:`Gatherer` puts each
shard together from its chunks (the first complete copy of a (due time, partition) wins: a worker that published
again after a crash sent the same shard), and :meth:`Gatherer.next_ready` hands out, oldest due time first, each run
whose every partition is there. A run that stays incomplete for ``timeout_s`` after its first chunk arrived is
handed out as :class:`Incomplete` (and counted), so one lost worker cannot hold back every later run; shards of a
run already handed out, or older than where the attributor resumed, are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamer.distributed.shards import Shard, from_chunks


@dataclass(frozen=True)
class Complete:
    as_of_us: int
    shards: list[Shard]
    final: bool
    gather_s: float  # first chunk to last shard


@dataclass(frozen=True)
class Incomplete:
    as_of_us: int
    missing: list[int]  # partitions with no complete shard
    partitions: int


@dataclass
class _Run:
    first_seen: float
    partitions: int
    shards: dict[int, Shard] = field(default_factory=dict)
    chunks: dict[int, dict[int, bytes]] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=list)


class Gatherer:
    """See the module doc. ``done_through_us``: runs at or before it are done (where a restart resumes)."""

    def __init__(
        self, done_through_us: int = -1, timeout_s: float = 120.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.done_through_us = done_through_us
        self.timeout_s = timeout_s
        self.clock = clock
        self.runs: dict[int, _Run] = {}
        self.dropped = 0  # chunks of runs already done, or shards already held

    def add(self, offset: int, meta: dict[str, Any], value: bytes) -> None:
        """One chunk (``meta`` from :func:`~streamer.distributed.shards.chunk_meta`) read at ``offset``."""
        t, p = meta["as_of_us"], meta["partition"]
        if t <= self.done_through_us:
            self.dropped += 1
            return
        run = self.runs.get(t)
        if run is None:
            run = self.runs[t] = _Run(self.clock(), meta["partitions"])
        if p in run.shards:
            self.dropped += 1
            return
        run.offsets.append(offset)
        pieces = run.chunks.setdefault(p, {})
        pieces[meta["chunk"]] = value
        if len(pieces) == meta["chunks"]:
            run.shards[p] = from_chunks(meta, [pieces[i] for i in range(meta["chunks"])])
            del run.chunks[p]

    def next_ready(self) -> Complete | Incomplete | None:
        """The oldest run to attribute now (see the module doc), or None. One at a time: the runs after it stay
        held, so :meth:`low_offset` still counts their chunks while this one is being committed."""
        if not self.runs:
            return None
        t = min(self.runs)
        run = self.runs[t]
        now = self.clock()
        out: Complete | Incomplete
        if len(run.shards) == run.partitions:
            shards = [run.shards[p] for p in sorted(run.shards)]
            out = Complete(t, shards, any(s.final for s in shards), now - run.first_seen)
        elif now - run.first_seen >= self.timeout_s:
            out = Incomplete(t, [p for p in range(run.partitions) if p not in run.shards], run.partitions)
        else:
            return None
        del self.runs[t]
        self.done_through_us = t
        return out

    def low_offset(self) -> int | None:
        """The first offset a restart must read again to see every chunk held now (None: nothing is held)."""
        offsets = [o for run in self.runs.values() for o in run.offsets]
        return min(offsets) if offsets else None
