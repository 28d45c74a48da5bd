"""A server on its own event loop in a thread, so that the code under test (a subprocess, a CLI command running
its own ``asyncio.run``) can talk to it while the test waits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Self, TypeVar

S = TypeVar("S", bound=AbstractAsyncContextManager)


class Served:
    """A server with ``start()`` and ``close()`` used as an async context manager (``async with Server(...)``)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@contextlib.contextmanager
def serving_in_thread(server: S, timeout: float = 60.0) -> Iterator[S]:
    """Enter ``server`` (an async context manager: a relay, a Jetstream server) on a fresh loop in a daemon thread,
    yield it, and exit it there; a failure to exit is not the test's result and is left unsaid."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="serving-in-thread")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(timeout)
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


__all__ = ["Served", "serving_in_thread"]
