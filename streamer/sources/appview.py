"""Follower counts from the Bluesky AppView: real visibility instead of the attention-received proxy.

``app.bsky.actor.getProfiles`` answers up to 25 accounts a call with their ``followersCount``. This module asks it
through the atproto SDK's own client (``atproto.Client``, the library the AppView's users use), for as few
accounts as the question needs, and never twice:

* **cached on disk** (``<cache>/followers.jsonl``, one JSON line per account, appended and fsynced after every
  call): a study or a report run again, or interrupted and resumed, asks only for what it lacks; an entry older
  than ``max_age_s`` is asked again. An account the AppView no longer returns (deleted, taken down, deactivated)
  is cached as gone and gets no count.
* **rate limited**: a 429 is waited out until the ``RateLimit-Reset`` time (or ``Retry-After``) the answer gives
  (the SDK's :class:`~atproto_client.exceptions.RateLimitExceededError`), and a successful answer whose
  ``RateLimit-Remaining`` is 0 makes the next call wait for the reset too; other network failures back off
  exponentially. Each wait is logged in one line; none is longer than ``max_wait_s``, past which the fetch stops
  with :class:`AppViewError` (what it got stays cached).
* **only the candidates**: :func:`candidates` picks the accounts that can reach the head and middle tiers or the
  panel, by the proxy ranking with a margin; the others are taken to be in the tail (visibility 0), which the
  caller reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.backoff import backoff_delay
from streamer.core.followers import VisibilityUnavailable

log = logging.getLogger("skyattr.appview")

PUBLIC_APPVIEW = "https://public.api.bsky.app"
BATCH = 25  # getProfiles' limit of actors per call
CACHE_FILE = "followers.jsonl"
MAX_AGE_S = 7 * 86_400.0
MAX_WAIT_S = 900.0
NETWORK_ATTEMPTS = 6


class AppViewError(VisibilityUnavailable):
    """The AppView could not be asked (unreachable, refusing, a wait longer than allowed): one line for the user."""


class FollowerCache:
    """``did -> (followers or None for gone, fetched at)`` kept in a JSON-lines file, last line of a DID wins."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        self.entries: dict[str, tuple[int | None, float]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        obj = json.loads(line)
                        count = obj["followers"]
                        if count is not None and (not isinstance(count, int) or count < 0):
                            raise ValueError(f"bad count {count!r}")
                        self.entries[str(obj["did"])] = (count, float(obj["at"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn or foreign line: the account is asked again

    def fresh(self, did: str, now: float, max_age_s: float) -> bool:
        held = self.entries.get(did)
        return held is not None and now - held[1] <= max_age_s

    def put(self, counts: dict[str, int | None], now: float) -> None:
        lines = "".join(
            json.dumps({"did": did, "followers": n, "at": now}, separators=(",", ":")) + "\n"
            for did, n in counts.items()
        )
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        for did, n in counts.items():
            self.entries[did] = (n, now)


@dataclass
class FetchStats:
    asked: int = 0  # accounts asked for this time
    cached: int = 0  # accounts the cache already had
    gone: int = 0  # accounts the AppView did not return
    calls: int = 0
    rate_limited: int = 0  # 429 answers waited out
    waited_s: float = 0.0


class AppViewFollowers:
    """Follower counts of DIDs, through ``client`` (default: ``atproto.Client(base_url)``), cached in ``cache``."""

    def __init__(
        self,
        cache: Path,
        base_url: str = PUBLIC_APPVIEW,
        *,
        client: Any = None,
        max_age_s: float = MAX_AGE_S,
        max_wait_s: float = MAX_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if client is None:
            from atproto import Client

            client = Client(base_url=base_url)
        self.client = client
        self.base_url = base_url
        self.cache = FollowerCache(cache)
        self.max_age_s, self.max_wait_s = max_age_s, max_wait_s
        self._sleep, self._clock = sleep, clock
        self._rng = random.Random()
        self._reset_at: float | None = None  # a successful answer said the budget is spent until then
        self._lock = threading.Lock()  # a pipeline measures runs in worker threads: one fetch at a time
        self.stats = FetchStats()

    def counts(self, dids: Iterable[str], on_batch: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """``{did: followers}`` for every DID the AppView knows (gone ones left out); ``on_batch(done, total)``
        after each call. Thread-safe: concurrent callers wait, then find what the first fetched in the cache."""
        with self._lock:
            return self._counts(list(dict.fromkeys(dids)), on_batch)

    def _counts(self, wanted: list[str], on_batch: Callable[[int, int], None] | None) -> dict[str, int]:
        now = self._clock()
        todo = [d for d in wanted if not self.cache.fresh(d, now, self.max_age_s)]
        self.stats.cached += len(wanted) - len(todo)
        self.stats.asked += len(todo)
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            found = self._call(batch)
            got: dict[str, int | None] = {d: found.get(d) for d in batch}
            self.stats.gone += sum(v is None for v in got.values())
            self.cache.put(got, self._clock())
            if on_batch is not None:
                on_batch(min(start + BATCH, len(todo)), len(todo))
        out = {}
        for did in wanted:
            held = self.cache.entries.get(did)
            if held is not None and held[0] is not None:
                out[did] = held[0]
        return out

    def _wait(self, seconds: float, why: str) -> None:
        if seconds > self.max_wait_s:
            raise AppViewError(
                f"the AppView at {self.base_url} asks to wait {seconds:.0f} s ({why}), more than {self.max_wait_s:.0f} "
                "s; what was fetched is cached: run again later to go on"
            )
        log.info("AppView %s: waiting %.1f s (%s)", self.base_url, seconds, why)
        self.stats.waited_s += seconds
        self._sleep(seconds)

    def _call(self, batch: Sequence[str]) -> dict[str, int]:
        from atproto_client import models
        from atproto_client.exceptions import NetworkError, RateLimitExceededError, RequestErrorBase
        from atproto_client.models.utils import get_response_model

        if self._reset_at is not None:
            pause = self._reset_at - self._clock()
            self._reset_at = None
            if pause > 0:
                self._wait(pause, "its rate-limit budget is spent until the reset")
        failures = 0
        while True:
            try:
                self.stats.calls += 1
                params = models.AppBskyActorGetProfiles.Params(actors=list(batch))
                response = self.client.invoke_query(
                    "app.bsky.actor.getProfiles", params=params, output_encoding="application/json"
                )
                model = get_response_model(response, models.AppBskyActorGetProfiles.Response)
            except RateLimitExceededError as exc:
                self.stats.rate_limited += 1
                failures += 1
                wait = exc.retry_after
                if wait is None and exc.reset_at is not None:
                    wait = max(0.0, exc.reset_at.timestamp() - self._clock())
                if wait is None:
                    wait = backoff_delay(failures - 1, 1.0, 60.0, self._rng)
                self._wait(wait, "429 Too Many Requests")
                continue
            except NetworkError as exc:
                failures += 1
                if failures >= NETWORK_ATTEMPTS:
                    raise AppViewError(f"the AppView at {self.base_url} is unreachable: {exc}") from None
                self._wait(backoff_delay(failures - 1, 1.0, 60.0, self._rng), f"network error: {exc}")
                continue
            except RequestErrorBase as exc:
                raise AppViewError(f"the AppView at {self.base_url} refused getProfiles: {exc}") from None
            remaining, reset = _header(response, "ratelimit-remaining"), _header(response, "ratelimit-reset")
            if remaining is not None and remaining <= 0 and reset is not None:
                self._reset_at = reset
            return {p.did: int(p.followers_count or 0) for p in model.profiles}


def _header(response: Any, name: str) -> float | None:
    value = (getattr(response, "headers", None) or {}).get(name)
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def candidates(
    proxy: np.ndarray, x: np.ndarray, *, head: float, middle: float, panel_size: int, margin: float = 1.5
) -> np.ndarray:
    """Indices of the accounts worth asking about: the ``margin`` × (head + middle) share of all accounts with the
    highest proxy visibility, and the ``margin`` × 10 × ``panel_size`` most visible active ones (the panel is drawn
    from the active). An account outside both is taken to be in the tail."""
    n = len(proxy)
    order = np.argsort(-np.asarray(proxy, np.float64), kind="stable")
    top = order[: min(n, math.ceil(margin * (head + middle) * n))]
    active = order[np.asarray(x)[order] > 0][: math.ceil(margin * 10 * panel_size)]
    return np.union1d(top, active)


@dataclass(frozen=True)
class Asked:
    """What one snapshot's visibility came from: the accounts asked about (the candidates), of which ``gone`` the
    AppView no longer has, out of ``accounts``."""

    accounts: int
    candidates: int
    gone: int

    def words(self, url: str) -> str:
        return (
            f"follower counts from the AppView at {url} for the {self.candidates:,} accounts the attention ranking "
            f"puts within reach of the head and middle tiers or the panel ({self.gone:,} of them gone: 0), 0 for the "
            f"other {self.accounts - self.candidates:,} (taken to be in the tail)"
        )


class AppViewVisibility:
    """A :class:`~streamer.core.followers.FollowerSource`: at each snapshot, follower counts for the accounts that
    can reach the head and middle tiers or the panel (:func:`candidates`, by the snapshot's attention ranking),
    0 for the others; asked through ``fetch`` (cached, rate limited). One object serves ``run``, ``replay``,
    ``report`` and ``study``; an AppView that cannot answer raises :class:`AppViewError`, and the run is skipped."""

    def __init__(
        self,
        fetch: AppViewFollowers,
        *,
        head: float,
        middle: float,
        panel_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.fetch = fetch
        self.head, self.middle, self.panel_size = head, middle, panel_size
        self.on_batch = on_batch
        self.last: Asked | None = None

    def visibility(self, dids: Sequence[str], proxy: np.ndarray, x: np.ndarray) -> np.ndarray:
        picked = candidates(proxy, x, head=self.head, middle=self.middle, panel_size=self.panel_size)
        counts = self.fetch.counts([dids[i] for i in picked], on_batch=self.on_batch)
        out = np.zeros(len(dids))
        gone = 0
        for i in picked.tolist():
            held = counts.get(dids[i])
            gone += held is None
            out[i] = held or 0
        self.last = Asked(len(dids), len(picked), gone)
        return out

    def describe(self) -> str:
        url = self.fetch.base_url
        return self.last.words(url) if self.last is not None else f"follower counts from the AppView at {url}"


__all__ = [
    "PUBLIC_APPVIEW",
    "AppViewError",
    "AppViewFollowers",
    "AppViewVisibility",
    "Asked",
    "FetchStats",
    "FollowerCache",
    "candidates",
]
