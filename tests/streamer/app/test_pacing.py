"""``--speed`` pacing is bounded and interruptible: a gap in event time never becomes a sleep of hours, and a stop
(SIGTERM in the daemon) ends a pause at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.app.replay import replay, replay_archive
from streamer.core import pace as pace_module
from streamer.core.events import rfc3339
from streamer.core.pace import Pace
from streamer.sources.archive import ArchiveWriter
from streamer.testing.encode import commit_frame

T0 = 1_783_000_000_000_000
HOUR = 3_600_000_000


def _archive(tmp_path: Path, gap_us: int) -> Path:
    """40 likes one second apart, a gap of ``gap_us``, 40 more: enough for the watermark to follow the jump."""
    like = "app.bsky.feed.like"
    times = [T0 + i * 1_000_000 for i in range(40)] + [T0 + gap_us + i * 1_000_000 for i in range(700)]
    with ArchiveWriter(tmp_path / "a", source="test") as writer:
        for seq, t in enumerate(times, start=1):
            record = {
                "$type": like,
                "subject": {"uri": "at://did:plc:bbbbbbbbbbbbbbbbbbbbbbbb/app.bsky.feed.post/3k", "cid": "bafy"},
                "createdAt": rfc3339(t),
            }
            writer.write(
                commit_frame(seq, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", t, [("create", like, f"3k{seq}", record)]), seq
            )
    return tmp_path / "a"


def test_a_gap_in_event_time_is_compressed_to_a_bounded_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace_module, "MAX_PACE_SLEEP_S", 0.3)
    path = _archive(tmp_path, 30 * HOUR)  # 30 hours of silence, replayed at 1,000x: 108 s unbounded
    start = time.monotonic()
    result = replay(path, speed=1000.0)
    took = time.monotonic() - start
    assert not result.interrupted and result.stats.items == 740
    # 40 s + 699 s of paced event time at 1000x = 0.74 s, plus at most one bounded pause per gap
    assert took < 10, f"took {took:.1f} s"


def test_a_stop_ends_a_pause_at_once(tmp_path: Path) -> None:
    path = _archive(tmp_path, HOUR)

    async def main() -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        return await replay_archive(path, speed=1.0, stop=stop)  # one second of event time per second: many pauses

    start = time.monotonic()
    result = asyncio.run(main())
    assert result.interrupted
    assert time.monotonic() - start < 3.0, "the stop is honoured within a pause, not after it"


def test_a_stall_is_not_caught_up_in_a_burst() -> None:
    async def go() -> float:
        stop = asyncio.Event()
        pace = Pace(1000.0)  # 1000x event time
        await pace.wait(T0, stop)  # anchors the pace
        time.sleep(1.5)  # a stall: a slow run, the first compilation
        await pace.wait(T0 + 100_000, stop)
        start = time.monotonic()
        await pace.wait(T0 + 100_000 + 500_000_000, stop)  # 500 s of event time: 0.5 s at 1000x
        return time.monotonic() - start

    assert asyncio.run(go()) >= 0.4, "after the stall the stream goes on at its pace, it does not race"
