"""Relay sequence bookkeeping shared by the live source and the ingestor.

A relay's ``seq`` is only a position in *that relay's* log: it can jump (the log need not be dense), arrive a
little out of order, be re-sent after a reconnect, or start again from 1 when the relay is rebuilt. Telling these
apart needs memory of what was seen, which only the source that reads the websocket has (it also knows where a
connection began). So the live source decides, and hands each frame on as a :class:`Sequenced` item carrying its
position after that frame; the ingestor then just takes that position as its cursor instead of second-guessing it.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, fields

import numpy as np

from streamer.core.frames import Decoded

# A frame this far (or farther) below the cursor cannot be a late or re-sent frame of the same log: the relay's
# sequence started again.
RESET_WINDOW = 10_000
# Stands for "a frame was here, its content unknown" (one that did not decode): whatever comes later at that seq
# is taken as the same frame re-sent.
ANY = -(2**63)
_DECODED_FIELDS = tuple(f.name for f in fields(Decoded))


@dataclass(slots=True)
class Sequenced(Decoded):
    """A decoded frame whose seq a live source has already checked (new, late, or the start of a relay's new
    sequence; duplicates never get this far). ``source_cursor``: the source's cursor once this frame is consumed,
    the position a checkpoint taken after applying it must resume from. ``fingerprint``: what the source judged
    the frame by, kept by the ingestor for the checkpoint's ring without computing it again."""

    source_cursor: int = -1
    fingerprint: int = 0  # :func:`fingerprint` of the frame, as the source computed it to judge the seq

    @classmethod
    def of(cls, decoded: Decoded, source_cursor: int, print_: int) -> Sequenced:
        return cls(
            *(getattr(decoded, name) for name in _DECODED_FIELDS), source_cursor=source_cursor, fingerprint=print_
        )


def fingerprint(decoded: Decoded) -> int:
    """What a frame says, apart from its seq: a re-sent frame has the same, a different frame under a reused seq
    (a renumbered relay) almost surely not. Built from the decoded events rather than the raw bytes so that a relay
    which re-encodes what it re-sends is still recognised. A keyed-free BLAKE2b digest, not ``hash()``: the
    fingerprints travel in checkpoints, so they must be the same in the next process."""
    text = repr(
        (
            decoded.type,
            tuple(
                (e.time_us, e.kind, e.actor, e.subject, e.collection, e.rkey, e.operation, e.rev, e.cid)
                for e in decoded.events
            ),
        )
    )
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    h -= 1 << 63  # signed 64 bits, as the ring stores them
    return h + 1 if h == ANY else h


class SeenSeqs:
    """Fingerprints of the seqs seen in the last ``window`` positions below the cursor, in a fixed ring: memory is
    two arrays of ``window`` int64 whatever the stream, and a seq is found in O(1)."""

    def __init__(self, window: int = RESET_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._seqs = array("q", [-1]) * window
        self._prints = array("q", [0]) * window

    def add(self, seq: int, print_: int) -> None:
        slot = seq % self.window
        self._seqs[slot], self._prints[slot] = seq, print_

    def get(self, seq: int, cursor: int) -> int | None:
        """The fingerprint recorded for ``seq``, None when it was not seen or lies ``window`` or more below
        ``cursor`` (out of memory)."""
        if seq < 0 or cursor - seq >= self.window:
            return None
        slot = seq % self.window
        return self._prints[slot] if self._seqs[slot] == seq else None

    def clear(self) -> None:
        self._seqs = array("q", [-1]) * self.window

    def copy(self) -> SeenSeqs:
        other = SeenSeqs(self.window)
        other._seqs, other._prints = array("q", self._seqs), array("q", self._prints)
        return other

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The ring for a checkpoint: it belongs with the cursor, so that after a restart a relay re-sending what
        the state already holds is still recognised (and not taken for a relay that restarted its sequence)."""
        return {"seen_seqs": np.array(self._seqs, np.int64), "seen_prints": np.array(self._prints, np.int64)}

    @classmethod
    def from_arrays(cls, seqs: np.ndarray, prints: np.ndarray) -> SeenSeqs:
        if seqs.shape != prints.shape or seqs.ndim != 1 or len(seqs) < 1:
            raise ValueError(f"seen-seq ring arrays of shapes {seqs.shape} and {prints.shape}")
        ring = cls(len(seqs))
        ring._seqs = array("q", np.asarray(seqs, np.int64).tobytes())
        ring._prints = array("q", np.asarray(prints, np.int64).tobytes())
        return ring
