"""What the websocket sources share: stopping, closing every open iterator, sleeping unless stopped.

:class:`StoppableStream` holds the ``stop`` event and the iterators handed out, so ``stop()`` ends an iteration
after the current item (closing its connection) and ``aclose()`` closes every iterator still open. The relay's
firehose and Jetstream sources both build on it; only their protocols differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from streamer.core.backoff import backoff_delay


def closed_for_size(exc: BaseException) -> bool:
    """Whether ``websockets`` failed the connection because a message was over its ``max_size`` (close code 1009,
    sent by this side): the message never reached the caller, and resuming at the same cursor fetches it again."""
    return isinstance(exc, ConnectionClosed) and exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG


class StoppableStream:
    def __init__(self, stop: asyncio.Event | None = None) -> None:
        self._stop = stop if stop is not None else asyncio.Event()
        self._gens: list[Any] = []

    def stop(self) -> None:
        """End the iteration: the open connection is closed and the iterator finishes after the current item."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

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

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _close_on_stop(self, ws: Any) -> None:
        await self._stop.wait()
        await ws.close()

    async def _wait_to_reconnect(
        self, streak: int, unavailable: type[Exception], url: str, cursor: object, attempts: Any
    ) -> bool:
        """Before connection ``streak + 1`` in a row that may deliver nothing: give up after ``max_retries`` (raise
        ``unavailable``), else back off with jitter and count the reconnect. True when stopped meanwhile."""
        max_retries, base, maximum, rng, stats = attempts
        if max_retries is not None and streak > max_retries:
            raise unavailable(f"{url}: {streak} connection(s) in a row delivered nothing new")
        delay = backoff_delay(streak, base, maximum, rng)
        at = f"cursor {cursor}" if cursor is not None else "no cursor yet: from the relay's head"
        logging.getLogger(type(self).__module__).info("reconnecting to %s in %.2fs (%s)", url, delay, at)
        if await self._sleep_unless_stopped(delay):
            return True
        stats.reconnects += 1
        return False

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep, or return early when stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()
