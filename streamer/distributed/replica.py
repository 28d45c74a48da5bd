"""The attributor's copy of each partition's window, kept by the partition's shards, full and delta.

A full shard sets the copy; a delta moves it on when it is relative to the shard the copy stands at (its ``base``),
and each is turned back into the full shard it stands for, bit for bit what the worker's window holds (the rows in
the order of their first positions, the edges by the ranks of their ends). A delta relative to anything else cannot
be applied: it is the same shard again (a worker that published twice: dropped in silence) or one after a gap (an
attributor that resumed past the full shard its copy needs, which :attr:`PartitionReplica.full_offset` prevents:
it is the offset a restart reads the shards topic from again); the partition then has no shard for that run
until its next full one, and the run is given up as incomplete, never attributed on a wrong window.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from streamer.distributed.shards import ID_BITS, Shard, Window, rank_of

log = logging.getLogger("skyattr.attributor")

_LOW = (1 << ID_BITS) - 1


class PartitionReplica:
    """One partition's window as its shards built it (see the module doc)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.as_of_us: int | None = None  # the due time of the shard the copy stands at
        self.full_offset: int | None = None  # where the full shard the copy was built from starts in the topic
        self._names = np.empty(0, object)  # id -> DID
        self._ids = np.zeros(0, np.int64)  # present rows, by id
        self._first = np.zeros(0, np.int64)
        self._x = np.zeros(0)
        self._edges = np.zeros(0, np.int64)  # attender id << ID_BITS | source id, sorted
        self._w = np.zeros(0)

    def apply(self, shard: Shard, offset: int) -> Shard | None:
        """The full shard ``shard`` stands for (itself when full), the copy moved to it; None when a delta does not
        follow the copy's shard (see the module doc). ``offset``: where the shard starts in the shards topic."""
        if shard.full:
            if self.as_of_us is not None and shard.as_of_us < self.as_of_us:
                return None  # an older shard published late (a partition that moved): the copy is newer
            self._set(shard)
            self.full_offset = offset
        elif self.as_of_us == shard.base:
            self._move(shard)
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
            return None
        self.as_of_us = shard.as_of_us
        if shard.full:
            return shard
        window = self._window()
        return replace(shard, arrays=window.full(self._names), base=-1)

    def _set(self, shard: Shard) -> None:
        a = shard.arrays
        ids = np.asarray(a["ids"], np.int64)
        self._names = np.empty(int(ids.max()) + 1 if len(ids) else 0, object)
        self._names[ids] = np.array(a["dids"], dtype=object) if len(ids) else []
        order = np.argsort(ids, kind="stable")
        self._ids, self._first, self._x = ids[order], np.asarray(a["first"])[order], np.asarray(a["x"])[order]
        edges = (ids[np.asarray(a["att"], np.int64)] << ID_BITS) | ids[np.asarray(a["src"], np.int64)]
        by_key = np.argsort(edges, kind="stable")
        self._edges, self._w = edges[by_key], np.asarray(a["w"])[by_key]

    def _move(self, shard: Shard) -> None:
        a = shard.arrays
        named = np.asarray(a["named_ids"], np.int64)
        if len(named):
            top = int(named.max()) + 1
            if top > len(self._names):
                grown = np.empty(top, object)
                grown[: len(self._names)] = self._names
                self._names = grown
            self._names[named] = np.array(a["named"], dtype=object)
        self._ids, (self._first, self._x) = _upsert(
            self._ids, (self._first, self._x), a["gone_ids"], a["up_ids"], (a["up_first"], a["up_x"])
        )
        self._edges, (self._w,) = _upsert(self._edges, (self._w,), a["gone_edges"], a["up_edges"], (a["up_w"],))

    def _window(self) -> Window:
        order = np.argsort(self._first, kind="stable")  # first positions are unique: the worker's order
        ids = self._ids[order]
        rank = rank_of(ids)
        att, src = self._edges >> ID_BITS, self._edges & _LOW
        by_rank = np.lexsort((rank[src], rank[att]))
        return Window(ids, self._first[order], self._x[order], att[by_rank], src[by_rank], self._w[by_rank])


def _upsert(
    keys: np.ndarray,
    cols: tuple[np.ndarray, ...],
    gone: np.ndarray,
    up_keys: np.ndarray,
    up_cols: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Sorted unique ``keys`` with their columns, less ``gone`` and with ``up_keys`` set to ``up_cols``."""
    up_keys = np.asarray(up_keys, np.int64)
    keep = ~np.isin(keys, np.concatenate([np.asarray(gone, np.int64), up_keys]))
    merged = np.concatenate([keys[keep], up_keys])
    order = np.argsort(merged, kind="stable")
    out = tuple(np.concatenate([c[keep], np.asarray(u, c.dtype)])[order] for c, u in zip(cols, up_cols, strict=True))
    return merged[order], out


__all__ = ["PartitionReplica"]
