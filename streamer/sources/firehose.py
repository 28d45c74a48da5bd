"""The live source: raw frames from a relay's ``com.atproto.sync.subscribeRepos`` websocket, resumable and never fatal.

Why a thin client over ``websockets`` instead of the SDK's firehose client: on the hot path every frame is decoded
once, by :func:`streamer.core.frames.decode_frame` (libipld, no pydantic models), and the raw bytes are kept for the
archive. The connection handling follows the SDK's (``atproto_subscription``): reconnect on network errors,
exponential backoff with jitter, a generous ``max_size``.

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
* :meth:`FirehoseSource.items` yields ``(frame, decoded)`` so the ingest stage can reuse the decoding; iterating the
  source itself yields the raw bytes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

from streamer.core.frames import MAX_FRAME_BYTES, Decoded, decode_frame
from streamer.core.seqs import ANY, RESET_WINDOW, SeenSeqs, Sequenced, fingerprint

log = logging.getLogger(__name__)

DEFAULT_RELAY = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
# Well above the protocol's 5 MiB frame limit: an oversize frame should reach decode_frame and be counted as
# "too_big", not make websockets close the connection (which would re-send the same frame on every reconnect).
CLIENT_MAX_SIZE = 16 * 1024 * 1024
# Connection failures worth a retry; anything else (a bad URL, a bug) propagates.
RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)
# How long ``anomalous`` stays true after a reset or an out-of-order frame: long enough for a scrape to see it.
ANOMALY_HOLD_S = 60.0


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


def backoff_delay(streak: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before reconnecting after ``streak`` connections in a row delivered nothing (0 after one that did):
    ``base · 2^streak`` capped at ``maximum``, with "equal jitter" (half fixed, half random) so many clients cut off
    together do not come back in lockstep, yet none retries sooner than half the nominal delay."""
    nominal = min(maximum, base * 2 ** min(streak, 32))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


@dataclass
class LiveStats:
    """Counters for the metrics endpoint. ``frames``: frames that decoded, by type (duplicates and ``#info``
    included); ``errors``: frames that did not, by reason; ``relay_errors``: error frames by name; ``info``:
    ``#info`` frames by name; ``disconnects``: why connections ended. ``gaps``: seq jumps of more than one,
    ``gap_frames``: the seqs jumped over; ``out_of_order``: frames below the cursor not seen before, yielded;
    ``resets``: relay sequence restarts followed (``FutureCursor`` ones included)."""

    connects: int = 0
    reconnects: int = 0
    yielded: int = 0
    duplicates: int = 0
    gaps: int = 0
    gap_frames: int = 0
    out_of_order: int = 0
    resets: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    relay_errors: Counter[str] = field(default_factory=Counter)
    info: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "reconnects": self.reconnects,
            "yielded": self.yielded,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "gap_frames": self.gap_frames,
            "out_of_order": self.out_of_order,
            "resets": self.resets,
            "frames": dict(self.frames),
            "errors": dict(self.errors),
            "relay_errors": dict(self.relay_errors),
            "info": dict(self.info),
            "disconnects": dict(self.disconnects),
        }


class FirehoseSource:
    """Async iterator over the raw frames of a relay, resuming from ``cursor`` across reconnects.

    ``backoff_base``/``backoff_max``: reconnect delay bounds in seconds. ``max_retries``: see the module doc.
    ``stop``: an event that ends the iteration cleanly when set (also :meth:`stop`). ``idle_timeout``: reconnect
    when nothing arrived for that long (the live firehose is never quiet for seconds; a local relay at its end is).
    ``reset_window``: how far below the cursor a frame must be to mean a restarted relay sequence, and how many
    seqs back re-sends are recognised. ``anomaly_hold``: how long ``anomalous`` stays true. Use as an async context
    manager so the connection is closed when the consumer stops early.
    """

    def __init__(
        self,
        url: str = DEFAULT_RELAY,
        *,
        cursor: int | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retries: int | None = None,
        stop: asyncio.Event | None = None,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_size: int = CLIENT_MAX_SIZE,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        records: bool = False,
        seed: int | None = None,
        reset_window: int = RESET_WINDOW,
        anomaly_hold: float = ANOMALY_HOLD_S,
        seen: SeenSeqs | None = None,
    ) -> None:
        subscribe_url(url)  # fail now on a malformed URL, not at the first connection
        self.url = url
        self.cursor = cursor
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.max_retries = max_retries
        self.idle_timeout, self.open_timeout, self.close_timeout = idle_timeout, open_timeout, close_timeout
        self.max_size, self.max_frame_bytes, self.records = max_size, max_frame_bytes, records
        self.stats = LiveStats()
        self._stop = stop if stop is not None else asyncio.Event()
        self._rng = random.Random(seed)
        self._gens: list[Any] = []
        self._logged: set[str] = set()
        self.reset_window, self.anomaly_hold = reset_window, anomaly_hold
        self.recovering = ""  # why the source is recovering from a relay reset; "" when it is not
        self.last_anomaly = -math.inf  # time.monotonic() of the last reset or out-of-order frame
        # ``seen``: the ring a checkpoint kept with ``cursor``, so that frames the state already holds are known as
        # re-sends after a restart too (a relay that ignores the cursor), not taken for a restarted sequence
        self._seen = seen.copy() if seen is not None and seen.window == reset_window else SeenSeqs(reset_window)
        self._follow = False  # after FutureCursor: connect without a cursor and take the relay's stream as it is
        self._asked: int | None = None  # the cursor the open connection asked for
        self._first = True  # no frame with a seq on the open connection yet
        self._held: tuple[bytes, Decoded, int, bool] | None = None  # (frame, decoded, fingerprint, seq was seen)

    # -- public API ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the iteration: the open connection is closed and the iterator finishes after the current frame."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def anomalous(self) -> bool:
        """True for ``anomaly_hold`` seconds after a relay reset, a FutureCursor or an out-of-order frame."""
        return time.monotonic() - self.last_anomaly < self.anomaly_hold

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._track(self._raw())

    def items(self) -> AsyncIterator[tuple[bytes, Sequenced]]:
        """``(raw frame, decoded)`` pairs: the decoding done here, reusable downstream, with the cursor after each
        frame (:class:`streamer.core.seqs.Sequenced`)."""
        return self._track(self._items())

    def _track(self, gen: Any) -> Any:
        self._gens = [g for g in self._gens if g.ag_frame is not None]  # forget finished ones
        self._gens.append(gen)
        return gen

    async def aclose(self) -> None:
        """Stop and close every iterator still open (and with it its connection)."""
        self.stop()
        gens, self._gens = self._gens, []
        for gen in gens:
            if not gen.ag_running:  # a running one is waiting on its socket: the stop event ends it
                await gen.aclose()

    async def __aenter__(self) -> FirehoseSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the loop -----------------------------------------------------------------------------------------------

    async def _raw(self) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(self._items()) as items:
            async for frame, _ in items:
                yield frame

    async def _items(self) -> AsyncIterator[tuple[bytes, Sequenced]]:
        streak = 0  # connections in a row that delivered nothing new
        first = True
        while not self._stop.is_set():
            if not first:
                if self.max_retries is not None and streak > self.max_retries:
                    raise RelayUnavailable(f"{self.url}: {streak} connection(s) in a row delivered nothing new")
                delay = backoff_delay(streak, self.backoff_base, self.backoff_max, self._rng)
                log.info("reconnecting to %s in %.2fs (cursor %s)", self.url, delay, self.cursor)
                if await self._sleep_unless_stopped(delay):
                    return
                self.stats.reconnects += 1
            first = False
            progressed = False
            reason = "closed"
            self._asked = None if self._follow else self.cursor
            self._first = True
            url = subscribe_url(self.url, self._asked)
            try:
                async with connect(
                    url,
                    max_size=self.max_size,
                    open_timeout=self.open_timeout,
                    close_timeout=self.close_timeout,
                ) as ws:
                    self.stats.connects += 1
                    log.info("connected to %s", url)
                    watcher = asyncio.create_task(self._close_on_stop(ws))
                    try:
                        while not self._stop.is_set():  # checked per frame: stop() takes effect at once
                            message = await self._recv(ws)
                            if message is None:
                                reason = "idle_timeout"
                                break
                            if isinstance(message, str):
                                self._count_error("text_message", "a text message, not a binary frame")
                                continue
                            decoded = self._decode(message)
                            if decoded.error == "error_frame":
                                reason = "error_frame"
                                self._relay_error(decoded.detail)
                                break
                            for item in self._accept(message, decoded):
                                progressed = True
                                self.stats.yielded += 1
                                yield item
                    finally:
                        watcher.cancel()
            except ConnectionClosedOK:
                pass
            except RETRYABLE as exc:
                reason = type(exc).__name__
                log.warning("connection to %s lost: %s: %s", self.url, reason, exc)
            if self._stop.is_set():
                return  # a held frame is dropped with the cursor before it: a resume fetches it again
            if self._held is not None:  # the connection ended before the frame after it: nothing confirms a reset
                for item in self._stray(*self._held):
                    progressed = True
                    self.stats.yielded += 1
                    yield item
                self._held = None
            self.stats.disconnects[reason] += 1
            streak = 0 if progressed else streak + 1

    async def _recv(self, ws: ClientConnection) -> bytes | str | None:
        """The next message; None after ``idle_timeout`` of silence. A normal close raises ConnectionClosedOK."""
        if self.idle_timeout is None:
            return await ws.recv()
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await ws.recv()
        except TimeoutError:
            return None

    def _decode(self, frame: bytes) -> Decoded:
        """decode_frame promises not to raise on bad input; should a malformed frame find a case it misses, the
        frame is counted and skipped here rather than ending the live source."""
        try:
            return decode_frame(frame, records=self.records, max_bytes=self.max_frame_bytes)
        except Exception as exc:
            if "decoder_exception" not in self._logged:
                log.exception("decode_frame raised on a %d-byte frame", len(frame))
            return Decoded(error="decoder_exception", detail=f"{type(exc).__name__}: {exc}"[:200])

    def _accept(self, frame: bytes, decoded: Decoded) -> list[tuple[bytes, Sequenced]]:
        """Count one frame and judge its seq (see the module doc). Returns what to yield now: nothing, this frame,
        or a frame held back before it."""
        if decoded.error:
            self._count_error(decoded.error, decoded.detail)
            if decoded.seq >= 0:
                self._first = False
                if self.cursor is None or decoded.seq > self.cursor:
                    self._advance(decoded.seq, ANY)
            return []
        self.stats.frames[decoded.type] += 1
        if decoded.type == "#info":
            name = str((decoded.info or {}).get("name", ""))
            self.stats.info[name] += 1
            log.warning("relay info %s: %s", name, (decoded.info or {}).get("message", ""))
            return []
        if decoded.seq < 0:
            self._count_error("no_seq", f"{decoded.type} frame without a seq")
            return []
        first, self._first = self._first, False
        seq, print_ = decoded.seq, fingerprint(decoded)
        out: list[tuple[bytes, Sequenced]] = []
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
            log.info("following %s from seq %d (cursor was %d)", self.url, seq, cursor)
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

    def _item(self, frame: bytes, decoded: Decoded, print_: int) -> tuple[bytes, Sequenced]:
        assert self.cursor is not None
        return frame, Sequenced.of(decoded, self.cursor, print_)

    def _advance(self, seq: int, print_: int) -> None:
        """Take a frame above the cursor (or the first one): count a jump over missing seqs, move the cursor."""
        if self.cursor is not None and seq > self.cursor + 1:
            self.stats.gaps += 1
            self.stats.gap_frames += seq - self.cursor - 1
            log.debug("seq gap on %s: %d after %d", self.url, seq, self.cursor)
        self.cursor = seq
        self._seen.add(seq, print_)

    def _restart(
        self, held: tuple[bytes, Decoded, int, bool], frame: bytes, decoded: Decoded, print_: int
    ) -> list[tuple[bytes, Sequenced]]:
        """The frame after a held one continues a new, lower sequence: the relay restarted its own. Follow it."""
        held_frame, held_decoded, held_print, _ = held
        self.stats.resets += 1
        self.last_anomaly = time.monotonic()
        log.warning(
            "relay %s restarted its sequence: seq %d after cursor %s; following the new stream",
            self.url,
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

    def _stray(self, frame: bytes, decoded: Decoded, print_: int, seen: bool) -> list[tuple[bytes, Sequenced]]:
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
        """The first of each kind is worth a warning; a relay doing it thousands of times must not flood the log."""
        level = logging.DEBUG if kind in self._logged else logging.WARNING
        self._logged.add(kind)
        log.log(level, message, self.url, *args)

    def _count_error(self, reason: str, detail: str) -> None:
        self.stats.errors[reason] += 1
        # The first of each kind is worth a warning; a relay sending thousands must not flood the log.
        level = logging.DEBUG if reason in self._logged else logging.WARNING
        self._logged.add(reason)
        log.log(level, "skipped an undecodable frame (%s): %s", reason, detail)

    def _relay_error(self, detail: str) -> None:
        name = detail.split(":", 1)[0].strip().strip("'\"") or "unknown"  # the decoder may quote it (a repr)
        self.stats.relay_errors[name] += 1
        if name == "FutureCursor" and self._asked is not None:
            # The relay's head is below the cursor we asked for: it lost its tail or restarted its sequence. Asking
            # again would get the same answer until it passes our cursor, and what it numbers in between would be
            # skipped: follow it from where it is now instead.
            self.stats.resets += 1
            self._follow = True
            self.last_anomaly = time.monotonic()
            self.recovering = (
                f"relay {self.url} restarted its sequence below our cursor {self._asked} (FutureCursor); "
                "reconnecting from its current head"
            )
            log.warning(
                "relay %s restarted its sequence below our cursor %s (FutureCursor); reconnecting without a cursor, "
                "from its current head",
                self.url,
                self._asked,
            )
            return
        log.warning("relay sent an error frame: %s (cursor %s)", detail, self.cursor)

    async def _close_on_stop(self, ws: ClientConnection) -> None:
        await self._stop.wait()
        await ws.close()

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep, or return early when stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()
