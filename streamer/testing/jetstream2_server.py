"""A local Jetstream v2: an archive served as ``network.bsky.jetstream.subscribeEvents`` over a real websocket.

Why: the v2 source's live path (the ``xrpc.v1.json`` subprotocol, the ``seq`` cursor, filters, dict-zstd frames and
their rotation, error frames, a cursor past the lookback, hostile messages) has to be tested end to end without the
public network, and against what the atproto SDK's own v2 client accepts. The events are those ``skyattr events``
prints (:func:`~streamer.testing.jetstream_server.jetstream_events`, in ``time_us`` order), numbered ``seq`` 1, 2,
... (``first_seq`` on) and written as v2 payloads by :func:`~streamer.core.jetstream2_json.to_jetstream2`.

What it honours, as Jetstream v2 does:

* ``GET /xrpc/network.bsky.jetstream.subscribeEvents`` with the ``xrpc.v1.json`` subprotocol; a 4xx answer with an
  XRPC error body (``{"error", "message"}``) for what it refuses before the upgrade: ``InvalidRequest`` (a malformed
  parameter), ``CursorTooOld`` (a cursor below ``oldest_seq``), ``UnknownZstdDictionary`` (an id that is not the
  current dictionary's);
* ``GET /xrpc/network.bsky.jetstream.getZstdDictionary``: the current dictionary's bytes (404 without one);
  :meth:`Jetstream2Server.rotate` puts another in its place;
* ``cursor`` (inclusive), ``collections`` (exact and ``prefix.*``, commits only), ``dids`` and ``kinds``;
* ``zstdDictionary=<id>``: every frame a binary zstd frame of the JSON text, compressed with that dictionary.

Frames are ``{"$type": "message", "payload": ...}``; ``info`` sends an ``#info`` advisory first on every connection;
``error_after`` sends an error frame (``ConsumerTooSlow``) after that many messages and closes; ``drop_after`` cuts
the connection without a close frame. A ``str`` or ``bytes`` in an event list goes out verbatim (hostile input),
after the event before it.
Counters: ``connections``, ``sent``, ``requests`` (the path each connection asked for).

``sealed=N`` also serves the first N events as the sealed archive (``segment_events`` a segment) over HTTP XRPC
at ``archive_url`` (:mod:`streamer.testing.jetstream2_archive`), behind ``api_key``; the live tail still serves
every event, from any cursor at or above ``oldest_seq``.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zstandard
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.core.decode import decode_item
from streamer.core.events import Event
from streamer.core.jetstream2_json import NSID, PREFIX, to_jetstream2
from streamer.sources.jetstream2 import DICTIONARY_NSID, SUBPROTOCOL
from streamer.testing import jss
from streamer.testing.jetstream2_archive import ArchiveServer
from streamer.testing.jetstream_server import JetstreamServer

SUBSCRIBE_PATH = f"/xrpc/{NSID}"
DICTIONARY_PATH = f"/xrpc/{DICTIONARY_NSID}"


@dataclass(frozen=True, slots=True)
class _Message:
    seq: int
    text: str | bytes  # a payload's frame text, or a verbatim hostile message
    did: str | None = None
    kind: str | None = None
    collection: str | None = None


@dataclass(frozen=True, slots=True)
class _Options:
    cursor: int | None
    collections: frozenset[str]
    prefixes: tuple[str, ...]
    dids: frozenset[str]
    kinds: frozenset[str]
    dictionary: int | None

    def wants(self, m: _Message) -> bool:
        if self.cursor is not None and m.seq < self.cursor:
            return False
        if m.did is None:
            return True
        if self.dids and m.did not in self.dids:
            return False
        if self.kinds and m.kind not in self.kinds:
            return False
        if m.kind != "commit" or not (self.collections or self.prefixes) or m.collection is None:
            return True
        return m.collection in self.collections or m.collection.startswith(self.prefixes)


def _options(request: Request) -> _Options:
    query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
    wanted = query.get("collections", [])
    kinds = query.get("kinds", [])
    for kind in kinds:
        if kind not in ("commit", "identity", "account", "sync"):
            raise ValueError(f"kinds={kind!r}")
    return _Options(
        cursor=int(query["cursor"][-1]) if "cursor" in query else None,
        collections=frozenset(c for c in wanted if not c.endswith(".*")),
        prefixes=tuple(c[:-1] for c in wanted if c.endswith(".*")),
        dids=frozenset(query.get("dids", [])),
        kinds=frozenset(kinds),
        dictionary=int(query["zstdDictionary"][-1]) if "zstdDictionary" in query else None,
    )


def _frame(payload: dict[str, Any]) -> str:
    return json.dumps({"$type": "message", "payload": payload}, separators=(",", ":"))


def _events(items: Iterable[dict[str, Any] | Event | str | bytes]) -> list[Event | str | bytes]:
    out: list[Event | str | bytes] = []
    for item in items:
        if isinstance(item, dict):
            out.extend(decode_item(item).events)
        else:
            out.append(item)
    return out


class Jetstream2Server(JetstreamServer):
    """Serve an archive (a path) or a list of events as Jetstream v2 on ``host:port`` (0: a free port); an async
    context manager whose ``url`` is the base a client connects to (the lifecycle is the v1 server's). See the
    module doc for the options."""

    subprotocols = (SUBPROTOCOL,)

    def __init__(
        self,
        archive_path_or_events: str | Path | Iterable[dict[str, Any] | Event | str | bytes],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        first_seq: int = 1,
        oldest_seq: int | None = None,
        zstd_dictionary: bytes | None = None,
        info: dict[str, str] | None = None,
        error_after: int | None = None,
        drop_after: int | None = None,
        sealed: int = 0,
        segment_events: int = 500,
        api_key: str = "local-archive-key",
    ) -> None:
        super().__init__(archive_path_or_events, host, port, drop_after=drop_after)
        self.sealed, self.segment_events, self.api_key = sealed, segment_events, api_key
        self.archive_server: ArchiveServer | None = None
        self.first_seq, self.oldest_seq = first_seq, oldest_seq
        self.info, self.error_after = info, error_after
        self.dictionary: bytes | None = None
        if zstd_dictionary is not None:
            self.rotate(zstd_dictionary)

    @property
    def archive_url(self) -> str:
        """The HTTP origin of the archive half (``sealed`` events in segments; see
        :mod:`streamer.testing.jetstream2_archive`)."""
        assert self.archive_server is not None, "no archive: give sealed=N"
        return self.archive_server.url

    async def start(self) -> None:
        await super().start()
        if self.sealed:
            rows = [jss.row_of(p) for p in self.payloads()[: self.sealed]]
            n = self.segment_events
            self.archive_server = ArchiveServer([rows[i : i + n] for i in range(0, len(rows), n)], self.api_key)
            self.archive_server.start()

    async def close(self) -> None:
        if self.archive_server is not None:
            self.archive_server.close()
            self.archive_server = None
        await super().close()

    @property
    def dictionary_id(self) -> int | None:
        return None if self._dict is None else self._dict.dict_id()

    def rotate(self, dictionary: bytes) -> None:
        """Serve another dictionary: a subscription asking for the old id is refused from now on."""
        self.dictionary, self._dict = dictionary, zstandard.ZstdCompressionDict(dictionary)

    def payloads(self) -> list[dict[str, Any]]:
        """The v2 payloads served (hostile messages left out)."""
        return [json.loads(m.text)["payload"] for m in self.messages if m.did is not None]

    def _build(self, items: Iterable[Any]) -> None:
        seq = self.first_seq
        messages: list[_Message] = []
        for item in _events(items):
            if isinstance(item, str | bytes):  # numbered as the event before it: a resume past that one skips it
                messages.append(_Message(seq - 1, item))
                continue
            payload = to_jetstream2(item, seq)
            kind = str(payload["$type"]).removeprefix(PREFIX)
            messages.append(_Message(seq, _frame(payload), item.actor, kind, payload.get("collection")))
            seq += 1
        self.messages = messages

    @staticmethod
    def _xrpc(connection: ServerConnection, status: int, error: str, message: str) -> Response:
        body = json.dumps({"error": error, "message": message}).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == DICTIONARY_PATH:
            if self.dictionary is None:
                return self._xrpc(connection, 404, "NotFound", "no dictionary")
            headers = Headers([("Content-Type", "application/octet-stream"),
                               ("Content-Length", str(len(self.dictionary)))])  # fmt: skip
            return Response(200, "OK", headers, self.dictionary)
        if path != SUBSCRIBE_PATH:
            return self._xrpc(connection, 404, "MethodNotImplemented", path)
        try:
            options = _options(request)
        except ValueError as exc:
            return self._xrpc(connection, 400, "InvalidRequest", str(exc))
        if options.cursor is not None and self.oldest_seq is not None and options.cursor < self.oldest_seq:
            return self._xrpc(connection, 400, "CursorTooOld", f"oldest available seq is {self.oldest_seq}")
        if options.dictionary is not None and options.dictionary != self.dictionary_id:
            return self._xrpc(connection, 400, "UnknownZstdDictionary", f"current dictionary is {self.dictionary_id}")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connections += 1
        self.requests.append(ws.request.path)
        options = _options(ws.request)
        compressor = zstandard.ZstdCompressor(dict_data=self._dict) if options.dictionary is not None else None

        async def send(text: str | bytes) -> None:
            if compressor is not None and isinstance(text, str):
                await ws.send(compressor.compress(text.encode()))
            else:
                await ws.send(text)

        sent = 0
        try:
            if self.info is not None:
                await send(_frame({"$type": PREFIX + "info", **self.info}))
            for message in self.messages:
                if not options.wants(message):
                    continue
                await send(message.text)
                self.sent += 1
                sent += 1
                if self.error_after is not None and sent >= self.error_after:
                    error = {"$type": "error", "error": "ConsumerTooSlow", "message": "the consumer fell behind"}
                    await send(json.dumps(error))
                    await ws.close()
                    return
                if self.drop_after is not None and sent >= self.drop_after:
                    await self._drop(ws)
                    return
                if sent % 64 == 0:
                    await asyncio.sleep(0)
            await ws.wait_closed()
        except ConnectionClosed:
            pass


__all__ = ["Jetstream2Server"]
