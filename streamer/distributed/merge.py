"""The partitions' windows at one due time merged into the snapshot a single process would hold.

:func:`merge` is the inverse of partitioning: the union of the DIDs, ordered by their first appearance in the stream
(the order a single process interns them; a DID's first position is the smallest its partitions hold, and positions
are unique: ``2 n + role`` of the event that named it, which lives in one partition), the activity summed (an
account's activity is counted in its own partition only, so the sum is exact), the edges put together (each
attender's edges live in one partition, so no pair is counted twice) and sorted by the ranks of their ends, and the
visibility counted over all of them.

Each partition comes as a :class:`Part` over the attributor's DID numbers (:class:`~streamer.distributed.did_numbers.
DidNumbers`), made from the attributor's copy of the partition: the merge is integer work over arrays, and only the
snapshot's list of DIDs is made of strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from streamer.core.followers import Followers
from streamer.core.state import Snapshot, StateConfig, visibility_of, window_bounds
from streamer.distributed.did_numbers import DidNumbers

_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Part:
    """One partition's window at one due time: its accounts (DID numbers, first positions, activity) in any order,
    its edges (attender and source numbers, weights) in any order, and what the window's bounds need."""

    dids: np.ndarray
    first: np.ndarray
    x: np.ndarray
    att: np.ndarray
    src: np.ndarray
    w: np.ndarray
    events: int
    head: int
    newest_bucket: int  # -1: the partition holds no bucket

    def renumbered(self, new_of: np.ndarray) -> Part:
        """The same window over DID numbers given afresh (``new_of``: old number -> new)."""
        return replace(self, dids=new_of[self.dids], att=new_of[self.att], src=new_of[self.src])


def merge(
    parts: Sequence[Part], numbers: DidNumbers, config: StateConfig, followers: Followers | None = None
) -> Snapshot:
    """The snapshot the partitions' windows at one due time add up to (see the module doc)."""
    if not parts:
        raise ValueError("no partitions to merge")
    gid = np.concatenate([p.dids for p in parts])
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
    if sum(len(p.att) for p in parts):
        from kernels import AttentionGraph

        att = rank[np.concatenate([p.att for p in parts])]
        src = rank[np.concatenate([p.src for p in parts])]
        by_pair = np.argsort(att * max(n, 1) + src)  # pairs are unique: one key each, sorted by (attender, source)
        att, src = att[by_pair], src[by_pair]
        w = np.concatenate([p.w for p in parts])[by_pair]
        graph = AttentionGraph(att, src, w, max(n, 1))  # it keeps its own int32 copies
    dids = numbers.names(ranked)
    visibility = visibility_of(dids, src, followers, x)
    start, end = window_bounds(config, max(p.head for p in parts), (p.newest_bucket for p in parts))
    return Snapshot(x, visibility, graph, dids, start, end, sum(p.events for p in parts))


__all__ = ["Part", "merge"]
