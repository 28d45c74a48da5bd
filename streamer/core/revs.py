"""At-least-once sources: dedupe by (DID, rev), on the side that applies events.

A Jetstream v2 ``seq`` is instance-local, and v2 documents its delivery as at-least-once with each account's events
in order: a commit can come again under another seq (an instance that re-read its upstream, or the archive and the
live tail overlapping), and then the seq cursor cannot tell. A repo's ``rev`` can: it is a TID that grows with every
commit of the account, and every operation of one commit carries the commit's rev. So a commit operation whose rev
is below the last one applied for its account, or equal to it with an operation already applied, was applied
before: :class:`RevGuard` says so, and the one who applies events drops it, counted in ``duplicates``.

The guard belongs to what *applies* events — the single process's dispatcher, the distributed ingest's commit — and
is saved with what they save (the state's checkpoint; the events topic the ingest writes, read back at a restart):
a source reads ahead of what is applied, so a guard kept there and saved would drop, after a restart, events it
had read but that were never applied.

Kept for the ``capacity`` accounts seen last (an account pushed out forgets its rev, and a repeat of its commits
after that would pass: repeats come soon after the original). A ``#sync`` event (the account's repo was reset
upstream) forgets the account, so its next commits are taken whatever their rev.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from streamer.core.events import Event
from streamer.core.frames import Decoded

CAPACITY = 100_000
ARRAY = "rev_guard"  # the checkpoint's array: the guard as UTF-8 JSON (any string an account may send fits)

Op = tuple[str, str, str]  # collection, rkey, operation


class RevGuard:
    """Per account, the last rev applied and the operations applied at it (``collection``, ``rkey``, operation)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._last: OrderedDict[str, tuple[str, set[Op]]] = OrderedDict()

    def repeated(self, event: Event) -> bool:
        """Whether ``event`` (a commit operation with a rev; anything else is never a repeat) was applied before;
        if not, it is remembered as applied."""
        rev, did = event.rev, event.actor
        if not rev or not event.operation:
            return False
        op = (event.collection, event.rkey, event.operation)
        held = self._last.get(did)
        if held is not None:
            last, ops = held
            if rev < last or (rev == last and op in ops):
                return True
            self._last.move_to_end(did)
            if rev == last:
                ops.add(op)
                return False
        self._last[did] = (rev, {op})
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return False

    def forget(self, did: str) -> None:
        """The account's repo was reset (a ``#sync``): its next commits are taken whatever their rev."""
        self._last.pop(did, None)

    def __len__(self) -> int:
        return len(self._last)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RevGuard) and list(self._last.items()) == list(other._last.items())

    __hash__ = None  # type: ignore[assignment]  # mutable

    # -- saved with a checkpoint --------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The guard as one checkpoint array (oldest account first, so a load keeps the same order to forget)."""
        rows = [[did, rev, sorted(ops)] for did, (rev, ops) in self._last.items()]
        text = json.dumps({"capacity": self.capacity, "accounts": rows}, separators=(",", ":"), ensure_ascii=False)
        return {ARRAY: np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)}

    @classmethod
    def from_arrays(cls, data: np.ndarray) -> RevGuard:
        """The guard :meth:`to_arrays` saved; ``ValueError`` for anything else."""
        try:
            obj = json.loads(bytes(data).decode("utf-8", "surrogatepass"))
            guard = cls(int(obj["capacity"]))
            for did, rev, ops in obj["accounts"]:
                guard._last[str(did)] = (str(rev), {(str(c), str(r), str(o)) for c, r, o in ops})
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"the (DID, rev) guard is unreadable ({exc})") from None
        return guard

    @classmethod
    def replayed(cls, events: Iterable[Event], capacity: int = CAPACITY) -> RevGuard:
        """The guard after ``events`` were applied in their order (each account's in its own order): rebuilt from
        a log of what was applied, as the distributed ingest does from its events topic at a restart."""
        guard = cls(capacity)
        for event in events:
            guard.repeated(event)
        return guard


def repeated(guard: RevGuard, decoded: Decoded) -> bool:
    """Whether a decoded v2 message repeats a commit operation already applied (a ``#sync`` resets its account)."""
    if decoded.type == "#sync":
        guard.forget(str((decoded.info or {}).get("did", "")))
        return False
    return any([guard.repeated(e) for e in decoded.events])


__all__ = ["ARRAY", "CAPACITY", "RevGuard", "repeated"]
