"""The attributor's numbers for DIDs, one per DID across every partition and run.

Each worker numbers the DIDs of its partition its own way (and afresh after each prune), so the attributor's copy of
a partition (:class:`~streamer.distributed.replica.PartitionReplica`) keeps, beside the worker's numbers, the
attributor's number of each DID: a DID is looked up by its string once, when a shard first names it, and every run
after that merges the partitions on integers alone (:func:`~streamer.distributed.merge.merge`), without a string
in sight but for the list of the snapshot's DIDs.

A DID no partition's copy names any more keeps its number until the attributor numbers the DIDs afresh
(:meth:`DidNumbers.compacted`), which it does when the dead outnumber the living (each copy then renumbers its table
in one gather), so the table stays within about twice the DIDs the partitions hold however long the attributor runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np


class DidNumbers:
    """DID -> number, and number -> DID (see the module doc)."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._names = np.empty(1024, object)

    def __len__(self) -> int:
        return len(self._index)

    def numbers(self, dids: Sequence[str]) -> np.ndarray:
        """The number of each DID, new DIDs numbered next in order."""
        index = self._index
        got = np.fromiter(map(index.get, dids, repeat(-1)), np.int64, len(dids))
        new = np.flatnonzero(got < 0)
        for i in new.tolist():
            got[i] = index.setdefault(dids[i], len(index))  # a DID named twice in ``dids`` gets one number
        if len(index) > len(self._names):
            grown = np.empty(max(len(index), 2 * len(self._names)), object)
            grown[: len(self._names)] = self._names
            self._names = grown
        if len(new):
            self._names[got[new]] = [dids[i] for i in new.tolist()]
        return got

    def names(self, numbers: np.ndarray) -> list[str]:
        """The DIDs of ``numbers``, in their order."""
        return self._names[numbers].tolist()  # type: ignore[no-any-return]

    def crowded(self, live: int) -> bool:
        """Whether the numbers of DIDs no copy names (``live`` are named) outnumber the living ones."""
        return len(self._index) > 2 * max(live, 1 << 16)

    def compacted(self, tables: Iterable[np.ndarray]) -> tuple[DidNumbers, np.ndarray]:
        """New numbers for only the DIDs ``tables`` hold (numbers; -1 for none), in their old order, and old number
        -> new number (-1 for a DID dropped) to renumber the tables with. A new table: whoever still holds this one
        (a run being merged) reads it unchanged."""
        held = [t[t >= 0] for t in (np.asarray(t, np.int64) for t in tables)]
        live = np.unique(np.concatenate(held)) if held else np.zeros(0, np.int64)
        new_of = np.full(len(self._index), -1, np.int64)
        new_of[live] = np.arange(len(live))
        fresh = DidNumbers()
        names = self._names[live]
        fresh._names = np.empty(max(len(live), 1024), object)
        fresh._names[: len(live)] = names
        fresh._index = dict(zip(names.tolist(), range(len(live)), strict=True))
        return fresh, new_of


__all__ = ["DidNumbers"]
