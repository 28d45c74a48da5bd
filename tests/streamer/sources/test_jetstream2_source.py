"""The Jetstream v2 path end to end over real websockets on 127.0.0.1: Jetstream2Server serving the real relay
sample as ``network.bsky.jetstream.subscribeEvents``, Jetstream2Source reading it, and the atproto SDK's own v2
client reading the same server (so the stand-in speaks what the library accepts).

The oracle is a direct decode of the archive (``read_archive`` + ``decode_frame``, as ``skyattr events`` does),
ordered by time as a Jetstream's clock orders it, numbered 1, 2, ... as the server numbers seqs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import zstandard

from streamer.core.backoff import Backoff
from streamer.core.events import Event
from streamer.core.frames import decode_frame
from streamer.core.jetstream2_json import PREFIX, from_jetstream2, to_jetstream2
from streamer.core.seqs import Sequenced
from streamer.sources.archive import read_archive
from streamer.sources.jetstream2 import CursorTooOld, Jetstream2Refused, Jetstream2Source, Jetstream2Unavailable
from streamer.testing.jetstream2_server import Jetstream2Server
from streamer.testing.synth import write_synth_archive
from streamer.testing.threaded import serving_in_thread

FAST: dict[str, Any] = {"backoff": Backoff(0.005, 0.02), "close_timeout": 0.2, "idle_timeout": 0.4, "max_retries": 2}


def decoded(path: Path) -> list[Event]:
    events: list[Event] = []
    for item in read_archive(path):
        events.extend(decode_frame(item.frame, records=True).events)
    events.sort(key=lambda e: e.time_us)
    return events


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "small.skyarch.zst"
    write_synth_archive(path, agents=2000, hours=6, seed=7)  # about 3,000 events
    return path


@pytest.fixture(scope="module")
def direct(archive: Path) -> list[Event]:
    return decoded(archive)


def norm(e: Event) -> tuple:
    return (e.time_us, e.kind, e.actor, e.subject, e.collection, e.rkey, e.operation, e.rev, e.cid,
            json.dumps(e.record, sort_keys=True))  # fmt: skip


async def drain(source: Jetstream2Source, timeout: float = 20.0) -> list[Sequenced]:
    got: list[Sequenced] = []
    with pytest.raises(Jetstream2Unavailable):
        async with asyncio.timeout(timeout), source:
            async for item in source:
                got.append(item)
    return got


def events_of(items: list[Sequenced]) -> list[Event]:
    return [e for item in items for e in item.events]


@pytest.mark.parametrize("real", [True, False], ids=["relay sample", "synthetic"])
def test_every_event_arrives_once_in_seq_order_as_the_archive_holds_it(
    real: bool, sample_dir: Path, archive: Path
) -> None:
    path = sample_dir / "frames.bin.zst" if real else archive
    want = decoded(path)

    async def main() -> tuple[list[Sequenced], Jetstream2Source]:
        async with Jetstream2Server(path) as server:
            source = Jetstream2Source(server.url, **FAST)
            return await drain(source), source

    got, source = asyncio.run(main())
    events = events_of(got)
    assert [norm(e) for e in events] == [norm(e) for e in want]
    assert [e.seq for e in events] == list(range(1, len(want) + 1))
    assert source.cursor == len(want) and source.stats.errors == {}
    # each idle reconnect asks for the cursor again: the event at it comes back once and is dropped
    assert source.stats.duplicates == source.stats.connects - 1


def test_a_dropped_connection_resumes_at_the_cursor_without_a_gap_or_a_double(
    archive: Path, direct: list[Event]
) -> None:
    async def main() -> tuple[list[Sequenced], Jetstream2Source, Jetstream2Server]:
        async with Jetstream2Server(archive, drop_after=97) as server:
            source = Jetstream2Source(server.url, **FAST)
            return await drain(source, 60), source, server

    got, source, server = asyncio.run(main())
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in direct]
    assert server.connections > len(direct) // 97
    cursors = [parse_qs(urlsplit(p).query).get("cursor") for p in server.requests]
    assert cursors[0] is None and all(c is not None for c in cursors[1:])
    assert source.stats.duplicates == source.stats.connects - 1  # the inclusive replay re-sends the cursor's event


def test_a_consumer_too_slow_error_frame_reconnects_from_the_cursor(archive: Path, direct: list[Event]) -> None:
    async def main() -> tuple[list[Sequenced], Jetstream2Source]:
        async with Jetstream2Server(archive, error_after=400) as server:
            source = Jetstream2Source(server.url, **FAST)
            return await drain(source, 60), source

    got, source = asyncio.run(main())
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in direct]
    assert source.stats.frames["error:ConsumerTooSlow"] >= len(direct) // 400
    assert source.stats.disconnects["error_ConsumerTooSlow"] >= 1, source.stats


def _dictionary(payloads: list[dict[str, Any]], size: int) -> bytes:
    samples = [json.dumps({"$type": "message", "payload": p}).encode() for p in payloads]
    return zstandard.train_dictionary(size, samples).as_bytes()


def test_dict_zstd_frames_with_the_servers_dictionary_and_its_rotation(archive: Path, direct: list[Event]) -> None:
    payloads = [to_jetstream2(e, i + 1) for i, e in enumerate(direct)]
    first, second = _dictionary(payloads[:2000], 8192), _dictionary(payloads[2000:], 4096)
    assert zstandard.ZstdCompressionDict(first).dict_id() != zstandard.ZstdCompressionDict(second).dict_id()

    async def main() -> tuple[list[Sequenced], Jetstream2Source, Jetstream2Server]:
        async with Jetstream2Server(archive, zstd_dictionary=first, drop_after=1500) as server:
            source = Jetstream2Source(server.url, compress=True, **FAST)
            got: list[Sequenced] = []
            with pytest.raises(Jetstream2Unavailable):
                async with asyncio.timeout(60), source:
                    async for item in source:
                        got.append(item)
                        if len(got) == 1000:
                            server.rotate(second)  # the next connection's id is refused: fetch the new one
            return got, source, server

    got, source, server = asyncio.run(main())
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in direct]
    assert source.compressed and source.stats.errors == {}
    ids = [parse_qs(urlsplit(p).query)["zstdDictionary"][0] for p in server.requests]
    assert ids[0] == str(zstandard.ZstdCompressionDict(first).dict_id())
    assert ids[-1] == str(zstandard.ZstdCompressionDict(second).dict_id())
    assert source.stats.connect_failures["http_400"] == 1  # the refused id, once


def test_a_cursor_past_the_lookback_is_one_clear_line(archive: Path) -> None:
    async def main() -> None:
        async with Jetstream2Server(archive, first_seq=5000, oldest_seq=5000) as server:
            source = Jetstream2Source(server.url, cursor=12, **FAST)
            async with asyncio.timeout(10), source:
                async for _ in source:
                    pass

    with pytest.raises(
        CursorTooOld, match=r"no longer serves cursor 12 \(its live tail keeps about 36 h; .*archive key"
    ):
        asyncio.run(main())


def test_filters_pass_through_and_a_refused_filter_is_one_line(archive: Path, direct: list[Event]) -> None:
    likes = [e for e in direct if e.collection == "app.bsky.feed.like"]

    async def main() -> tuple[list[Sequenced], str]:
        async with Jetstream2Server(archive) as server:
            source = Jetstream2Source(server.url, collections=["app.bsky.feed.like"], kinds=["commit"], **FAST)
            got = await drain(source)
            return got, server.requests[0]

    got, path = asyncio.run(main())
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in likes]
    query = parse_qs(urlsplit(path).query)
    assert query["collections"] == ["app.bsky.feed.like"] and query["kinds"] == ["commit"]
    with pytest.raises(ValueError, match="not a Jetstream v2 kind"):
        Jetstream2Source("ws://127.0.0.1:1", kinds=["commits"])

    class Refusing(Jetstream2Server):
        def _check_request(self, request: Any) -> Any:
            return self._xrpc(400, "InvalidRequest", "too many dids")

    async def refused() -> None:
        async with Refusing([]) as server, asyncio.timeout(10), Jetstream2Source(server.url, **FAST) as source:
            async for _ in source:
                pass

    with pytest.raises(Jetstream2Refused, match=r"refused the subscription \(HTTP 400 InvalidRequest\): too many"):
        asyncio.run(refused())


def test_hostile_messages_are_counted_and_the_stream_goes_on(
    direct: list[Event], caplog: pytest.LogCaptureFixture
) -> None:
    good = direct[:5]
    bad_seq = json.dumps({"$type": "message", "payload": {**to_jetstream2(direct[5], 1), "seq": "six"}})
    items: list[Any] = [
        good[0], b"\x00\xff not json", good[1], json.dumps({"$type": "nonsense"}), good[2], bad_seq,
        json.dumps({"$type": "message", "payload": {"$type": PREFIX + "teleport", "seq": 9}}), good[3],
        "[" * 5000 + "]" * 5000, good[4],
    ]  # fmt: skip

    async def main() -> tuple[list[Sequenced], Jetstream2Source]:
        async with Jetstream2Server(items, info={"name": "OutdatedCursor", "message": "clamped"}) as server:
            source = Jetstream2Source(server.url, **FAST)
            with caplog.at_level(logging.WARNING):
                return await drain(source), source

    got, source = asyncio.run(main())
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in good]
    assert source.stats.errors == {"bad_json": 1, "bad_frame": 1, "bad_body": 1, "unknown_type": 1, "too_deep": 1}
    assert source.stats.frames["#info"] >= 1
    assert any("OutdatedCursor" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def test_the_decoder_reads_what_it_writes_and_refuses_what_it_must() -> None:
    actor, subject = "did:plc:2a7ygipkrbh544aqhcav53oy", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    event = Event(1_783_126_800_123_456, 7, "like", actor, subject, "app.bsky.feed.like", "3jzfcijpj2z2a", "create",
                  "3jzfcijpj2z2b", "bafyreib2rxk3rh6kzwq")  # fmt: skip
    event.record = {"subject": {"uri": "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3jz", "cid": "x"}}
    payload = to_jetstream2(event, 41)
    decoded = from_jetstream2(payload)
    assert decoded.type == "#commit" and decoded.seq == 41 and not decoded.error
    (back,) = decoded.events
    assert (back.time_us, back.seq, back.actor, back.subject, back.rkey) == (
        event.time_us, 41, event.actor, event.subject, event.rkey)  # fmt: skip
    assert from_jetstream2({**payload, "time": "yesterday"}).error == "bad_time"
    assert from_jetstream2({**payload, "seq": -1}).error == "bad_body"
    assert from_jetstream2({**payload, "did": "nobody"}).skipped == {"bad_did": 1}
    assert from_jetstream2({"$type": PREFIX + "info", "name": "FutureCursor"}).info == {"name": "FutureCursor"}
    assert from_jetstream2([1, 2]).error == "bad_json"


def test_the_sdks_own_v2_client_reads_the_stand_in(archive: Path, direct: list[Event]) -> None:
    """atproto's AsyncJetstreamClient (the library v2's users use) against the stand-in: the same seqs, commits
    and DIDs, with dict-zstd frames fetched through getZstdDictionary."""
    from atproto_jetstream import AsyncJetstreamClient

    dictionary = _dictionary([to_jetstream2(e, i + 1) for i, e in enumerate(direct[:3000])], 8192)

    async def main() -> list[Any]:
        async with Jetstream2Server(archive, zstd_dictionary=dictionary) as server:
            client = AsyncJetstreamClient(base_uri=f"{server.url}/xrpc", recv_timeout=5)
            got: list[Any] = []

            async def on_message(message: Any) -> None:
                got.append(message)
                if len(got) == len(direct):
                    await client.stop()

            async with asyncio.timeout(60):
                await client.start(on_message)
            assert client.compressed
            return got

    got = asyncio.run(main())
    assert [m.seq for m in got] == list(range(1, len(direct) + 1))
    assert [(m.did, getattr(m, "rkey", None)) for m in got] == [
        (e.actor, e.rkey if e.kind not in ("identity", "account") else None) for e in direct
    ]


def test_run_says_a_refusal_in_one_line_and_exits_2() -> None:
    """``skyattr run --source jetstream2`` against a server that refuses the subscription: one line, exit 2."""
    import subprocess
    import sys

    class Refusing(Jetstream2Server):
        def _check_request(self, request: Any) -> Any:
            return self._xrpc(400, "InvalidRequest", "dids: too many")

    with serving_in_thread(Refusing([])) as server:
        cmd = [sys.executable, "-m", "streamer", "run", "--source", "jetstream2", "--jetstream2-url", server.url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "refused the subscription (HTTP 400 InvalidRequest): dids: too many" in done.stderr
    assert "Traceback" not in done.stderr
