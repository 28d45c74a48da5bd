"""The Jetstream path end to end over real websockets on 127.0.0.1: JetstreamServer serving an archive as Jetstream
v1 JSON, JetstreamSource reading it.

No mocks: what passes through is the protocol a public Jetstream speaks (``/subscribe``, cursor replay from the
cursor inclusive, filters, zstd frames, dropped connections), so resume, de-duplication and error handling are
checked as they will run. The oracle is a direct decode of the same archive (``read_archive`` + ``decode_frame`` /
``from_jetstream``, as ``skyattr events`` does), stably sorted by ``time_us`` as a Jetstream's clock orders it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import zstandard
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.core.backoff import Backoff
from streamer.core.events import Event
from streamer.core.frames import decode_frame
from streamer.core.jetstream_json import from_jetstream, to_jetstream
from streamer.core.seqs import Sequenced, fingerprint
from streamer.sources.archive import read_archive
from streamer.sources.base import Source, SourceStats
from streamer.sources.jetstream import (
    ZSTD_MAGIC,
    JetstreamSource,
    JetstreamUnavailable,
    jetstream_url,
    too_deep_to_parse,
)
from streamer.testing.jetstream_server import JetstreamServer, jetstream_events
from streamer.testing.synth import write_synth_archive

# close_timeout: a source stopped mid-stream waits that long for the server's close frame, queued behind messages
FAST: dict[str, Any] = {"backoff": Backoff(0.005, 0.02), "close_timeout": 0.2}
IDLE = 0.4  # the local server idles once it has sent everything: this long without a message ends a connection


# -- helpers ----------------------------------------------------------------------------------------------------


def direct_events(path: Path) -> list[Event]:
    """The oracle: every event of the archive decoded directly, in the order a Jetstream would send them."""
    events: list[Event] = []
    for item in read_archive(path):
        decoded = decode_frame(item.frame, records=True) if item.frame is not None else from_jetstream(item.json)
        events.extend(decoded.events)
    events.sort(key=lambda e: e.time_us)
    return events


def norm(event: Event) -> tuple:
    """Everything an event says; a relay commit's seq is not carried by Jetstream (its time_us is the seq there)."""
    seq = None if event.kind not in ("identity", "account") else event.seq
    record = json.dumps(event.record, sort_keys=True)
    return (event.time_us, seq, event.kind, event.actor, event.subject, event.collection, event.rkey, event.operation,
            event.rev, event.cid, record)  # fmt: skip


def wire(event: Event) -> dict[str, Any]:
    """What ``to_jetstream`` makes of an event, less our own ``skyattr`` block (whose seq is the relay's)."""
    return {k: v for k, v in to_jetstream(event).items() if k != "skyattr"}


def events_of(items: list[Sequenced]) -> list[Event]:
    return [e for item in items for e in item.events]


async def drain(source: JetstreamSource, timeout: float = 10.0) -> list[Sequenced]:
    """Everything the source yields until ``max_retries`` idle connections in a row end it."""
    got: list[Sequenced] = []
    with pytest.raises(JetstreamUnavailable):
        async with asyncio.timeout(timeout), source:
            async for item in source:
                got.append(item)
    return got


async def take(source: JetstreamSource, n: int, timeout: float = 10.0) -> list[Sequenced]:
    got: list[Sequenced] = []
    async with asyncio.timeout(timeout), source:
        async for item in source:
            got.append(item)
            if len(got) >= n:
                break
    return got


def query_of(path: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path).query)


@pytest.fixture(scope="module")
def frames_archive(sample_dir: Path) -> Path:
    return sample_dir / "frames.bin.zst"


@pytest.fixture(scope="module")
def synth_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "small.skyarch.zst"
    write_synth_archive(path, agents=300, hours=2, seed=7)
    return path


@pytest.fixture(scope="module")
def sample_events(frames_archive: Path) -> list[dict[str, Any]]:
    """The sample's events as Jetstream dicts, in serving order."""
    return jetstream_events(frames_archive)


def restamped(events: list[dict[str, Any]], step: int, group: int = 1) -> list[dict[str, Any]]:
    """Copies of ``events`` with time_us ``base + step * (i // group)``: ``group`` events share each time_us."""
    base = events[0]["time_us"]
    return [{**e, "time_us": base + step * (i // group)} for i, e in enumerate(events)]


def good(time_us: int, rkey: str = "3jzfcijpj2z2a") -> dict[str, Any]:
    return {
        "did": "did:plc:2a7ygipkrbh544aqhcav53oy",
        "time_us": time_us,
        "kind": "commit",
        "commit": {"rev": "3jzfcijpj2z2b", "operation": "delete", "collection": "app.bsky.feed.like", "rkey": rkey},
    }


T0 = 1_751_640_000_000_000


# -- (a) every event arrives once, in order, as decoding the archive directly says -------------------------------


@pytest.mark.parametrize("which", ["frames", "golden_jsonl", "synth"])
async def test_every_event_arrives_once_in_order_and_decodes_as_the_archive(
    which: str, sample_dir: Path, synth_archive: Path
) -> None:
    path = {"frames": sample_dir / "frames.bin.zst", "golden_jsonl": sample_dir / "golden_v1.jsonl"}.get(
        which, synth_archive
    )
    expected = direct_events(path)
    assert len(expected) > 5
    async with JetstreamServer(path) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=0, **FAST)
        got = await drain(source)
    # one message per event, each once, in the server's order, the same events the archive holds
    assert all(len(item.events) == 1 for item in got)
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in expected]
    assert [wire(e) for e in events_of(got)] == [wire(e) for e in expected]
    for item in got:
        assert item.source_cursor == item.events[0].time_us  # a monotone stream: the cursor is each event's time
        assert item.fingerprint == fingerprint(item)
    assert source.cursor == expected[-1].time_us
    # the end: an idle connection, then one that re-sent only what sits at the cursor (dropped as duplicates)
    last = sum(1 for e in expected if e.time_us == expected[-1].time_us)
    assert server.connections == 2
    assert query_of(server.requests[0]) == {}
    assert query_of(server.requests[1]) == {"cursor": [str(expected[-1].time_us)]}
    stats = source.stats
    assert stats.items == server.sent == len(expected) + last
    assert stats.yielded == len(expected) and stats.duplicates == last
    assert stats.errors == {} and stats.out_of_order == 0
    assert sum(stats.frames.values()) == server.sent
    assert stats.connects == 2 and stats.reconnects == 1 and stats.disconnects == {"idle_timeout": 2}


async def test_source_implements_the_protocol_and_counts_into_shared_stats(frames_archive: Path) -> None:
    stats = SourceStats()
    async with JetstreamServer(frames_archive) as server:
        source = JetstreamSource(server.url, stats=stats, **FAST)
        assert isinstance(source, Source) and source.stats is stats and source.cursor is None
        got = await take(source, 10)
    assert len(got) == 10 and stats.yielded == 10 and stats.items == 10
    assert source.cursor == got[-1].source_cursor
    assert stats.disconnects == {"stopped": 1} and not stats.connected


# -- (b) resume by cursor across dropped connections: each event exactly once ------------------------------------


@pytest.mark.parametrize("drop_after", [5, 11])
async def test_dropped_connections_resume_by_cursor_exactly_once(frames_archive: Path, drop_after: int) -> None:
    """Each connection is cut after ``drop_after`` messages: more than the most events the sample has at one
    time_us (4, one commit's operations), or a replay from the cursor inclusive could never get past them."""
    expected = direct_events(frames_archive)
    async with JetstreamServer(frames_archive, drop_after=drop_after) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=1, **FAST)
        got = await drain(source)
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in expected]
    stats = source.stats
    assert server.connections >= len(expected) // drop_after
    assert stats.connects == server.connections and stats.reconnects == server.connections - 1
    assert stats.disconnects["ConnectionClosedError"] >= len(expected) // drop_after - 1
    # every message the server re-sent was dropped and counted, nothing else
    assert stats.yielded == len(expected)
    assert stats.duplicates == server.sent - len(expected) >= server.connections - 1
    # each reconnection asked for the last time_us yielded before it
    cursors = [int(query_of(p)["cursor"][0]) for p in server.requests[1:]]
    assert cursors == sorted(cursors) and set(cursors) <= {item.source_cursor for item in got}
    assert cursors[-1] == expected[-1].time_us


async def test_cut_between_events_of_one_time_us_keeps_the_unseen_ones(sample_events: list[dict[str, Any]]) -> None:
    """Three events share every time_us (one of them twice, the same message): each connection is cut in the middle
    of a group, so the replay of the cursor's time holds both re-sends (dropped) and events not yet seen (kept)."""
    events = restamped(sample_events[:60], step=1000, group=3)
    events[4] = dict(events[3])  # the same message twice at one time_us: two events, both kept
    async with JetstreamServer(events, drop_after=4) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=1, **FAST)
        got = await drain(source)
    assert [wire(e) for e in events_of(got)] == [wire(from_jetstream(e).events[0]) for e in events]
    assert source.stats.duplicates == server.sent - len(events)
    assert server.connections > len(events) // 4


async def test_a_server_replaying_from_before_the_cursor_is_deduplicated(sample_events: list[dict[str, Any]]) -> None:
    """A Jetstream whose clock lags (``rewind_us``) re-sends events below the asked cursor too: duplicates."""
    events = restamped(sample_events[:80], step=10)
    async with JetstreamServer(events, drop_after=6, rewind_us=25) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=1, **FAST)
        got = await drain(source)
    assert [item.events[0].time_us for item in got] == [e["time_us"] for e in events]
    assert source.stats.duplicates == server.sent - len(events) >= 3 * (server.connections - 1)


async def test_resume_from_a_checkpoint_cursor(sample_events: list[dict[str, Any]]) -> None:
    """A new source from a checkpoint's cursor gets what follows; with the fingerprints kept at the cursor
    (``seen_at_cursor``) exactly once, without them the boundary's events come again (at-least-once)."""
    events = restamped(sample_events[:40], step=100, group=2)
    async with JetstreamServer(events) as server:
        first = JetstreamSource(server.url, **FAST)
        head = await take(first, 15)  # stops in the middle of a pair
        cursor, seen = first.cursor, first.seen_at_cursor
        assert cursor == head[-1].events[0].time_us and len(seen) == 1
        resumed = JetstreamSource(server.url, cursor=cursor, seen=seen, idle_timeout=IDLE, max_retries=0, **FAST)
        tail = await drain(resumed)
        again = JetstreamSource(server.url, cursor=cursor, idle_timeout=IDLE, max_retries=0, **FAST)
        tail_again = await drain(again)
    everything = [wire(from_jetstream(e).events[0]) for e in events]
    assert [wire(e) for e in events_of(head + tail)] == everything
    assert [wire(e) for e in events_of(tail_again)] == everything[14:]
    assert query_of(server.requests[1])["cursor"] == [str(cursor)]


async def test_time_going_backwards_within_a_connection_is_kept_and_counted() -> None:
    events = [good(T0, "a"), good(T0 + 20, "b"), good(T0 + 10, "c"), good(T0 + 30, "d")]
    async with JetstreamServer(events) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=0, **FAST)
        got = await drain(source)
    assert [item.events[0].rkey for item in got] == ["a", "b", "c", "d"]
    assert source.stats.out_of_order == 1
    assert [item.source_cursor for item in got] == [T0, T0 + 20, T0 + 20, T0 + 30]  # the cursor never goes back
    assert source.cursor == T0 + 30


# -- (c) filters --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("collections", "dids"),
    [(["app.bsky.feed.like"], []), (["app.bsky.graph.*", "app.bsky.feed.repost"], []), ([], "three"),
     (["app.bsky.feed.*"], "three")],
)  # fmt: skip
async def test_wanted_collections_and_dids_filter_on_the_server(
    frames_archive: Path, sample_manifest: dict, collections: list[str], dids: list[str] | str
) -> None:
    expected = direct_events(frames_archive)
    if dids == "three":
        dids = list(
            dict.fromkeys(sample_manifest["commit_dids"][:3] + [e.actor for e in expected if e.kind == "identity"])
        )

    def wanted(e: Event) -> bool:
        if dids and e.actor not in dids:
            return False
        if not collections or e.kind in ("identity", "account"):
            return True
        return any(e.collection == c or (c.endswith("*") and e.collection.startswith(c[:-1])) for c in collections)

    expected = [e for e in expected if wanted(e)]
    assert 0 < len(expected) < 152
    async with JetstreamServer(frames_archive) as server:
        source = JetstreamSource(
            server.url, wanted_collections=collections, wanted_dids=dids, idle_timeout=IDLE, max_retries=0, **FAST
        )
        got = await drain(source)
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in expected]
    query = query_of(server.requests[0])
    assert query.get("wantedCollections", []) == collections and query.get("wantedDids", []) == list(dids)


# -- (d) zstd -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dictionary(sample_events: list[dict[str, Any]]) -> bytes:
    """A dictionary trained on the sample's JSON, as Jetstream's custom one is trained on its own stream."""
    samples = [json.dumps(e, separators=(",", ":")).encode() for e in sample_events] * 4
    return zstandard.train_dictionary(4096, samples).as_bytes()


@pytest.mark.parametrize("with_dictionary", [True, False])
async def test_zstd_compression_round_trip(
    frames_archive: Path, dictionary: bytes, tmp_path: Path, with_dictionary: bool
) -> None:
    expected = direct_events(frames_archive)
    dict_file = tmp_path / "zstd_dictionary"
    dict_file.write_bytes(dictionary)
    dict_arg = dict_file if with_dictionary else None
    async with JetstreamServer(frames_archive, zstd_dictionary=dict_arg) as server:
        # on the wire: binary zstd frames, which need the dictionary the server compressed with
        async with asyncio.timeout(5), connect(server.url + "/subscribe?compress=true", max_queue=None) as ws:
            raw = await ws.recv()
        assert isinstance(raw, bytes) and raw[:4] == ZSTD_MAGIC
        dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary) if dict_arg else None)
        assert json.loads(dctx.decompress(raw)) == json.loads(server.messages[0].payload)
        source = JetstreamSource(
            server.url, compress=True, zstd_dictionary=dict_arg, idle_timeout=IDLE, max_retries=0, **FAST
        )
        got = await drain(source)
    assert query_of(server.requests[1])["compress"] == ["true"]
    assert [norm(e) for e in events_of(got)] == [norm(e) for e in expected]
    assert source.stats.errors == {}


async def test_compressed_frames_without_the_dictionary_are_counted_not_fatal(
    sample_events: list[dict[str, Any]], dictionary: bytes
) -> None:
    async with JetstreamServer(sample_events[:20], zstd_dictionary=dictionary) as server:
        source = JetstreamSource(server.url, compress=True, idle_timeout=IDLE, max_retries=0, **FAST)
        got = await drain(source)
    assert got == [] and source.stats.errors == {"bad_zstd": 20} and source.cursor is None


async def test_zstd_bombs_and_broken_frames_are_counted_and_the_stream_continues() -> None:
    big = json.dumps({**good(T0 + 1), "pad": "x" * (6 * 1024 * 1024)}).encode()
    declared = zstandard.ZstdCompressor().compress(big)  # says 6 MiB in its header
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(big)  # only a bounded read finds out
    fine = zstandard.ZstdCompressor().compress(json.dumps(good(T0 + 2, "b")).encode())
    messages: list[Any] = [
        good(T0, "a"),
        declared,
        undeclared,
        fine[:-6],
        ZSTD_MAGIC + b"junk",
        fine,
        good(T0 + 3, "c"),
    ]
    async with JetstreamServer(messages) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=0, **FAST)
        got = await drain(source)
    assert [item.events[0].rkey for item in got] == ["a", "b", "c"]
    assert source.stats.errors == {"too_big": 2, "bad_zstd": 2}
    assert source.stats.connects == 2 and "ConnectionClosedError" not in source.stats.disconnects


# -- (e) hostile messages -----------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_hostile_messages_are_counted_skips_and_the_stream_continues() -> None:
    deep_event = good(T0 + 5, "deep")
    deep_event["commit"] = {**deep_event["commit"], "operation": "create", "record": nested(200), "cid": "bafy"}
    messages: list[Any] = [
        good(T0, "a"),
        "not json at all",
        '{"did": "did:plc:x", "time_us": ',  # truncated
        "[1, 2, 3]",  # JSON, not an object
        "[" * 300_000,  # far too deep to hand to the parser
        "[" * 500 + "]" * 500,  # deep, few enough brackets for the parser; not an object
        deep_event,  # a well-formed event whose record nests 200 deep
        '{"kind": "commit", "time_us": "yesterday"}',
        json.dumps(good(T0 + 6, "x")).replace('"x"', '"\\ud800"'),  # a lone surrogate
        b'{"did": "\xff\xfe"}',  # binary, not UTF-8
        bytearray(b'{"did": "\xff\xfe"}'),  # a text frame that is not UTF-8: a skip, not a failed connection
        '"' + "x" * (6 * 1024 * 1024) + '"',  # over max_bytes, under the websocket limit
        "1" * 5000,  # an int with more digits than Python will parse
        good(T0 + 7, "b"),
    ]
    async with JetstreamServer(messages) as server:
        source = JetstreamSource(server.url, idle_timeout=IDLE, max_retries=0, **FAST)
        got = await drain(source)
    assert [item.events[0].rkey for item in got] == ["a", "b"]
    # bad_json: not JSON, truncated, an array, the 500-deep array, not UTF-8 (binary, text), the 5000-digit int;
    # too_deep: the 300,000 brackets (before parsing) and the deep record (from_jetstream)
    assert source.stats.errors == Counter(bad_json=7, too_deep=2, bad_time=1, bad_string=1, too_big=1)
    # one connection carried it all; the second is the idle one that ends the test
    assert source.stats.disconnects == {"idle_timeout": 2}
    assert source.stats.items == server.sent


async def test_a_message_over_the_websocket_limit_is_left_out_by_the_server_on_reconnect() -> None:
    """``websockets`` fails a connection on a message over ``max_size``; re-asking for the same cursor would get it
    again forever, so the source asks the server (``maxMessageSizeBytes``) to leave such messages out."""
    messages: list[Any] = [good(T0, "a"), {**good(T0 + 1, "huge"), "pad": "y" * (2 << 20)}, good(T0 + 2, "b")]
    async with JetstreamServer(messages) as server:
        source = JetstreamSource(
            server.url, max_size=1 << 20, max_bytes=1 << 19, idle_timeout=IDLE, max_retries=0, **FAST
        )
        got = await drain(source)
    assert [item.events[0].rkey for item in got] == ["a", "b"]
    assert source.stats.errors == {"too_big": 1}
    assert source.stats.disconnects["message_too_big"] == 1
    assert query_of(server.requests[1]) == {"cursor": [str(T0)], "maxMessageSizeBytes": [str(1 << 20)]}


def test_deep_json_is_found_without_parsing() -> None:
    assert too_deep_to_parse(b"[" * 5000)
    assert too_deep_to_parse(b'{"a":' * 2000 + b"1" + b"}" * 2000)
    assert not too_deep_to_parse(b"[" * 900)  # few brackets: left to the parser and from_jetstream
    assert not too_deep_to_parse(json.dumps({"text": "[{" * 5000, "xs": [[1]] * 3000}).encode())  # in strings
    assert not too_deep_to_parse(json.dumps([[1, [2]]] * 2000).encode())  # many brackets, shallow


# -- (f) URLs and construction ------------------------------------------------------------------------------------


def test_jetstream_url_building() -> None:
    assert jetstream_url("wss://js.example") == "wss://js.example/subscribe"
    assert jetstream_url("wss://js.example/") == "wss://js.example/subscribe"
    assert jetstream_url("wss://js.example/subscribe") == "wss://js.example/subscribe"
    assert jetstream_url("https://js.example:8443/subscribe") == "wss://js.example:8443/subscribe"
    assert jetstream_url("http://127.0.0.1:6008") == "ws://127.0.0.1:6008/subscribe"
    assert jetstream_url("wss://h/proxy") == "wss://h/proxy/subscribe"
    url = jetstream_url(
        "wss://h/subscribe?wantedCollections=app.bsky.feed.post&cursor=5&compress=false",
        123,
        ["app.bsky.feed.post", "app.bsky.graph.*"],
        ["did:plc:2a7ygipkrbh544aqhcav53oy", "did:web:example.com"],
        compress=True,
        max_message_size=1000,
    )
    assert url == (
        "wss://h/subscribe?wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.%2A"
        "&wantedDids=did%3Aplc%3A2a7ygipkrbh544aqhcav53oy&wantedDids=did%3Aweb%3Aexample.com&cursor=123"
        "&compress=true&maxMessageSizeBytes=1000"
    )
    assert jetstream_url("wss://h", -1) == "wss://h/subscribe"  # a fresh checkpoint's "no position yet"
    assert jetstream_url("wss://h", 0) == "wss://h/subscribe?cursor=0"
    assert jetstream_url("wss://h", wanted_collections="app.bsky.feed.like").endswith("=app.bsky.feed.like")


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("ftp://js.example",), {}, "ftp://js.example"),
        (("wss://",), {}, "wss://"),
        (("js.example/subscribe",), {}, "js.example/subscribe"),
        (("wss://h:notaport",), {}, "wss://h:notaport"),
        (("wss://h",), {"wanted_collections": ["app..bad"]}, "app..bad"),
        (("wss://h",), {"wanted_collections": ["app.bsky.*.*"]}, "app.bsky.*.*"),
        (("wss://h",), {"wanted_dids": ["not-a-did"]}, "not-a-did"),
        (("wss://h",), {"cursor": 1.5}, "1.5"),
        (("wss://h",), {"wanted_collections": [f"a.b.c{i}" for i in range(101)]}, "100"),
    ],
)
def test_malformed_urls_and_filters_fail_at_construction_naming_them(
    args: tuple, kwargs: dict, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        jetstream_url(*args, **kwargs)
    with pytest.raises(ValueError, match=re.escape(named)):
        JetstreamSource(*args, **kwargs)


def test_a_missing_dictionary_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        JetstreamSource("wss://h", compress=True, zstd_dictionary=tmp_path / "absent")


# -- connection handling ------------------------------------------------------------------------------------------


async def test_max_retries_gives_up_when_nothing_listens() -> None:
    server = JetstreamServer([good(T0)])
    async with server:
        url = server.url
    source = JetstreamSource(url, max_retries=2, open_timeout=1, **FAST)
    with pytest.raises(JetstreamUnavailable):
        async with asyncio.timeout(5), source:
            async for _ in source:
                pass
    assert source.stats.connects == 0 and source.stats.reconnects == 2
    assert source.stats.disconnects == {}


async def test_stop_ends_an_idle_iteration_cleanly() -> None:
    async with JetstreamServer([good(T0, "a"), good(T0 + 1, "b")]) as server:
        source = JetstreamSource(server.url, **FAST)
        got: list[Sequenced] = []

        async def consume() -> None:
            async for item in source:
                got.append(item)

        task = asyncio.create_task(consume())
        async with asyncio.timeout(5):
            while len(got) < 2:
                await asyncio.sleep(0.01)
            source.stop()  # the source waits on an idle socket: stopping must end it at once
            await task
        await source.aclose()
    assert len(got) == 2 and source.stats.disconnects == {"stopped": 1} and not source.stats.connected


async def test_local_server_rejects_other_paths_and_bad_parameters() -> None:
    async with JetstreamServer([good(T0)]) as server:
        refused = [
            ("/xrpc/com.atproto.sync.subscribeRepos", 404),
            ("/subscribe?cursor=abc", 400),
            ("/subscribe?compress=maybe", 400),
            ("/subscribe?maxMessageSizeBytes=x", 400),
        ]
        for path, status in refused:
            with pytest.raises(InvalidStatus) as info:
                async with asyncio.timeout(5), connect(server.url + path):
                    pass
            assert info.value.response.status_code == status
        # a source asking a server that refuses it backs off and gives up after max_retries
        source = JetstreamSource(server.url + "/subscribe?maxMessageSizeBytes=x", max_retries=1, **FAST)
        with pytest.raises(JetstreamUnavailable):
            async with asyncio.timeout(5), source:
                async for _ in source:
                    pass
    assert server.connections == 0
