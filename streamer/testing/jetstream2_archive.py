"""The archive half of a local Jetstream v2: sealed segments served over HTTP XRPC, as the v2 archive serves them.

Jetstream v2 keeps everything it saw in sealed ``jss0`` segments (:mod:`streamer.testing.jss`) and serves them with
an API key: ``listSegments`` (each segment's seq and witnessed-time range, paged), ``planSnapshot`` (a procedure:
the segments holding seqs after ``after_seq`` up to ``before_seq``, pinned to the sealed tip, paged by
``plannedThroughSeq``), ``getSegment`` (a whole file, by HTTP ``Range`` slices) and ``getBlock`` (one block frame).
This server answers those four from segments made of the first events of a local v2
(:class:`~streamer.testing.jetstream2_server.Jetstream2Server` ``sealed=``), on its own port (``url``): the
websocket library the live half runs on serves GET only, and ``planSnapshot`` is a POST. A call without the key
(``Authorization: Bearer <key>``) is answered 401 ``AuthRequired``; ``page_segments`` bounds a plan page, so a
client has to page; ``fail_once`` names segments whose next download is answered 503; ``delay_s`` slows each.
Counters: ``calls`` (the method of each call) and ``bytes_served``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from streamer.testing import jss

PREFIX = "/xrpc/network.bsky.jetstream."


class ArchiveServer:
    """``segments``: the sealed segments' rows, each list in seq order; ``api_key``: what a call must carry."""

    def __init__(self, segments: list[list[jss.Row]], api_key: str, *, page_segments: int = 2, block_rows: int = 64):
        self.api_key, self.page_segments = api_key, page_segments
        self.files: list[tuple[str, bytes, list[jss.Row]]] = []
        for index, rows in enumerate(s for s in segments if s):
            name = f"{index:08d}.jss"
            self.files.append((name, jss.segment(rows, block_rows=block_rows), rows))
        self.calls: list[str] = []
        self.bytes_served = 0
        self.fail_once: set[str] = set()  # segment names whose next getSegment is answered 503
        self.delay_s = 0.0  # each download waits this long first (a slow archive, for a test to stop a sweep)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._answer(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server._answer(self, json.loads(self.rfile.read(length) or b"{}"))

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def sealed_tip(self) -> int:
        return self.files[-1][2][-1].seq if self.files else 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _answer(self, req: BaseHTTPRequestHandler, body: dict[str, Any] | None) -> None:
        url = urlsplit(req.path)
        method = url.path.removeprefix(PREFIX)
        self.calls.append(method)
        if req.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json(req, 401, {"error": "AuthRequired", "message": "an archive API key is required"})
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if method == "listSegments" and body is None:
            return _json(req, 200, self._list(query))
        if method == "planSnapshot" and body is not None:
            return _json(req, 200, self._plan(body))
        if method == "getSegment" and body is None:
            return self._segment(req, query.get("name", ""))
        if method == "getBlock" and body is None:
            index = query.get("blockIndex", query.get("block_index", "-1"))
            return self._block(req, query.get("segment", ""), int(index))
        return _json(req, 404, {"error": "MethodNotImplemented", "message": url.path})

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        start, limit = int(query.get("cursor") or 0), int(query.get("limit") or 100)
        page = self.files[start : start + limit]
        out = [
            {"name": name, "checksum": jss.checksum(data), "index": start + i, "min_seq": rows[0].seq,
             "max_seq": rows[-1].seq, "min_witnessed_at": min(r.witnessed_at for r in rows),
             "max_witnessed_at": max(r.witnessed_at for r in rows), "event_count": len(rows), "size_bytes": len(data)}
            for i, (name, data, rows) in enumerate(page)
        ]  # fmt: skip
        more = start + limit < len(self.files)
        return {"segments": _camel(out), **({"cursor": str(start + limit)} if more else {})}

    def _plan(self, body: dict[str, Any]) -> dict[str, Any]:
        after = int(body.get("afterSeq", body.get("after_seq", 0)) or 0)
        before = body.get("beforeSeq", body.get("before_seq"))
        tip = self.sealed_tip if before is None else min(int(before), self.sealed_tip)
        wanted = [(i, f) for i, f in enumerate(self.files) if f[2][-1].seq > after and f[2][0].seq <= tip]
        page = wanted[: self.page_segments]
        through = page[-1][1][2][-1].seq if len(wanted) > len(page) else tip
        segments = [
            {"name": name, "checksum": jss.checksum(data), "index": i, "min_seq": rows[0].seq,
             "max_seq": rows[-1].seq, "mode": "segment"}
            for i, (name, data, rows) in page
        ]  # fmt: skip
        stats = {"blocks_matched": 0, "entries": len(page), "segments_examined": len(self.files),
                 "segments_matched": len(page)}  # fmt: skip
        return _camel({"planned_through_seq": through, "sealed_tip_seq": tip, "segments": segments, "stats": stats})

    def _segment(self, req: BaseHTTPRequestHandler, name: str) -> None:
        data = next((d for n, d, _ in self.files if n == name), None)
        if data is None:
            return _json(req, 404, {"error": "NotFound", "message": name})
        start, end = 0, len(data) - 1
        ranged = req.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last or end), end)
        if self.delay_s:
            time.sleep(self.delay_s)
        if name in self.fail_once:
            self.fail_once.discard(name)
            return _json(req, 503, {"error": "Unavailable", "message": "try again"})
        chunk = data[start : end + 1]
        self.bytes_served += len(chunk)
        return _bytes(req, 206 if ranged else 200, chunk)

    def _block(self, req: BaseHTTPRequestHandler, name: str, index: int) -> None:
        data = next((d for n, d, _ in self.files if n == name), None)
        frames = jss.block_frames(data) if data is not None else []
        if not 0 <= index < len(frames):
            return _json(req, 404, {"error": "NotFound", "message": f"{name} block {index}"})
        self.bytes_served += len(frames[index])
        return _bytes(req, 200, frames[index])


def _camel(value: Any) -> Any:
    """snake_case keys as the lexicon's camelCase (``min_seq`` -> ``minSeq``)."""
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _json(req: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def _bytes(req: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    req.send_response(status)
    req.send_header("Content-Type", "application/octet-stream")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


__all__ = ["ArchiveServer"]
