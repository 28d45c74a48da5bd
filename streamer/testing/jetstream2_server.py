"""A local Jetstream v2: an archive served as ``network.bsky.jetstream.subscribeEvents`` over a real websocket.

Why: the v2 source's live path (the ``xrpc.v1.json`` subprotocol, the ``seq`` cursor, filters, dict-zstd frames and
their rotation, error frames, a cursor past the lookback, hostile messages) has to be tested end to end without the
public network, and against what the atproto SDK's own v2 client accepts. The events are the lines ``skyattr events``
prints, in commit-time order with each ``time`` the commit's
(:func:`~streamer.testing.jetstream_server.jetstream_events`), numbered ``seq`` 1, 2, ... (``first_seq`` on) and written
as v2 payloads by :func:`~streamer.core.jetstream2_json.to_jetstream2`.

What it honours, as Jetstream v2 does:

* ``GET /xrpc/network.bsky.jetstream.subscribeEvents`` with the ``xrpc.v1.json`` subprotocol; a 4xx answer with an
  XRPC error body (``{"error", "message"}``) for what it refuses before the upgrade: ``InvalidRequest`` (a malformed
  parameter), ``CursorTooOld`` (a cursor below ``oldest_seq``), ``UnknownZstdDictionary`` (an id that is not the
  current dictionary's);
* ``GET /xrpc/network.bsky.jetstream.getZstdDictionary``: the current dictionary's bytes (404 without one);
  :meth:`Jetstream2Server.rotate` puts another in its place;
* ``cursor`` (inclusive), ``collections`` (exact and ``prefix.*``, commits only), ``dids`` and ``kinds``;
* ``zstdDictionary=<id>``: every frame a binary zstd frame of the JSON text, compressed with that dictionary
  (``zstd_dictionary``, or ``train_dictionary``: one trained on the first messages, as v2 trains its own).

Frames are ``{"$type": "message", "payload": ...}``; ``info`` sends an ``#info`` advisory first on every connection;
``error_after`` sends an error frame (``ConsumerTooSlow``) after that many messages and closes; ``drop_after`` cuts the
connection without a close frame; ``live_delay_s`` paces the messages past the sealed tip. A ``str`` or ``bytes`` in an
event list goes out verbatim (hostile input), after the event before it.
Counters: ``connections``, ``sent``, ``requests`` (the path each connection asked for).

``sealed=N`` (or ``unsealed=M``: all but the last M) also serves the first N events as the sealed archive
(``segment_events`` a segment) over HTTP XRPC on the same port (:mod:`streamer.testing.jetstream2_archive`), behind
``api_key``, so the SDK's own client (``JetstreamClient(base_uri=url + "/xrpc", api_key=...)``: its ``snapshot()``,
``replay()`` and live tail) reads it as it reads Jetstream v2; the live tail still serves every event, from any cursor
at or above ``oldest_seq``. Served by aiohttp: one port for the websocket and the XRPC queries and procedures
(``planSnapshot`` is a POST).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from aiohttp import WSMsgType, web
from multidict import MultiMapping

from streamer.core.decode import decode_item
from streamer.core.events import Event
from streamer.core.jetstream2_json import NSID, PREFIX, to_jetstream2
from streamer.sources.jetstream2 import DICTIONARY_NSID, SUBPROTOCOL
from streamer.testing import jss
from streamer.testing.jetstream2_archive import SealedArchive, bound_port, start_app
from streamer.testing.jetstream_server import DRAIN_TIMEOUT_S, events_of
from streamer.testing.threaded import Served

log = logging.getLogger(__name__)
DICTIONARY_BYTES = 16_384  # a trained dictionary's size, and the messages it is trained on
TRAINING_SAMPLES = 5_000

SUBSCRIBE_PATH = f"/xrpc/{NSID}"
DICTIONARY_PATH = f"/xrpc/{DICTIONARY_NSID}"


@dataclass(frozen=True, slots=True)
class _Message:
    seq: int
    text: str | bytes  # a payload's frame text, or a verbatim hostile message
    did: str | None = None
    kind: str | None = None
    collection: str | None = None
    payload: dict[str, Any] | None = None  # what ``text`` holds, kept: not parsed back for the archive or a banner


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


def _options(query: MultiMapping[str]) -> _Options:
    wanted = query.getall("collections", [])
    kinds = query.getall("kinds", [])
    for kind in kinds:
        if kind not in ("commit", "identity", "account", "sync"):
            raise ValueError(f"kinds={kind!r}")
    return _Options(
        cursor=int(query.getall("cursor")[-1]) if "cursor" in query else None,
        collections=frozenset(c for c in wanted if not c.endswith(".*")),
        prefixes=tuple(c[:-1] for c in wanted if c.endswith(".*")),
        dids=frozenset(query.getall("dids", [])),
        kinds=frozenset(kinds),
        dictionary=int(query.getall("zstdDictionary")[-1]) if "zstdDictionary" in query else None,
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


class Jetstream2Server(Served):
    """Serve an archive (a path) or a list of events as Jetstream v2 on ``host:port`` (0: a free port); an async
    context manager whose ``url`` is the base a client connects to. See the module doc for the options."""

    def __init__(
        self,
        archive_path_or_events: str | Path | Iterable[dict[str, Any] | Event | str | bytes],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        first_seq: int = 1,
        oldest_seq: int | None = None,
        zstd_dictionary: bytes | None = None,
        train_dictionary: bool = False,
        info: dict[str, str] | None = None,
        error_after: int | None = None,
        drop_after: int | None = None,
        sealed: int = 0,
        unsealed: int | None = None,
        segment_events: int = 500,
        api_key: str = "local-archive-key",
    ) -> None:
        if drop_after is not None and drop_after < 1:
            raise ValueError("drop_after must be at least 1")
        self.archive, self.host, self.port = archive_path_or_events, host, port
        self.sealed, self.unsealed, self.segment_events, self.api_key = sealed, unsealed, segment_events, api_key
        self.archive_server: SealedArchive | None = None
        self.first_seq, self.oldest_seq = first_seq, oldest_seq
        self.info, self.error_after, self.drop_after = info, error_after, drop_after
        self.live_delay_s = 0.0  # each message past the sealed tip waits this long first (a tail as slow as life)
        self.dictionary: bytes | None = None
        self.train_dictionary = train_dictionary
        self._dict: zstandard.ZstdCompressionDict | None = None
        if zstd_dictionary is not None:
            self.rotate(zstd_dictionary)
        self.messages: list[_Message] = []
        self.connections = 0
        self.sent = 0
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def archive_url(self) -> str:
        """The HTTP origin of the archive half (``sealed`` events in segments; see
        :mod:`streamer.testing.jetstream2_archive`): this server's own port."""
        assert self.archive_server is not None, "no archive: give sealed=N"
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._build(await events_of(self.archive))
        if self.unsealed is not None:
            self.sealed = max(0, len(self.payloads()) - self.unsealed)
        if self.train_dictionary and self.dictionary is None:
            samples = [m.text.encode() for m in self.messages[:TRAINING_SAMPLES] if isinstance(m.text, str)]
            self.rotate(
                await asyncio.to_thread(lambda: zstandard.train_dictionary(DICTIONARY_BYTES, samples).as_bytes())
            )
        app = web.Application()
        app.router.add_get(SUBSCRIBE_PATH, self._subscribe)
        app.router.add_get(DICTIONARY_PATH, self._dictionary)
        if self.sealed:
            rows = [jss.row_of(p) for p in self.payloads()[: self.sealed]]
            n = self.segment_events
            self.archive_server = SealedArchive([rows[i : i + n] for i in range(0, len(rows), n)], self.api_key)
            self.archive_server.add_routes(app)
        self._runner = await start_app(app, self.host, self.port)
        self.port = bound_port(self._runner)
        log.info("Jetstream2Server serving %d messages at %s", len(self.messages), self.url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.archive_server = None

    @property
    def dictionary_id(self) -> int | None:
        return None if self._dict is None else self._dict.dict_id()

    def rotate(self, dictionary: bytes) -> None:
        """Serve another dictionary: a subscription asking for the old id is refused from now on."""
        self.dictionary, self._dict = dictionary, zstandard.ZstdCompressionDict(dictionary)

    def payloads(self) -> list[dict[str, Any]]:
        """The v2 payloads served (hostile messages left out)."""
        return [m.payload for m in self.messages if m.payload is not None]

    def _build(self, items: Iterable[Any]) -> None:
        seq = self.first_seq
        messages: list[_Message] = []
        for item in _events(items):
            if isinstance(item, str | bytes):  # numbered as the event before it: a resume past that one skips it
                messages.append(_Message(seq - 1, item))
                continue
            payload = to_jetstream2(item, seq)
            kind = str(payload["$type"]).removeprefix(PREFIX)
            messages.append(_Message(seq, _frame(payload), item.actor, kind, payload.get("collection"), payload))
            seq += 1
        self.messages = messages

    @staticmethod
    def _xrpc(status: int, error: str, message: str) -> web.Response:
        return web.json_response({"error": error, "message": message}, status=status)

    async def _dictionary(self, request: web.Request) -> web.Response:
        if self.dictionary is None:
            return self._xrpc(404, "NotFound", "no dictionary")
        return web.Response(body=self.dictionary, content_type="application/octet-stream")

    def _check_request(self, request: web.Request) -> web.Response | None:
        """The 4xx answer to a subscription refused before the upgrade, or None to accept it."""
        try:
            options = _options(request.query)
        except ValueError as exc:
            return self._xrpc(400, "InvalidRequest", str(exc))
        if options.cursor is not None and self.oldest_seq is not None and options.cursor < self.oldest_seq:
            return self._xrpc(400, "CursorTooOld", f"oldest available seq is {self.oldest_seq}")
        if options.dictionary is not None and options.dictionary != self.dictionary_id:
            return self._xrpc(400, "UnknownZstdDictionary", f"current dictionary is {self.dictionary_id}")
        return None

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        refused = self._check_request(request)
        if refused is not None:
            return refused
        options = _options(request.query)
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        self.connections += 1
        self.requests.append(request.path_qs)
        compressor = zstandard.ZstdCompressor(dict_data=self._dict) if options.dictionary is not None else None

        async def send(text: str | bytes) -> None:
            if compressor is not None and isinstance(text, str):
                text = compressor.compress(text.encode())
            await (ws.send_str(text) if isinstance(text, str) else ws.send_bytes(text))

        sent = 0
        try:
            if self.info is not None:
                await send(_frame({"$type": PREFIX + "info", **self.info}))
            for message in self.messages:
                if not options.wants(message):
                    continue
                if self.live_delay_s and message.seq > self.sealed:
                    await asyncio.sleep(self.live_delay_s)
                await send(message.text)
                self.sent += 1
                sent += 1
                if self.error_after is not None and sent >= self.error_after:
                    error = {"$type": "error", "error": "ConsumerTooSlow", "message": "the consumer fell behind"}
                    await send(json.dumps(error))
                    await ws.close()
                    return ws
                if self.drop_after is not None and sent >= self.drop_after:
                    await _drop(request)
                    return ws
                if sent % 64 == 0:
                    await asyncio.sleep(0)
            async for msg in ws:  # nothing new: stay open and idle, as a Jetstream does, until the client leaves
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            pass
        return ws


async def _drop(request: web.Request) -> None:
    """Cut the connection with no close frame once what was sent has left the process, so the client sees
    exactly ``drop_after`` messages and then a network failure."""
    transport = request.transport
    if transport is None:
        return
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    transport.abort()


__all__ = ["Jetstream2Server"]
