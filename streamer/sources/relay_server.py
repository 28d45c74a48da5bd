"""A local ``com.atproto.sync.subscribeRepos`` relay that serves a recorded archive over a real websocket.

Why: the live code path (websocket client, cursor resume, reconnect, ``#info`` and error frames) has to be tested
end to end against real frames without the public network. :class:`Relay` speaks the same protocol as a Bluesky
relay: ``GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]``, one binary message per frame, frames with
``seq > cursor``; an ``#info`` ``OutdatedCursor`` frame first when the cursor is older than what the archive holds;
an error frame ``FutureCursor`` and a close when the cursor is beyond the last frame. It also answers the XRPC
queries relays' consumers make, and ``GET /{did}`` with the DID documents found beside the archive, as a
PLC-directory stand-in (:mod:`streamer.sources.did_documents`): a verifying consumer needs nothing else.

The start scans the archive once to learn its seq range, which the cursor checks need. An archive of up to
``cache_bytes`` of frames is kept from that scan and shared by every connection; a bigger one is streamed from disk
on every connection (memory stays flat whatever the archive size, but each open stream holds its own reader,
megabytes of decompression buffers). Frames without a readable seq (should an archive
hold any) are passed through in place once the stream is past the cursor, like any other frame.

When the archive is exhausted the connection stays open and idle, as a real relay's does when nothing new happens;
the client decides when to leave. ``drop_after`` cuts a connection after that many frames without a close frame
(what a network failure looks like to the client), to test reconnect and resume.

Bounded like a public relay must be: at most ``max_clients`` connections (one more is answered HTTP 503 at the
handshake), and a client that stops reading is cut off once its send has waited ``send_timeout`` seconds, the
buffer per connection being held at ``write_limit`` bytes; each open stream also holds its own archive reader, so
without these bounds idle clients would each pin megabytes for as long as they stay.

:class:`Misbehaviour` makes it go wrong in the ways a real relay can, so the client's handling of seqs is tested
against real frames: restart its sequence (from 1, or keeping only its frames up to some seq: a lower head), skip
seqs, send neighbours out of order, ignore the cursor. Frames keep their content; only the body's ``seq`` is
rewritten where the relay renumbers (decoded and re-encoded with libipld, byte-exact otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import libipld
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from streamer import __version__
from streamer.core.events import is_valid_did, parse_time_us
from streamer.core.frames import MAX_FRAME_BYTES
from streamer.sources import did_documents
from streamer.sources.archive import ReadReport, read_archive
from streamer.sources.endpoints import SUBSCRIBE_PATH

log = logging.getLogger(__name__)

# A relay never sends more than the protocol limit; headroom so oversize test frames reach the client's checks.
SERVER_MAX_SIZE = 2 * MAX_FRAME_BYTES
DRAIN_TIMEOUT_S = 2.0
DEFAULT_MAX_CLIENTS = 64
DEFAULT_SEND_TIMEOUT_S = 10.0  # a consumer that cannot take one frame in this long is not keeping up
DEFAULT_WRITE_LIMIT = 2**15  # bytes buffered per connection before send() waits (websockets' own default)
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


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


def with_seq(frame: bytes, seq: int) -> bytes:
    """``frame`` with its body's ``seq`` replaced, as a relay that numbers its log anew would send it."""
    header, body = libipld.decode_dag_cbor_multi(frame)
    body["seq"] = seq
    return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How a :class:`Relay` goes wrong (all off by default). Positions count frames of the archive from 0.

    ``restart_at``: the relay restarts just before it would send archive frame K: the connection is cut and from
    then on it holds only its frames with seq <= ``restart_head`` (0: none, so it numbers from 1 again; higher: a
    relay that lost its tail, a *lower head*), followed by archive frames K... numbered ``restart_head + 1``, ...
    A cursor beyond that new head gets ``FutureCursor`` (``future_cursor``; False: the cursor is ignored and the
    stream starts with the oldest frame held, as a relay that does not check). ``restart_mid_stream``: keep the
    connection and go on with the new numbers on it. ``skip_every``: every n-th archive frame is never sent (its
    seq is a hole). ``swap_every``: every n-th frame sent goes out after the one following it. ``ignore_cursor``:
    every connection starts from the oldest frame, re-sending what the client has."""

    restart_at: int | None = None
    restart_head: int = 0
    restart_mid_stream: bool = False
    future_cursor: bool = True
    ignore_cursor: bool = False
    skip_every: int | None = None
    swap_every: int | None = None

    def __post_init__(self) -> None:
        if self.restart_at is not None and self.restart_at < 1:
            raise ValueError("restart_at must be at least 1")
        if self.restart_head < 0:
            raise ValueError("restart_head must be >= 0")
        for name in ("skip_every", "swap_every"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be at least 2")


@dataclass(frozen=True, slots=True)
class RepoHead:
    """A repo's latest commit in the archive, what ``listRepos`` and ``getLatestCommit`` report."""

    cid: str
    rev: str
    active: bool = True
    status: str | None = None


@dataclass(frozen=True, slots=True)
class ArchiveRange:
    """What the start-up scan learned: first and last seq, how many raw frames the archive holds, and each repo's
    latest commit (by DID)."""

    first_seq: int
    last_seq: int
    frames: int
    repos: dict[str, RepoHead] = field(default_factory=dict)
    first_time_us: int | None = None  # the first commit time: where a live relay's clock starts
    seqs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # of the frames with a seq and a time
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their commit times (not monotone)


def _repo_update(frame: bytes, repos: dict[str, RepoHead]) -> None:
    """Note a ``#commit``'s repo head, or an ``#account``'s status, in ``repos`` (frames that say neither: nothing)."""
    try:
        header, body = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, TypeError, OverflowError):
        return
    if not isinstance(header, dict) or not isinstance(body, dict):
        return
    t, did = header.get("t"), body.get("repo") if header.get("t") == "#commit" else body.get("did")
    if not is_valid_did(did):
        return
    if t == "#commit" and isinstance(body.get("commit"), bytes) and isinstance(body.get("rev"), str):
        try:
            cid = libipld.encode_cid(body["commit"])
        except (ValueError, TypeError):
            return
        old = repos.get(did)
        repos[did] = RepoHead(cid, body["rev"], old.active if old else True, old.status if old else None)
    elif t == "#account" and did in repos and isinstance(body.get("active"), bool):
        status = body.get("status") if isinstance(body.get("status"), str) else None
        repos[did] = RepoHead(repos[did].cid, repos[did].rev, body["active"], None if body["active"] else status)


def scan_archive(path: str | Path, keep: list[bytes] | None = None, keep_bytes: int = 0) -> ArchiveRange:
    """Seq range of a raw-frame archive. Raises ValueError when it holds no frame with a seq (e.g. Jetstream
    JSON, which a ``subscribeRepos`` relay cannot serve). With ``keep``, the frames are also appended to it as long
    as they total at most ``keep_bytes``; beyond that it is emptied (the archive is too big to hold)."""
    first = last = -1
    first_time: int | None = None
    seqs, times = array("q"), array("q")
    frames = 0
    kept = 0
    repos: dict[str, RepoHead] = {}
    report = ReadReport()
    for item in read_archive(path, report):
        if item.frame is None:
            raise ValueError(f"{path} holds Jetstream JSON, not relay frames: a subscribeRepos relay cannot serve it")
        frames += 1
        _repo_update(item.frame, repos)
        seq, time_us = peek(item.frame)
        if first_time is None and time_us is not None:
            first_time = time_us
        if seq >= 0 and time_us is not None:
            seqs.append(seq)
            times.append(time_us)
        if seq >= 0:
            first = seq if first < 0 else first
            last = seq
        if keep is not None and kept >= 0:
            kept += len(item.frame)
            if kept <= keep_bytes:
                keep.append(item.frame)
            else:
                keep.clear()
                kept = -1
    for err in report.errors:
        log.warning("archive: %s", err)
    if first < 0:
        raise ValueError(f"{path} holds no relay frame with a seq")
    return ArchiveRange(
        first, last, frames, repos, first_time, np.frombuffer(seqs, np.int64), np.frombuffer(times, np.int64)
    )


def _json_response(connection: ServerConnection, status: http.HTTPStatus, payload: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(payload))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class Relay:
    """Serve ``archive`` as ``subscribeRepos`` on ``host:port`` (port 0 picks a free one). Use as an async
    context manager; ``url`` is the base a client connects to (``ws://127.0.0.1:PORT``).

    ``speed``: None sends as fast as the client reads; a number paces frames by event time (the commit ``time``)
    at that multiple of real time. ``drop_after``: cut every connection abruptly after that many frames.
    ``max_clients`` (None: no cap), ``send_timeout`` (None: wait forever) and ``write_limit``: the bounds in the
    module doc, as is ``cache_bytes``. ``misbehave``: see :class:`Misbehaviour`. Counters: ``connections``,
    ``frames_sent``, ``drops``, ``refused`` (over the cap), ``slow_dropped``, ``frames_skipped``, ``swaps``,
    ``restarts``; ``max_buffered``: the most bytes one connection ever had waiting in its write buffer.
    """

    def __init__(
        self,
        archive: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        drop_after: int | None = None,
        max_clients: int | None = DEFAULT_MAX_CLIENTS,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT_S,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        misbehave: Misbehaviour | None = None,
        live: bool = False,
        documents: did_documents.Directory | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for as fast as the client reads)")
        if drop_after is not None and drop_after < 1:
            raise ValueError("drop_after must be at least 1")
        if max_clients is not None and max_clients < 1:
            raise ValueError("max_clients must be at least 1 (or None for no cap)")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError("send_timeout must be positive (or None to wait forever)")
        if write_limit < 1:
            raise ValueError("write_limit must be at least 1 byte")
        self.archive = Path(archive)
        self.host, self.port = host, port
        self.speed, self.drop_after = speed, drop_after
        self.max_clients, self.send_timeout, self.write_limit = max_clients, send_timeout, write_limit
        self.cache_bytes = cache_bytes
        self._cache: list[bytes] = []
        self.misbehave = misbehave or Misbehaviour()
        self.live = live
        self.documents = documents  # None: the document files beside the archive, read at start
        self._t0 = 0.0  # wall clock at start: a live relay's archive "happens" from then on, at ``speed``
        self.range: ArchiveRange | None = None
        self.connections = 0
        self.frames_sent = 0
        self.drops = 0
        self.refused = 0
        self.slow_dropped = 0
        self.frames_skipped = 0
        self.swaps = 0
        self.restarts = 0
        self.max_buffered = 0
        self.epoch = 0  # the relay's life: 1 after a Misbehaviour restart
        self._clients: set[ServerConnection] = set()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def clients(self) -> int:
        """Connections open now (handshakes admitted and not yet closed)."""
        self._clients = {c for c in self._clients if c.protocol.state is not State.CLOSED}
        return len(self._clients)

    async def start(self) -> None:
        self.range = await asyncio.to_thread(scan_archive, self.archive, self._cache, self.cache_bytes)
        if self.documents is None:
            self.documents = await asyncio.to_thread(did_documents.Directory, did_documents.beside(self.archive))
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_request,
            max_size=SERVER_MAX_SIZE,
            write_limit=self.write_limit,
            compression=None,  # CBOR with hashes barely compresses; deflate would only cost CPU on both ends
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
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

    def holds(self) -> tuple[int, int]:
        """``(first, last)`` seq the relay holds in its current life (after a restart: see :class:`Misbehaviour`;
        the archive's seqs are taken to ascend)."""
        assert self.range is not None
        r, m = self.range, self.misbehave
        if self.epoch == 0 or m.restart_at is None:
            return r.first_seq, r.last_seq
        renumbered = max(0, r.frames - m.restart_at)
        first = r.first_seq if m.restart_head >= r.first_seq else m.restart_head + 1
        last = m.restart_head + renumbered if renumbered else min(m.restart_head, r.last_seq)
        return first, last

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Admit a handshake, or answer it: 404 off the one path served, 503 beyond ``max_clients``. Counted here,
        before the handler runs, so a burst of handshakes cannot all slip under the cap."""
        path = urlsplit(request.path).path
        if path != SUBSCRIBE_PATH:
            if path.startswith("/xrpc/"):
                return self._xrpc(connection, path[len("/xrpc/") :], parse_qs(urlsplit(request.path).query))
            if path.startswith("/did:"):
                assert self.documents is not None
                origin = f"http://{request.headers.get('Host') or f'{self.host}:{self.port}'}"
                status, doc = self.documents.resolve(unquote(path[1:]), origin)
                return _json_response(connection, http.HTTPStatus(status), doc)
            return connection.respond(
                http.HTTPStatus.NOT_FOUND, f"only {SUBSCRIBE_PATH}, /xrpc/ and /did:… (DID documents) are served here\n"
            )
        if self.max_clients is not None:
            if self.clients >= self.max_clients:
                self.refused += 1
                if self.refused == 1 or self.refused % 100 == 0:
                    log.warning("relay: %d client(s) refused (at most %d at once)", self.refused, self.max_clients)
                return connection.respond(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, f"too many clients (at most {self.max_clients})\n"
                )
            self._clients.add(connection)
        return None

    def _xrpc(self, connection: ServerConnection, method: str, query: dict[str, list[str]]) -> Response:
        """The XRPC queries a relay's consumers call besides the firehose (their JSON as the lexicons define it):
        ``_health``, ``com.atproto.sync.listHosts``, ``listRepos`` (by DID, ``limit`` 1-1000, ``cursor`` the last
        DID of the previous page), ``getLatestCommit`` and ``getRepoStatus`` (``did``), and the
        ``com.atproto.server.describeServer`` a relay asks of a PDS before it crawls one; an unknown DID is
        ``RepoNotFound`` and an unknown method ``MethodNotImplemented``, as XRPC says."""
        assert self.range is not None
        repos = self.range.repos

        def reply(status: http.HTTPStatus, payload: dict[str, Any]) -> Response:
            return _json_response(connection, status, payload)

        def fail(status: http.HTTPStatus, error: str, message: str) -> Response:
            return reply(status, {"error": error, "message": message})

        def did_of() -> str | None:
            did = (query.get("did") or [""])[-1]
            return did if did in repos else None

        if method == "_health":
            return reply(http.HTTPStatus.OK, {"version": f"skyattr relay {__version__}"})
        if method == "com.atproto.server.describeServer":  # what a relay asks a PDS before crawling it
            return reply(http.HTTPStatus.OK, {"did": f"did:web:{self.host}", "availableUserDomains": []})
        if method == "com.atproto.sync.listHosts":
            host = {"hostname": self.host, "seq": self.holds()[1], "accountCount": len(repos), "status": "active"}
            return reply(http.HTTPStatus.OK, {"hosts": [host]})
        if method == "com.atproto.sync.listRepos":
            try:
                limit = int((query.get("limit") or ["500"])[-1])
            except ValueError:
                return fail(http.HTTPStatus.BAD_REQUEST, "InvalidRequest", "limit must be an integer")
            if not 1 <= limit <= 1000:
                return fail(http.HTTPStatus.BAD_REQUEST, "InvalidRequest", "limit must be between 1 and 1000")
            after = (query.get("cursor") or [""])[-1]
            dids = sorted(d for d in repos if d > after)[:limit]
            page: dict[str, Any] = {
                "repos": [
                    {"did": d, "head": repos[d].cid, "rev": repos[d].rev, "active": repos[d].active}
                    | ({"status": repos[d].status} if repos[d].status else {})
                    for d in dids
                ]
            }
            if len(dids) == limit and dids[-1] != max(repos, default=""):
                page["cursor"] = dids[-1]
            return reply(http.HTTPStatus.OK, page)
        if method in ("com.atproto.sync.getLatestCommit", "com.atproto.sync.getRepoStatus"):
            did = did_of()
            if did is None:
                return fail(http.HTTPStatus.BAD_REQUEST, "RepoNotFound", "this relay's archive holds no such repo")
            head = repos[did]
            if method == "com.atproto.sync.getLatestCommit":
                return reply(http.HTTPStatus.OK, {"cid": head.cid, "rev": head.rev})
            status = {"did": did, "active": head.active, "rev": head.rev}
            return reply(http.HTTPStatus.OK, status | ({"status": head.status} if head.status else {}))
        return fail(http.HTTPStatus.NOT_IMPLEMENTED, "MethodNotImplemented", f"{method} is not served by this relay")

    async def _handle(self, ws: ServerConnection) -> None:
        assert self.range is not None
        self.connections += 1
        m = self.misbehave
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        cursor: int | None = None
        try:
            if "cursor" in query:
                try:
                    cursor = int(query["cursor"][-1])
                except ValueError:
                    await self._fail(ws, "InvalidRequest", "cursor must be an integer")
                    return
            if m.ignore_cursor:
                cursor = None
            first, last = self.holds()
            if self.live:
                last = self.head_seq()  # a live relay's present, not its archive's end
            if cursor is not None and cursor > last:
                if m.future_cursor:
                    await self._fail(ws, "FutureCursor", "Cursor in the future.")
                    return
                cursor = None  # a relay that does not check: its oldest frame first, whatever was asked
            if cursor is not None and cursor < first - 1:
                # Seqs between the cursor and the first archived frame may have existed: say so, like a relay
                # whose backfill window no longer reaches back that far, then start from the oldest held.
                await ws.send(info_frame("OutdatedCursor", "Requested cursor exceeded limit. Possibly missing events"))
            if await self._stream(ws, cursor):
                await ws.wait_closed()  # archive exhausted: stay open and idle, as a relay with no news does
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)

    def _history(self, epoch: int) -> Iterator[tuple[int, bytes]]:
        """``(archive position, frame)`` of what the relay holds in life ``epoch``, renumbered after a restart."""
        m = self.misbehave
        for index, frame in enumerate(self._frames()):
            if epoch == 0 or m.restart_at is None:
                yield index, frame
            elif index >= m.restart_at:
                yield index, with_seq(frame, m.restart_head + 1 + index - m.restart_at)
            elif 0 <= peek(frame)[0] <= m.restart_head:
                yield index, frame

    def now_us(self) -> float:
        """A live relay's present in event time: the archive's first commit time plus the wall time since start
        times ``speed`` (without a speed the whole archive happened at start)."""
        assert self.range is not None
        if self.speed is None or self.range.first_time_us is None:
            return float("inf")
        return self.range.first_time_us + (time.monotonic() - self._t0) * 1e6 * self.speed

    def head_seq(self) -> int:
        """The newest seq that has happened on a live relay's clock (-1: none yet)."""
        assert self.range is not None
        happened = self.range.seqs[self.range.times <= self.now_us()]
        return int(happened.max()) if len(happened) else -1

    async def _stream(self, ws: ServerConnection, cursor: int | None) -> bool:
        """Send the frames after ``cursor``; without one, all of them (``live`` False) or, as a relay does, only
        those that happen from now on. False when the connection was cut."""
        if self.live:
            return await self._stream_live(ws, cursor)
        m = self.misbehave
        epoch = self.epoch
        sent = 0
        passed = 0  # frames past the cursor and the skips: what swap_every counts
        held: bytes | None = None  # a frame swapped behind the next one
        started = cursor is None  # past the cursor: seq-less frames from here on go out in place
        clock: tuple[float, int] | None = None  # (wall time, event time) of the first paced frame
        renumber = False  # restarted mid-stream: the rest of this life-0 history goes out with the new numbers
        for index, frame in self._history(epoch):
            if epoch < self.epoch:  # another connection restarted the relay: this one goes down with it
                await self._drop(ws)
                return False
            if m.restart_at is not None and index >= m.restart_at and self.epoch == 0:
                self.epoch, self.restarts = 1, self.restarts + 1
                log.info("relay: restarting its sequence at archive frame %d (head %d)", index, m.restart_head)
                if not m.restart_mid_stream:
                    await self._drop(ws)
                    return False
                epoch, renumber = 1, True
            if renumber:
                assert m.restart_at is not None
                frame = with_seq(frame, m.restart_head + 1 + index - m.restart_at)
            seq, time_us = peek(frame)
            if cursor is not None:
                if seq >= 0:
                    if seq <= cursor:
                        continue  # also in an out-of-order archive: never resend what the client has
                    started = True
                elif not started:
                    continue
            if m.skip_every is not None and (index + 1) % m.skip_every == 0:
                self.frames_skipped += 1
                continue
            if self.speed is not None and time_us is not None:
                if clock is None:
                    clock = (time.monotonic(), time_us)
                delay = clock[0] + (time_us - clock[1]) / 1e6 / self.speed - time.monotonic()
                if delay > 0 and not await self._pause(ws, delay):
                    return False
            passed += 1
            if m.swap_every is not None and held is None and passed % m.swap_every == 0:
                held = frame
                continue
            out = [frame] if held is None else [frame, held]
            if held is not None:
                self.swaps += 1
                held = None
            for message in out:
                if (sent := await self._deliver(ws, message, sent)) < 0:
                    return False
        # the last frame held: nothing is left to swap it with
        return held is None or await self._send(ws, held)

    async def _stream_live(self, ws: ServerConnection, cursor: int | None) -> bool:
        """The spec's semantics on the relay's own clock (:meth:`now_us`): frames up to now are history, sent at
        once after an (exclusive) cursor and not at all without one; later frames go out when they happen, to
        every connection alike, so a client that reconnects without a cursor gets only what it has not been
        sent. (The misbehaviours are for the replaying relay; a live one has none.)"""
        tail_from = self.now_us() if cursor is None else None
        sent = 0
        for frame in self._frames():
            seq, time_us = peek(frame)
            if cursor is not None and seq >= 0 and seq <= cursor:
                continue
            if tail_from is not None and (time_us is None or time_us <= tail_from):
                continue
            if time_us is not None and self.speed is not None and self.range and self.range.first_time_us:
                delay = self._t0 + (time_us - self.range.first_time_us) / 1e6 / self.speed - time.monotonic()
                if delay > 0 and not await self._pause(ws, delay):
                    return False
            if (sent := await self._deliver(ws, frame, sent)) < 0:
                return False
        return True

    @staticmethod
    async def _pause(ws: ServerConnection, seconds: float) -> bool:
        """Wait ``seconds`` for the next frame's time, or stop waiting at once when the connection closes (the
        client left, or the relay is shutting down): True to go on, False when it is gone. A paced relay at 0.001x
        event time waits minutes between frames, and a handler asleep that long held its shutdown up."""
        try:
            await asyncio.wait_for(ws.wait_closed(), seconds)
        except TimeoutError:
            return True
        return False

    async def _deliver(self, ws: ServerConnection, frame: bytes, sent: int) -> int:
        """Send one frame after ``sent`` others on this connection: the new count, or -1 when the connection is cut
        (a slow reader, or ``drop_after`` reached)."""
        if not await self._send(ws, frame):
            return -1
        sent += 1
        if self.drop_after is not None and sent >= self.drop_after:
            await self._drop(ws)
            return -1
        if sent % 64 == 0:
            await asyncio.sleep(0)  # a fast reader never blocks send(): let other connections have a turn
        return sent

    def _frames(self) -> Iterator[bytes]:
        if self._cache:
            yield from self._cache
            return
        for item in read_archive(self.archive):
            if item.frame is not None:
                yield item.frame

    async def _send(self, ws: ServerConnection, frame: bytes) -> bool:
        """Send one frame; a client that has not taken it within ``send_timeout`` is cut off (False): its buffer
        stays at ``write_limit`` meanwhile, and its archive reader is released with it."""
        try:
            async with asyncio.timeout(self.send_timeout):
                await ws.send(frame)
        except TimeoutError:
            self.slow_dropped += 1
            log.warning(
                "relay: dropped a client that read nothing for %.1fs (%d dropped so far)",
                self.send_timeout,
                self.slow_dropped,
            )
            ws.transport.abort()
            return False
        self.frames_sent += 1
        self.max_buffered = max(self.max_buffered, ws.transport.get_write_buffer_size())
        return True

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
