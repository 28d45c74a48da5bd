"""A local ``com.atproto.sync.subscribeRepos`` relay that serves a recorded archive over a real websocket.

Why: the live code path (websocket client, cursor resume, reconnect, ``#info`` and error frames) has to be tested
end to end against real frames without the public network. :class:`Relay` speaks the same protocol as a Bluesky
relay: ``GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]``, one binary message per frame, frames with
``seq > cursor``; an ``#info`` ``OutdatedCursor`` frame first when the cursor is older than what the archive holds;
an error frame ``FutureCursor`` and a close when the cursor is beyond the last frame.

Serving streams the archive from disk on every connection (memory stays flat whatever the archive size); the start
scans it once to learn its seq range, which the cursor checks need. Frames without a readable seq (should an archive
hold any) are passed through in place once the stream is past the cursor, like any other frame.

When the archive is exhausted the connection stays open and idle, as a real relay's does when nothing new happens;
the client decides when to leave. ``drop_after`` cuts a connection after that many frames without a close frame
(what a network failure looks like to the client), to test reconnect and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import libipld
import typer
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.archive import ReadReport, read_archive
from streamer.events import parse_time_us
from streamer.frames import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
# A relay never sends more than the protocol limit; headroom so oversize test frames reach the client's checks.
SERVER_MAX_SIZE = 2 * MAX_FRAME_BYTES
DRAIN_TIMEOUT_S = 2.0


def info_frame(name: str, message: str = "") -> bytes:
    """An ``#info`` frame (header ``{op: 1, t: "#info"}``, body ``{name, message}``), as relays send them."""
    return libipld.encode_dag_cbor({"op": 1, "t": "#info"}) + libipld.encode_dag_cbor(
        {"name": name, "message": message}
    )


def error_frame(error: str, message: str = "") -> bytes:
    """An error frame (header ``{op: -1}``, body ``{error, message}``); the server closes after sending one."""
    return libipld.encode_dag_cbor({"op": -1}) + libipld.encode_dag_cbor({"error": error, "message": message})


def peek(frame: bytes) -> tuple[int, int | None]:
    """``(seq, time_us)`` of a raw frame: seq -1 when unreadable, time None when absent. Only the CBOR header and
    body are decoded (not the CAR), which is all the relay needs to filter by cursor and to pace."""
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, TypeError, OverflowError):
        return -1, None
    if len(parts) != 2 or not isinstance(parts[1], dict):
        return -1, None
    body = parts[1]
    seq = body.get("seq")
    time_us: int | None = None
    if isinstance(body.get("time"), str):
        with contextlib.suppress(ValueError, TypeError):
            time_us = parse_time_us(body["time"])
    return (seq if isinstance(seq, int) else -1), time_us


@dataclass(frozen=True, slots=True)
class ArchiveRange:
    """What the start-up scan learned: first and last seq, and how many raw frames the archive holds."""

    first_seq: int
    last_seq: int
    frames: int


def scan_archive(path: str | Path) -> ArchiveRange:
    """Seq range of a raw-frame archive. Raises ValueError when it holds no frame with a seq (e.g. Jetstream
    JSON, which a ``subscribeRepos`` relay cannot serve)."""
    first = last = -1
    frames = 0
    report = ReadReport()
    for item in read_archive(path, report):
        if item.frame is None:
            raise ValueError(f"{path} holds Jetstream JSON, not relay frames: a subscribeRepos relay cannot serve it")
        frames += 1
        seq, _ = peek(item.frame)
        if seq >= 0:
            first = seq if first < 0 else first
            last = seq
    for err in report.errors:
        log.warning("archive: %s", err)
    if first < 0:
        raise ValueError(f"{path} holds no relay frame with a seq")
    return ArchiveRange(first, last, frames)


class Relay:
    """Serve ``archive`` as ``subscribeRepos`` on ``host:port`` (port 0 picks a free one). Use as an async
    context manager; ``url`` is the base a client connects to (``ws://127.0.0.1:PORT``).

    ``speed``: None sends as fast as the client reads; a number paces frames by event time (the commit ``time``)
    at that multiple of real time. ``drop_after``: cut every connection abruptly after that many frames.
    """

    def __init__(
        self,
        archive: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        drop_after: int | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for as fast as the client reads)")
        if drop_after is not None and drop_after < 1:
            raise ValueError("drop_after must be at least 1")
        self.archive = Path(archive)
        self.host, self.port = host, port
        self.speed, self.drop_after = speed, drop_after
        self.range: ArchiveRange | None = None
        self.connections = 0
        self.frames_sent = 0
        self.drops = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self.range = await asyncio.to_thread(scan_archive, self.archive)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_path,
            max_size=SERVER_MAX_SIZE,
            compression=None,  # CBOR with hashes barely compresses; deflate would only cost CPU on both ends
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "relay serving %s (seq %d..%d) at %s", self.archive, self.range.first_seq, self.range.last_seq, self.url
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    @staticmethod
    def _check_path(connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != SUBSCRIBE_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"only {SUBSCRIBE_PATH} is served here\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert self.range is not None
        self.connections += 1
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        cursor: int | None = None
        if "cursor" in query:
            try:
                cursor = int(query["cursor"][-1])
            except ValueError:
                await self._fail(ws, "InvalidRequest", "cursor must be an integer")
                return
        try:
            if cursor is not None and cursor > self.range.last_seq:
                await self._fail(ws, "FutureCursor", "Cursor in the future.")
                return
            if cursor is not None and cursor < self.range.first_seq - 1:
                # Seqs between the cursor and the first archived frame may have existed: say so, like a relay
                # whose backfill window no longer reaches back that far, then start from the oldest held.
                await ws.send(info_frame("OutdatedCursor", "Requested cursor exceeded limit. Possibly missing events"))
            if await self._stream(ws, cursor):
                await ws.wait_closed()  # archive exhausted: stay open and idle, as a relay with no news does
        except ConnectionClosed:
            pass

    async def _stream(self, ws: ServerConnection, cursor: int | None) -> bool:
        """Send the frames after ``cursor`` (all of them when None). False when the connection was cut."""
        sent = 0
        started = cursor is None  # past the cursor: seq-less frames from here on go out in place
        clock: tuple[float, int] | None = None  # (wall time, event time) of the first paced frame
        for frame in self._frames():
            seq, time_us = peek(frame)
            if cursor is not None:
                if seq >= 0:
                    if seq <= cursor:
                        continue  # also in an out-of-order archive: never resend what the client has
                    started = True
                elif not started:
                    continue
            if self.speed is not None and time_us is not None:
                if clock is None:
                    clock = (time.monotonic(), time_us)
                delay = clock[0] + (time_us - clock[1]) / 1e6 / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(frame)
            sent += 1
            self.frames_sent += 1
            if self.drop_after is not None and sent >= self.drop_after:
                await self._drop(ws)
                return False
            if sent % 64 == 0:
                await asyncio.sleep(0)  # a fast reader never blocks send(): let other connections have a turn
        return True

    def _frames(self) -> Iterator[bytes]:
        for item in read_archive(self.archive):
            if item.frame is not None:
                yield item.frame

    async def _drop(self, ws: ServerConnection) -> None:
        """Cut the connection with no close frame, once what was sent has left the process, so the client sees
        exactly ``drop_after`` frames and then a network failure."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while ws.transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        self.drops += 1
        ws.transport.abort()

    @staticmethod
    async def _fail(ws: ServerConnection, error: str, message: str) -> None:
        log.info("relay: %s (%s)", error, message)
        await ws.send(error_frame(error, message))
        await ws.close(1008, error)


async def _serve(relay: Relay) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with relay:
        assert relay.range is not None
        typer.echo(
            f"relay: {relay.range.frames:,} frames, seq {relay.range.first_seq}..{relay.range.last_seq}; "
            f"subscribe at {relay.url}{SUBSCRIBE_PATH}",
            err=True,
        )
        typer.echo(relay.url)
        await stop.wait()
    typer.echo(f"relay: stopped after {relay.connections} connection(s), {relay.frames_sent:,} frames sent", err=True)


def relay_command(
    archive: Annotated[Path, typer.Argument(help="Archive file or directory of raw relay frames.")],
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8765,
    speed: Annotated[
        float | None, typer.Option(help="Pace by event time at this multiple of real time (default: full speed).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve an archive as a local com.atproto.sync.subscribeRepos relay (honours ?cursor=) until Ctrl-C."""
    try:
        asyncio.run(_serve(Relay(archive, host=host, port=port, speed=speed)))
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
