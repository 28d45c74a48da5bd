"""The live source: raw frames from a relay's ``com.atproto.sync.subscribeRepos`` websocket, resumable and never fatal.

Why a thin client over ``websockets`` instead of the SDK's firehose client: on the hot path every frame is decoded
once, by :func:`streamer.core.decode.decode_item` (libipld, no pydantic models), and the raw bytes are kept for the
archive. The connection is kept by the websocket sources' one reconnect loop
(:class:`streamer.sources.websocket.WebsocketSource`), which follows the SDK's (``atproto_subscription``): reconnect
on network errors, exponential backoff with jitter, a generous ``max_size``; this module judges the frames.

Guarantees and decisions:

* ``cursor`` is the highest seq consumed in the relay's current sequence; every (re)connection asks for
  ``?cursor=<cursor>``. Set it before iterating to resume from a checkpoint. This source is the one place where
  seqs are judged (it alone knows what it has seen and where a connection began), frame by frame:

  - above the cursor: new. A jump of more than one is counted as a gap (``gaps``, ``gap_frames``); the public
    relay's seqs are not dense, so a gap is a count, never a refusal.
  - at or below it, and seen before with the same content (remembered for ``reset_window`` seqs, see
    :class:`streamer.core.seqs.SeenSeqs`): a re-send, dropped and counted in ``duplicates``.
  - below it, within the window, not seen: a late frame, yielded and counted in ``out_of_order``.
  - far below it (``reset_window`` or more), a seen seq with other content, or the first frame of a connection
    below the cursor it asked for: the relay may have restarted its sequence. The frame is held until the next
    one: if that continues the new sequence (still below the old cursor, not a re-send), the restart is confirmed:
    one warning line, ``resets`` counted, the cursor follows the new sequence and both frames are yielded. If not,
    the held frame was a stray: dropped as a duplicate when its seq was seen, else yielded as out of order. One odd
    frame (hostile input is data) thus never moves the cursor back, so it cannot make a later reconnect re-fetch
    and double what was applied.
  - ``FutureCursor`` from the relay (its head is below our cursor: it lost its tail or restarted): one warning
    line, counted as a reset, and the next connection asks for no cursor, following the relay from where it now
    is; the first frame there that is not a re-send becomes the cursor.

  Every frame received is therefore yielded once or counted: as a duplicate, as undecodable (``errors``) or as
  ``#info``; only a frame held when the source is stopped is neither, and the cursor before it fetches it again.
  :meth:`items` hands each frame on as a :class:`streamer.core.seqs.Sequenced` carrying the cursor after it.
  ``recovering`` names the reason while a reset is being recovered from (readiness says so), ``anomalous`` is
  true for ``anomaly_hold`` seconds after a reset or out-of-order frame.
* Only frames that decode are yielded: ``#commit``, ``#identity``, ``#account``, ``#sync``. A frame that does not
  decode is counted by ``decode_frame``'s reason and skipped; when its seq was still readable (``unknown_type``,
  ``bad_body``, ``bad_car``) the cursor moves past it, so a resume neither re-fetches nor re-counts it (and a frame
  at that seq later is taken as its re-send). Downstream stages therefore see only frames they can use, and the
  archive written by ``record`` holds only those.
* ``#info`` frames (``OutdatedCursor``: the relay no longer holds everything after our cursor) are logged, counted
  by name and not yielded: they are about the connection, not the network.
* Error frames (``FutureCursor``, ``ConsumerTooSlow``, ...) are logged and counted by name; the connection is
  dropped and re-opened with backoff, keeping the cursor (``FutureCursor``: see above). ``max_retries`` bounds how
  often in a row a connection may deliver nothing new before :class:`RelayUnavailable` is raised (None: retry
  forever, as a daemon should).
* Iterating the source yields the decoded items (:class:`streamer.core.seqs.Sequenced`: the Source protocol of
  :mod:`streamer.sources.base`); :meth:`FirehoseSource.items` yields ``(frame, decoded)`` pairs (the recorder keeps
  the bytes) and :meth:`FirehoseSource.frames` the raw bytes only. The seq judgement is
  :class:`streamer.core.seqs.SeqJudge`'s, the same an archive replay uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Unpack
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from streamer.core.decode import decode_item
from streamer.core.frames import MAX_FRAME_BYTES, Decoded
from streamer.core.seqs import RESET_WINDOW, SeenSeqs, SeqJudge, Sequenced
from streamer.sources.endpoints import DEFAULT_RELAY, SUBSCRIBE_PATH
from streamer.sources.websocket import Knobs, Taken, WebsocketSource

# How long ``anomalous`` stays true after a reset or an out-of-order frame: long enough for a scrape to see it.
ANOMALY_HOLD_S = 60.0
_NOTHING: Taken[tuple[bytes, Sequenced]] = Taken()


class RelayUnavailable(ConnectionError):
    """``max_retries`` consecutive connections delivered nothing new."""


def subscribe_url(base: str, cursor: int | None = None) -> str:
    """The ``subscribeRepos`` URL for a relay given by its base (``wss://bsky.network``) or full endpoint URL; a
    negative cursor means none (``-1`` is how a fresh checkpoint says "no position yet")."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a websocket URL: {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(SUBSCRIBE_PATH):
        path += SUBSCRIBE_PATH
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "cursor"]
    if cursor is not None and cursor >= 0:
        query.append(("cursor", str(cursor)))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


class FirehoseSource(WebsocketSource[tuple[bytes, Sequenced]]):
    """Async iterator over the raw frames of a relay, resuming from ``cursor`` across reconnects.

    ``backoff``: reconnect delays. ``max_retries``: see the module doc.
    ``stop``: an event that ends the iteration cleanly when set (also :meth:`stop`). ``idle_timeout``: reconnect
    when nothing arrived for that long (the live firehose is never quiet for seconds; a local relay at its end is).
    ``reset_window``: how far below the cursor a frame must be to mean a restarted relay sequence, and how many
    seqs back re-sends are recognised. ``anomaly_hold``: how long ``anomalous`` stays true. Use as an async context
    manager so the connection is closed when the consumer stops early.
    """

    unavailable = RelayUnavailable

    def __init__(
        self,
        url: str = DEFAULT_RELAY,
        *,
        cursor: int | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        records: bool = False,
        reset_window: int = RESET_WINDOW,
        anomaly_hold: float = ANOMALY_HOLD_S,
        seen: SeenSeqs | None = None,
        **knobs: Unpack[Knobs],
    ) -> None:
        subscribe_url(url)  # fail now on a malformed URL, not at the first connection
        super().__init__(url, text=True, **knobs)
        self.max_frame_bytes, self.records = max_frame_bytes, records
        self.anomaly_hold = anomaly_hold
        self._skip_past: int | None = None  # after frames over max_size: resume past this seq, not at the cursor
        # the seq judge; ``seen`` is the ring a checkpoint kept with ``cursor``, so that frames the state already
        # holds are known as re-sends after a restart too (a relay that ignores the cursor)
        self.seq = SeqJudge(self.stats, cursor=cursor, seen=seen, reset_window=reset_window, name=url)

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        return self.seq.cursor

    @cursor.setter
    def cursor(self, value: int | None) -> None:
        self.seq.cursor = value

    @property
    def recovering(self) -> str:
        """Why the source is recovering from a relay reset (readiness says so); "" when it is not."""
        return self.seq.recovering

    @property
    def last_anomaly(self) -> float:
        return self.seq.last_anomaly

    @property
    def anomalous(self) -> bool:
        """True for ``anomaly_hold`` seconds after a relay reset, a FutureCursor or an out-of-order frame."""
        return self.seq.anomalous(self.anomaly_hold)

    def __aiter__(self) -> AsyncIterator[Sequenced]:
        """The Source protocol: decoded items, each with the cursor after it."""
        return self._track(self._decoded())

    def frames(self) -> AsyncIterator[bytes]:
        """The raw frames only (what a recorder or a proxy wants)."""
        return self._track(self._raw())

    def items(self) -> AsyncIterator[tuple[bytes, Sequenced]]:
        """``(raw frame, decoded)`` pairs: the decoding done here, reusable downstream, with the cursor after each
        frame (:class:`streamer.core.seqs.Sequenced`)."""
        return self._track(self._items())

    # -- the loop -----------------------------------------------------------------------------------------------

    async def _decoded(self) -> AsyncGenerator[Sequenced, None]:
        async with contextlib.aclosing(self._items()) as items:
            async for _, item in items:
                yield item

    async def _raw(self) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(self._items()) as items:
            async for frame, _ in items:
                yield frame

    def _items(self) -> AsyncGenerator[tuple[bytes, Sequenced], None]:
        return self._connections()

    # -- the hooks of the reconnect loop (streamer.sources.websocket) ---------------------------------------------

    def _connect_url(self) -> str:
        asked = None if self.seq.following else self.cursor
        if self._skip_past is not None and asked is not None and self._skip_past > asked:
            asked = self._skip_past
        self.seq.opened(asked)
        return subscribe_url(self.url, asked)

    def _take(self, message: bytes | str) -> Taken[tuple[bytes, Sequenced]]:
        if isinstance(message, str):
            self.seq.count_error("text_message", "a text message, not a binary frame")
            return _NOTHING
        decoded = self._decode(message)
        if decoded.error == "error_frame":
            self._relay_error(decoded.detail)
            return Taken(end="error_frame")
        return Taken(self.seq.judge(message, decoded))

    def _too_big(self, progressed: bool) -> bool:
        # a frame over max_size: websockets fails the connection before its seq can be read, and resuming at the
        # cursor would fetch the same frame for ever; step past one more seq each time it happens without progress
        # (relay seqs are dense, so one step is the usual case)
        current = self.cursor if self.cursor is not None else -1
        if self._skip_past is None or progressed or current >= self._skip_past:
            self._skip_past = current + 1
        else:
            self._skip_past += 1
        self.seq.count_error(
            "too_big",
            f"a frame over the websocket limit of {self.connection.max_size:,} bytes after seq {current}: skipped, "
            f"resuming after seq {self._skip_past}",
        )
        return True  # moving past it is progress: reconnect at once

    def _ended(self, stopped: bool) -> Iterable[tuple[bytes, Sequenced]]:
        if stopped:
            self.seq.drop_held()  # dropped with the cursor before it: a resume fetches it again
            return ()
        return self.seq.flush()  # the connection ended before the frame after a held one

    def _decode(self, frame: bytes) -> Decoded:
        return decode_item(frame, records=self.records, max_bytes=self.max_frame_bytes)

    def _relay_error(self, detail: str) -> None:
        name = detail.split(":", 1)[0].strip().strip("'\"") or "unknown"  # the decoder may quote it (a repr)
        self.stats.relay_errors[name] += 1
        asked = self.seq.asked
        if name == "FutureCursor" and asked is not None:
            # The relay's head is below the cursor we asked for: it lost its tail or restarted its sequence. Asking
            # again would get the same answer until it passes our cursor, and what it numbers in between would be
            # skipped: follow it from where it is now instead.
            self.seq.follow_head(
                f"relay {self.url} restarted its sequence below our cursor {asked} (FutureCursor); "
                "reconnecting from its current head"
            )
            self._log.warning(
                "relay %s restarted its sequence below our cursor %s (FutureCursor); reconnecting without a cursor, "
                "from its current head",
                self.url,
                asked,
            )
            return
        self._log.warning(
            "relay sent an error frame: %s (cursor %s)", detail, "none yet" if self.cursor is None else self.cursor
        )
