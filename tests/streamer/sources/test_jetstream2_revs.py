"""Jetstream v2 delivers at least once: a commit that comes again under a new seq is dropped by its (DID, rev)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from streamer.core.backoff import Backoff
from streamer.core.events import Event
from streamer.core.jetstream2_json import PREFIX, from_jetstream2
from streamer.sources.jetstream2 import Jetstream2Source, Jetstream2Unavailable
from streamer.sources.jetstream2_backfill import Jetstream2Backfill
from streamer.sources.jetstream2_revs import RevGuard, repeated
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.jetstream_server import jetstream_events
from streamer.testing.synth import default_archive

FAST = {"backoff": Backoff(0.005, 0.02), "close_timeout": 0.2, "idle_timeout": 0.4, "max_retries": 1}


def _op(did: str, rev: str, rkey: str, op: str = "create") -> Event:
    return Event(1_783_123_200_000_000, -1, "like", did, "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz", "app.bsky.feed.like",
                 rkey, op, rev)  # fmt: skip


def test_a_lower_rev_or_the_same_operation_again_is_a_repeat_and_a_sync_resets_the_account() -> None:
    guard = RevGuard(capacity=2)
    a = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    assert not guard.repeated(_op(a, "3k2b", "r1"))
    assert not guard.repeated(_op(a, "3k2b", "r2"))  # a second operation of the same commit
    assert guard.repeated(_op(a, "3k2b", "r1"))  # that commit's first operation again
    assert guard.repeated(_op(a, "3k2a", "r0"))  # an older commit
    assert not guard.repeated(_op(a, "3k2c", "r1", "delete"))  # a newer one
    body = {"did": a, "rev": "3k20", "seq": 9, "time": "2026-07-04T00:00:00.000Z"}
    sync = from_jetstream2({"$type": PREFIX + "sync", "seq": 9, "did": a, "time": body["time"], "sync": body})
    assert not sync.error and not repeated(guard, sync)
    assert not guard.repeated(_op(a, "3k20", "r5"))  # after the reset its revs start again
    for i in range(3):  # the capacity: the account seen longest ago is forgotten
        guard.repeated(_op(f"did:plc:{i:024d}", "3k2b", "r"))
    assert len(guard) == 2 and not guard.repeated(_op(a, "3k20", "r5"))


def _direct() -> list[Event]:
    from streamer.core.decode import decode_item

    return [e for line in jetstream_events(default_archive())[:400] for e in decode_item(line).events]


async def _drain(source: object) -> list[Event]:
    got: list[Event] = []
    with pytest.raises(Jetstream2Unavailable):
        async with asyncio.timeout(20), source:  # type: ignore[attr-defined]
            async for item in source:  # type: ignore[attr-defined]
                got.extend(item.events)
    return got


def test_commits_served_again_under_new_seqs_are_applied_once() -> None:
    """The server sends 40 of its commits a second time (new seqs, a later time), in the live tail and across the
    archive's seam: each is dropped and counted, every other event arrives once."""
    events = _direct()
    commits = [e for e in events if e.rev][:40]
    again = [dataclasses.replace(e, time_us=e.time_us + 1) for e in commits]
    served = events[:200] + again[:20] + events[200:] + again[20:]

    async def main() -> tuple[list[Event], list[Event], int, int]:
        async with Jetstream2Server(served, sealed=210, segment_events=50) as server:
            live = Jetstream2Source(server.url, **FAST)
            tail = await _drain(live)
            backfill = Jetstream2Backfill(server.url, api_key="local-archive-key", archive_url=server.archive_url,
                                          **FAST)  # fmt: skip
            swept = await _drain(backfill)
            return tail, swept, live.stats.duplicates, backfill.stats.duplicates

    tail, swept, dropped_live, dropped_backfill = asyncio.run(main())
    key = [(e.actor, e.rev, e.collection, e.rkey, e.operation) for e in events]
    assert [(e.actor, e.rev, e.collection, e.rkey, e.operation) for e in tail] == key
    assert [(e.actor, e.rev, e.collection, e.rkey, e.operation) for e in swept] == key
    assert dropped_live >= 40 and dropped_backfill >= 40  # and the seq's own re-sends at each reconnect
