"""The Jetstream live source: events from a Jetstream ``/subscribe`` websocket, resumable and never fatal.

Why Jetstream beside the relay (:mod:`streamer.sources.firehose`): Jetstream (github.com/bluesky-social/jetstream)
serves the firehose as one small JSON object per repo operation, filtered server side by collection and DID and
optionally zstd-compressed, so following ``app.bsky.*`` costs a fraction of the relay's bandwidth and no CAR/CBOR
decoding. The connection is kept by the websocket sources' one reconnect loop
(:class:`streamer.sources.websocket.WebsocketSource`: backoff, ``max_retries``, ``idle_timeout``, connection counts,
``stop()``/``aclose()``), as the relay's is; this module says what a message yields. Every message is decoded
once, by :func:`streamer.core.decode.decode_item`, and handed on as a :class:`streamer.core.seqs.Sequenced`.

Guarantees and decisions:

* ``cursor`` is the highest ``time_us`` yielded (None before anything); every (re)connection asks for
  ``?cursor=<cursor>``, and Jetstream replays from that time *inclusive*. So the source remembers the fingerprints
  (:func:`streamer.core.seqs.fingerprint`, a multiset) of the events it yielded at exactly that ``time_us``; on the
  next connection an event at the asked time with a remembered fingerprint is a re-send, and any event *below* the
  asked time is one too (a server replaying from earlier). Both are dropped and counted in ``duplicates``;
  everything else is new. As long as the server's ``time_us`` is monotone (Jetstream's is its own receive clock),
  each event is therefore yielded exactly once across any number of dropped connections.
* Within one connection an event whose ``time_us`` goes backwards (below the cursor, not below the asked time) is
  yielded and counted in ``out_of_order``; the cursor does not move back, so a reconnect never re-fetches what was
  applied. Each item's ``source_cursor`` is the cursor after it (the event's ``time_us``, or the higher cursor for an
  out-of-order one): the position a checkpoint taken after applying it resumes from.
* Resuming from a checkpoint (``cursor=`` given): events at exactly that ``time_us`` are yielded again unless their
  fingerprints are passed as ``seen`` (``seen_at_cursor`` hands them out for the checkpoint); without them, delivery
  at the boundary is at-least-once, as Jetstream documents.
* Messages are read as bytes (``websockets`` does not then validate text frames: a text message that is not UTF-8
  is one counted ``bad_json``, not a failed connection that would be re-sent on every reconnect). One that starts
  with the zstd magic is decompressed (with ``zstd_dictionary``, which Jetstream's ``compress=true`` needs, or as
  plain zstd), by a streaming read bounded at ``max_bytes``: a frame claiming a terabyte costs nothing. Anything
  else is parsed as JSON. Every bad message is counted in ``stats.errors`` and skipped: ``too_big`` (over
  ``max_bytes``, compressed or not), ``bad_zstd``, ``bad_json`` (not JSON, not an object, not UTF-8), ``too_deep``
  (a text with many brackets is measured before parsing, so a deep one never reaches the parser's recursion), and
  the reasons of ``decode_item``. The stream goes on.
* A message over the websocket's ``max_size`` makes ``websockets`` fail the connection (close code 1009); it is
  counted as ``too_big``, and the following connections ask ``maxMessageSizeBytes=max_size``, so the server leaves
  it out instead of sending it again forever.
* Connection failures are retried with backoff, keeping the cursor. ``max_retries`` bounds how often in a row a
  connection may deliver nothing new before :class:`JetstreamUnavailable` is raised (None: forever, as a daemon
  should). Anything else (a bug) propagates. A malformed URL or filter fails at construction with a ValueError
  naming it, an unreadable dictionary file with its OSError.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import zstandard

from streamer.core.decode import decode_item
from streamer.core.events import is_valid_did, is_valid_nsid
from streamer.core.frames import MAX_DEPTH, MAX_FRAME_BYTES
from streamer.core.logonce import OncePerKind
from streamer.core.seqs import Sequenced, fingerprint
from streamer.sources.endpoints import JETSTREAM_PATH as SUBSCRIBE_PATH
from streamer.sources.websocket import Knobs, Taken, WebsocketSource

log = logging.getLogger(__name__)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Jetstream's own limits on a subscription's filters.
MAX_WANTED_COLLECTIONS = 100
MAX_WANTED_DIDS = 10_000
# Fingerprints remembered at the cursor's time_us: a server sending more events at one microsecond than this is
# hostile; past it, re-sends at that time are no longer recognised (at-least-once), memory stays bounded.
MAX_AT_CURSOR = 65_536
_NOTHING: Taken[Sequenced] = Taken()
# A message with at most this many '[' and '{' cannot nest deep enough to matter: no pre-scan needed.
_SCAN_OPENS = 1000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SEGMENT = re.compile(r"[A-Za-z0-9-]+")


class JetstreamUnavailable(ConnectionError):
    """``max_retries`` consecutive connections delivered nothing new."""


def _as_list(values: str | Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return list(values)


def check_collection(value: object) -> str:
    """``value`` if it is what ``wantedCollections`` takes: an NSID (``app.bsky.feed.post``) or a prefix ending in
    ``.*`` (``app.bsky.feed.*``); else ValueError naming it."""
    if isinstance(value, str):
        if value.endswith(".*"):
            segments = value[:-2].split(".")
            if len(value) <= 317 and all(_SEGMENT.fullmatch(s) for s in segments):
                return value
        elif is_valid_nsid(value):
            return value
    raise ValueError(f"not a collection NSID or NSID prefix ending in '.*': {value!r}")


def jetstream_url(
    base: str,
    cursor: int | None = None,
    wanted_collections: str | Iterable[str] = (),
    wanted_dids: str | Iterable[str] = (),
    *,
    compress: bool = False,
    max_message_size: int | None = None,
) -> str:
    """The ``/subscribe`` URL of a Jetstream given by its base (``wss://host``, ``https://host``) or full endpoint
    URL (``wss://host/subscribe``); ``http(s)`` becomes ``ws(s)``. Filters already in ``base`` are kept, the ones
    given are added; ``cursor`` and ``compress`` are this function's alone (a negative cursor means none, as ``-1``
    in a fresh checkpoint does). Raises ValueError naming what is malformed."""
    try:
        parts = urlsplit(base)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        ok = scheme in ("ws", "wss") and bool(parts.hostname)
        _ = parts.port  # raises ValueError on a port that is not a number
    except (ValueError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"not a websocket URL: {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(SUBSCRIBE_PATH):
        path += SUBSCRIBE_PATH
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("cursor", "compress")]
    wanted = [("wantedCollections", check_collection(c)) for c in _as_list(wanted_collections)]
    for did in _as_list(wanted_dids):
        if not is_valid_did(did):
            raise ValueError(f"not a DID: {did!r}")
        wanted.append(("wantedDids", did))
    for pair in wanted:
        if pair not in query:
            query.append(pair)
    if sum(k == "wantedCollections" for k, _ in query) > MAX_WANTED_COLLECTIONS:
        raise ValueError(f"more than {MAX_WANTED_COLLECTIONS} wantedCollections (Jetstream's limit)")
    if sum(k == "wantedDids" for k, _ in query) > MAX_WANTED_DIDS:
        raise ValueError(f"more than {MAX_WANTED_DIDS} wantedDids (Jetstream's limit)")
    if cursor is not None:
        if type(cursor) is not int:
            raise ValueError(f"cursor must be an int (unix microseconds): {cursor!r}")
        if cursor >= 0:
            query.append(("cursor", str(cursor)))
    if compress:
        query.append(("compress", "true"))
    if max_message_size is not None:
        query = [(k, v) for k, v in query if k != "maxMessageSizeBytes"] + [
            ("maxMessageSizeBytes", str(max_message_size))
        ]
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _load_dictionary(value: bytes | str | Path | None) -> zstandard.ZstdCompressionDict | None:
    if value is None:
        return None
    data = Path(value).read_bytes() if isinstance(value, str | Path) else bytes(value)
    if not data:
        raise ValueError("empty zstd dictionary")
    return zstandard.ZstdCompressionDict(data)


def too_deep_to_parse(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``data`` must not reach the parser: more than ``_SCAN_OPENS`` brackets (fewer cannot
    nest deep enough to strain the parser's recursion, and :func:`~streamer.core.jetstream_json.from_jetstream`
    refuses what nests more than ``limit``) *and* nesting more than ``limit`` deep. Found without parsing, so no
    recursion limit matters: strings are cut out, then the running depth of the brackets left is summed in numpy."""
    if data.count(b"[") + data.count(b"{") <= _SCAN_OPENS:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == 0x5B) | (codes == 0x7B), 1, -1).astype(np.int32)
    return int(np.max(np.cumsum(steps))) > limit


class JetstreamMessages(WebsocketSource[Sequenced]):
    """What both Jetstream versions read alike: a message as bytes, bounded at ``max_bytes`` (compressed or not),
    zstd-decompressed by a streaming read, measured for depth before JSON parsing, each bad one counted by reason and
    said once per reason; a message over the websocket limit counted and left out of the next connections
    (``maxMessageSizeBytes``). Each version says what its cursor is and what a parsed message yields."""

    def __init__(
        self,
        url: str,
        *,
        cursor: int | None,
        dictionary: zstandard.ZstdCompressionDict | None,
        max_bytes: int,
        subprotocols: tuple[str, ...] = (),
        **knobs: Unpack[Knobs],
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        super().__init__(url, text=False, subprotocols=subprotocols, **knobs)
        self.max_bytes = max_bytes
        self._window = 1 << max(23, (max_bytes - 1).bit_length())  # a frame's window never needs more than that
        self._dctx = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=self._window)
        self._warn = OncePerKind(log)
        self._cursor = cursor if cursor is None or cursor >= 0 else None
        self._server_max: int | None = None  # maxMessageSizeBytes to ask for, after a message too big for us

    @property
    def cursor(self) -> int | None:
        """Where a (re)connection resumes: the position of the last item yielded (or given); None before any."""
        return self._cursor

    def __aiter__(self) -> AsyncIterator[Sequenced]:
        return self._track(self._connections())

    def _too_big(self, progressed: bool) -> bool:
        self._server_max = self.connection.max_size  # ask the server to leave such messages out
        self._count_error("too_big", f"a message over the websocket limit of {self.connection.max_size} bytes")
        return False

    def _parse(self, message: bytes) -> Any:
        """The message as parsed JSON, or None with the reason counted."""
        if len(message) > self.max_bytes:
            self._count_error("too_big", f"a {len(message)}-byte message")
            return None
        if message[:4] == ZSTD_MAGIC:
            message = self._decompress(message)  # type: ignore[assignment]
            if message is None:
                return None
        if too_deep_to_parse(message):
            self._count_error("too_deep", f"JSON nested deeper than {MAX_DEPTH}")
            return None
        try:
            return json.loads(message)
        except RecursionError:
            self._count_error("too_deep", "JSON nested too deep to parse")
        except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
            self._count_error("bad_json", f"{type(exc).__name__}: {exc}")
        return None

    def _decompress(self, data: bytes) -> bytes | None:
        """One zstd frame, decompressed to at most ``max_bytes`` (more is ``too_big``, never allocated)."""
        try:
            declared = zstandard.get_frame_parameters(data).content_size
            if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > self.max_bytes:
                self._count_error("too_big", f"a zstd frame declaring {declared} bytes")
                return None
            chunks: list[bytes] = []
            size = 0
            with self._dctx.stream_reader(data) as reader:
                while size <= self.max_bytes:
                    chunk = reader.read(self.max_bytes + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except zstandard.ZstdError as exc:
            self._count_error("bad_zstd", str(exc))
            return None
        if size > self.max_bytes:
            self._count_error("too_big", f"a zstd frame decompressing to more than {self.max_bytes} bytes")
            return None
        if declared != zstandard.CONTENTSIZE_UNKNOWN and size != declared:
            self._count_error("bad_zstd", f"a truncated zstd frame ({size} of {declared} bytes)")
            return None
        return b"".join(chunks)

    def _once(self, kind: str, message: str, *args: object) -> None:
        self._warn.log(kind, message, self.url, *args)

    def _count_error(self, reason: str, detail: str) -> None:
        hint = " (Jetstream's compress=true needs its zstd dictionary)" if reason == "bad_zstd" else ""
        self._warn.skipped(self.stats.errors, reason, detail + hint, "a Jetstream message")


class JetstreamSource(JetstreamMessages):
    """Async iterator of :class:`~streamer.core.seqs.Sequenced` items from a Jetstream, resuming by ``time_us``.

    ``url``: the Jetstream (see :func:`jetstream_url`). ``cursor``: resume from this ``time_us`` (None: live).
    ``wanted_collections``/``wanted_dids``: Jetstream's filters. ``compress``: ask for zstd frames;
    ``zstd_dictionary``: Jetstream's custom dictionary (bytes or a file), needed to read its compressed frames.
    ``backoff``: reconnect delays. ``max_retries``: see the module doc.
    ``stop``: an event that ends the iteration cleanly when set (also :meth:`stop`). ``idle_timeout``: reconnect
    when nothing arrived for that long. ``max_size``: the websocket's message limit; ``max_bytes``: the limit on a
    message (decompressed), above it a counted ``too_big``. ``stats``: the :class:`SourceStats` to count into
    (shared with the dispatcher). ``seen``: fingerprints of the events already consumed at ``cursor``'s
    ``time_us`` (from a checkpoint; see :attr:`seen_at_cursor`). Use as an async context manager so the connection
    is closed when the consumer stops early.
    """

    unavailable = JetstreamUnavailable

    def __init__(
        self,
        url: str,
        *,
        cursor: int | None = None,
        wanted_collections: Sequence[str] = (),
        wanted_dids: Sequence[str] = (),
        compress: bool = False,
        zstd_dictionary: bytes | Path | None = None,
        max_bytes: int = MAX_FRAME_BYTES,
        seen: Iterable[int] = (),
        **knobs: Unpack[Knobs],
    ) -> None:
        if cursor is not None and type(cursor) is not int:
            raise ValueError(f"cursor must be an int (unix microseconds) or None: {cursor!r}")
        self.wanted_collections = tuple(_as_list(wanted_collections))
        self.wanted_dids = tuple(_as_list(wanted_dids))
        # fail now on a malformed URL or filter, not at the first connection
        jetstream_url(url, cursor, self.wanted_collections, self.wanted_dids, compress=compress)
        super().__init__(url, cursor=cursor, dictionary=_load_dictionary(zstd_dictionary), max_bytes=max_bytes, **knobs)
        self.compress = compress
        # fingerprints of the events yielded at exactly the cursor's time_us (a multiset)
        self._at_cursor: Counter[int] = Counter(seen) if self._cursor is not None else Counter()
        self._asked: int | None = None  # the cursor the open connection asked for
        self._replay: Counter[int] = Counter()  # of _at_cursor, what the open connection has not re-sent yet

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def seen_at_cursor(self) -> list[int]:
        """Fingerprints of the events consumed at exactly :attr:`cursor`'s ``time_us``: what a checkpoint keeps
        with the cursor and passes back as ``seen``, so a resume drops their re-sends too."""
        return sorted(self._at_cursor.elements())

    def subscribe_url(self) -> str:
        """The URL the next connection asks for."""
        return jetstream_url(
            self.url,
            self._cursor,
            self.wanted_collections,
            self.wanted_dids,
            compress=self.compress,
            max_message_size=self._server_max,
        )

    # -- the hooks of the reconnect loop (streamer.sources.websocket) ---------------------------------------------

    def _connect_url(self) -> str:
        self._asked = self._cursor
        self._replay = Counter(self._at_cursor) if self._asked is not None else Counter()
        return self.subscribe_url()

    def _take(self, message: bytes | str) -> Taken[Sequenced]:
        item = self._accept(message if isinstance(message, bytes) else message.encode())
        return Taken((item,)) if item is not None else _NOTHING

    def _accept(self, message: bytes) -> Sequenced | None:
        """Count one message and judge its ``time_us`` (see the module doc): the item to yield, or None."""
        self.stats.items += 1
        obj = self._parse(message)
        if obj is None:
            return None
        decoded = decode_item(obj)
        if decoded.error:
            self._count_error(decoded.error, decoded.detail)
            return None
        self.stats.frames[decoded.type] += 1
        time_us = obj["time_us"]  # decoded without error: an int in range
        print_ = fingerprint(decoded)
        asked = self._asked
        if asked is not None and time_us <= asked and (time_us < asked or self._replay[print_] > 0):
            if time_us == asked:
                self._replay[print_] -= 1
            self.stats.duplicates += 1
            return None
        cursor = self._cursor
        if cursor is None or time_us > cursor:
            self._cursor = time_us
            self._at_cursor = Counter({print_: 1})
        elif time_us == cursor:
            if len(self._at_cursor) < MAX_AT_CURSOR:
                self._at_cursor[print_] += 1
        else:
            self.stats.out_of_order += 1
            self._once("out_of_order", "%s sent time_us %d after %d (kept, counted as out of order)", time_us, cursor)
        assert self._cursor is not None
        return Sequenced.of(decoded, self._cursor, print_)
