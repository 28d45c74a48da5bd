"""The live source: raw frames from a relay's ``com.atproto.sync.subscribeRepos`` websocket, resumable and never fatal.

Why a thin client over ``websockets`` instead of the SDK's firehose client: on the hot path every frame is decoded
once, by :func:`streamer.frames.decode_frame` (libipld, no pydantic models), and the raw bytes are kept for the
archive. The connection handling follows the SDK's (``atproto_subscription``): reconnect on network errors,
exponential backoff with jitter, a generous ``max_size``.

Guarantees and decisions:

* ``cursor`` is the seq of the last frame consumed; every (re)connection asks for ``?cursor=<cursor>``, and any
  frame with ``seq <= cursor`` is dropped (counted as a duplicate), so a consumer never sees a frame twice across
  reconnects and misses none the relay still holds. Set ``cursor`` before iterating to resume from a checkpoint.
* Only frames that decode are yielded: ``#commit``, ``#identity``, ``#account``, ``#sync``. A frame that does not
  decode is counted by ``decode_frame``'s reason and skipped; when its seq was still readable (``unknown_type``,
  ``bad_body``, ``bad_car``) the cursor moves past it, so a resume neither re-fetches nor re-counts it. Downstream
  stages therefore see only frames they can use, and the archive written by ``record`` holds only those.
* ``#info`` frames (``OutdatedCursor``: the relay no longer holds everything after our cursor) are logged, counted
  by name and not yielded: they are about the connection, not the network.
* Error frames (``FutureCursor``, ``ConsumerTooSlow``, ...) are logged and counted by name; the connection is
  dropped and re-opened with backoff, keeping the cursor. ``max_retries`` bounds how often in a row a connection
  may deliver nothing new before :class:`RelayUnavailable` is raised (None: retry forever, as a daemon should).
* :meth:`LiveSource.items` yields ``(frame, decoded)`` so the ingest stage can reuse the decoding; iterating the
  source itself yields the raw bytes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import typer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

from streamer.archive import ArchiveWriter
from streamer.frames import MAX_FRAME_BYTES, Decoded, decode_frame

log = logging.getLogger(__name__)

DEFAULT_RELAY = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
# Well above the protocol's 5 MiB frame limit: an oversize frame should reach decode_frame and be counted as
# "too_big", not make websockets close the connection (which would re-send the same frame on every reconnect).
CLIENT_MAX_SIZE = 16 * 1024 * 1024
# Connection failures worth a retry; anything else (a bad URL, a bug) propagates.
RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


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
    ``#info`` frames by name; ``disconnects``: why connections ended."""

    connects: int = 0
    reconnects: int = 0
    yielded: int = 0
    duplicates: int = 0
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
            "frames": dict(self.frames),
            "errors": dict(self.errors),
            "relay_errors": dict(self.relay_errors),
            "info": dict(self.info),
            "disconnects": dict(self.disconnects),
        }


class LiveSource:
    """Async iterator over the raw frames of a relay, resuming from ``cursor`` across reconnects.

    ``backoff_base``/``backoff_max``: reconnect delay bounds in seconds. ``max_retries``: see the module doc.
    ``stop``: an event that ends the iteration cleanly when set (also :meth:`stop`). ``idle_timeout``: reconnect
    when nothing arrived for that long (the live firehose is never quiet for seconds; a local relay at its end is).
    Use as an async context manager so the connection is closed when the consumer stops early.
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

    # -- public API ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the iteration: the open connection is closed and the iterator finishes after the current frame."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._track(self._raw())

    def items(self) -> AsyncIterator[tuple[bytes, Decoded]]:
        """``(raw frame, decoded)`` pairs: the decoding done here, reusable downstream."""
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

    async def __aenter__(self) -> LiveSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the loop -----------------------------------------------------------------------------------------------

    async def _raw(self) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(self._items()) as items:
            async for frame, _ in items:
                yield frame

    async def _items(self) -> AsyncIterator[tuple[bytes, Decoded]]:
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
            url = subscribe_url(self.url, self.cursor)
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
                            if self._accept(decoded):
                                progressed = True
                                self.stats.yielded += 1
                                yield message, decoded
                    finally:
                        watcher.cancel()
            except ConnectionClosedOK:
                pass
            except RETRYABLE as exc:
                reason = type(exc).__name__
                log.warning("connection to %s lost: %s: %s", self.url, reason, exc)
            if self._stop.is_set():
                return
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

    def _accept(self, decoded: Decoded) -> bool:
        """Count one frame; True when it is new and usable (to be yielded). Moves the cursor past it."""
        if decoded.error:
            self._count_error(decoded.error, decoded.detail)
            self._advance(decoded.seq)
            return False
        self.stats.frames[decoded.type] += 1
        if decoded.type == "#info":
            name = str((decoded.info or {}).get("name", ""))
            self.stats.info[name] += 1
            log.warning("relay info %s: %s", name, (decoded.info or {}).get("message", ""))
            return False
        if decoded.seq < 0:
            self._count_error("no_seq", f"{decoded.type} frame without a seq")
            return False
        if self.cursor is not None and decoded.seq <= self.cursor:
            self.stats.duplicates += 1
            return False
        self.cursor = decoded.seq
        return True

    def _advance(self, seq: int) -> None:
        if seq >= 0 and (self.cursor is None or seq > self.cursor):
            self.cursor = seq

    def _count_error(self, reason: str, detail: str) -> None:
        self.stats.errors[reason] += 1
        # The first of each kind is worth a warning; a relay sending thousands must not flood the log.
        level = logging.DEBUG if reason in self._logged else logging.WARNING
        self._logged.add(reason)
        log.log(level, "skipped an undecodable frame (%s): %s", reason, detail)

    def _relay_error(self, detail: str) -> None:
        name = detail.split(":", 1)[0].strip() or "unknown"
        self.stats.relay_errors[name] += 1
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


# -- record ---------------------------------------------------------------------------------------------------


async def record(
    source: LiveSource,
    writer: ArchiveWriter,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: float = 5.0,
) -> int:
    """Write every frame of ``source`` to ``writer`` until it stops or ``limit`` frames; returns the count. The
    writer is also flushed every ``progress_every`` seconds, so a crash loses seconds of a quiet stream, not up to
    ``flush_every`` frames held in memory."""
    count = 0

    async def tick() -> None:  # on the same loop as the writes, so never concurrent with write()
        while True:
            await asyncio.sleep(progress_every)
            writer.flush()
            if progress is not None:
                progress(count)

    ticker = asyncio.create_task(tick())
    try:
        async with contextlib.aclosing(source.items()) as items:
            async for frame, decoded in items:
                writer.write(frame, decoded.seq)
                count += 1
                if limit is not None and count >= limit:
                    break
    finally:
        ticker.cancel()
    writer.flush()
    return count


async def _record_main(relay: str, out: Path, cursor: int | None, limit: int | None) -> tuple[int, LiveSource]:
    source = LiveSource(relay, cursor=cursor)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, source.stop)  # first Ctrl-C: finish the frame, flush, close the file
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread (tests) or no signals here: KeyboardInterrupt still closes the writer
    start = time.monotonic()

    def progress(count: int) -> None:
        rate = count / max(time.monotonic() - start, 1e-9)
        typer.echo(
            f"record: {count:,} frames ({rate:,.0f}/s), cursor {source.cursor}, "
            f"reconnects {source.stats.reconnects}, undecodable {dict(source.stats.errors)}",
            err=True,
        )

    try:
        with ArchiveWriter(out, source=relay) as writer:
            count = await record(source, writer, limit=limit, progress=progress)
        typer.echo(f"record: wrote {count:,} frames to {', '.join(map(str, writer.paths)) or '(none)'}", err=True)
        return count, source
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await source.aclose()


def record_command(
    relay: Annotated[str, typer.Option(help="Relay base URL (or full subscribeRepos URL).")] = DEFAULT_RELAY,
    out: Annotated[Path, typer.Option(help="Directory for the archive files.")] = Path("archive"),
    cursor: Annotated[int | None, typer.Option(help="Resume after this seq (default: from now on).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
) -> None:
    """Record raw frames from a relay's firehose into a .skyarch.zst archive until Ctrl-C or --limit."""
    try:
        _, source = asyncio.run(_record_main(relay, out, cursor, limit))
    except KeyboardInterrupt:
        typer.echo("record: interrupted; archive closed", err=True)
        return
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"record: resume with --cursor {source.cursor}; {source.stats.as_dict()}", err=True)
