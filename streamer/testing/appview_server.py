"""A local stand-in for the AppView's ``app.bsky.actor.getProfiles``, for tests and demos without the network.

It answers the XRPC query as the public AppView does (JSON ``{"profiles": [...]}``, profiles of the known actors
only, in the order asked, at most 25 actors a call, ``RateLimit-*`` headers on every answer) from a table of
follower counts, and can be told to answer 429 for the next calls, with ``RateLimit-Reset`` or ``Retry-After``,
or to report a spent budget. Every call's actors are recorded, so a test can check the batching and the cache.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

NSID = "app.bsky.actor.getProfiles"
LIMIT = 25


@dataclass
class Script:
    """What the stand-in does next: ``refuse`` 429s first (each with ``reset_in`` seconds to the reset, or
    ``retry_after`` seconds), and ``remaining`` is the budget it reports on a success (0: spent until the reset);
    ``down`` refuses every call."""

    refuse: int = 0
    reset_in: float | None = 2.0
    retry_after: float | None = None
    remaining: int = 2999
    down: bool = False  # answer every call with an error (400 InternalServerError), as an AppView that is down
    calls: list[list[str]] = field(default_factory=list)


class AppViewStandIn:
    """``with AppViewStandIn({did: followers}) as appview:`` then ``appview.url``; ``clock`` gives the epoch time
    the ``RateLimit-Reset`` header is computed from (a test's fake clock)."""

    def __init__(self, followers: dict[str, int], clock: Any = None) -> None:
        import time

        self.followers = dict(followers)
        self.script = Script()
        self.clock = clock or time.time
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand_in._answer(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AppViewStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, req: BaseHTTPRequestHandler) -> None:
        url = urlparse(req.path)
        if url.path != f"/xrpc/{NSID}":
            return self._send(req, 404, {"error": "MethodNotImplemented", "message": url.path})
        actors = parse_qs(url.query).get("actors", [])
        self.script.calls.append(actors)
        reset = int(self.clock() + (self.script.reset_in or 0))
        headers = {"RateLimit-Limit": "3000", "RateLimit-Policy": "3000;w=300", "RateLimit-Reset": str(reset)}
        if self.script.down:
            return self._send(req, 400, {"error": "InternalServerError", "message": "down for maintenance"}, headers)
        if self.script.refuse > 0:
            self.script.refuse -= 1
            headers["RateLimit-Remaining"] = "0"
            if self.script.reset_in is None:
                del headers["RateLimit-Reset"]
            if self.script.retry_after is not None:
                headers["Retry-After"] = str(self.script.retry_after)
            return self._send(req, 429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, headers)
        if not actors or len(actors) > LIMIT:
            return self._send(req, 400, {"error": "InvalidRequest", "message": f"1 to {LIMIT} actors"}, headers)
        headers["RateLimit-Remaining"] = str(self.script.remaining)
        profiles = [
            {"did": did, "handle": f"a{i}.test", "followersCount": self.followers[did]}
            for i, did in enumerate(actors)
            if did in self.followers
        ]
        return self._send(req, 200, {"profiles": profiles}, headers)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)


__all__ = ["AppViewStandIn", "Script"]
