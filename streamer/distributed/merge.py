"""The partitions' windows at one due time merged into the snapshot a single process would hold.

:func:`merge` is the inverse of partitioning: the union of the DIDs, ordered by their first appearance in the stream
(the order a single process interns them; a DID's first position is the smallest its partitions hold, and positions
are unique: ``2 n + role`` of the event that named it, which lives in one partition), the activity summed (an
account's activity is counted in its own partition only, so the sum is exact), the edges put together (each
attender's edges live in one partition, so no pair is counted twice) and sorted by the ranks of their ends, and the
visibility counted over all of them.

Each partition comes as a :class:`Part`: the attributor's copy of the partition as it stood at the due time, over
the worker's ids, with the attributor's number for each (:class:`~streamer.distributed.did_numbers.DidNumbers`): the
merge is integer work over arrays, and only the snapshot's list of DIDs is made of strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from streamer.core.followers import Followers
from streamer.core.state import Snapshot, StateConfig, visibility_of, window_bounds
from streamer.distributed.did_numbers import DidNumbers
from streamer.distributed.shards import ID_BITS

_NEVER = np.iinfo(np.int64).max
_LOW = (1 << ID_BITS) - 1


@dataclass(frozen=True)
class Part:
    """One partition's window at one due time, as the attributor's copy of the partition holds it: the worker's ids
    of the accounts present (``ids``, any order) with their first positions and activity, the edges as keys
    ``attender id << ID_BITS | source id`` (any order) with their weights, ``gids``: the attributor's DID number
    of each worker id (-1: an id not named), and what the window's bounds need."""

    gids: np.ndarray
    ids: np.ndarray
    first: np.ndarray
    x: np.ndarray
    edges: np.ndarray
    w: np.ndarray
    events: int
    head: int
    newest_bucket: int  # -1: the partition holds no bucket

    def renumbered(self, new_of: np.ndarray) -> Part:
        """The same window over DID numbers given afresh (``new_of``: old number -> new)."""
        return replace(self, gids=np.where(self.gids >= 0, new_of[self.gids], -1))


def merge(
    parts: Sequence[Part], numbers: DidNumbers, config: StateConfig, followers: Followers | None = None
) -> Snapshot:
    """The snapshot the partitions' windows at one due time add up to (see the module doc)."""
    if not parts:
        raise ValueError("no partitions to merge")
    gid = np.concatenate([p.gids[p.ids] for p in parts])
    earliest = np.full(int(gid.max()) + 1 if len(gid) else 0, _NEVER)
    np.minimum.at(earliest, gid, np.concatenate([p.first for p in parts]))
    present = np.flatnonzero(earliest != _NEVER)
    ranked = present[np.argsort(earliest[present], kind="stable")]
    n = len(ranked)
    rank = np.full(len(earliest), -1, np.int64)
    rank[ranked] = np.arange(n)
    # partition by partition in order, from zero: the sum np.add.at made before (bincount adds in input order)
    x = np.bincount(rank[gid], weights=np.concatenate([p.x for p in parts]), minlength=n).astype(np.float64)
    graph = None
    src = np.zeros(0, np.int64)
    if sum(len(p.edges) for p in parts):
        from kernels import AttentionGraph

        # each edge as attender rank << bits | source rank: sorting the keys sorts the edges by (attender, source)
        # (pairs are unique), and the ends come back from the sorted keys by shifts, not by two more gathers
        bits = max(n - 1, 1).bit_length()
        keys = []
        for p in parts:
            ranks = rank[np.where(p.gids >= 0, p.gids, 0)]  # each worker id's rank (an id not named is never read)
            keys.append((ranks[p.edges >> ID_BITS] << bits) | ranks[p.edges & _LOW])
        key = np.concatenate(keys)
        by_pair = np.argsort(key)
        key = key[by_pair]
        att, src = key >> bits, key & ((1 << bits) - 1)
        w = np.concatenate([p.w for p in parts])[by_pair]
        graph = AttentionGraph(att, src, w, max(n, 1))  # it keeps its own int32 copies
    dids = numbers.names(ranked)
    visibility = visibility_of(dids, src, followers, x)
    start, end = window_bounds(config, max(p.head for p in parts), (p.newest_bucket for p in parts))
    return Snapshot(x, visibility, graph, dids, start, end, sum(p.events for p in parts))


__all__ = ["Part", "merge"]
