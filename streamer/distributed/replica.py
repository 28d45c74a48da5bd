"""The attributor's copy of each partition's window, kept by the partition's shards, full and delta, across runs.

A full shard sets the copy; a delta moves it on when it is relative to the shard the copy stands at (its ``base``):
the copy then holds what the worker's window holds at that due time, row for row and edge for edge, and hands it to
the merge as a :class:`~streamer.distributed.merge.Part` over the attributor's DID numbers (each DID looked up by its
string once, when a shard first names it: :class:`~streamer.distributed.did_numbers.DidNumbers`). A run costs the
merge of the copies, not a rebuilt shard per partition.

A delta relative to anything else cannot be applied: it is the same shard again (a worker that published twice:
dropped in silence) or one after a gap (an attributor that resumed past the full shard its copy needs, which
:attr:`PartitionReplica.full_offset` prevents: it is the offset a restart reads the shards topic from again); the
partition then has no shard for that run until its next full one, and the run is given up as incomplete, never
attributed on a wrong window.
"""

from __future__ import annotations

import logging

import numpy as np

from streamer.distributed.did_numbers import DidNumbers
from streamer.distributed.merge import Part
from streamer.distributed.shards import ID_BITS, Shard

log = logging.getLogger("skyattr.attributor")


class PartitionReplica:
    """One partition's window as its shards built it (see the module doc)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.as_of_us: int | None = None  # the due time of the shard the copy stands at
        self.full_offset: int | None = None  # where the full shard the copy was built from starts in the topic
        self.gids = np.zeros(0, np.int64)  # the worker's id -> the attributor's DID number (-1: never named)
        # the arrays below are replaced, never written in place, so a Part made of them stays as it was made
        self._ids = np.zeros(0, np.int64)  # present rows, by id
        self._first = np.zeros(0, np.int64)
        self._x = np.zeros(0)
        self._edges = np.zeros(0, np.int64)  # attender id << ID_BITS | source id, sorted
        self._w = np.zeros(0)

    def apply(self, shard: Shard, offset: int, numbers: DidNumbers) -> bool:
        """Move the copy to ``shard`` (set it, when full); False when a delta does not follow the copy's shard, or
        a full one is older than it (see the module doc). ``offset``: where the shard starts in the shards topic;
        ``numbers``: the attributor's DID numbers, which number the DIDs the shard names for the first time."""
        if shard.full:
            if self.as_of_us is not None and shard.as_of_us < self.as_of_us:
                return False  # an older shard published late (a partition that moved): the copy is newer
            self._set(shard, numbers)
            self.full_offset = offset
        elif self.as_of_us == shard.base:
            self._move(shard, numbers)
        else:
            if shard.as_of_us != self.as_of_us:
                log.warning(
                    "partition %d: the shard at %d is relative to the one at %d, the copy stands at %s: "
                    "no shard of it until its next full one",
                    self.partition,
                    shard.as_of_us,
                    shard.base,
                    self.as_of_us,
                )
            return False
        self.as_of_us = shard.as_of_us
        return True

    def part(self, shard: Shard) -> Part:
        """The window the copy stands at, ``shard`` the one it was moved to last (its arrays, which later shards
        replace rather than change)."""
        window = (self._ids, self._first, self._x, self._edges, self._w)
        return Part(self.gids.copy(), *window, shard.events, shard.head, shard.newest_bucket)

    def renumber(self, new_of: np.ndarray) -> None:
        """The DIDs numbered afresh (``new_of``: old number -> new, from :meth:`DidNumbers.compacted`)."""
        self.gids = np.where(self.gids >= 0, new_of[self.gids], -1)

    def _name(self, ids: np.ndarray, dids: list[str], numbers: DidNumbers) -> None:
        """The attributor's numbers of the DIDs ``dids`` the worker numbered ``ids``."""
        if not len(ids):
            return
        top = int(ids.max()) + 1
        if top > len(self.gids):
            grown = np.full(top, -1, np.int64)
            grown[: len(self.gids)] = self.gids
            self.gids = grown
        self.gids[ids] = numbers.numbers(dids)

    def _set(self, shard: Shard, numbers: DidNumbers) -> None:
        a = shard.arrays
        ids = np.asarray(a["ids"], np.int64)
        self.gids = np.zeros(0, np.int64)
        self._name(ids, list(a["dids"]), numbers)
        order = np.argsort(ids, kind="stable")
        self._ids, self._first, self._x = ids[order], np.asarray(a["first"])[order], np.asarray(a["x"])[order]
        edges = (ids[np.asarray(a["att"], np.int64)] << ID_BITS) | ids[np.asarray(a["src"], np.int64)]
        by_key = np.argsort(edges, kind="stable")
        self._edges, self._w = edges[by_key], np.asarray(a["w"])[by_key]

    def _move(self, shard: Shard, numbers: DidNumbers) -> None:
        a = shard.arrays
        self._name(np.asarray(a["named_ids"], np.int64), list(a["named"]), numbers)
        self._ids, (self._first, self._x) = _upsert(
            self._ids, (self._first, self._x), a["gone_ids"], a["up_ids"], (a["up_first"], a["up_x"])
        )
        self._edges, (self._w,) = _upsert(self._edges, (self._w,), a["gone_edges"], a["up_edges"], (a["up_w"],))


def _upsert(
    keys: np.ndarray,
    cols: tuple[np.ndarray, ...],
    gone: np.ndarray,
    up_keys: np.ndarray,
    up_cols: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Sorted unique ``keys`` with their columns, less ``gone`` and with ``up_keys`` set to ``up_cols``: binary
    searches into the kept keys and one pass to put the new ones in, so a delta costs a copy of the arrays, not a
    sort of them."""
    up_keys = np.asarray(up_keys, np.int64)
    drop = np.concatenate([np.asarray(gone, np.int64), up_keys])
    at = np.searchsorted(keys, drop)
    found = at < len(keys)
    found[found] = keys[at[found]] == drop[found]
    keep = np.ones(len(keys), bool)
    keep[at[found]] = False
    kept = keys[keep]
    order = np.argsort(up_keys, kind="stable")
    into = np.searchsorted(kept, up_keys[order])
    out = tuple(np.insert(c[keep], into, np.asarray(u, c.dtype)[order]) for c, u in zip(cols, up_cols, strict=True))
    return np.insert(kept, into, up_keys[order]), out


__all__ = ["PartitionReplica"]
