"""A local Jetstream: an archive served as Jetstream v1 ``/subscribe`` over a real websocket, for tests.

Why: the Jetstream source's live path (handshake, filters, cursor replay, zstd, dropped connections, hostile
messages) has to be tested end to end without the public network. The events are made by the code ``skyattr
events`` prints with (:func:`~streamer.sources.archive.read_archive`, then
:func:`~streamer.core.decode.decode_item`, then :func:`~streamer.core.jetstream_json.to_jetstream`), one JSON
message per event, and ordered by ``time_us`` (a stable sort): a real Jetstream stamps ``time_us`` with its own
receive clock, so its stream is monotone, while the commit times a relay archive carries are not.

What it honours, as Jetstream does:

* ``GET /subscribe`` only (another path is answered 404; a malformed parameter 400);
* ``cursor``: the events with ``time_us >= cursor`` (inclusive: the event at the cursor comes again on a
  reconnect); ``rewind_us`` replays that much earlier still (a server in a pool whose clock lags);
* ``wantedCollections`` (exact NSIDs and ``prefix.*``; identity and account events always pass, as in Jetstream)
  and ``wantedDids`` (every kind);
* ``compress=true`` (or a ``Socket-Encoding: zstd`` header): binary zstd frames, with ``zstd_dictionary`` if given;
* ``maxMessageSizeBytes``: events whose JSON is longer are left out (0 or negative: no limit).

When everything is sent the connection stays open and idle, as a Jetstream's does when nothing new happens.
``drop_after`` cuts each connection, without a close frame (a network failure, to the client), after that many
messages. Events given as a list (Jetstream dicts, or :class:`~streamer.core.events.Event` objects) are served as
given, in their order; a ``str``, ``bytes`` or ``bytearray`` in the list goes out verbatim (a hostile message:
``bytes`` as a binary frame, never compressed; a ``bytearray`` as a *text* frame of those bytes, valid UTF-8 or
not), passes every filter and is sent whenever the event before it would be.
Counters: ``connections``, ``sent`` (messages, all connections), ``requests`` (the path each connection asked for).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zstandard
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.core.events import Event
from streamer.core.jetstream_json import to_jetstream
from streamer.sources.archive import ReadReport, jetstream_lines
from streamer.sources.endpoints import JETSTREAM_PATH as SUBSCRIBE_PATH
from streamer.testing.threaded import Served

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 2.0


def jetstream_events(archive: str | Path) -> list[dict[str, Any]]:
    """Every event of ``archive`` as a Jetstream v1 dict (:func:`~streamer.sources.archive.jetstream_lines`, the
    lines of ``skyattr events``), stably sorted by commit time, each ``time_us`` the commit's: a Jetstream whose
    receive clock saw the commits as they were made. Items that do not decode are left out."""
    report = ReadReport()
    out = [{**line, "time_us": line["skyattr"]["commit_time_us"]} for line in jetstream_lines(archive, report)]
    for err in report.errors:
        log.warning("archive: %s", err)
    out.sort(key=lambda e: e["time_us"])
    return out


async def events_of(archive_path_or_events: str | Path | Iterable[Any]) -> Iterable[Any]:
    """What a local Jetstream serves: an archive's events (:func:`jetstream_events`, read off the loop) or the
    list given."""
    if isinstance(archive_path_or_events, str | Path):
        return await asyncio.to_thread(jetstream_events, archive_path_or_events)
    return archive_path_or_events


@dataclass(frozen=True, slots=True)
class _Message:
    """One message to serve: its payload and what the filters look at (None for a verbatim hostile message)."""

    time_us: int
    payload: str | bytes | bytearray
    size: int  # bytes of the payload (what maxMessageSizeBytes compares)
    did: str | None = None
    collection: str | None = None  # None: not a commit (identity and account pass collection filters)


@dataclass(frozen=True, slots=True)
class _Options:
    cursor: int | None
    collections: frozenset[str]
    prefixes: tuple[str, ...]
    dids: frozenset[str]
    compress: bool
    max_size: int

    def wants(self, m: _Message, rewind_us: int) -> bool:
        if self.cursor is not None and m.time_us < self.cursor - rewind_us:
            return False
        if 0 < self.max_size < m.size:
            return False
        if m.did is None:  # verbatim
            return True
        if self.dids and m.did not in self.dids:
            return False
        if m.collection is None or not (self.collections or self.prefixes):
            return True
        return m.collection in self.collections or m.collection.startswith(self.prefixes)


def _options(request: Request) -> _Options:
    """The subscription a request asks for; ValueError on a malformed parameter."""
    query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
    cursor = int(query["cursor"][-1]) if "cursor" in query else None
    wanted = query.get("wantedCollections", [])
    compress = query.get("compress", ["false"])[-1].lower()
    if compress not in ("true", "false", "1", "0", ""):
        raise ValueError(f"compress={compress!r}")
    return _Options(
        cursor=cursor,
        collections=frozenset(c for c in wanted if not c.endswith(".*")),
        prefixes=tuple(c[:-1] for c in wanted if c.endswith(".*")),  # "app.bsky.feed.*" -> "app.bsky.feed."
        dids=frozenset(query.get("wantedDids", [])),
        compress=compress in ("true", "1") or "zstd" in request.headers.get("Socket-Encoding", "").lower(),
        max_size=int(query.get("maxMessageSizeBytes", ["0"])[-1]),
    )


def _message(item: dict[str, Any] | Event | str | bytes | bytearray, time_us: int) -> _Message:
    if isinstance(item, str | bytes | bytearray):
        return _Message(time_us, item, len(item.encode() if isinstance(item, str) else item))
    event = to_jetstream(item) if isinstance(item, Event) else item
    commit = event.get("commit") if event.get("kind") == "commit" else None
    collection = commit.get("collection", "") if isinstance(commit, dict) else None
    t = event.get("time_us")
    text = json.dumps(event, separators=(",", ":"))
    return _Message(
        t if type(t) is int else time_us,
        text,
        len(text.encode()),
        str(event.get("did", "")),
        None if collection is None else str(collection),
    )


class JetstreamServer(Served):
    """Serve an archive (a path) or a list of events as Jetstream ``/subscribe`` on ``host:port`` (0: a free
    port). Use as an async context manager; ``url`` is the base a client connects to (``ws://127.0.0.1:PORT``).
    ``drop_after``, ``rewind_us``, ``zstd_dictionary``: see the module doc. A v2 server
    (:class:`~streamer.testing.jetstream2_server.Jetstream2Server`) keeps the lifecycle and fills the hooks:
    ``subprotocols``, :meth:`_build` (the messages), :meth:`_check_request` and :meth:`_handle`."""

    subprotocols: tuple[str, ...] = ()

    def __init__(
        self,
        archive_path_or_events: str | Path | Iterable[dict[str, Any] | Event | str | bytes | bytearray],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        drop_after: int | None = None,
        rewind_us: int = 0,
        zstd_dictionary: bytes | Path | None = None,
    ) -> None:
        if drop_after is not None and drop_after < 1:
            raise ValueError("drop_after must be at least 1")
        if rewind_us < 0:
            raise ValueError("rewind_us must be >= 0")
        self.archive = archive_path_or_events
        self.host, self.port = host, port
        self.drop_after, self.rewind_us = drop_after, rewind_us
        if isinstance(zstd_dictionary, Path):
            zstd_dictionary = zstd_dictionary.read_bytes()
        self._dict = zstandard.ZstdCompressionDict(zstd_dictionary) if zstd_dictionary else None
        self.messages: list[Any] = []  # this server's _Message, or a v2 server's
        self.connections = 0
        self.sent = 0
        self.requests: list[str] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self._build(await events_of(self.archive))
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._check_request, compression=None,
            subprotocols=[*self.subprotocols] or None,  # type: ignore[list-item]
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s serving %d messages at %s", type(self).__name__, len(self.messages), self.url)

    def _build(self, items: Iterable[Any]) -> None:
        """The messages to serve, from the archive's events or the list given."""
        messages: list[_Message] = []
        time_us = 0
        for item in items:
            messages.append(_message(item, time_us))
            time_us = messages[-1].time_us
        self.messages = messages

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != SUBSCRIBE_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"only {SUBSCRIBE_PATH} is served here\n")
        try:
            _options(request)
        except ValueError as exc:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, f"bad subscription: {exc}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connections += 1
        self.requests.append(ws.request.path)
        options = _options(ws.request)
        compressor = zstandard.ZstdCompressor(dict_data=self._dict) if options.compress else None
        sent = 0
        try:
            for message in self.messages:
                if not options.wants(message, self.rewind_us):
                    continue
                payload = message.payload
                if isinstance(payload, bytearray):
                    await ws.send(bytes(payload), text=True)  # a text frame, its bytes unchecked
                else:
                    if compressor is not None and isinstance(payload, str):
                        payload = compressor.compress(payload.encode())
                    await ws.send(payload)
                self.sent += 1
                sent += 1
                if self.drop_after is not None and sent >= self.drop_after:
                    await self._drop(ws)
                    return
                if sent % 64 == 0:
                    await asyncio.sleep(0)  # let other connections have a turn
            await ws.wait_closed()  # nothing new: stay open and idle, as a Jetstream does
        except ConnectionClosed:
            pass

    @staticmethod
    async def _drop(ws: ServerConnection) -> None:
        """Cut the connection with no close frame once what was sent has left the process, so the client sees
        exactly ``drop_after`` messages and then a network failure."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while ws.transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        ws.transport.abort()
