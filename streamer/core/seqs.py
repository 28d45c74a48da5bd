"""Relay sequence bookkeeping: the one judge of seqs (:class:`SeqJudge`), shared by every source of relay frames.

A relay's ``seq`` is only a position in *that relay's* log: it can jump (the log need not be dense), arrive a
little out of order, be re-sent after a reconnect, or start again from 1 when the relay is rebuilt. Telling these
apart needs memory of what was seen and of where a connection began, which the source that reads the frames has.
So the source decides (the live firehose and an archive replay with the same :class:`SeqJudge`), and hands each
frame on as a :class:`Sequenced` item carrying its position after that frame; the dispatcher then takes that
position as its cursor (kept in step with the state for checkpoints) instead of second-guessing it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from array import array
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from streamer.core.frames import Decoded
from streamer.core.logonce import OncePerKind

log = logging.getLogger("skyattr.seqs")

# A frame this far (or farther) below the cursor cannot be a late or re-sent frame of the same log: the relay's
# sequence started again.
RESET_WINDOW = 10_000
# Stands for "a frame was here, its content unknown" (one that did not decode): whatever comes later at that seq
# is taken as the same frame re-sent.
ANY = -(2**63)
# Sequenced.of spells these out in this order; a new field of Decoded must be added there too
assert tuple(f.name for f in fields(Decoded)) == ("type", "seq", "events", "error", "detail", "skipped", "info")


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
        d = decoded  # spelled out (not a loop over the fields): this runs once per frame
        return cls(d.type, d.seq, d.events, d.error, d.detail, d.skipped, d.info, source_cursor, print_)


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


class SeqJudge:
    """The one judge of relay seqs, shared by every source of relay frames (the live websocket, an archive).

    It keeps ``cursor`` (the highest seq consumed in the relay's current sequence) and the ring of fingerprints
    seen lately, and decides frame by frame, counting into a :class:`~streamer.sources.base.SourceStats`:

    - above the cursor: new; a jump of more than one is counted as a gap (the public relay's seqs are not dense);
    - at or below it and seen with the same content: a re-send, dropped and counted in ``duplicates``;
    - below it, within the window, not seen: late, kept, counted in ``out_of_order``;
    - far below it (``reset_window`` or more), a seen seq with other content, or the first frame of a connection
      below the cursor it asked for: the relay may have restarted its sequence. The frame is held until the next
      one: if that continues the new sequence, the restart is confirmed (``resets``; the cursor follows) and both
      are yielded; if not, the held frame is a stray (a duplicate when its seq was seen, else out of order). One
      odd frame thus never moves the cursor back;
    - after :meth:`follow_head` (a relay answering ``FutureCursor``), the next frame that is not a re-send
      becomes the cursor.

    ``frame`` is whatever the source wants back with each decision (the raw bytes, for the recorder); it is not
    looked at. ``name`` appears in log lines (the relay URL, the archive path).
    """

    def __init__(
        self,
        stats: Any,
        *,
        cursor: int | None = None,
        seen: SeenSeqs | None = None,
        reset_window: int = RESET_WINDOW,
        name: str = "",
        fingerprints: bool = True,
    ) -> None:
        self.stats = stats
        self.fingerprints = fingerprints
        self.cursor = cursor
        self.name = name
        self.reset_window = reset_window
        self._seen = seen.copy() if seen is not None and seen.window == reset_window else SeenSeqs(reset_window)
        self._warn = OncePerKind(log)
        self.recovering = ""  # why the source is recovering from a relay reset; "" when it is not
        self.last_anomaly = -math.inf  # time.monotonic() of the last reset or out-of-order frame
        self._follow = False  # after FutureCursor: take the relay's stream as it is
        self._asked: int | None = None  # the cursor the open connection asked for
        self._first = True  # no frame with a seq on the open connection yet
        self._held: tuple[Any, Decoded, int, bool] | None = None  # (frame, decoded, fingerprint, seq was seen)

    @property
    def seen(self) -> SeenSeqs:
        """The ring of recent seqs and their fingerprints (what a checkpoint keeps with the cursor)."""
        return self._seen

    @property
    def following(self) -> bool:
        return self._follow

    @property
    def asked(self) -> int | None:
        """The cursor the open connection asked for (None: none, or an archive)."""
        return self._asked

    @property
    def holding(self) -> bool:
        return self._held is not None

    def anomalous(self, hold: float) -> bool:
        return time.monotonic() - self.last_anomaly < hold

    def opened(self, asked: int | None) -> None:
        """A new connection (or the start of an archive) that asked for ``asked``."""
        self._asked = asked
        self._first = True

    def flush(self) -> list[tuple[Any, Sequenced]]:
        """The connection (or the archive) ended: a held frame has nothing after it to confirm a reset."""
        if self._held is None:
            return []
        held, self._held = self._held, None
        return self._stray(*held)

    def drop_held(self) -> None:
        """Stopped: a held frame is dropped with the cursor before it, so a resume fetches it again."""
        self._held = None

    def follow_head(self, reason: str) -> None:
        """The relay's head is below our cursor (``FutureCursor``): follow its stream from where it now is."""
        self.stats.resets += 1
        self._follow = True
        self.last_anomaly = time.monotonic()
        self.recovering = reason

    def judge(self, frame: Any, decoded: Decoded) -> list[tuple[Any, Sequenced]]:
        """Count one frame and judge its seq (see the module doc). Returns what to yield now: nothing, this frame,
        or a frame held back before it."""
        if decoded.error:
            self.count_error(decoded.error, decoded.detail)
            if decoded.seq >= 0:
                self._first = False
                if self.cursor is None or decoded.seq > self.cursor:
                    self._advance(decoded.seq, ANY)
            return []
        if decoded.type == "#info":
            self.stats.frames["#info"] += 1
            name = str((decoded.info or {}).get("name", ""))
            self.stats.info[name] += 1
            log.warning("relay info %s: %s", name, (decoded.info or {}).get("message", ""))
            return []
        if decoded.seq < 0:
            self.count_error("no_seq", f"{decoded.type} frame without a seq")
            return []
        first, self._first = self._first, False
        seq = decoded.seq
        # the content matters only where the seq could be a re-send (at or below the cursor, or with a frame held);
        # without ``fingerprints`` a new frame is remembered as ANY ("a frame was here"), which is all an archive
        # needs, and costs nothing
        compare = self.cursor is not None and (seq <= self.cursor or self._held is not None)
        print_ = fingerprint(decoded) if self.fingerprints or compare else ANY
        out: list[tuple[Any, Sequenced]] = []
        if self._held is not None:
            held, self._held = self._held, None
            cursor = self.cursor
            assert cursor is not None  # a frame is held only when it is below a cursor
            if held[1].seq < seq <= cursor and self._seen.get(seq, cursor) not in (print_, ANY):
                return self._restart(held, frame, decoded, print_)
            out += self._stray(*held)
        cursor = self.cursor
        if cursor is None or seq > cursor:
            self._advance(seq, print_)
            self._recovered()
            out.append(self._item(frame, decoded, print_))
            return out
        known = self._seen.get(seq, cursor)
        if known in (print_, ANY):
            self.stats.duplicates += 1
            return out
        if self._follow:  # the relay told us it is behind: its stream from here on is the one to follow
            log.info("following %s from seq %d (cursor was %d)", self.name, seq, cursor)
            self._seen.clear()
            self.cursor = seq
            self._seen.add(seq, print_)
            self._recovered()
            out.append(self._item(frame, decoded, print_))
            return out
        if known is not None or cursor - seq >= self.reset_window or (first and self._asked is not None):
            self._held = (frame, decoded, print_, known is not None)  # a restart, or a stray: the next frame says
            return out
        self._anomaly("late", "relay %s sent seq %d after %d (late; kept, counted as out of order)", seq, cursor)
        self.stats.out_of_order += 1
        self._seen.add(seq, print_)
        out.append(self._item(frame, decoded, print_))
        return out

    def _item(self, frame: Any, decoded: Decoded, print_: int) -> tuple[Any, Sequenced]:
        """A frame handed on (each exactly once): ``frames`` counts these by type, so frames + duplicates is what
        the relay sent (``#info`` frames are counted where they are read, and by name in ``info``)."""
        assert self.cursor is not None
        self.stats.frames[decoded.type] += 1
        return frame, Sequenced.of(decoded, self.cursor, print_)

    def _advance(self, seq: int, print_: int) -> None:
        """Take a frame above the cursor (or the first one): count a jump over missing seqs, move the cursor."""
        if self.cursor is not None and seq > self.cursor + 1:
            self.stats.gaps += 1
            self.stats.gap_frames += seq - self.cursor - 1
            log.debug("seq gap on %s: %d after %d", self.name, seq, self.cursor)
        self.cursor = seq
        self._seen.add(seq, print_)

    def _restart(
        self, held: tuple[Any, Decoded, int, bool], frame: Any, decoded: Decoded, print_: int
    ) -> list[tuple[Any, Sequenced]]:
        """The frame after a held one continues a new, lower sequence: the relay restarted its own. Follow it."""
        held_frame, held_decoded, held_print, _ = held
        self.stats.resets += 1
        self.last_anomaly = time.monotonic()
        log.warning(
            "relay %s restarted its sequence: seq %d after cursor %s; following the new stream",
            self.name,
            held_decoded.seq,
            self.cursor,
        )
        self._seen.clear()
        self.cursor = held_decoded.seq
        self._seen.add(held_decoded.seq, held_print)
        first = self._item(held_frame, held_decoded, held_print)
        self._advance(decoded.seq, print_)
        self._recovered()
        return [first, self._item(frame, decoded, print_)]

    def _stray(self, frame: Any, decoded: Decoded, print_: int, seen: bool) -> list[tuple[Any, Sequenced]]:
        """A held frame that no continuation confirmed. Its seq seen before: a re-send with other content (a
        duplicate). Not seen: an old frame we do not have, kept as out of order; the cursor stays."""
        assert self.cursor is not None
        if seen:
            self.stats.duplicates += 1
            self._once(
                "stray_seen",
                "relay %s re-sent seq %d (cursor %d) with other content: dropped as a duplicate",
                decoded.seq,
                self.cursor,
            )
            return []
        self.stats.out_of_order += 1
        self._anomaly(
            "stray",
            "relay %s sent seq %d below cursor %d, not followed by more: kept as out of order",
            decoded.seq,
            self.cursor,
        )
        if self.cursor - decoded.seq < self.reset_window:  # farther back it would evict a recent seq's slot
            self._seen.add(decoded.seq, print_)
        return [self._item(frame, decoded, print_)]

    def _recovered(self) -> None:
        self._follow = False
        self.recovering = ""

    def _anomaly(self, kind: str, message: str, *args: object) -> None:
        self.last_anomaly = time.monotonic()
        self._once(kind, message, *args)

    def _once(self, kind: str, message: str, *args: object) -> None:
        self._warn.log(kind, message, self.name, *args)

    def count_error(self, reason: str, detail: str) -> None:
        self._warn.skipped(self.stats.errors, reason, detail, "an undecodable frame")
