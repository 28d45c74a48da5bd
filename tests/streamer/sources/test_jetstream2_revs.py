"""Jetstream v2 delivers at least once: a commit that comes again under a new seq is dropped by its (DID, rev), on
the side that applies events (the dispatcher, saved with the state's checkpoint), across the archive's seam, the
live tail's reconnects and a restart of the process."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.core.backoff import Backoff
from streamer.core.checkpoint import load_checkpoint, save_checkpoint
from streamer.core.dispatch import SequentialDispatcher
from streamer.core.events import Event
from streamer.core.jetstream2_json import PREFIX, from_jetstream2
from streamer.core.revs import RevGuard, repeated
from streamer.core.seqs import Sequenced
from streamer.core.source import SourceStats
from streamer.core.state import AgentState
from streamer.sources.jetstream2 import Jetstream2Source, Jetstream2Unavailable
from streamer.sources.jetstream2_backfill import Jetstream2Backfill
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.jetstream_server import jetstream_events
from streamer.testing.synth import default_archive
from streamer.testing.threaded import serving_in_thread
from tests.compare import state_by_did
from tests.faults import wait_until
from tests.net import free_port

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


def test_the_guard_is_saved_with_the_checkpoint_in_its_order_and_hostile_strings_survive(tmp_path: Path) -> None:
    guard = RevGuard(capacity=3)
    odd = "did:plc:\u202e\x00\ud800" + "x" * 3000  # any string an account sends, however long
    for did, rev, rkey in [("did:plc:a", "3k2b", "r1"), (odd, "3k2c", "\x00"), ("did:plc:a", "3k2b", "r2")]:
        guard.repeated(_op(did, rev, rkey))
    save_checkpoint(tmp_path, AgentState(), 7, {"mode": "live"}, revs=guard)
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    back = loaded[2]["revs"]
    assert back == guard and back.capacity == 3
    assert back.repeated(_op("did:plc:a", "3k2b", "r2")) and back.repeated(_op(odd, "3k2c", "\x00"))
    for i in range(2):  # the order to forget in came back too: the oldest is the odd account (did:plc:a was used)
        back.repeated(_op(f"did:plc:{i}", "3k2b", "r"))
    assert not back.repeated(_op(odd, "3k2c", "\x00"))
    save_checkpoint(tmp_path, AgentState(), 7, {"mode": "live"})
    assert load_checkpoint(tmp_path)[2]["revs"] is None  # type: ignore[index]  # a source with exact positions
    with pytest.raises(ValueError, match="guard is unreadable"):
        RevGuard.from_arrays(np.frombuffer(b'{"capacity": 1, "accounts": [[1]]}', np.uint8))


def _direct() -> list[Event]:
    from streamer.core.decode import decode_item

    return [e for line in jetstream_events(default_archive())[:400] for e in decode_item(line).events]


async def _drain(source: object) -> list[Sequenced]:
    got: list[Sequenced] = []
    with pytest.raises(Jetstream2Unavailable):
        async with asyncio.timeout(20), source:  # type: ignore[attr-defined]
            async for item in source:  # type: ignore[attr-defined]
                got.append(item)
    return got


def _applied(items: list[Sequenced]) -> tuple[AgentState, int]:
    """The state the dispatcher builds from ``items`` with a (DID, rev) guard, and how many it dropped."""
    stats = SourceStats()
    dispatcher = SequentialDispatcher(AgentState(), stats, revs=RevGuard())
    for item in items:
        dispatcher.add("", item)
    return dispatcher.state, stats.duplicates


def _reference(events: list[Event]) -> AgentState:
    """The state of ``events`` applied once each, in order, without any guard (the oracle)."""
    state = AgentState()
    for event in events:
        decision = state.decide(event)
        if decision.reason is None:
            state.fold(event, decision)
    return state


def test_commits_served_again_under_new_seqs_are_applied_once() -> None:
    """The server sends 40 of its commits a second time (new seqs, a later time), in the live tail and across the
    archive's seam: the sources hand them on (they cannot tell), the dispatcher drops and counts each, and the
    state is the one of every event applied once."""
    events = _direct()
    commits = [e for e in events if e.rev][:40]
    again = [dataclasses.replace(e, time_us=e.time_us + 1) for e in commits]
    served = events[:200] + again[:20] + events[200:] + again[20:]

    async def main() -> tuple[list[Sequenced], list[Sequenced]]:
        async with Jetstream2Server(served, sealed=210, segment_events=50) as server:
            tail = await _drain(Jetstream2Source(server.url, **FAST))
            backfill = Jetstream2Backfill(server.url, api_key="local-archive-key", archive_url=server.archive_url,
                                          **FAST)  # fmt: skip
            return tail, await _drain(backfill)

    tail, swept = asyncio.run(main())
    want = state_by_did(_reference(events))
    assert want[0] and want[1]
    for items in (tail, swept):
        assert sum(len(i.events) for i in items) == len(served), "the sources cannot tell a re-sent commit"
        state, dropped = _applied(items)
        assert dropped == 40
        assert state_by_did(state) == want


def test_a_commit_sent_again_after_a_restart_is_not_applied_twice(tmp_path: Path) -> None:
    """``skyattr run --source jetstream2``: stopped once its checkpoint holds the first 300 events, restarted on a
    server that sends 40 of those commits again under new seqs before the rest. A guard kept only in memory lets
    all 40 through (the state then differs from the oracle's); the one saved with the checkpoint drops them."""
    events = _direct()
    first, commits = events[:300], [e for e in events[:300] if e.rev][-40:]
    again = [dataclasses.replace(e, time_us=e.time_us + 1) for e in commits]
    port, ckpt = free_port(), tmp_path / "ckpt"

    def cursor() -> int:
        try:
            loaded = load_checkpoint(ckpt)
        except ValueError:  # caught between the write and the rename of a checkpoint
            return -1
        return -1 if loaded is None else loaded[1]

    for served in (first, first + again + events[300:]):
        with serving_in_thread(Jetstream2Server(served, port=port)) as server:
            run = [sys.executable, "-m", "streamer", "run", "--source", "jetstream2", "--jetstream2-url", server.url,
                   "--checkpoint-dir", str(ckpt), "--checkpoint-every", "0.1", "--metrics-port", "0",
                   "--interval", "3600", "--quiet"]  # fmt: skip
            proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                n = len(served)
                wait_until(lambda n=n, p=proc: p.poll() is not None or cursor() == n, 120, "every event")
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, err[-2000:]
    loaded = load_checkpoint(ckpt)
    assert loaded is not None and loaded[1] == len(events) + len(again)
    assert state_by_did(loaded[0]) == state_by_did(_reference(events))
