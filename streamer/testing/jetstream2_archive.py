"""The archive half of a local Jetstream v2: sealed segments served over HTTP XRPC, as the v2 archive serves them.

Jetstream v2 keeps everything it saw in sealed ``jss0`` segments (:mod:`streamer.testing.jss`) and serves them with
an API key: ``listSegments`` (each segment's seq and witnessed-time range, paged), ``planSnapshot`` (a procedure:
the segments holding seqs after ``after_seq`` up to ``before_seq``, pinned to the sealed tip, paged by
``plannedThroughSeq``), ``getSegment`` (a whole file, by HTTP ``Range`` slices) and ``getBlock`` (one block frame).
:class:`SealedArchive` answers those four (aiohttp routes, :meth:`SealedArchive.add_routes`), on the port of a local
v2 (:class:`~streamer.testing.jetstream2_server.Jetstream2Server` ``sealed=``: the same origin as its websocket, as
the SDK's client expects) or alone (:class:`ArchiveServer`: an archive elsewhere than the live tail). A call without
the key (``Authorization: Bearer <key>``) is answered 401 ``AuthRequired``; ``page_segments`` bounds a plan page, so
a client has to page; ``fail_once`` names segments whose next download is answered 503; ``delay_s`` slows each.
Counters: ``calls`` (the method of each call) and ``bytes_served``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from streamer.testing import jss

PREFIX = "/xrpc/network.bsky.jetstream."


class SealedArchive:
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

    @property
    def sealed_tip(self) -> int:
        return self.files[-1][2][-1].seq if self.files else 0

    def add_routes(self, app: web.Application) -> None:
        for method in ("listSegments", "getSegment", "getBlock"):
            app.router.add_get(PREFIX + method, self._answer)
        app.router.add_post(PREFIX + "planSnapshot", self._answer)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        method = request.path.removeprefix(PREFIX)
        self.calls.append(method)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "AuthRequired", "an archive API key is required")
        query = {k: v for k, v in request.query.items()}
        if method == "listSegments":
            return web.json_response(self._list(query))
        if method == "planSnapshot":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError as exc:
                return _error(400, "InvalidRequest", f"body: {exc}")
            return web.json_response(self._plan(body))
        if method == "getSegment":
            return await self._segment(request, query.get("name", ""))
        index = query.get("blockIndex", query.get("block_index", "-1"))
        return self._block(query.get("segment", ""), int(index) if index.lstrip("-").isdigit() else -1)

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

    async def _segment(self, request: web.Request, name: str) -> web.StreamResponse:
        data = next((d for n, d, _ in self.files if n == name), None)
        if data is None:
            return _error(404, "NotFound", name)
        start, end = 0, len(data) - 1
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last or end), end)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if name in self.fail_once:
            self.fail_once.discard(name)
            return _error(503, "Unavailable", "try again")
        chunk = data[start : end + 1]
        self.bytes_served += len(chunk)
        return web.Response(status=206 if ranged else 200, body=chunk, content_type="application/octet-stream")

    def _block(self, name: str, index: int) -> web.StreamResponse:
        data = next((d for n, d, _ in self.files if n == name), None)
        frames = jss.block_frames(data) if data is not None else []
        if not 0 <= index < len(frames):
            return _error(404, "NotFound", f"{name} block {index}")
        self.bytes_served += len(frames[index])
        return web.Response(body=frames[index], content_type="application/octet-stream")


class ArchiveServer(SealedArchive):
    """A :class:`SealedArchive` alone on ``host:port`` (0: a free port); an async context manager whose ``url`` is
    its HTTP origin."""

    def __init__(self, segments: list[list[jss.Row]], api_key: str, *, host: str = "127.0.0.1", port: int = 0,
                 **options: Any) -> None:  # fmt: skip
        super().__init__(segments, api_key, **options)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ArchiveServer:
        app = web.Application()
        self.add_routes(app)
        self._runner = await start_app(app, self.host, self.port)
        self.port = bound_port(self._runner)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` without aiohttp's access log; the runner, to clean up."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port ``runner`` listens on (what port 0 became)."""
    return int(runner.addresses[0][1])


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


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


__all__ = ["ArchiveServer", "SealedArchive", "bound_port", "start_app"]
