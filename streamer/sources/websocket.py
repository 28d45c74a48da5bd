"""The one reconnect loop of the websocket sources: connect, read, count, back off, resume, stop.

A relay's firehose and a Jetstream differ in their protocol, not in how a connection is kept: both reconnect on
network errors with :class:`~streamer.core.backoff.Backoff` (its delays, and ``max_retries`` connections in a row
that deliver nothing new before giving up), both close a connection when stopped, both count a connection once, in
:class:`~streamer.sources.base.SourceStats`, from here: ``connects`` when one opens, ``disconnects[reason]`` when an
open one ends (``stopped`` when it was stopped), ``connect_failures[reason]`` for an attempt that never opened (it
ends no connection, so it must not make an open one look closed: ``SourceStats.connected`` is connects minus
disconnects), ``reconnects`` for each attempt after a wait. So what readiness and the metrics say of a connection
is the same for every source, and a new one cannot count it differently.

What differs is the :class:`WebsocketSource` subclass's, in six hooks:

* :meth:`~WebsocketSource._prepare`: what must be fetched before a connection (Jetstream v2's zstd dictionary);
* :meth:`~WebsocketSource._connect_url`: the URL of the next connection (the cursor to ask for, and whatever the
  source must remember of having asked for it);
* :meth:`~WebsocketSource._refused`: what a 4xx answer to the handshake means (a cursor too old, a dictionary
  retired, a filter refused): raise to give up, return to retry;
* :meth:`~WebsocketSource._take`: what one message yields, and whether it ends the connection (a relay's error
  frame does);
* :meth:`~WebsocketSource._too_big`: what to do when ``websockets`` failed the connection for a message over
  ``max_size`` (the same message would come again at the same cursor), and whether that counts as progress;
* :meth:`~WebsocketSource._ended`: what to hand on when a connection ended (a relay's frame held for a
  judgement), or to drop when the source was stopped.

``stop()`` ends an iteration after the current item (closing its connection) and ``aclose()`` closes every
iterator still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypedDict, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from streamer.core.backoff import Backoff
from streamer.core.source import SourceStats

T = TypeVar("T")
U = TypeVar("U")

# Well above the largest message a source accepts (5 MiB, the protocol's frame limit): an oversize message should
# reach the source's own check and be counted as "too_big", not make websockets close the connection (which would
# fetch the same message again on every reconnect).
CLIENT_MAX_SIZE = 16 * 1024 * 1024
RECONNECT = Backoff(1.0, 60.0)  # a websocket source's reconnect delays: 1 s after the first failure, up to a minute
# Connection failures worth a retry; anything else (a bad URL, a bug) propagates.
RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


def closed_for_size(exc: BaseException) -> bool:
    """Whether ``websockets`` failed the connection because a message was over its ``max_size`` (close code 1009,
    sent by this side): the message never reached the caller, and resuming at the same cursor fetches it again."""
    return isinstance(exc, ConnectionClosed) and exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG


@dataclass(frozen=True)
class Connection:
    """The knobs of one websocket connection: ``open_timeout`` (the handshake), ``close_timeout``, ``max_size``
    (the largest message ``websockets`` takes), ``idle_timeout`` (reconnect when nothing arrived for that long;
    None: wait for ever), and whether text messages come as ``str`` (``text``) or as bytes (a JSON source reads
    them as bytes, so a text message that is not UTF-8 is one bad message, not a failed connection)."""

    open_timeout: float = 10.0
    close_timeout: float = 2.0
    max_size: int = CLIENT_MAX_SIZE
    idle_timeout: float | None = None
    text: bool = True
    subprotocols: tuple[str, ...] = ()


class Knobs(TypedDict, total=False):
    """What every websocket source takes by keyword, beside what is its own: ``backoff`` and ``max_retries`` (the
    reconnect policy), ``stop`` (an event that ends the iteration), ``seed`` (the backoff's jitter), ``stats``
    (the :class:`SourceStats` to count into, shared with the dispatcher) and the :class:`Connection` knobs
    ``idle_timeout``, ``open_timeout``, ``close_timeout`` and ``max_size``; the defaults are
    :class:`WebsocketSource`'s. Written once, so a new source takes them all by adding ``**knobs``."""

    backoff: Backoff
    max_retries: int | None
    stop: asyncio.Event | None
    seed: int | None
    stats: SourceStats | None
    idle_timeout: float | None
    open_timeout: float
    close_timeout: float
    max_size: int


@dataclass(frozen=True)
class Taken(Generic[T]):
    """What one message gave: the ``items`` to hand on, and ``end``, a reason to close the connection ("" to go
    on)."""

    items: Sequence[T] = ()
    end: str = ""


class WebsocketSource(Generic[T]):
    """The loop of the module doc; subclasses name ``unavailable`` (raised after ``max_retries``) and fill the
    hooks. ``url`` names the server in log lines and errors; ``cursor`` is where the next connection resumes."""

    unavailable: ClassVar[type[ConnectionError]] = ConnectionError

    def __init__(
        self,
        url: str,
        *,
        text: bool,
        subprotocols: tuple[str, ...] = (),
        backoff: Backoff = RECONNECT,
        max_retries: int | None = None,
        stop: asyncio.Event | None = None,
        seed: int | None = None,
        stats: SourceStats | None = None,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_size: int = CLIENT_MAX_SIZE,
    ) -> None:
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be >= 0 (or None to retry forever)")
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.url = url
        self.connection = Connection(open_timeout, close_timeout, max_size, idle_timeout, text, subprotocols)
        self.backoff = backoff
        self.max_retries = max_retries
        self.stats = stats if stats is not None else SourceStats()
        self._stop = stop if stop is not None else asyncio.Event()
        self._gens: list[AsyncGenerator[Any, None]] = []
        self._rng = random.Random(seed)
        self._log = logging.getLogger(type(self).__module__)

    # -- what a subclass says -----------------------------------------------------------------------------------
    @property
    def cursor(self) -> int | None:
        raise NotImplementedError

    async def _prepare(self) -> None:
        """Before each connection attempt (after any wait)."""

    def _connect_url(self) -> str:
        raise NotImplementedError

    def _refused(self, status: int, body: bytes) -> None:
        """The server answered the handshake with a 4xx ``status`` and ``body``: raise to give up; by default it is
        retried like any failed connection."""

    def _take(self, message: bytes | str) -> Taken[T]:
        raise NotImplementedError

    def _too_big(self, progressed: bool) -> bool:
        """A message over ``max_size`` failed the connection: avoid it next time; True if that is progress."""
        return False

    def _ended(self, stopped: bool) -> Iterable[T]:
        """Items to hand on after a connection ended (none when ``stopped``)."""
        return ()

    # -- stopping -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End the iteration: the open connection is closed and the iterator finishes after the current item."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _track(self, gen: AsyncGenerator[U, None]) -> AsyncGenerator[U, None]:
        self._gens = [g for g in self._gens if getattr(g, "ag_frame", None) is not None]  # forget finished ones
        self._gens.append(gen)
        return gen

    async def aclose(self) -> None:
        """Stop and close every iterator still open (and with it its connection)."""
        self.stop()
        gens, self._gens = self._gens, []
        for gen in gens:
            if not getattr(gen, "ag_running", False):  # a running one is waiting on its socket: the stop event ends it
                await gen.aclose()

    async def __aenter__(self) -> WebsocketSource[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the loop -----------------------------------------------------------------------------------------------
    async def _connections(self) -> AsyncGenerator[T, None]:
        """Every item of every connection, until stopped or ``max_retries`` connections in a row gave nothing."""
        streak = 0  # connections in a row that delivered nothing new
        first = True
        while not self._stop.is_set():
            if not first and await self._wait_to_reconnect(streak):
                return
            first = False
            progressed = opened = False
            reason = "closed"
            conn = self.connection
            try:
                await self._prepare()
                url = self._connect_url()
                async with connect(
                    url,
                    max_size=conn.max_size,
                    open_timeout=conn.open_timeout,
                    close_timeout=conn.close_timeout,
                    subprotocols=[*conn.subprotocols] or None,  # type: ignore[list-item]
                ) as ws:
                    opened = True
                    self.stats.connects += 1
                    self._log.info("connected to %s", url)
                    watcher = asyncio.create_task(self._close_on_stop(ws))
                    try:
                        while not self._stop.is_set():  # checked per message: stop() takes effect at once
                            message = await self._recv(ws)
                            if message is None:
                                reason = "idle_timeout"
                                break
                            taken = self._take(message)
                            for item in taken.items:
                                progressed = True
                                self.stats.yielded += 1
                                yield item
                            if taken.end:
                                reason = taken.end
                                break
                    except GeneratorExit:  # the consumer is done: close normally (1000), not 1011 "internal error"
                        await ws.close()
                        raise
                    finally:
                        watcher.cancel()
            except ConnectionClosedOK:
                pass
            except RETRYABLE as exc:
                reason = type(exc).__name__
                if isinstance(exc, InvalidStatus) and 400 <= exc.response.status_code < 500:
                    reason = f"http_{exc.response.status_code}"
                    self._refused(exc.response.status_code, bytes(exc.response.body or b""))
                if closed_for_size(exc):
                    reason = "message_too_big"
                    progressed = self._too_big(progressed) or progressed
                elif opened:
                    self._log.warning("connection to %s lost: %s: %s", self.url, reason, exc)
                else:  # never connected: say so, and what the error was, not "lost"
                    self._log.warning("cannot connect to %s: %s: %s", self.url, reason, exc)
            except (GeneratorExit, asyncio.CancelledError):
                reason = "stopped"
                raise
            finally:
                if opened:
                    self.stats.disconnects["stopped" if self._stop.is_set() else reason] += 1
                elif reason != "closed":
                    self.stats.connect_failures[reason] += 1
            stopped = self._stop.is_set()
            for item in self._ended(stopped):
                progressed = True
                self.stats.yielded += 1
                yield item
            if stopped:
                return
            streak = 0 if progressed else streak + 1

    async def _recv(self, ws: ClientConnection) -> bytes | str | None:
        """The next message; None after ``idle_timeout`` of silence. A normal close raises ConnectionClosedOK."""
        decode = None if self.connection.text else False
        if self.connection.idle_timeout is None:
            return await ws.recv(decode=decode)
        try:
            async with asyncio.timeout(self.connection.idle_timeout):
                return await ws.recv(decode=decode)
        except TimeoutError:
            return None

    async def _close_on_stop(self, ws: ClientConnection) -> None:
        await self._stop.wait()
        await ws.close()

    async def _wait_to_reconnect(self, streak: int) -> bool:
        """Before connection ``streak + 1`` in a row that may deliver nothing: give up after ``max_retries`` (raise
        ``unavailable``), else back off with jitter and count the reconnect. True when stopped meanwhile."""
        if self.max_retries is not None and streak > self.max_retries:
            raise self.unavailable(f"{self.url}: {streak} connection(s) in a row delivered nothing new")
        delay = self.backoff.delay(streak, self._rng)
        cursor = self.cursor
        at = f"cursor {cursor}" if cursor is not None else "no cursor yet: from the server's head"
        self._log.info("reconnecting to %s in %.2fs (%s)", self.url, delay, at)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()
        if self._stop.is_set():
            return True
        self.stats.reconnects += 1
        return False
