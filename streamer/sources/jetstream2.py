"""The Jetstream v2 live source: ``network.bsky.jetstream.subscribeEvents`` over ``xrpc.v1.json``, by ``seq``.

Jetstream v2 (2026-08) replaced v1's ``/subscribe`` (``wantedCollections``, a ``time_us`` cursor) with an XRPC
subscription: ``$type``-discriminated JSON frames (:mod:`streamer.core.jetstream2_json`), a monotonic 64-bit ``seq``
cursor (inclusive), filters ``kinds``, ``dids``, ``collections`` (``prefix.*`` wildcards), dict-zstd frames only
(the dictionary fetched with ``getZstdDictionary``, and rotated), and a 4xx answer to the handshake for what it
cannot serve (``CursorTooOld`` below its ~36 h lookback, ``UnknownZstdDictionary``, ``InvalidRequest``).

Why not the atproto SDK's ``AsyncJetstreamClient`` for the live tail, though skyattr depends on the SDK: the client
drops a frame it cannot decode without a count or a line (``_handle_frame_decoding_error``), so hostile input would
vanish from the stats that skyattr's readiness and metrics report, and its reconnect loop is not the one every other
skyattr source is kept by (:class:`~streamer.sources.websocket.WebsocketSource`: the same connection counts, backoff,
``max_retries``, ``stop()``). What the SDK does well is used: its dictionary decompressor's format, the XRPC names,
and (for the archive) its planner and segment reader.

Guarantees:

* ``cursor`` is the highest ``seq`` yielded; a (re)connection asks ``cursor=<cursor>`` and the server replays
  inclusively, so an event at or below the cursor is a re-send: dropped, counted in ``duplicates``. A seq that goes
  backwards within a connection is the same (v2's seq is monotonic per instance).
* Every bad message is counted in ``stats.errors`` and skipped: ``too_big``, ``bad_zstd``, ``bad_json``, ``too_deep``
  (as v1), ``bad_frame`` (neither a message nor an error frame) and the decoder's reasons. ``#info`` advisories are
  logged once each (``OutdatedCursor``: events may have been missed) and counted in ``stats.frames``.
* An error frame ends the connection (``ConsumerTooSlow``: reconnect from the cursor, counted; anything else: the
  same, with its name in the log).
* A handshake refused with ``CursorTooOld`` raises :class:`CursorTooOld` naming the cursor and what to do (the live
  tail keeps about 36 hours; older is in the archive, read with a key); ``UnknownZstdDictionary`` fetches the
  dictionary again (a second refusal of the same id gives up compression for good); any other 4xx raises
  :class:`Jetstream2Refused` (a ValueError: the commands print it in one line) with the server's error and message.
  Network failures retry with backoff, keeping the cursor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import urlencode, urlsplit, urlunsplit

import zstandard

from streamer.core.decode import decode_item
from streamer.core.events import is_valid_did
from streamer.core.frames import MAX_FRAME_BYTES, clean_text
from streamer.core.jetstream2_json import NSID
from streamer.core.seqs import Sequenced, fingerprint
from streamer.sources.jetstream import JetstreamMessages, JetstreamUnavailable, check_collection
from streamer.sources.websocket import Knobs, Taken

log = logging.getLogger(__name__)

SUBPROTOCOL = "xrpc.v1.json"
DICTIONARY_NSID = "network.bsky.jetstream.getZstdDictionary"
V2_KINDS = ("commit", "identity", "account", "sync")
LOOKBACK_HOURS = 36  # how far back the live tail serves (Jetstream v2's documented lookback)
_NOTHING: Taken[Sequenced] = Taken()


class Jetstream2Unavailable(JetstreamUnavailable):
    """``max_retries`` consecutive connections delivered nothing new."""


class Jetstream2Refused(ValueError):
    """The server refused the subscription (a 4xx that retrying cannot change): one line for the user."""


class CursorTooOld(Jetstream2Refused):
    """The cursor is below what the live tail keeps."""


def subscribe_url(
    base: str,
    cursor: int | None = None,
    *,
    collections: Iterable[str] = (),
    dids: Iterable[str] = (),
    kinds: Iterable[str] = (),
    dictionary: int | None = None,
    max_message_size: int | None = None,
) -> str:
    """The ``subscribeEvents`` URL of a Jetstream v2 given by its base (``wss://host``, ``https://host``) or its
    ``/xrpc`` or full method URL; ``http(s)`` becomes ``ws(s)``. ValueError naming what is malformed."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a websocket URL: {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(f"/xrpc/{NSID}"):
        path = path.removesuffix("/xrpc") + f"/xrpc/{NSID}"
    query: list[tuple[str, str]] = []
    for c in collections:
        query.append(("collections", check_collection(c)))
    for did in dids:
        if not is_valid_did(did):
            raise ValueError(f"not a DID: {did!r}")
        query.append(("dids", did))
    for kind in kinds:
        if kind not in V2_KINDS:
            raise ValueError(f"not a Jetstream v2 kind: {kind!r} (one of {', '.join(V2_KINDS)})")
        query.append(("kinds", kind))
    if query and any(k == "collections" for k, _ in query) and kinds and "commit" not in kinds:
        raise ValueError("the collections filter applies to commits only, but kinds leaves commits out")
    if cursor is not None and cursor >= 0:
        query.append(("cursor", str(int(cursor))))
    if dictionary is not None:
        query.append(("zstdDictionary", str(int(dictionary))))
    if max_message_size is not None:
        query.append(("maxMessageSizeBytes", str(int(max_message_size))))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def dictionary_url(base: str) -> str:
    """The ``getZstdDictionary`` URL of the same host (HTTP)."""
    parts = urlsplit(subscribe_url(base))
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    return urlunsplit((scheme, parts.netloc, parts.path.replace(NSID, DICTIONARY_NSID), "", ""))


def _xrpc_error(body: bytes) -> tuple[str, str]:
    try:
        obj = json.loads(body)
    except ValueError:
        return "", clean_text(body[:200].decode("utf-8", "replace"))
    if not isinstance(obj, dict):
        return "", ""
    return str(obj.get("error", "")), clean_text(str(obj.get("message", "")))


class Jetstream2Source(JetstreamMessages):
    """Async iterator of :class:`~streamer.core.seqs.Sequenced` items from a Jetstream v2, resuming by ``seq``.

    ``url``: the server (see :func:`subscribe_url`); ``cursor``: resume after this seq (None: live);
    ``collections``/``dids``/``kinds``: the server's filters, passed through; ``compress``: ask for dict-zstd frames
    (the dictionary fetched from the server, or ``zstd_dictionary``: bytes or a file); v2 is at-least-once: what
    applies the items dedupes them by (DID, rev) (:mod:`streamer.core.revs`). The rest as
    :class:`~streamer.sources.jetstream.JetstreamSource`, whose message reading (size bounds, zstd, JSON depth) and
    error counting this source shares (:class:`~streamer.sources.jetstream.JetstreamMessages`)."""

    unavailable = Jetstream2Unavailable

    def __init__(
        self,
        url: str,
        *,
        cursor: int | None = None,
        collections: Sequence[str] = (),
        dids: Sequence[str] = (),
        kinds: Sequence[str] = (),
        compress: bool = False,
        zstd_dictionary: bytes | Path | None = None,
        max_bytes: int = MAX_FRAME_BYTES,
        **knobs: Unpack[Knobs],
    ) -> None:
        if cursor is not None and type(cursor) is not int:
            raise ValueError(f"cursor must be an int (a Jetstream v2 seq) or None: {cursor!r}")
        self.collections, self.dids, self.kinds = tuple(collections), tuple(dids), tuple(kinds)
        subscribe_url(url, cursor, collections=self.collections, dids=self.dids, kinds=self.kinds)  # fail now
        given = Path(zstd_dictionary).read_bytes() if isinstance(zstd_dictionary, str | Path) else zstd_dictionary
        super().__init__(url, cursor=cursor, dictionary=None, max_bytes=max_bytes, subprotocols=(SUBPROTOCOL,), **knobs)
        self.want_compression = compress
        self._dictionary: bytes | None = given
        self._dictionary_id: int | None = None
        self._refused_id: int | None = None
        if given is not None:
            self._use_dictionary(given)

    @property
    def compressed(self) -> bool:
        """Whether frames are asked for dict-zstd (a dictionary in hand and compression not given up)."""
        return self.want_compression and self._dictionary_id is not None

    # -- the hooks ----------------------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self.want_compression and self._dictionary_id is None:
            try:
                blob = await asyncio.to_thread(self._fetch_dictionary)
            except OSError as exc:
                log.warning("cannot fetch the zstd dictionary of %s (%s): reading uncompressed", self.url, exc)
                self.want_compression = False
                return
            self._use_dictionary(blob)

    def _fetch_dictionary(self) -> bytes:
        with urllib.request.urlopen(dictionary_url(self.url), timeout=self.connection.open_timeout) as reply:
            return bytes(reply.read(self.max_bytes + 1))

    def _use_dictionary(self, blob: bytes) -> None:
        try:
            data = zstandard.ZstdCompressionDict(blob)
            dict_id = data.dict_id()
        except zstandard.ZstdError as exc:
            log.warning("the zstd dictionary of %s is unusable (%s): reading uncompressed", self.url, exc)
            self.want_compression = False
            return
        if dict_id == self._refused_id:  # handed back the id the server just refused: give up compression
            log.warning("%s keeps refusing its own zstd dictionary %d: reading uncompressed", self.url, dict_id)
            self.want_compression = False
            return
        self._dictionary, self._dictionary_id = blob, dict_id
        self._dctx = zstandard.ZstdDecompressor(dict_data=data, max_window_size=self._window)

    def subscribe_url(self) -> str:
        return subscribe_url(
            self.url, self._cursor, collections=self.collections, dids=self.dids, kinds=self.kinds,
            dictionary=self._dictionary_id if self.want_compression else None, max_message_size=self._server_max,
        )  # fmt: skip

    def _connect_url(self) -> str:
        return self.subscribe_url()

    def _refused(self, status: int, body: bytes) -> None:
        error, message = _xrpc_error(body)
        if error == "UnknownZstdDictionary":
            log.info("%s retired zstd dictionary %s: fetching the current one", self.url, self._dictionary_id)
            self._refused_id, self._dictionary_id = self._dictionary_id, None
            return
        if error == "CursorTooOld":
            raise CursorTooOld(
                f"{self.url} no longer serves cursor {self._cursor} (its live tail keeps about {LOOKBACK_HOURS} h; "
                "what came before is in its archive): give an archive key (SKYATTR_JETSTREAM2_API_KEY or "
                "--jetstream2-api-key-file) to read it from there, or start afresh with another --checkpoint-dir"
                f"{f' ({message})' if message else ''}"
            )
        raise Jetstream2Refused(f"{self.url} refused the subscription (HTTP {status} {error or ''}): {message}")

    def _take(self, message: bytes | str) -> Taken[Sequenced]:
        data = message if isinstance(message, bytes) else message.encode()
        self.stats.items += 1
        frame = self._parse(data)
        if frame is None:
            return _NOTHING
        kind = frame.get("$type") if isinstance(frame, dict) else None
        if kind == "error":
            error, text = str(frame.get("error", "")), clean_text(str(frame.get("message", "")))
            self.stats.frames[f"error:{error or '?'}"] += 1
            log.warning("%s ended the stream with %s: %s (reconnecting from cursor %s)", self.url, error, text,
                        self._cursor)  # fmt: skip
            return Taken((), end=f"error_{error or 'frame'}")
        if kind != "message" or not isinstance(frame.get("payload"), dict):
            self._count_error("bad_frame", f"frame $type {str(kind)[:40]!r}")
            return _NOTHING
        item = self._accept_payload(frame["payload"])
        return Taken((item,)) if item is not None else _NOTHING

    def _accept_payload(self, payload: dict[str, Any]) -> Sequenced | None:
        decoded = decode_item(payload, jetstream=2)
        if decoded.error:
            self._count_error(decoded.error, decoded.detail)
            return None
        self.stats.frames[decoded.type] += 1
        if decoded.type == "#info":
            info = decoded.info or {}
            self._once(f"info:{info.get('name')}", "%s says %s: %s", info.get("name"), info.get("message"))
            return None
        seq = decoded.seq
        if self._cursor is not None and seq <= self._cursor:
            self.stats.duplicates += 1
            return None
        self._cursor = seq
        return Sequenced.of(decoded, seq, fingerprint(decoded))

    @property
    def seen_at_cursor(self) -> list[int]:
        """Nothing: a v2 seq names one event, so the cursor alone says what was consumed."""
        return []


__all__ = [
    "SUBPROTOCOL",
    "CursorTooOld",
    "Jetstream2Refused",
    "Jetstream2Source",
    "Jetstream2Unavailable",
    "dictionary_url",
    "subscribe_url",
]
