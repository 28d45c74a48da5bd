"""The one reconnect loop (streamer.sources.websocket), seen through the smallest source it can carry.

A source of numbered text lines is written here with only the four hooks; everything a daemon relies on of a
connection (backoff, resume at the cursor, giving up, connection counts, readiness, stopping) comes from the loop.
So these tests hold for the firehose and Jetstream too, and for any websocket source added later: they cannot
count a connection differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from streamer.core.backoff import Backoff
from streamer.sources.base import Source
from streamer.sources.firehose import FirehoseSource
from streamer.sources.jetstream import JetstreamSource
from streamer.sources.websocket import Taken, WebsocketSource
from tests.net import free_port

FAST = Backoff(0.005, 0.02)


class NumbersUnavailable(ConnectionError):
    pass


class Numbers(WebsocketSource[int]):
    """Lines ``"<n>"`` from a server that starts after ``?after=<cursor>``; the line ``"bye"`` ends a connection."""

    unavailable = NumbersUnavailable

    def __init__(self, url: str, *, max_retries: int | None = 3, idle: float | None = None) -> None:
        super().__init__(
            url, text=True, open_timeout=1.0, close_timeout=0.2, idle_timeout=idle, backoff=FAST,
            max_retries=max_retries, seed=1,
        )  # fmt: skip
        self.last: int | None = None
        self.urls: list[str] = []

    @property
    def cursor(self) -> int | None:
        return self.last

    def _connect_url(self) -> str:
        self.urls.append(f"{self.url}/?after={self.last if self.last is not None else -1}")
        return self.urls[-1]

    def _take(self, message: bytes | str) -> Taken[int]:
        text = message if isinstance(message, str) else message.decode()
        if text == "bye":
            return Taken(end="bye")
        n = int(text)
        if self.last is not None and n <= self.last:
            self.stats.duplicates += 1
            return Taken()
        self.last = n
        return Taken((n,))

    def __aiter__(self) -> AsyncIterator[int]:
        return self._track(self._connections())


@asynccontextmanager
async def numbers_server(port: int, *, per_connection: int, total: int, resend: int = 0) -> AsyncIterator[list[str]]:
    """Sends ``per_connection`` numbers after the asked cursor (the first ``resend`` of them again), then drops
    the connection without a close frame; after ``total``, says ``bye``. Yields the paths asked for."""
    asked: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        asked.append(path)
        after = int(path.rsplit("=", 1)[1])
        start = max(0, after + 1 - resend)
        for n in range(start, min(total, after + 1 + per_connection)):
            await ws.send(str(n))
        if after + 1 + per_connection >= total:
            await ws.send("bye")
            await asyncio.sleep(0.5)
            return
        ws.transport.abort()  # a network failure, not a close

    async with serve(handler, "127.0.0.1", port):
        yield asked


async def take(source: WebsocketSource[int], count: int) -> list[int]:
    got: list[int] = []
    async with source:
        async for n in source:
            got.append(n)
            if len(got) == count:
                break
    return got


async def test_a_source_of_four_hooks_resumes_across_dropped_connections_without_loss_or_doubles() -> None:
    port = free_port()
    async with numbers_server(port, per_connection=7, total=30, resend=2) as asked:
        source = Numbers(f"ws://127.0.0.1:{port}")
        got = await take(source, 30)
    assert got == list(range(30))
    assert asked[:3] == ["/?after=-1", "/?after=6", "/?after=13"], "each connection resumes at the cursor"
    s = source.stats
    assert s.connects == len(asked) == 5 and s.reconnects == 4
    assert s.duplicates == 2 * 4, "the re-sent numbers are the source's to drop; the loop yields what it takes"
    assert s.yielded == 30
    assert s.disconnects["ConnectionClosedError"] == 4 and s.disconnects["stopped"] == 1
    assert not s.connect_failures and not s.connected, "stopped: no connection open"


async def test_an_attempt_that_never_opened_does_not_make_the_next_connection_look_closed() -> None:
    """The defect behind a /readyz that never turned ready: a refused attempt counted as a disconnect."""
    port = free_port()
    source = Numbers(f"ws://127.0.0.1:{port}", max_retries=None)
    got: list[int] = []

    async def consume() -> None:
        async for n in source:
            got.append(n)

    task = asyncio.create_task(consume())
    for _ in range(200):
        if sum(source.stats.connect_failures.values()) >= 2:
            break
        await asyncio.sleep(0.01)
    assert not source.stats.connected and source.stats.connects == 0

    async def three_then_quiet(ws: ServerConnection) -> None:
        for n in range(3):
            await ws.send(str(n))
        await ws.wait_closed()

    async with serve(three_then_quiet, "127.0.0.1", port):
        for _ in range(500):
            if len(got) >= 3:
                break
            await asyncio.sleep(0.01)
        assert source.stats.connected, source.stats
        assert not source.stats.disconnects
        await source.aclose()
        await asyncio.wait_for(task, 5)
    assert sum(source.stats.connect_failures.values()) >= 2
    assert not source.stats.connected


async def test_connections_that_give_nothing_end_in_the_sources_own_error() -> None:
    port = free_port()
    async with numbers_server(port, per_connection=0, total=10):  # every connection drops at once, empty
        source = Numbers(f"ws://127.0.0.1:{port}", max_retries=2)
        with pytest.raises(NumbersUnavailable, match="3 connection"):
            await take(source, 1)
    assert source.stats.connects == 3 and source.stats.reconnects == 2


async def test_an_idle_connection_is_dropped_and_resumed() -> None:
    port = free_port()

    async def quiet(ws: ServerConnection) -> None:
        await ws.send("0")
        await ws.wait_closed()

    async with serve(quiet, "127.0.0.1", port):
        source = Numbers(f"ws://127.0.0.1:{port}", max_retries=1, idle=0.1)
        with pytest.raises(NumbersUnavailable):
            await take(source, 5)
    assert source.stats.disconnects["idle_timeout"] == 3, "one that gave 0, then two that gave nothing new"


def test_the_websocket_sources_are_sources_of_the_one_loop() -> None:
    for cls in (FirehoseSource, JetstreamSource, Numbers):
        assert issubclass(cls, WebsocketSource)
    assert isinstance(Numbers("ws://127.0.0.1:1"), Source)
    for name in ("_connections", "_wait_to_reconnect", "_recv", "stop", "aclose"):
        for cls in (FirehoseSource, JetstreamSource):
            assert name not in vars(cls), f"{cls.__name__} writes its own {name}"
