"""Jetstream v2 is at-least-once: dedupe by (DID, rev).

A v2 ``seq`` is instance-local, and v2 documents its delivery as at-least-once with each account's events in order:
a commit can come again under another seq (an instance that re-read its upstream, or the archive and the live tail
of a future deployment overlapping), and then the seq cursor cannot tell. A repo's ``rev`` can: it is a TID that
grows with every commit of the account, and every operation of one commit carries the commit's rev. So a commit
operation whose rev is below the last one applied for its account, or equal to it with an operation already
applied, was applied before: :class:`RevGuard` says so, and the v2 sources drop it, counted in ``duplicates``.

Kept for the ``capacity`` accounts seen last (an account pushed out forgets its rev, and a repeat of its commits
after that would pass: repeats come soon after the original), in memory: a restart resumes from the seq cursor of
the same instance (a checkpoint records it), which is exact. A ``#sync`` event (the account's repo was reset
upstream) forgets the account, so its next commits are taken whatever their rev.
"""

from __future__ import annotations

from collections import OrderedDict

from streamer.core.events import Event
from streamer.core.frames import Decoded

CAPACITY = 100_000


class RevGuard:
    """Per account, the last rev applied and the operations applied at it (``collection``, ``rkey``, operation)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._last: OrderedDict[str, tuple[str, set[tuple[str, str, str]]]] = OrderedDict()

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


def repeated(guard: RevGuard, decoded: Decoded) -> bool:
    """Whether a decoded v2 message repeats a commit operation already applied (a ``#sync`` resets its account)."""
    if decoded.type == "#sync":
        guard.forget(str((decoded.info or {}).get("did", "")))
        return False
    return any([guard.repeated(e) for e in decoded.events])


__all__ = ["CAPACITY", "RevGuard", "repeated"]
