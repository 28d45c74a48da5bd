"""Backfill from a Jetstream v2 archive, then the live tail: the local v2 seals its first events into ``jss0``
segments served over HTTP XRPC (planSnapshot, listSegments, getSegment), the source sweeps them through the atproto
SDK's planner, downloader and segment reader, and cuts over to the live tail at the sealed tip. The oracle is the
archive decoded directly, numbered as the server numbers seqs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streamer.core.backoff import Backoff
from streamer.core.events import Event
from streamer.core.frames import decode_frame
from streamer.core.seqs import Sequenced
from streamer.sources.archive import read_archive
from streamer.sources.jetstream2 import Jetstream2Refused, Jetstream2Unavailable
from streamer.sources.jetstream2_backfill import Jetstream2Backfill, Progress
from streamer.testing import jss
from streamer.testing.jetstream2_archive import ArchiveServer
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.synth import write_synth_archive

LIVE: dict[str, Any] = {"backoff": Backoff(0.005, 0.02), "close_timeout": 0.2, "idle_timeout": 0.4, "max_retries": 1}
KEY = "local-archive-key"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "small.skyarch.zst"
    write_synth_archive(path, agents=2000, hours=6, seed=7)
    return path


@pytest.fixture(scope="module")
def direct(archive: Path) -> list[Event]:
    events = [e for item in read_archive(archive) for e in decode_frame(item.frame, records=True).events]
    events.sort(key=lambda e: e.time_us)
    return events


def norm(e: Event) -> tuple:
    return (e.time_us, e.seq, e.kind, e.actor, e.subject, e.collection, e.rkey, e.operation, e.rev)


def want(direct: list[Event], after: int = 0) -> list[tuple]:
    return [(e.time_us, i + 1, e.kind, e.actor, e.subject, e.collection, e.rkey, e.operation, e.rev)
            for i, e in enumerate(direct) if i + 1 > after]  # fmt: skip


async def _drain(source: Jetstream2Backfill, timeout: float = 60.0) -> list[Sequenced]:
    got: list[Sequenced] = []
    with pytest.raises(Jetstream2Unavailable):  # the live tail idles out once everything is in
        async with asyncio.timeout(timeout), source:
            async for item in source:
                got.append(item)
    return got


def _events(items: list[Sequenced]) -> list[Event]:
    return [e for item in items for e in item.events]


def test_the_archive_then_the_live_tail_give_every_event_once(archive: Path, direct: list[Event]) -> None:
    seen: list[Progress] = []

    async def main() -> tuple[list[Sequenced], Jetstream2Backfill, Any]:
        async with Jetstream2Server(archive, sealed=2000, segment_events=300, oldest_seq=1800) as server:
            source = Jetstream2Backfill(server.url, api_key=KEY, archive_url=server.archive_url,
                                        on_progress=lambda p: seen.append(Progress(**vars(p))), **LIVE)  # fmt: skip
            got = await _drain(source)
            return got, source, (server.archive_server.calls, server.requests)

    got, source, (calls, requests) = asyncio.run(main())
    assert [norm(e) for e in _events(got)] == want(direct)
    assert calls.count("getSegment") == 7 and calls.count("planSnapshot") >= 4  # paged, two segments a page
    assert "cursor=2000" in requests[0], "the tail starts at the sealed tip (inclusive: its re-send dropped)"
    assert source.stats.duplicates >= 1 and source.stats.errors == {}
    assert seen[-1].live and seen[-1].tip == 2000 and seen[-2].units_done == 7 and seen[-2].bytes > 0


def test_a_window_starts_at_its_first_segment_and_a_cursor_resumes_after_itself(
    archive: Path, direct: list[Event]
) -> None:
    since = direct[1000].time_us  # in the fourth segment of 300

    async def main(**options: Any) -> list[Sequenced]:
        async with Jetstream2Server(archive, sealed=2000, segment_events=300) as server:
            return await _drain(Jetstream2Backfill(server.url, api_key=KEY, archive_url=server.archive_url,
                                                   **options, **LIVE))  # fmt: skip

    windowed = asyncio.run(main(since_us=since))
    assert [norm(e) for e in _events(windowed)] == want(direct, after=900)
    resumed = asyncio.run(main(cursor=1234))
    assert [norm(e) for e in _events(resumed)] == want(direct, after=1234)


def test_a_failed_download_resumes_from_the_last_seq_and_a_bad_key_is_one_line(
    archive: Path, direct: list[Event]
) -> None:
    async def main() -> tuple[list[Sequenced], Jetstream2Backfill]:
        async with Jetstream2Server(archive, sealed=2000, segment_events=300) as server:
            assert server.archive_server is not None
            server.archive_server.fail_once = {"00000002.jss", "00000005.jss"}
            source = Jetstream2Backfill(server.url, api_key=KEY, archive_url=server.archive_url, **LIVE)
            return await _drain(source), source

    got, source = asyncio.run(main())
    assert [norm(e) for e in _events(got)] == want(direct)
    assert source.stats.reconnects >= 2

    async def wrong() -> None:
        async with Jetstream2Server(archive, sealed=2000) as server:
            source = Jetstream2Backfill(server.url, api_key="not-the-key", archive_url=server.archive_url, **LIVE)
            async with asyncio.timeout(30), source:
                async for _ in source:
                    pass

    with pytest.raises(Jetstream2Refused, match=r"archive at http://127\.0\.0\.1:\d+ refused the API key \(401\)"):
        asyncio.run(wrong())


def test_a_row_that_is_not_an_event_is_counted_and_the_sweep_goes_on(direct: list[Event]) -> None:
    from streamer.core.jetstream2_json import to_jetstream2

    rows = [jss.row_of(to_jetstream2(e, i + 1)) for i, e in enumerate(direct[:50])]
    rows[10] = jss.Row(11, rows[10].witnessed_at, jss.KIND_CREATE, rows[10].did, "app.bsky.feed.post", "3k", "3k",
                       b"\xff\x00 not cbor")  # fmt: skip
    rows[20] = jss.Row(21, rows[20].witnessed_at, 9, rows[20].did, payload=b"\xa0")  # a kind no v2 has

    async def main() -> tuple[list[Sequenced], Jetstream2Backfill]:
        async with (
            ArchiveServer([rows[:25], rows[25:]], KEY) as archive_server,
            Jetstream2Server(direct[:50]) as server,
        ):
            source = Jetstream2Backfill(server.url, api_key=KEY, archive_url=archive_server.url, **LIVE)
            return await _drain(source), source

    got, source = asyncio.run(main())
    assert [e.seq for e in _events(got)] == [s for s in range(1, 51) if s not in (11, 21)]
    assert source.stats.errors == {"bad_row": 2}


def test_backfill_settings_are_checked_in_one_line(tmp_path: Path) -> None:
    from streamer.app.settings import ConfigError, duration_s, load_settings

    assert duration_s("14d") == 14 * 86_400 and duration_s("36h") == 36 * 3_600 and duration_s("90m") == 5_400
    with pytest.raises(ConfigError, match="not a duration: 'two weeks'"):
        load_settings(flags={"source": "jetstream2", "backfill": "two weeks"}, env={})
    with pytest.raises(ConfigError, match="--backfill reads the Jetstream v2 archive: give --source jetstream2"):
        load_settings(flags={"backfill": "14d"}, env={})
    empty = tmp_path / "key"
    empty.write_text("\n")
    settings = load_settings(flags={"source": "jetstream2", "jetstream2_api_key_file": empty}, env={})
    with pytest.raises(ValueError, match="is empty"):
        settings.archive_key()
    secret = load_settings(flags={"source": "jetstream2"}, env={"SKYATTR_JETSTREAM2_API_KEY": "s3cret"})
    assert secret.archive_key() == "s3cret" and "s3cret" not in repr(secret)
