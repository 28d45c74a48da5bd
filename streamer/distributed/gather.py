"""Gathering the shards of each run, in due order, with a deadline: the attributor's pure part.

Chunks arrive from ``skyattr.shards`` in any interleaving of partitions and due times. :class:`Gatherer` puts each
shard together from its chunks, hands it to its partition's copy (:class:`~streamer.distributed.replica.
PartitionReplica`, which a full shard sets and a delta moves on: every shard goes there, in the topic's order, those
of runs already done too, so a restarted attributor rebuilds its copies by reading again), keeps for the shard's run
the partition's window as the copy then holds it (a :class:`~streamer.distributed.merge.Part`), and
:meth:`Gatherer.next_ready` hands out, oldest due time first, each run whose every partition is there (the first
complete copy of a (due time, partition) wins: a worker that published again after a crash sent the same shard).
The copies number DIDs with one table for all of them (:class:`~streamer.distributed.did_numbers.DidNumbers`),
numbered afresh when the DIDs no copy holds outnumber those held. A
run that stays incomplete for ``timeout_s`` after its first chunk arrived is handed out as :class:`Incomplete` (and
counted), so one lost worker cannot hold back every later run; shards of a run already handed out, or older than
where the attributor resumed, are not gathered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from streamer.distributed.did_numbers import DidNumbers
from streamer.distributed.merge import Part
from streamer.distributed.replica import PartitionReplica
from streamer.distributed.shards import Shard, from_chunks


@dataclass(frozen=True)
class Complete:
    as_of_us: int
    shards: list[Shard]  # each partition's shard as it came, its arrays left out (the part holds the window)
    parts: list[Part]  # each partition's window, in partition order
    numbers: DidNumbers  # what the parts' DID numbers name
    final: bool
    gather_s: float  # first chunk to last shard
    offsets: list[int]  # where its shards start in the topic (read again by a restart before it is committed)


@dataclass(frozen=True)
class Incomplete:
    as_of_us: int
    missing: list[int]  # partitions with no complete shard
    partitions: int
    offsets: list[int]  # where the shards it holds start in the topic


@dataclass
class _Run:
    first_seen: float
    partitions: int
    shards: dict[int, Shard] = field(default_factory=dict)
    parts: dict[int, Part] = field(default_factory=dict)
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
        self.replicas: dict[int, PartitionReplica] = {}
        self.numbers = DidNumbers()
        # (due time, partition, base) -> (offset of its first chunk, the chunks so far): a full shard and a delta of
        # the same run (a worker restarted mid-publish) are put together apart
        self._pieces: dict[tuple[int, int, int], tuple[int, dict[int, bytes]]] = {}
        self.dropped = 0  # shards of runs already done, or already held
        self.unchained = 0  # deltas that did not follow their partition's copy

    def add(self, offset: int, meta: dict[str, Any], value: bytes) -> None:
        """One chunk (``meta`` from :func:`~streamer.distributed.shards.chunk_meta`) read at ``offset``."""
        t, p = meta["as_of_us"], meta["partition"]
        at, pieces = self._pieces.setdefault((t, p, meta["base"]), (offset, {}))
        pieces[meta["chunk"]] = value
        if len(pieces) < meta["chunks"]:
            return
        del self._pieces[(t, p, meta["base"])]
        replica = self.replicas.get(p)
        if replica is None:
            replica = self.replicas[p] = PartitionReplica(p)
        was = replica.as_of_us
        given = from_chunks(meta, [pieces[i] for i in range(meta["chunks"])])
        moved = replica.apply(given, at, self.numbers)
        if replica.as_of_us is not None:  # a shard left in pieces at or before the copy can never be used now
            stale = [k for k in self._pieces if k[1] == p and k[0] <= replica.as_of_us]
            for k in stale:
                del self._pieces[k]
        if not moved:
            if not given.full and was != t:  # not the same delta again: one after a gap
                self.unchained += 1
            self.dropped += 1
            return
        if given.full:
            self._compact()
        if t <= self.done_through_us:
            self.dropped += 1
            return
        run = self.runs.get(t)
        if run is None:
            run = self.runs[t] = _Run(self.clock(), meta["partitions"])
        if p in run.shards:
            self.dropped += 1
            return
        run.shards[p] = replace(given, arrays={})
        run.parts[p] = replica.part(given)
        run.offsets.append(at)

    def next_ready(self) -> Complete | Incomplete | None:
        """The oldest run to attribute now (see the module doc), or None. A run handed out is no longer counted by
        :meth:`low_offset` unless given back to it as ``handed_out`` until it is committed."""
        if not self.runs:
            return None
        t = min(self.runs)
        run = self.runs[t]
        now = self.clock()
        out: Complete | Incomplete
        if len(run.shards) == run.partitions:
            shards = [run.shards[p] for p in sorted(run.shards)]
            parts = [run.parts[p] for p in sorted(run.parts)]
            final = any(s.final for s in shards)
            out = Complete(t, shards, parts, self.numbers, final, now - run.first_seen, run.offsets)
        elif now - run.first_seen >= self.timeout_s:
            missing = [p for p in range(run.partitions) if p not in run.shards]
            out = Incomplete(t, missing, run.partitions, run.offsets)
        else:
            return None
        del self.runs[t]
        self.done_through_us = t
        return out

    def _compact(self) -> None:
        """Number the DIDs afresh when those no copy holds outnumber the rest (see the module doc): the copies and
        the parts of the runs still held are renumbered; a run already handed out keeps the table it was given."""
        if not self.numbers.crowded(sum(len(r.gids) for r in self.replicas.values())):
            return
        held = [part.gids for run in self.runs.values() for part in run.parts.values()]
        fresh, new_of = self.numbers.compacted([*(r.gids for r in self.replicas.values()), *held])
        for replica in self.replicas.values():
            replica.renumber(new_of)
        for run in self.runs.values():
            run.parts = {p: part.renumbered(new_of) for p, part in run.parts.items()}
        self.numbers = fresh

    def low_offset(self, handed_out: Iterable[Complete | Incomplete] = ()) -> int | None:
        """The first offset a restart must read again to see every chunk held now, those of the runs
        ``handed_out`` but not committed yet, and to rebuild every partition's copy from its full shard (None:
        nothing is held)."""
        offsets = [o for run in [*self.runs.values(), *handed_out] for o in run.offsets]
        offsets += [at for at, _ in self._pieces.values()]
        offsets += [r.full_offset for r in self.replicas.values() if r.full_offset is not None]
        return min(offsets) if offsets else None
